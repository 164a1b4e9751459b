"""K-fold cross-validation of a training recipe on one manifest.

Why: the real datasets are small. fibre-photos has 281 images, so its test split holds 28 and one
image moves the accuracy by 3.6 points; two recipes cannot be told apart on it. Cross-validation
trains the recipe once per fold, tests each model on the fold it never saw (every image is tested
exactly once), and reports the mean, the spread over folds and the pooled accuracy over all images.

Each fold gets its own manifest (``fold-K/manifest.csv``: the fold is ``test``, the other folds are
split again into ``train`` and ``val``, stratified and grouped, because the trainer picks its best
epoch and fits calibration on ``val``), its own training run (tracked like any other) and its own
evaluation folder. The summary goes to ``cv.json`` / ``cv.md`` and to one MLflow run.

When the recipe trains on the cross-validated manifest together with others, the others are *extra
sources*: their rows are trained on in every fold and never tested (what another dataset adds to this one);
a recipe that does not list the manifest has its ``data.train`` replaced. A recipe that trains on every row it is given
(``data.train_split: all``) has no validation split in its folds; cross-validation then also fits its
temperature and OOD thresholds on the out-of-fold logits and trains the final model on every row
(``final.pt``): the calibration of a model trained on all the data, fitted on images no model saw.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sorting.datasets.manifest import ALL_ROWS, Manifest, ManifestRow, read_manifest, rebase_rows, write_manifest
from sorting.datasets.split import assign_folds, split_rows
from sorting.errors import ConfigError, DataError
from sorting.models.calibration import LINE_OOD_QUANTILES, energy_scores, energy_thresholds, fit_temperature, softmax
from sorting.models.checkpoint import read_checkpoint_dict
from sorting.models.evaluation import HeadReport
from sorting.models.metrics import expected_calibration_error, purity_at_reject
from sorting.models.onnx_model import ood_quantile_key
from sorting.models.plots import plot_confusion_matrix
from sorting.taxonomy import HEADS
from sorting.training.config import TrainConfig
from sorting.training.evaluate import evaluate_model
from sorting.training.trainer import fit

log = logging.getLogger(__name__)

REJECT_RATE = 0.2  # the share of least confident items a line may reject (issue 15: bin purity at <= 20% reject)


@dataclass
class FoldResult:
    """One fold: its training run and test scores per head."""

    fold: int
    n_train: int
    n_val: int
    n_test: int
    checkpoint: str
    seconds: float
    accuracy: dict[str, float]
    macro_f1: dict[str, float]
    n_scored: dict[str, int]  # labelled, readable test images per head
    labels: dict[str, list[str]]
    confusion: dict[str, list[list[int]]]  # rows: true class, columns: predicted


@dataclass
class HeadSummary:
    """A head's scores over the folds."""

    accuracy_mean: float
    accuracy_std: float  # sample standard deviation over folds
    macro_f1_mean: float
    macro_f1_std: float
    pooled_accuracy: float  # correct / scored over every fold's test images
    n_scored: int


@dataclass
class HeadCalibration:
    """Temperature and OOD thresholds of a head fitted on the out-of-fold logits, and how calibration fares on
    images that took no part in fitting it."""

    temperature: float  # fitted on the logits of every fold's test images (each by the model that never saw it)
    thresholds: dict[float, float]  # energy quantile -> threshold, on the same logits at that temperature
    ece_raw: float  # out-of-fold ECE at T = 1
    ece_fold_models: float  # with each fold model's own temperature (fitted by the trainer on its validation rows)
    ece_cross_fitted: float  # each fold at a temperature fitted on the other folds' out-of-fold logits
    ood_rate_cross_fitted: float  # share of each fold above the threshold fitted on the other folds (aim: 1 - q)
    quantile: float
    n: int
    # bin purity when the least confident REJECT_RATE are rejected: the threshold picked on the pooled out-of-fold
    # probabilities at T = 1 (the curve's point), and a threshold (and T) fitted on the other folds and applied to
    # each fold, as a line would (purity and reject rate actually reached on the images that did not fit them)
    purity_pooled: float = float("nan")
    purity_cross_fitted: float = float("nan")
    reject_cross_fitted: float = float("nan")


