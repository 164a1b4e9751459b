"""Evaluate a model on a manifest, without torch: ONNX models here, checkpoints through the same code.

A model sits behind :class:`Predictor` (NCHW batch -> logits per head, plus the model's own labels /
preprocessing / temperature): :class:`OnnxPredictor` here (onnxruntime), the checkpoint predictor in
:mod:`sorting.training.evaluate`, so an exported model is scored exactly like the checkpoint it came from.
Images go through :func:`sorting.datasets.preprocess.preprocess_batch` with the model's PreprocessConfig
and nothing else. The metrics are numpy (:mod:`sorting.models.metrics`, :mod:`sorting.models.calibration`).

Outputs in ``out_dir``: ``metrics.json`` (machine readable), ``summary.md`` (readable),
``predictions.csv`` (one row per image and head, for error analysis) and per head a
confusion matrix and a purity-vs-reject PNG.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from sorting.datasets.images import load_image
from sorting.datasets.manifest import Manifest, read_manifest
from sorting.datasets.preprocess import PreprocessConfig, preprocess_batch
from sorting.errors import DataError, SortingError
from sorting.models import plots
from sorting.models.calibration import energy_scores, nll, softmax
from sorting.models.metrics import (
    DEFAULT_REJECT_RATES,
    classification_metrics,
    expected_calibration_error,
    purity_at_reject,
    purity_reject_curve,
)
from sorting.models.onnx_model import OnnxClassifier
from sorting.taxonomy import HEADS, AliasMap, load_aliases

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ModelInfo:
    """What evaluation needs to know about a model, whatever file it came from."""

    model_name: str
    heads: tuple[str, ...]
    labels: dict[str, list[str]]
    preprocess: PreprocessConfig
    temperature: dict[str, float]
    ood: dict[str, Any] | None = None
    run_id: str | None = None
    kind: str = "checkpoint"


def model_info(source: Any, heads: tuple[str, ...], kind: str) -> ModelInfo:
    """ModelInfo from a loaded checkpoint or ONNX metadata (both carry the same fields)."""
    return ModelInfo(
        model_name=str(source.model_name),
        heads=heads,
        labels={h: list(source.labels[h]) for h in heads},
        preprocess=source.preprocess,
        temperature={h: float((source.temperature or {}).get(h, 1.0)) for h in heads},
        ood=source.ood,
        run_id=source.run_id,
        kind=kind,
    )


class Predictor(Protocol):
    """A loaded model: ``info`` plus a forward pass on a preprocessed float32 NCHW batch."""

    info: ModelInfo

    def forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Logits (N, C_head) per head name in ``info.heads``."""
        ...


