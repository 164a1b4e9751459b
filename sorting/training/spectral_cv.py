"""Grouped k-fold cross-validation of a spectral recipe: every swatch tested once, by a model that never saw it.

The folds are :func:`sorting.datasets.split.assign_folds` (stratified, grouped by ``--group-by``, normally
``garment`` = the swatch), so two recipes with the same seed are compared on the same folds. Each fold runs the
whole :func:`~sorting.training.spectral.train_spectral_model` (inner calibration folds included) on the other
folds. A class whose only swatch is in the tested fold is unknown to that fold's model: its spectra count as
"classes the model never learnt" (how many are flagged OOD), not as errors of the known classes.
With ``composition:`` in the recipe, the composition fit is cross-validated on its own data (grouped by specimen)
and its heads score the manifest's cotton/polyester blends (another instrument) in every fold.

Writes ``cv.json``, ``cv.md``, ``confusion_fibre.png`` and ``predictions.csv`` into ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sorting.datasets.spectra_store import SpectralSet
from sorting.datasets.split import assign_folds
from sorting.models import plots
from sorting.models.spectral_onnx import SpectralMetadata, SpectralPredictions
from sorting.models.spectral_scores import score_spectra, summary_lines
from sorting.training.composition import composition_cv
from sorting.training.spectral import (
    label_list,
    load_training_set,
    train_spectral_model,
)
from sorting.training.spectral_config import SpectralTrainConfig
from sorting.training.spectral_eval import TorchSpectralPredictor, _write_predictions

log = logging.getLogger(__name__)


@dataclass
class SpectralCVReport:
    """Duck-types :class:`~sorting.training.cross_validate.CrossValidationReport` for MLflow logging."""

    name: str
    manifest: str
    folds: int
    seed: int
    group_by: str | None
    out_dir: Path
    pooled: dict[str, Any] = field(default_factory=dict)
    fold_accuracy: list[float] = field(default_factory=list)
    composition: dict[str, Any] | None = None

    def flat_metrics(self) -> dict[str, float]:
        out = {f"cv/spectral/{k}": float(self.pooled[k]) for k in ("accuracy", "macro_f1", "ece", "unseen_flagged_ood",
               "background_called_fibre", "fibre_called_background") if self.pooled.get(k) is not None}
        out.update({f"cv/spectral/recall/{n}": c["recall"] for n, c in self.pooled["per_class"].items()})
        if self.composition:
            out.update({f"cv/composition/{k}": float(v) for k, v in self.composition.items() if isinstance(v, (int, float))})
        return out

    def summary_markdown(self) -> str:
        accs = self.fold_accuracy
        spread = f"{statistics.mean(accs):.1%} ± {statistics.stdev(accs) if len(accs) > 1 else 0:.1%}"
        lines = [f"# Cross-validation: {self.name}", "",
                 f"- manifest `{self.manifest}`, {self.folds} folds (seed {self.seed}, grouped by {self.group_by}); "
                 f"accuracy per fold (known classes) {spread}", "", "Pooled over every fold:", ""]
        lines += summary_lines(self.pooled)
        if self.composition:
            c = self.composition
            lines += ["", f"Cotton share, {c['folds']}-fold CV grouped by specimen on {c['data']}: MAE {c['mae']:.2f} points, "
                      f"{c['within_10']:.1%} of {c['n']} spectra within 10 points"]
        return "\n".join(lines) + "\n"


def _pooled_predictions(labels: list[str], n: int) -> SpectralPredictions:
    return SpectralPredictions(labels, np.full((n, len(labels)), -1e4), np.zeros((n, len(labels))), np.zeros(n),
                               np.zeros(n, dtype=bool), np.full(n, np.nan))


def _store_fold(pooled: SpectralPredictions, test: np.ndarray, pred: SpectralPredictions) -> None:
    cols = [pooled.labels.index(name) for name in pred.labels]
    rows = np.flatnonzero(test)
    pooled.logits[np.ix_(rows, cols)] = pred.logits
    pooled.probs[np.ix_(rows, cols)] = pred.probs
    pooled.ood_score[rows], pooled.ood[rows] = pred.ood_score, pred.ood
    if pred.cotton_share is not None and pooled.cotton_share is not None:
        pooled.cotton_share[rows] = pred.cotton_share


def cross_validate_spectral(config: SpectralTrainConfig, manifest: str | Path, *, folds: int = 5, seed: int = 0,
                            group_by: str | None = "garment", out_dir: str | Path) -> SpectralCVReport:
    """See module docstring."""
    if config.threads:
        torch.set_num_threads(config.threads)
    data = load_training_set([str(manifest)], None)
    labels = label_list([r.fibre for r in data.rows], config.data.taxonomy)  # type: ignore[misc]
    composition = load_training_set(config.composition.train, None) if config.composition else None
    fold_of = np.asarray(assign_folds(data.rows, folds, seed=seed, group_by=group_by))
    pooled = _pooled_predictions(labels, len(data))
    truth = [r.fibre for r in data.rows]
    known = np.zeros(len(data), dtype=bool)  # the fold's model learnt the row's class
    report = SpectralCVReport(config.name, str(manifest), folds, seed, group_by, Path(out_dir))
    for k in range(folds):
        train, test = data.subset(np.flatnonzero(fold_of != k)), fold_of == k
        fold_labels = label_list([r.fibre for r in train.rows], config.data.taxonomy)  # type: ignore[misc]
        trained = train_spectral_model(train, fold_labels, config, seed=seed + 100 * k, composition=composition)
        meta = SpectralMetadata(config.name, f"cv-fold-{k + 1}", fold_labels, data.grid, {}, "cv", trained.temperature,
                                trained.ood, trained.composition)
        pred = TorchSpectralPredictor(trained.model, meta).predict(data.absorbance[test])
        _store_fold(pooled, test, pred)
        known[test] = np.isin(np.array(truth, dtype=object)[test], fold_labels)
        report.fold_accuracy.append(float(np.mean(np.array(pred.top1(), dtype=object)[known[test]] ==
                                                  np.array(truth, dtype=object)[test][known[test]]))
                                   if known[test].any() else float("nan"))
        log.info("fold %d/%d: %d test spectra, accuracy %.3f", k + 1, folds, int(test.sum()), report.fold_accuracy[-1])
    if composition is None:
        pooled.cotton_share = None
    report.pooled = score_spectra(truth, pooled, [r.composition for r in data.rows], known)  # type: ignore[arg-type]
    if composition is not None and config.composition is not None:
        scores, _, _ = composition_cv(composition, config.composition, folds=config.composition.folds, seed=seed)
        report.composition = {"data": ", ".join(config.composition.train), "folds": config.composition.folds,
                              "n": scores.n, "mae": scores.mae, "within_10": scores.within}
    _write(report, data, pooled)
    return report


def _write(report: SpectralCVReport, data: SpectralSet, pooled: SpectralPredictions) -> None:
    out = report.out_dir
    out.mkdir(parents=True, exist_ok=True)
    payload = {"name": report.name, "manifest": report.manifest, "folds": report.folds, "seed": report.seed,
               "group_by": report.group_by, "fold_accuracy": report.fold_accuracy, "pooled": report.pooled,
               "composition": report.composition}
    (out / "cv.json").write_text(json.dumps(payload, indent=2, default=float) + "\n", encoding="utf-8")
    (out / "cv.md").write_text(report.summary_markdown(), encoding="utf-8")
    conf = report.pooled["confusion"]
    plots.plot_confusion_matrix(np.asarray(conf["matrix"]), conf["labels"], out / "confusion_fibre.png",
                                title=f"{report.name}: {report.folds}-fold CV grouped by {report.group_by} (rows: true)")
    _write_predictions(out / "predictions.csv", data.rows, pooled)
