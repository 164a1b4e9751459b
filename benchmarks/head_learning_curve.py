"""Does the textile check's head get better with more labelled scenes? A learning curve, development photos only.

``fit-textile-check`` fits a logistic regression on the ImageNet log-probabilities of a line's garment detections and
sets its threshold so that ``keep`` of the garments pass out of fold. This script collects the same crops (the
line's segmentation without the check, on the development photos of ``benchmarks/belt_split.json``), then scores
them out of fold by scene group (``folds`` folds, as the command does) with heads fitted on only a ``share`` of each
fold's training scenes, drawn ``--draws`` times. It prints, for each share, the area under the curve and the share
of the non-garment crops (hands, objects, rails, shadows) the threshold removes: if it still rises at a share of 1,
more labelled scenes (the held-out part too, for a shipped line) make a safer head.

``--inputs logprobs features`` draws the curve for a head on the 1,000 ImageNet log-probabilities (what the command
fits) and for one on the network's own features: each crop's last feature map averaged over its cells (1,280
values), standardised on each fold's training crops, at the same regularisation.

    python benchmarks/head_learning_curve.py [--line serving/line-real-belt.yaml] [--shares 0.4 0.6 0.8 1.0]
        [--inputs logprobs features]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from sorting.apps.textile_head import HeadFitConfig, collect_crops, head_model, out_of_fold as scores_out_of_fold

ROOT = Path(__file__).resolve().parents[1]


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, share: float, folds: int, regularisation: float,
                rng: np.random.Generator, *, standardise: bool = False) -> np.ndarray:
    """Out-of-fold scores as ``fit-textile-check`` computes them, each fold's head fitted on ``share`` of its
    training scene groups (drawn by ``rng``), on inputs ``standardise``d on those training rows or as they are."""

    def model() -> Any:
        return head_model(regularisation, standardise=standardise)

    def training(train: np.ndarray) -> np.ndarray:
        scenes = np.unique(groups[train])
        kept = rng.choice(scenes, max(2, int(round(share * len(scenes)))), replace=False)
        return train[np.isin(groups[train], kept)]

    return scores_out_of_fold(x, y, groups, folds, model, training=training)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conveyor-photos")
    parser.add_argument("--line", type=Path, default=ROOT / "serving" / "line-real-belt.yaml")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--draws", type=int, default=10, help="draws of the training scenes per share")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inputs", nargs="+", choices=["logprobs", "features"], default=["logprobs"],
                        help="what the head reads: ImageNet log-probabilities, or the pooled feature map")
    args = parser.parse_args()
    cfg = HeadFitConfig(line=args.line, photos=args.data / "images", boxes=args.data / "boxes.csv",
                        out=Path("unused.json"), extra_labels=ROOT / "benchmarks" / "belt_non_garment_boxes.csv",
                        subset=str(ROOT / "benchmarks" / "belt_split.json") + ":dev")
    crops = collect_crops(cfg, pooled="features" in args.inputs)
    y, groups = crops.garment, crops.groups
    print(f"{len(y)} garment detections of {crops.photos} development photos: {int(y.sum())} garments, "
          f"{int((y == 0).sum())} not; {len(np.unique(groups))} scene groups, {cfg.folds} folds, keep {cfg.keep}")
    print("| head reads | share of each fold's training scenes | draws | AUC (mean) | non-garments removed (mean +- std) |")
    print("|---|---|---|---|---|")
    for inputs in args.inputs:
        x = (crops.logprobs if inputs == "logprobs" else crops.pooled).astype(np.float64)
        rng = np.random.default_rng(args.seed)
        for share in args.shares:
            draws = 1 if share >= 1.0 else args.draws  # all scenes: nothing to draw
            aucs, removed = [], []
            for _ in range(draws):
                scores = out_of_fold(x, y, groups, share, cfg.folds, cfg.regularisation, rng,
                                     standardise=inputs == "features")
                threshold = np.quantile(scores[y == 1], 1.0 - cfg.keep)
                aucs.append(roc_auc_score(y, scores))
                removed.append(float((scores[y == 0] < threshold).mean()))
            print(f"| {inputs} | {share:.2f} | {draws} | {np.mean(aucs):.4f} | {100 * np.mean(removed):.1f}% +- "
                  f"{100 * np.std(removed):.1f} |")


if __name__ == "__main__":
    main()