class OnnxPredictor:
    """An exported model (``sorting.models.onnx_model.OnnxClassifier``) on onnxruntime."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        self._clf = OnnxClassifier.load(path, threads=threads)
        meta = self._clf.metadata
        self.info = model_info(meta, tuple(h for h in HEADS if h in meta.heads), "onnx")

    def forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self._clf.predict_logits(np.ascontiguousarray(batch, dtype=np.float32))
        return {h: np.asarray(out[h], dtype=np.float32) for h in self.info.heads}


def predict_logits(predictor: Predictor, images_bgr: Sequence[np.ndarray], *, tta: bool = False) -> dict[str, np.ndarray]:
    """BGR images -> logits per head, via the model's own preprocessing.

    With ``tta`` the logits of the image, its horizontal flip and its vertical flip are
    averaged (a garment on a belt has no preferred orientation; flips keep colour and
    texture, which is what the heads classify).
    """
    batch = preprocess_batch(list(images_bgr), predictor.info.preprocess, input_order="BGR")
    if not tta:
        return predictor.forward(batch)
    views = [batch, batch[:, :, :, ::-1], batch[:, :, ::-1, :]]
    outputs = [predictor.forward(np.ascontiguousarray(v)) for v in views]
    return {h: np.mean([o[h] for o in outputs], axis=0) for h in predictor.info.heads}


@dataclass
class HeadReport:
    """Evaluation of one head on the rows labelled for it."""

    head: str
    labels: list[str]
    temperature: float
    metrics: dict[str, Any]
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    purity: dict[float, dict[str, float]]
    ood_rate: float | None = None
    n_unlabelled: int = 0
    unknown_labels: dict[str, int] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    # the scored rows' raw logits and true classes (e.g. cross-validation pools them to calibrate out of fold)
    logits: np.ndarray | None = field(default=None, repr=False)
    targets: np.ndarray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.metrics["n"])

    @property
    def n_unknown_label(self) -> int:
        return int(sum(self.unknown_labels.values()))

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "n": self.n,
            "n_unlabelled": self.n_unlabelled,
            "n_unknown_label": self.n_unknown_label,
            "unknown_labels": dict(self.unknown_labels),
            "labels": list(self.labels),
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "per_class": {
                name: {"precision": m["precision"][i], "recall": m["recall"][i], "f1": m["f1"][i],
                       "support": m["support"][i]}
                for i, name in enumerate(self.labels)
            },
            "confusion_matrix": m["confusion_matrix"],
            "temperature": self.temperature,
            "ece_before_temperature": self.ece_before,
            "ece_after_temperature": self.ece_after,
            "nll_before_temperature": self.nll_before,
            "nll_after_temperature": self.nll_after,
            "purity_at_reject": [{"target_reject_rate": r, **row} for r, row in self.purity.items()],
            "ood_flag_rate": self.ood_rate,
            "plots": dict(self.plots),
        }


def evaluate_head(
    head: str,
    logits: np.ndarray,
    y_true: np.ndarray,
    labels: Sequence[str],
    *,
    temperature: float = 1.0,
    ood_threshold: float | None = None,
    out_dir: str | Path | None = None,
    reject_rates: Sequence[float] = DEFAULT_REJECT_RATES,
) -> HeadReport:
    """All metrics of one head from its logits; writes the two PNGs when ``out_dir`` is set.

    Usable on validation logits from the training loop as well as by :func:`evaluate_model`.
    Purity and ECE-after use the temperature-scaled probabilities serving will see.
    """
    labels = list(labels)
    logits = np.asarray(logits, dtype=np.float64).reshape(len(y_true), len(labels))
    y = np.asarray(y_true, dtype=np.int64)
    raw, cal = softmax(logits), softmax(logits, temperature)
    empty = y.size == 0
    report = HeadReport(
        head=head,
        labels=labels,
        temperature=float(temperature),
        metrics=classification_metrics(y, raw.argmax(axis=1), len(labels)),
        ece_before=expected_calibration_error(raw, y),
        ece_after=expected_calibration_error(cal, y),
        nll_before=float("nan") if empty else nll(logits, y, 1.0),
        nll_after=float("nan") if empty else nll(logits, y, temperature),
        purity=purity_at_reject(cal, y, rates=reject_rates),
        ood_rate=(float(np.mean(energy_scores(logits, temperature) > ood_threshold))
                  if ood_threshold is not None and not empty else None),
        logits=logits,
        targets=y,
    )
    if out_dir is not None and not empty:
        out = Path(out_dir)
        cm_path = plots.plot_confusion_matrix(report.metrics["confusion_matrix"], labels, out / f"confusion_{head}.png",
                                              title=f"{head}: confusion matrix (row-normalised)")
        curve = purity_reject_curve(cal, y)
        pr_path = plots.plot_purity_reject(curve.reject_rate, curve.purity, out / f"purity_reject_{head}.png",
                                           title=f"{head}: bin purity vs. reject rate", marks=report.purity)
        report.plots = {"confusion_matrix": cm_path.name, "purity_reject": pr_path.name}
    return report


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate_model`; ``metrics.json`` is ``to_dict()``."""

    model_path: str
    model_kind: str
    model_name: str
    run_id: str | None
    manifest_path: str
    split: str | None
    tta: bool
    out_dir: Path
    n_rows: int
    n_evaluated: int
    n_unreadable: int
    unreadable: list[str]
    heads: dict[str, HeadReport]
    metrics_path: Path | None = None
    summary_path: Path | None = None
    predictions_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"path": self.model_path, "kind": self.model_kind, "name": self.model_name,
                      "run_id": self.run_id},
            "manifest": self.manifest_path,
            "split": self.split,
            "tta": self.tta,
            "n_rows": self.n_rows,
            "n_evaluated": self.n_evaluated,
            "n_unreadable": self.n_unreadable,
            "unreadable_examples": self.unreadable[:20],
            "heads": {h: r.to_dict() for h, r in self.heads.items()},
        }

    def flat_metrics(self) -> dict[str, float]:
        """Scalar metrics named ``<head>_<metric>`` (for MLflow / comparisons)."""
        out: dict[str, float] = {}
        for head, r in self.heads.items():
            out[f"{head}_accuracy"] = r.metrics["accuracy"]
            out[f"{head}_macro_f1"] = r.metrics["macro_f1"]
            out[f"{head}_ece"] = r.ece_before
            out[f"{head}_ece_calibrated"] = r.ece_after
            for rate, row in r.purity.items():
                out[f"{head}_purity_reject{round(rate * 100)}"] = row["purity"]
            if r.ood_rate is not None:
                out[f"{head}_ood_flag_rate"] = r.ood_rate
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}

    def summary_markdown(self) -> str:
        return _summary_markdown(self)

    # -- what an MLflow run of this evaluation holds (sorting.training.tracking.Trackable) --------------------
    def mlflow_run_name(self) -> str:
        return f"evaluate-{self.model_name}-{self.split or 'all'}"

    def mlflow_tags(self) -> dict[str, str]:
        """The job, the model kind and, when known, the training run the model came from."""
        tags = {"textile_sorter.job": "evaluate", "textile_sorter.model_kind": self.model_kind}
        if self.run_id:
            tags["textile_sorter.train_run_id"] = self.run_id
        return tags

    def mlflow_params(self) -> dict[str, Any]:
        return {"model": self.model_path, "manifest": self.manifest_path, "split": self.split or "all",
                "tta": self.tta, "model_name": self.model_name}

    def mlflow_metrics(self) -> dict[str, float]:
        return {**self.flat_metrics(), "n_evaluated": float(self.n_evaluated), "n_unreadable": float(self.n_unreadable)}

    def mlflow_artifacts(self) -> list[tuple[Path, str]]:
        """The whole output folder (metrics.json, summary.md, predictions.csv, PNGs) under ``evaluation/``."""
        return [(self.out_dir, "evaluation")]