@dataclass
class CrossValidationReport:
    name: str
    manifest: str
    folds: int
    seed: int
    group_by: str | None
    out_dir: Path
    results: list[FoldResult] = field(default_factory=list)
    heads: dict[str, HeadSummary] = field(default_factory=dict)
    calibration: dict[str, HeadCalibration] = field(default_factory=dict)
    final_checkpoint: str | None = None  # all-rows recipes: the model on every row, calibrated out of fold

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "manifest": self.manifest, "folds": self.folds, "seed": self.seed,
            "group_by": self.group_by, "results": [vars(r) for r in self.results],
            "heads": {h: vars(s) for h, s in self.heads.items()},
            "calibration": {h: {**vars(c), "thresholds": {str(q): t for q, t in c.thresholds.items()}}
                            for h, c in self.calibration.items()},
            "final_checkpoint": self.final_checkpoint,
        }

    def flat_metrics(self) -> dict[str, float]:
        return {f"cv/{head}/{key}": float(value) for head, s in self.heads.items() for key, value in vars(s).items()}

    # -- what an MLflow run of this cross-validation holds (sorting.training.tracking.Trackable) --------------
    def mlflow_run_name(self) -> str:
        return f"cross-validate-{self.name}"

    def mlflow_tags(self) -> dict[str, str]:
        return {"textile_sorter.job": "cross-validate"}

    def mlflow_params(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "folds": self.folds, "seed": self.seed, "group_by": self.group_by or "",
                "recipe": self.name}

    def mlflow_metrics(self) -> dict[str, float]:
        return self.flat_metrics()

    def mlflow_artifacts(self) -> list[tuple[Path, str]]:
        """cv.md, cv.json and the pooled confusion matrices under ``cross-validation/``."""
        names = ["cv.md", "cv.json", *sorted(p.name for p in self.out_dir.glob("confusion_*.png"))]
        return [(self.out_dir / name, "cross-validation") for name in names]

    def summary_markdown(self) -> str:
        lines = [f"# Cross-validation: {self.name}", "",
                 f"- manifest: `{self.manifest}`, {self.folds} folds (seed {self.seed}"
                 + (f", grouped by {self.group_by}" if self.group_by else "") + ")",
                 "- every image is tested once, by the model trained without its fold", ""]
        lines += ["| head | accuracy (mean ± std over folds) | macro-F1 | pooled accuracy | images |",
                  "|---|---:|---:|---:|---:|"]
        for head, s in self.heads.items():
            lines.append(f"| {head} | {s.accuracy_mean:.1%} ± {s.accuracy_std:.1%} | {s.macro_f1_mean:.3f} ± "
                         f"{s.macro_f1_std:.3f} | {s.pooled_accuracy:.1%} | {s.n_scored} |")
        lines += ["", "| fold | train / val / test | " + " | ".join(f"{h} acc / F1" for h in self.heads)
                  + " | seconds | checkpoint |",
                  "|---:|---|" + "---:|" * len(self.heads) + "---:|---|"]
        for r in self.results:
            scores = " | ".join(f"{r.accuracy[h]:.1%} / {r.macro_f1[h]:.3f}" if h in r.accuracy else "-"
                                for h in self.heads)
            lines.append(f"| {r.fold + 1} | {r.n_train} / {r.n_val} / {r.n_test} | {scores} | {r.seconds:.0f} | "
                         f"`{r.checkpoint}` |")
        if self.calibration:
            lines += ["", "Calibration on the out-of-fold predictions (ECE: expected calibration error, 15 bins):", "",
                      "| head | ECE at T=1 | ECE, fold models' own T | ECE, T fitted on the other folds | "
                      "OOD flagged (other folds' threshold) | T on all folds |", "|---|---:|---:|---:|---:|---:|"]
            for head, c in self.calibration.items():
                lines.append(f"| {head} | {c.ece_raw:.3f} | {c.ece_fold_models:.3f} | {c.ece_cross_fitted:.3f} | "
                             f"{c.ood_rate_cross_fitted:.1%} (q {c.quantile:g}) | {c.temperature:.3f} |")
            lines += ["", f"Bin purity with the least confident {REJECT_RATE:.0%} rejected, out of fold:", "",
                      "| head | purity, threshold on the pooled predictions | purity / reject, T and threshold "
                      "fitted on the other folds |", "|---|---:|---:|"]
            for head, c in self.calibration.items():
                lines.append(f"| {head} | {c.purity_pooled:.1%} | {c.purity_cross_fitted:.1%} / "
                             f"{c.reject_cross_fitted:.1%} |")
        if self.final_checkpoint:
            lines += ["", f"Final model (every row, temperature and OOD thresholds from the out-of-fold logits): "
                          f"`{self.final_checkpoint}`"]
        return "\n".join(lines) + "\n"


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[FoldResult]) -> dict[str, HeadSummary]:
    """Mean / std over folds and the pooled accuracy, per head scored in at least one fold."""
    heads = sorted({h for r in results for h in r.accuracy},
                   key=lambda h: HEADS.index(h) if h in HEADS else len(HEADS))
    out = {}
    for head in heads:
        scored = [r for r in results if head in r.accuracy]
        accs = [r.accuracy[head] for r in scored]
        f1s = [r.macro_f1[head] for r in scored]
        n = sum(r.n_scored[head] for r in scored)
        correct = sum(round(r.accuracy[head] * r.n_scored[head]) for r in scored)
        out[head] = HeadSummary(statistics.mean(accs), _std(accs), statistics.mean(f1s), _std(f1s), correct / n, n)
    return out


