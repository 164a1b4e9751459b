"""Grouped cross-validation of linear probes on cached frozen-backbone features (issue 15's research).

For one task and one cached backbone setting (``benchmarks/cache_features.py``) it scores, on the folds of
``textile-sorter cross-validate`` (5 folds, seed 0, grouped by sample where the data has samples):

* which pooled statistics: the pooled head (``head_mean``, 1280), mean + std of the head map (``head_meanstd``,
  2560: the plain probe of the issue), the shipped multi-stage features (``multistage``: mean + std of stages
  2-6 + pooled head), both together (``multistage+head_std``), with the colour descriptor (``+colour``);
* which views: the features of the image alone (``id``), averaged over the image and its mirror (``mirror``),
  over four flips (``flips4``), over all eight rotations/mirrors (``dihedral8``); and training on each view as
  its own row (``rows:``) instead of on the average;
* the L2 strength ``C`` of the logistic regression (standardised features).

    PYTHONPATH=. python benchmarks/probe_cv.py fibre4 efficientnet_lite2 260
    PYTHONPATH=. python benchmarks/probe_cv.py closeups-fibre efficientnet_lite0 224 --views mirror --features head_meanstd
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from benchmarks.research import SCORE_HEADER, cv_folds, encode, fit_logreg, load_features, logreg_logits, scores
from benchmarks.tasks import TASKS, Task

FEATURE_SETS = {
    "head_mean": ["head_mean"],
    "head_meanstd": ["head_mean", "head_std"],
    "multistage": ["stage2_mean", "stage3_mean", "stage4_mean", "stage5_mean", "stage6_mean", "head_mean",
                   "stage2_std", "stage3_std", "stage4_std", "stage5_std", "stage6_std"],
}
FEATURE_SETS["multistage+head_std"] = [*FEATURE_SETS["multistage"], "head_std"]
FEATURE_SETS["head_mean+colour"] = ["head_mean", "colour"]
FEATURE_SETS["head_meanstd+colour"] = [*FEATURE_SETS["head_meanstd"], "colour"]
FEATURE_SETS["multistage+colour"] = [*FEATURE_SETS["multistage"], "colour"]
FEATURE_SETS["multistage+head_std+colour"] = [*FEATURE_SETS["multistage+head_std"], "colour"]
FEATURE_SETS["colour"] = ["colour"]
VIEW_SETS = {"id": ["id"], "mirror": ["id", "h"], "flips4": ["id", "h", "v", "hv"],
             "dihedral8": ["id", "h", "v", "hv", "t", "th", "tv", "thv"]}


def oof_logits(x: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int, c: float, *, rows: bool,
               balanced: bool) -> np.ndarray:
    """Out-of-fold logits. ``x`` is (V, N, D): averaged over views, or with ``rows`` every view is a training
    row of its own (test rows are still the average)."""
    mean = x.mean(0)
    out = np.zeros((x.shape[1], n_classes))
    for k in np.unique(folds):
        train = (folds != k) & (y >= 0)
        if rows:
            xt = x[:, train].reshape(-1, x.shape[2])
            yt = np.tile(y[train], x.shape[0])
        else:
            xt, yt = mean[train], y[train]
        model = fit_logreg(xt, yt, c, balanced=balanced)
        out[folds == k] = logreg_logits(model, mean[folds == k], n_classes)
    return out


def run(task: Task, backbone: str, size: int, feature_names: list[str], view_names: list[str], cs: list[float],
        *, rows: bool, balanced: bool, fold_seeds: list[int]) -> None:
    data = load_features(task.manifest, backbone, size, task.resize)
    folds = cv_folds(task.manifest, task.folds, seed=fold_seeds[0], group_by=task.group_by)
    more_folds = [cv_folds(task.manifest, task.folds, seed=s, group_by=task.group_by) for s in fold_seeds[1:]]
    labels = data.fibre if task.head == "fibre" else data.colour
    y = encode(labels, task.classes)
    print(f"## {task.name}: {backbone} at {size} px ({task.resize}); {int((y >= 0).sum())} labelled images, "
          f"{task.folds} folds{', grouped by ' + task.group_by if task.group_by else ''}; cached views {data.views}")
    extra = [name for name, _ in task.subsets(data)]
    if more_folds:
        extra.append(f"pooled acc, fold seeds {' / '.join(map(str, fold_seeds))} (mean)")
    print(f"\n| features | views | C | {SCORE_HEADER} | " + " | ".join(extra) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra))
    for feats, views, c in itertools.product(feature_names, view_names, cs):
        wanted = VIEW_SETS[views]
        if not set(wanted) <= set(data.views) or not all(n in data.columns for n in FEATURE_SETS[feats]):
            continue
        started = time.perf_counter()
        x = data.block(FEATURE_SETS[feats], wanted)
        logits = oof_logits(x, y, folds, len(task.classes), c, rows=rows, balanced=balanced)
        s = scores(logits, y, folds, len(task.classes))
        parts = []
        for _, mask in task.subsets(data):
            sub = scores(logits, y, folds, len(task.classes), mask=mask)
            parts.append(f"{sub.accuracy:.1%} ({sub.n})")
        if more_folds:
            accs = [s.accuracy] + [scores(oof_logits(x, y, f, len(task.classes), c, rows=rows, balanced=balanced), y, f,
                                          len(task.classes)).accuracy for f in more_folds]
            parts.append(" / ".join(f"{a:.1%}" for a in accs) + f" ({np.mean(accs):.1%})")
        mode = "rows:" if rows else ""
        print(f"| {feats} | {mode}{views} | {c:g} | {s.row()} | " + " | ".join(parts) + f" |  <!-- {time.perf_counter() - started:.0f} s -->")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("backbone")
    parser.add_argument("size", type=int)
    parser.add_argument("--features", nargs="+", default=["head_mean", "head_meanstd", "multistage",
                                                          "multistage+head_std"], choices=sorted(FEATURE_SETS))
    parser.add_argument("--views", nargs="+", default=["id", "mirror"], choices=sorted(VIEW_SETS))
    parser.add_argument("--c", nargs="+", type=float, default=[0.03, 0.1, 0.3])
    parser.add_argument("--rows", action="store_true", help="train on every view as its own row")
    parser.add_argument("--balanced", action="store_true", help="class-balanced logistic regression")
    parser.add_argument("--fold-seeds", nargs="+", type=int, default=[0],
                        help="fold assignments (cross-validate --seed); the first one's folds give the main columns")
    args = parser.parse_args()
    run(TASKS[args.task], args.backbone, args.size, args.features, args.views, args.c, rows=args.rows,
        balanced=args.balanced, fold_seeds=args.fold_seeds)


if __name__ == "__main__":
    main()