def _resolve_labels(rows: Sequence[Any], head: str, classes: Sequence[str], aliases: AliasMap) -> tuple[list[int | None], int, Counter]:
    """Per row: class index, or None when unlabelled / unknown. Also counts of both."""
    index = {c: i for i, c in enumerate(classes)}
    out: list[int | None] = []
    unlabelled, unknown = 0, Counter()
    for row in rows:
        raw = getattr(row, head)
        if raw is None or not str(raw).strip():
            unlabelled += 1
            out.append(None)
            continue
        name = aliases.resolve(str(raw), tuple(classes))
        if name is None:
            unknown[str(raw)] += 1
            out.append(None)
        else:
            out.append(index[name])
    return out, unlabelled, unknown


def _aliases(head: str) -> AliasMap:
    try:
        return load_aliases(head)
    except SortingError as exc:
        log.warning("no alias map for %s (%s): labels must match the model's class names", head, exc)
        return AliasMap(head=head)


def _jsonable(value: Any) -> Any:
    """Replace NaN/inf by None so metrics.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def evaluate_onnx(model_path: str | Path, manifest_path: str | Path, *, out_dir: str | Path, split: str | None = None,
                  tta: bool = False, batch_size: int = 32, threads: int | None = None,
                  progress: bool = True) -> EvaluationReport:
    """Score an exported ONNX model on the rows of a manifest (optionally one split); no torch involved."""
    check_batch_size(batch_size)
    predictor = OnnxPredictor(Path(model_path), threads=threads)
    return evaluate_predictor(predictor, manifest_path, out_dir=out_dir, split=split, tta=tta,
                              batch_size=batch_size, progress=progress, model_path=str(model_path))


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")


@dataclass
class _Targets:
    """Each row's class index per head (None: unlabelled or a label the model does not know), and the counts."""

    index: dict[str, list[int | None]] = field(default_factory=dict)
    unlabelled: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, Counter] = field(default_factory=dict)