def _head_calibration(parts: list[tuple[np.ndarray, np.ndarray, float]], quantile: float) -> HeadCalibration:
    """Out-of-fold calibration of one head from each fold's (logits, labels, fold model's temperature)."""
    z = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    temperature = fit_temperature(z, y)
    thresholds = energy_thresholds(z, temperature, (quantile, *LINE_OOD_QUANTILES))
    crossed, crossed_y, flagged, accepted = [], [], [], []
    for k, (zk, yk, _) in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != k and len(p[1])]
        if not len(yk) or not others:
            continue
        zo, yo = np.concatenate([p[0] for p in others]), np.concatenate([p[1] for p in others])
        tk = fit_temperature(zo, yo)
        crossed.append(softmax(zk, tk))
        crossed_y.append(yk)
        flagged.append(energy_scores(zk, tk) > energy_thresholds(zo, tk, (quantile,))[0])
        cut = purity_at_reject(softmax(zo, tk), yo, rates=(REJECT_RATE,))[REJECT_RATE]["threshold"]
        accepted.append(crossed[-1].max(axis=1) >= cut)
    probs_crossed, y_crossed = (np.concatenate(crossed), np.concatenate(crossed_y)) if crossed else (None, None)
    keep = np.concatenate(accepted) if accepted else np.zeros(0, dtype=bool)
    return HeadCalibration(
        temperature=float(temperature), thresholds=dict(zip((quantile, *LINE_OOD_QUANTILES), thresholds)),
        ece_raw=expected_calibration_error(softmax(z), y),
        ece_fold_models=expected_calibration_error(np.concatenate([softmax(p[0], p[2]) for p in parts]), y),
        ece_cross_fitted=expected_calibration_error(probs_crossed, y_crossed) if crossed else float("nan"),
        ood_rate_cross_fitted=float(np.concatenate(flagged).mean()) if flagged else float("nan"),
        quantile=quantile, n=int(len(y)),
        purity_pooled=purity_at_reject(softmax(z), y, rates=(REJECT_RATE,))[REJECT_RATE]["purity"],
        purity_cross_fitted=(float((probs_crossed[keep].argmax(axis=1) == y_crossed[keep]).mean())
                             if keep.any() else float("nan")),
        reject_cross_fitted=float(1.0 - keep.mean()) if keep.size else float("nan"),
    )


def out_of_fold_calibration(oof: list[tuple[int, dict[str, HeadReport]]], quantile: float) -> dict[str, HeadCalibration]:
    """Per head: temperature and energy OOD thresholds fitted on the pooled out-of-fold logits (no image is scored
    by a model that saw it), plus the calibration of each fold at values fitted on the other folds only."""
    out = {}
    for head in [h for h in HEADS if any(h in heads for _, heads in oof)]:
        parts = [(r.logits, r.targets, r.temperature) for _, heads in oof if (r := heads.get(head)) is not None
                 and r.logits is not None and r.targets is not None]
        if sum(len(p[1]) for p in parts) >= 2:
            out[head] = _head_calibration(parts, quantile)
    return out


