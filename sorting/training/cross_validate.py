"""K-fold cross-validation of a training recipe on one manifest.

Why: the real datasets are small. fibre-photos has 281 images, so its test split holds 28 and one
image moves the accuracy by 3.6 points; two recipes cannot be told apart on it. Cross-validation
trains the recipe once per fold, tests each model on the fold it never saw (every image is tested
exactly once), and reports the mean, the spread over folds and the pooled accuracy over all images.

Each fold gets its own manifest (``fold-K/manifest.csv``: the fold is ``test``, the other folds are
split again into ``train`` and ``val``, stratified and grouped, because the trainer picks its best
epoch and fits calibration on ``val``), its own training run (tracked like any other) and its own
evaluation folder. The summary goes to ``cv.json`` / ``cv.md`` and to one MLflow run.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sorting.datasets.manifest import read_manifest, write_manifest
from sorting.datasets.split import assign_folds, split_rows
from sorting.errors import ConfigError, DataError
from sorting.models.plots import plot_confusion_matrix
from sorting.taxonomy import HEADS
from sorting.training.config import TrainConfig
from sorting.training.evaluate import evaluate_model
from sorting.training.trainer import fit

log = logging.getLogger(__name__)


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
class CrossValidationReport:
    name: str
    manifest: str
    folds: int
    seed: int
    group_by: str | None
    out_dir: Path
    results: list[FoldResult] = field(default_factory=list)
    heads: dict[str, HeadSummary] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "manifest": self.manifest, "folds": self.folds, "seed": self.seed,
            "group_by": self.group_by, "results": [vars(r) for r in self.results],
            "heads": {h: vars(s) for h, s in self.heads.items()},
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
    """Train ``config`` once per fold of ``manifest_path`` (its ``data.train`` is replaced) and test each model
    on its held-out fold. ``val_fraction`` of the other folds' rows is the validation split of each run."""
    if config.data.synthetic is not None:
        raise ConfigError("cross-validation trains on the given manifest only: remove data.synthetic from the recipe")
    if not 0.0 < val_fraction < 0.5:
        raise ConfigError(f"val_fraction must be within (0, 0.5), got {val_fraction}")
    manifest = read_manifest(manifest_path)
    if not manifest.rows:
        raise DataError(f"manifest {manifest_path} has no rows")
    fold_of = assign_folds(manifest.rows, folds, seed=seed, group_by=group_by)
    out = Path(out_dir)
    report = CrossValidationReport(config.name, str(manifest_path), folds, seed, group_by, out)
    for k in range(folds):
        fold_dir = out / f"fold-{k + 1}"
        test = [r for r, f in zip(manifest.rows, fold_of) if f == k]
        rest = split_rows([r for r, f in zip(manifest.rows, fold_of) if f != k],
                          fractions=(1.0 - val_fraction, val_fraction, 0.0), seed=seed, group_by=group_by)
        n_train, n_val = sum(r.split == "train" for r in rest), sum(r.split == "val" for r in rest)
        fold_manifest = write_manifest(rest + [replace(r, split="test") for r in test], fold_dir / "manifest.csv",
                                       root=manifest.root)
        log.info("fold %d/%d: %d train, %d val, %d test rows", k + 1, folds, n_train, n_val, len(test))
        fold_config = config.model_copy(update={
            "name": f"{config.name}-fold{k + 1}",
            "output_dir": str(fold_dir / "train"),
            "data": config.data.model_copy(update={"train": [str(fold_manifest)], "val": None,
                                                   "train_split": "train", "val_split": "val"}),
        })
        trained = fit(fold_config)
        evaluation = evaluate_model(trained.best_checkpoint, fold_manifest, split="test", out_dir=fold_dir / "eval",
                                    threads=config.threads, progress=config.progress)
        report.results.append(FoldResult(
            fold=k, n_train=n_train, n_val=n_val, n_test=len(test), checkpoint=str(trained.best_checkpoint), seconds=round(trained.seconds, 1),
            accuracy={h: float(r.metrics["accuracy"]) for h, r in evaluation.heads.items()},
            macro_f1={h: float(r.metrics["macro_f1"]) for h, r in evaluation.heads.items()},
            n_scored={h: r.n for h, r in evaluation.heads.items()},
            labels={h: list(r.labels) for h, r in evaluation.heads.items()},
            confusion={h: [[int(v) for v in row] for row in r.metrics["confusion_matrix"]]
                       for h, r in evaluation.heads.items()},
        ))
    report.heads = summarise(report.results)
    _plot_pooled_confusion(report)
    (out / "cv.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "cv.md").write_text(report.summary_markdown(), encoding="utf-8")
    log.info("cross-validation written to %s", out)
    return report