@dataclass
class _Logits:
    """Logits per head of the rows that could be read (``kept``, row indices) and the unreadable ones."""

    per_head: dict[str, list[np.ndarray]]
    kept: list[int] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def evaluate_predictor(
    predictor: Predictor,
    manifest_path: str | Path,
    *,
    out_dir: str | Path,
    split: str | None = None,
    tta: bool = False,
    batch_size: int = 32,
    progress: bool = True,
    model_path: str = "",
) -> EvaluationReport:
    """Score a loaded :class:`Predictor` on a manifest and write metrics.json, summary.md, predictions.csv, PNGs."""
    info = predictor.info
    manifest = read_manifest(manifest_path)
    rows = list(manifest.rows) if split is None else manifest.subset(split)
    if not rows:
        where = f"split '{split}' of " if split else ""
        raise DataError(f"no rows to evaluate in {where}{manifest_path}")
    targets = _targets(rows, info)
    wanted = [i for i in range(len(rows)) if any(targets.index[h][i] is not None for h in info.heads)]
    if not wanted:
        raise DataError(f"no row of {manifest_path} has a label for the model's heads {list(info.heads)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logits = _predict_rows(predictor, manifest, rows, wanted, batch_size=batch_size, tta=tta, progress=progress)
    if not logits.kept:
        raise DataError(f"none of the {len(wanted)} images in {manifest_path} could be read; first: {logits.unreadable[0]}")
    result = EvaluationReport(
        model_path=model_path, model_kind=info.kind, model_name=info.model_name, run_id=info.run_id,
        manifest_path=str(manifest_path), split=split, tta=tta, out_dir=out, n_rows=len(rows),
        n_evaluated=len(logits.kept), n_unreadable=len(logits.unreadable), unreadable=logits.unreadable,
        heads=_head_reports(info, targets, logits, out),
    )
    result.predictions_path = _write_predictions(out / "predictions.csv", rows, logits.kept, targets.index,
                                                 logits.per_head, info)
    result.metrics_path = out / "metrics.json"
    result.metrics_path.write_text(json.dumps(_jsonable(result.to_dict()), indent=2) + "\n")
    result.summary_path = out / "summary.md"
    result.summary_path.write_text(result.summary_markdown())
    log.info("evaluation written to %s", out)
    return result


def _targets(rows: Sequence[Any], info: ModelInfo) -> _Targets:
    targets = _Targets()
    for head in info.heads:
        index, unlabelled, unknown = _resolve_labels(rows, head, info.labels[head], _aliases(head))
        targets.index[head], targets.unlabelled[head], targets.unknown[head] = index, unlabelled, unknown
        if unknown:
            log.warning("%s: %d rows have labels the model does not know (%s); excluded", head,
                        sum(unknown.values()), ", ".join(sorted(unknown)[:5]))
    return targets


def _predict_rows(predictor: Predictor, manifest: Manifest, rows: Sequence[Any], wanted: list[int], *,
                  batch_size: int, tta: bool, progress: bool) -> _Logits:
    """Logits of the ``wanted`` rows in batches; unreadable images are skipped (and listed)."""
    logits = _Logits({h: [] for h in predictor.info.heads})
    with tqdm(total=len(wanted), desc="evaluate", unit="img", disable=not progress) as bar:
        for start in range(0, len(wanted), batch_size):
            chunk = wanted[start : start + batch_size]
            images, ok = [], []
            for i in chunk:
                path = manifest.image_path(rows[i])
                try:
                    images.append(load_image(path))
                    ok.append(i)
                except (DataError, OSError) as exc:
                    logits.unreadable.append(f"{rows[i].path}: {exc}")
                    log.warning("skipping unreadable image %s: %s", path, exc)
            if images:
                batch_logits = predict_logits(predictor, images, tta=tta)
                for h in predictor.info.heads:
                    logits.per_head[h].append(batch_logits[h])
                logits.kept.extend(ok)
            bar.update(len(chunk))
    return logits


def _head_reports(info: ModelInfo, targets: _Targets, logits: _Logits, out: Path) -> dict[str, HeadReport]:
    heads: dict[str, HeadReport] = {}
    ood_thresholds = (info.ood or {}).get("threshold") or {}
    for head in info.heads:
        index = targets.index[head]
        parts = logits.per_head[head]
        all_logits = np.concatenate(parts) if parts else np.zeros((0, len(info.labels[head])))
        mask = np.array([index[i] is not None for i in logits.kept], dtype=bool)
        y = np.array([index[i] for i in logits.kept if index[i] is not None], dtype=np.int64)
        if not mask.any():
            log.warning("%s: no readable rows labelled for this head; skipped", head)
            continue
        report = evaluate_head(head, all_logits[mask], y, info.labels[head], temperature=info.temperature[head],
                               ood_threshold=ood_thresholds.get(head), out_dir=out)
        report.n_unlabelled = targets.unlabelled[head]
        report.unknown_labels = dict(targets.unknown[head])
        heads[head] = report
    return heads


def _write_predictions(path: Path, rows: Sequence[Any], kept: Sequence[int], targets: dict[str, list[int | None]],
                       logits: dict[str, list[np.ndarray]], info: ModelInfo) -> Path:
    """One CSV row per (image, head) with the true label, prediction and calibrated confidence."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "split", "head", "true", "pred", "confidence", "correct"])
        for head in info.heads:
            if not logits[head]:
                continue
            probs = softmax(np.concatenate(logits[head]), info.temperature[head])
            names = info.labels[head]
            for j, i in enumerate(kept):
                t = targets[head][i]
                p = int(probs[j].argmax())
                writer.writerow([rows[i].path, rows[i].split or "", head, names[t] if t is not None else "",
                                 names[p], f"{probs[j, p]:.4f}", "" if t is None else int(t == p)])
    return path


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _summary_markdown(report: EvaluationReport) -> str:
    lines = [
        f"# Evaluation: {report.model_name}",
        "",
        f"- model: `{report.model_path}` ({report.model_kind})",
        f"- manifest: `{report.manifest_path}`" + (f", split `{report.split}`" if report.split else ", all splits"),
        f"- images evaluated: {report.n_evaluated} of {report.n_rows} rows"
        + (f"; **{report.n_unreadable} unreadable, skipped**" if report.n_unreadable else ""),
        f"- test-time augmentation: {'on (identity + hflip + vflip)' if report.tta else 'off'}",
    ]
    for head, r in report.heads.items():
        lines += [
            "",
            f"## {head}",
            "",
            f"- labelled images: {r.n} (unlabelled for this head: {r.n_unlabelled}"
            + (f"; unknown labels excluded: {r.n_unknown_label} — "
               + ", ".join(f"{k} ×{v}" for k, v in sorted(r.unknown_labels.items())) if r.unknown_labels else "")
            + ")",
            f"- **accuracy {_pct(r.metrics['accuracy'])}**, **macro-F1 {r.metrics['macro_f1']:.3f}**",
            f"- ECE {r.ece_before:.3f} before, {r.ece_after:.3f} after temperature T={r.temperature:.3g}"
            f" (NLL {r.nll_before:.3f} → {r.nll_after:.3f})",
        ]
        if r.ood_rate is not None:
            lines.append(f"- flagged out-of-distribution by the model's energy threshold: {_pct(r.ood_rate)}")
        lines += ["", "| reject rate (target) | reject rate (actual) | purity | confidence threshold |",
                  "|---:|---:|---:|---:|"]
        for rate, row in r.purity.items():
            lines.append(f"| {100 * rate:.0f}% | {_pct(row['reject_rate'])} | {_pct(row['purity'])} | "
                         f"{row['threshold']:.3f} |")
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        m = r.metrics
        predicted = np.asarray(m["confusion_matrix"]).sum(axis=0)
        for i, name in enumerate(r.labels):
            if m["support"][i] or predicted[i]:
                lines.append(f"| {name} | {m['precision'][i]:.3f} | {m['recall'][i]:.3f} | {m['f1'][i]:.3f} | "
                             f"{m['support'][i]} |")
        if r.plots:
            lines += ["", f"![confusion matrix]({r.plots['confusion_matrix']}) "
                          f"![purity vs reject]({r.plots['purity_reject']})"]
    if report.unreadable:
        lines += ["", "## Unreadable images", ""] + [f"- {u}" for u in report.unreadable[:20]]
        if len(report.unreadable) > 20:
            lines.append(f"- … and {len(report.unreadable) - 20} more")
    return "\n".join(lines) + "\n"