def write_calibration(source: Path, target: Path, calibration: dict[str, HeadCalibration], quantile: float) -> Path:
    """Copy checkpoint ``source`` to ``target`` with the out-of-fold temperature and OOD thresholds of its heads."""
    raw = read_checkpoint_dict(source)
    temperature = dict(raw.get("temperature") or {})
    ood = dict(raw.get("ood") or {"method": "energy", "threshold": {}, "by_quantile": {}})
    ood.update(quantile=quantile, threshold=dict(ood.get("threshold") or {}), by_quantile=dict(ood.get("by_quantile") or {}))
    for head, c in calibration.items():
        if head not in raw["labels"]:
            continue
        temperature[head] = c.temperature
        ood["threshold"][head] = c.thresholds[quantile]
        ood["by_quantile"][head] = {ood_quantile_key(q): c.thresholds[q] for q in LINE_OOD_QUANTILES}
    raw.update(temperature=temperature, ood=ood)
    raw["metrics"] = {**(raw.get("metrics") or {}), "temperature": temperature, "ood_threshold": ood["threshold"],
                      "calibration": "out-of-fold logits of the cross-validation models"}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(raw, tmp)
    tmp.replace(target)
    log.info("wrote %s: %s with out-of-fold temperature %s", target, source, temperature)
    return target


def _plot_pooled_confusion(report: CrossValidationReport) -> None:
    """The confusion matrix summed over folds (every image once), per head, as ``confusion_<head>.png``."""
    for head in report.heads:
        scored = [r for r in report.results if head in r.confusion]
        labels = scored[0].labels[head]
        if any(r.labels[head] != labels for r in scored):
            log.warning("%s: the folds' models have different label lists; no pooled confusion matrix", head)
            continue
        total = np.sum([np.asarray(r.confusion[head]) for r in scored], axis=0)
        plot_confusion_matrix(total, labels, report.out_dir / f"confusion_{head}.png",
                                    title=f"{head}: {report.folds}-fold cross-validation, pooled (row-normalised)")


def _fold_config(config: TrainConfig, name: str, out: Path, manifest: Path, *, all_rows: bool) -> TrainConfig:
    """The recipe trained on one fold's manifest: its ``train`` rows (and ``val``, or the training rows themselves
    when the recipe trains on every row it is given)."""
    return config.model_copy(update={
        "name": name,
        "output_dir": str(out / "train"),
        "data": config.data.model_copy(update={"train": [str(manifest)], "val": None, "train_split": "train",
                                               "val_split": "train" if all_rows else "val"}),
    })


def extra_sources(config: TrainConfig, manifest: Manifest, manifest_path: Path) -> list[ManifestRow]:
    """When the recipe trains on ``manifest_path`` together with other manifests: the others' rows, to train on in
    every fold and never to test on (their ``train_split`` rows, every row for ``all``), as ``train`` rows with
    paths relative to ``manifest``'s folder; images whose bytes are in ``manifest`` too are left out (they would
    leak). A recipe that does not list ``manifest_path`` has its ``data.train`` replaced: no extra rows."""
    own = {r.sha1 for r in manifest.rows if r.sha1}
    paths = [Path(p) for p in config.data.train]
    if not any(p.resolve() == manifest_path.resolve() for p in paths):
        return []
    rows: list[ManifestRow] = []
    for path in paths:
        if path.resolve() == manifest_path.resolve():
            continue
        other = read_manifest(path)
        kept = [r for r in other.subset(config.data.train_split) if not (r.sha1 and r.sha1 in own)]
        if len(kept) < len(other.subset(config.data.train_split)):
            log.warning("%s: %d images also in %s left out", path, len(other.subset(config.data.train_split)) - len(kept),
                        manifest_path)
        rows += [replace(r, split="train") for r in rebase_rows(kept, other.root, manifest.root)]
        log.info("%s: %d rows trained on in every fold", path, len(kept))
    return rows


