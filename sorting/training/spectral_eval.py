"""Scoring a spectral model (checkpoint or ONNX) on a spectral manifest; shared with cross-validation.

:func:`score_spectra` turns true labels + :class:`~sorting.models.spectral_onnx.SpectralPredictions` into the
figures the issue asks for: accuracy and macro-F1 over the classes the model knows, recall / OOD rate / what it
was called per class, spectra of classes the model never learnt (how many flagged OOD), background called a fibre
(and fibres called background), calibration (ECE), purity at reject, and the cotton-share error of cotton/polyester
items. :func:`evaluate_spectral` (``textile-sorter evaluate`` on a spectral manifest) writes ``metrics.json``,
``summary.md``, ``predictions.csv`` and ``confusion.png``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sorting.datasets.spectra_store import load_spectral_set
from sorting.errors import DataError
from sorting.models import plots
from sorting.models.calibration import softmax
from sorting.models.spectral_checkpoint import load_spectral_checkpoint
from sorting.models.spectral_net import COTTON_SHARE, LOGITS, OOD_SCORE, SpectralModel
from sorting.models.spectral_onnx import (
    SpectralClassifier,
    SpectralMetadata,
    SpectralPredictions,
)
from sorting.models.spectral_scores import score_spectra, summary_lines


class TorchSpectralPredictor:
    """A spectral module + its metadata, predicting like :class:`SpectralClassifier` (checkpoints, CV folds)."""

    def __init__(self, model: SpectralModel, metadata: SpectralMetadata) -> None:
        self.model = model.eval()
        self.metadata = metadata

    def predict(self, spectra: np.ndarray) -> SpectralPredictions:
        with torch.inference_mode():
            out = {k: v.numpy().astype(np.float64) for k, v in self.model(torch.as_tensor(np.asarray(spectra, dtype=np.float32))).items()}
        threshold = self.metadata.ood_threshold()
        score = out[OOD_SCORE]
        flags = score > threshold if threshold is not None else np.zeros(len(score), dtype=bool)
        return SpectralPredictions(self.metadata.labels, out[LOGITS], softmax(out[LOGITS], self.metadata.temperature),
                                   score, flags | ~np.isfinite(score), out.get(COTTON_SHARE))


def load_spectral_predictor(path: str | Path, *, threads: int | None = None) -> SpectralClassifier | TorchSpectralPredictor:
    """An exported ``.onnx`` or a spectral checkpoint."""
    if Path(path).suffix.lower() == ".onnx":
        return SpectralClassifier.load(path, threads=threads)
    loaded = load_spectral_checkpoint(path)
    return TorchSpectralPredictor(loaded.model, loaded.metadata)


@dataclass
class SpectralEvaluationReport:
    """What ``evaluate`` wrote; duck-types the image report for ``MlflowTracker.log_evaluation``."""

    model_path: str
    manifest_path: str
    split: str | None
    out_dir: Path
    model_name: str
    run_id: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    model_kind: str = "spectral"
    tta: bool = False
    n_unreadable: int = 0

    @property
    def n_evaluated(self) -> int:
        return int(self.metrics["n"])

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.json"

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "summary.md"

    def flat_metrics(self) -> dict[str, float]:
        keys = ("accuracy", "macro_f1", "ece", "ood_rate_known", "unseen_flagged_ood", "background_called_fibre",
                "fibre_called_background")
        out = {f"spectral/{k}": float(self.metrics[k]) for k in keys if self.metrics.get(k) is not None}
        out.update({f"spectral/recall/{n}": c["recall"] for n, c in self.metrics["per_class"].items()})
        if "composition" in self.metrics:
            out.update({f"spectral/composition/{k}": float(v) for k, v in self.metrics["composition"].items()})
        return out

    def summary_markdown(self) -> str:
        head = [f"# Evaluation: {self.model_name} on {Path(self.manifest_path).name} ({self.split or 'all rows'})", ""]
        return "\n".join(head + summary_lines(self.metrics)) + "\n"


def evaluate_spectral(model_path: str | Path, manifest: str | Path, *, out_dir: str | Path, split: str | None = None,
                      threads: int | None = None) -> SpectralEvaluationReport:
    """Score ``model_path`` on a spectral manifest (one split or every row) and write the report files."""
    predictor = load_spectral_predictor(model_path, threads=threads)
    data = load_spectral_set(manifest, split=split, all_rows=split is None)
    if not len(data):
        raise DataError(f"{manifest}: no spectra" + (f" in split {split}" if split else ""))
    if data.grid != predictor.metadata.grid:
        from sorting.models.spectral_onnx import GridMismatchError

        raise GridMismatchError(f"{manifest} is on grid {data.grid.spec()}, the model on {predictor.metadata.grid.spec()}: "
                                "import the spectra again with --grid " + predictor.metadata.grid.spec())
    rows = list(data.rows)
    pred = predictor.predict(data.absorbance)
    metrics = score_spectra([r.fibre or "unlabelled" for r in rows], pred, [r.composition for r in rows])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = SpectralEvaluationReport(str(model_path), str(manifest), split, out, predictor.metadata.model_name,
                                      predictor.metadata.run_id, metrics)
    report.metrics_path.write_text(json.dumps(metrics, indent=2, default=float) + "\n", encoding="utf-8")
    report.summary_path.write_text(report.summary_markdown(), encoding="utf-8")
    _write_predictions(out / "predictions.csv", rows, pred)
    plots.plot_confusion_matrix(np.asarray(metrics["confusion"]["matrix"]), metrics["confusion"]["labels"],
                                out / "confusion.png", title=f"{predictor.metadata.model_name} (rows: true class)")
    return report


def _write_predictions(path: Path, rows: list[Any], pred: SpectralPredictions) -> None:
    share = pred.cotton_share
    called, confidence = pred.top1(), pred.confidence()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "swatch", "true", "predicted", "confidence", "ood", "ood_score", "cotton_share", "composition"])
        for i, row in enumerate(rows):
            writer.writerow([row.path, row.garment or "", row.fibre or "", called[i], f"{confidence[i]:.4f}",
                             int(pred.ood[i]), f"{pred.ood_score[i]:.4g}", "" if share is None else f"{share[i]:.1f}",
                             row.composition or ""])