def _run_fold(config: TrainConfig, manifest: Manifest, fold_of: list[int], k: int, *, out: Path, seed: int,
              group_by: str | None, val_fraction: float, all_rows: bool,
              extra: list[ManifestRow]) -> tuple[FoldResult, dict[str, HeadReport]]:
    fold_dir = out / f"fold-{k + 1}"
    test = [r for r, f in zip(manifest.rows, fold_of) if f == k]
    rest = [r for r, f in zip(manifest.rows, fold_of) if f != k]
    if all_rows:
        rest = [replace(r, split="train") for r in rest]
    else:
        rest = split_rows(rest, fractions=(1.0 - val_fraction, val_fraction, 0.0), seed=seed, group_by=group_by)
    rest += extra
    n_train, n_val = sum(r.split == "train" for r in rest), sum(r.split == "val" for r in rest)
    fold_manifest = write_manifest(rest + [replace(r, split="test") for r in test], fold_dir / "manifest.csv",
                                   root=manifest.root)
    log.info("fold %d: %d train, %d val, %d test rows", k + 1, n_train, n_val, len(test))
    trained = fit(_fold_config(config, f"{config.name}-fold{k + 1}", fold_dir, fold_manifest, all_rows=all_rows))
    evaluation = evaluate_model(trained.best_checkpoint, fold_manifest, split="test", out_dir=fold_dir / "eval",
                                threads=config.threads, progress=config.progress)
    result = FoldResult(
        fold=k, n_train=n_train, n_val=n_val, n_test=len(test), checkpoint=str(trained.best_checkpoint),
        seconds=round(trained.seconds, 1),
        accuracy={h: float(r.metrics["accuracy"]) for h, r in evaluation.heads.items()},
        macro_f1={h: float(r.metrics["macro_f1"]) for h, r in evaluation.heads.items()},
        n_scored={h: r.n for h, r in evaluation.heads.items()},
        labels={h: list(r.labels) for h, r in evaluation.heads.items()},
        confusion={h: [[int(v) for v in row] for row in r.metrics["confusion_matrix"]]
                   for h, r in evaluation.heads.items()},
    )
    return result, evaluation.heads


def cross_validate(
    config: TrainConfig,
    manifest_path: str | Path,
    *,
    folds: int = 5,
    seed: int = 0,
    group_by: str | None = None,
    val_fraction: float = 0.125,
    out_dir: str | Path,
) -> CrossValidationReport:
    """Train ``config`` once per fold of ``manifest_path`` and test each model on its held-out fold.
    ``val_fraction`` of the other folds' rows is the validation split of each run. When ``data.train`` lists
    ``manifest_path`` and others, the others are extra sources: trained on in every fold, never tested.

    A recipe that trains on every row it is given (``data.train_split: all``) trains each fold on all the other
    folds' rows (no validation split), and then the final model on every row of the manifest, whose temperature
    and OOD thresholds are fitted on the out-of-fold logits of the fold models: ``<out>/final.pt``."""
    if config.data.synthetic is not None:
        raise ConfigError("cross-validation trains on the given manifest only: remove data.synthetic from the recipe")
    if not 0.0 < val_fraction < 0.5:
        raise ConfigError(f"val_fraction must be within (0, 0.5), got {val_fraction}")
    manifest = read_manifest(manifest_path)
    if not manifest.rows:
        raise DataError(f"manifest {manifest_path} has no rows")
    all_rows = config.data.train_split == ALL_ROWS
    extra = extra_sources(config, manifest, Path(manifest_path))
    fold_of = assign_folds(manifest.rows, folds, seed=seed, group_by=group_by)
    out = Path(out_dir)
    report = CrossValidationReport(config.name, str(manifest_path), folds, seed, group_by, out)
    oof: list[tuple[int, dict[str, HeadReport]]] = []
    for k in range(folds):
        result, heads = _run_fold(config, manifest, fold_of, k, out=out, seed=seed, group_by=group_by,
                                  val_fraction=val_fraction, all_rows=all_rows, extra=extra)
        report.results.append(result)
        oof.append((k, heads))
    report.heads = summarise(report.results)
    report.calibration = out_of_fold_calibration(oof, config.calibration.ood_quantile)
    if all_rows:
        report.final_checkpoint = str(_final_model(config, manifest, extra, out, report.calibration))
    _plot_pooled_confusion(report)
    (out / "cv.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "cv.md").write_text(report.summary_markdown(), encoding="utf-8")
    log.info("cross-validation written to %s", out)
    return report


def _final_model(config: TrainConfig, manifest: Manifest, extra: list[ManifestRow], out: Path,
                 calibration: dict[str, HeadCalibration]) -> Path:
    """Train the recipe on every row (and the extra sources) and write it, calibrated out of fold, to
    ``<out>/final.pt``."""
    final_dir = out / "final"
    rows = [replace(r, split="train") for r in manifest.rows] + extra
    final_manifest = write_manifest(rows, final_dir / "manifest.csv", root=manifest.root)
    trained = fit(_fold_config(config, f"{config.name}-final", final_dir, final_manifest, all_rows=True))
    return write_calibration(trained.best_checkpoint, out / "final.pt", calibration, config.calibration.ood_quantile)
