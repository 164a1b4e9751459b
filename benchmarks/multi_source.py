"""What a second source adds: grouped CV on one dataset, with another dataset's images in every training fold.

Same folds and scores as ``benchmarks/head_cv.py`` (the trainer's linear head on cached Lite0 features of
``benchmarks/cache_features.py``, averaged over the image and its mirror); the extra source is never tested.
Pairs (issue 15):

* ``closeups-fibre+fibre4``: fabric-closeups fibre, plus fibre-photos' cotton, denim (cotton) and polyester;
* ``fibre4+closeups``: fibre-photos 4 classes, plus the close-ups' cotton and polyester;
* ``closeups-colour+catalogue``: close-up colours, plus the 3,700 catalogue photos;
* ``catalogue+closeups``: catalogue colours, plus the close-ups' colours.

Colour features are the pooled Lite0 head + the colour descriptor (``efficientnet_lite0_colour``'s
``ColourFeatures``: white border-connected background removed, which on a close-up leaves the whole fabric
unless it is white at the border). The close-ups' descriptor is computed here with that same mask
(``--colour masked``, one pass without the CNN) so that both sources share one feature definition.

    PYTHONPATH=. python benchmarks/multi_source.py closeups-fibre+fibre4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.head_cv import fit_predict
from benchmarks.probe_cv import FEATURE_SETS
from benchmarks.research import FEATURES, SCORE_HEADER, cv_folds, encode, load_features, scores
from benchmarks.tasks import TASKS, Task
from sorting.datasets.manifest import read_manifest
from sorting.datasets.preprocess import LITE_MEAN, LITE_STD, PreprocessConfig
from sorting.models.colour_features import ColourFeatures
from sorting.training.data import ManifestDataset, Sample
from sorting.training.feature_cache import extract_features

FIBRE_MAP = {"cotton": "cotton", "denim": "cotton", "polyester": "polyester"}  # fibre-photos -> close-up classes
PAIRS = {
    "closeups-fibre+fibre4": ("closeups-fibre", "fibre4", "multistage"),
    "fibre4+closeups": ("fibre4", "closeups-fibre", "multistage"),
    "closeups-colour+catalogue": ("closeups-colour", "catalogue-colour", "head_mean+colour"),
    "catalogue+closeups": ("catalogue-colour", "closeups-colour", "head_mean+colour"),
}
SIZE = 224
BACKBONE = "efficientnet_lite0"


def masked_closeup_colour(manifest: str) -> np.ndarray:
    """The catalogue's colour descriptor (white border background removed) of every close-up, cached as .npy."""
    out = FEATURES / f"{Path(manifest).stem}-colour-masked-{SIZE}.npy"
    if out.is_file():
        return np.load(out)
    m = read_manifest(manifest)
    samples = [Sample(m.image_path(r).absolute(), (0,)) for r in m.rows]
    pre = PreprocessConfig(input_size=SIZE, resize="center_crop", mean=LITE_MEAN, std=LITE_STD)
    colour = ColourFeatures(mean=LITE_MEAN, std=LITE_STD).eval()
    cached = extract_features(lambda x: [colour(x)], [ManifestDataset(samples, pre)], batch_size=32,
                              device=torch.device("cpu"), desc="close-up colour")
    np.save(out, cached.views[0].numpy())
    return np.load(out)


def features(task: Task, names: list[str]) -> np.ndarray:
    """(1, N, D) features of ``task`` averaged over the image and its mirror (the colour part masked)."""
    data = load_features(task.manifest, BACKBONE, SIZE, task.resize)
    if "colour" in names and task.name.startswith("closeups"):
        cnn = data.block([n for n in names if n != "colour"], ["id", "h"]).mean(0)
        return np.concatenate([cnn, masked_closeup_colour(task.manifest)], axis=1)[None]
    return data.block(names, ["id", "h"]).mean(0, keepdims=True)


def labels(task: Task, target: Task) -> np.ndarray:
    """``task``'s labels as classes of ``target`` (-1 where they have none)."""
    data = load_features(task.manifest, BACKBONE, SIZE, task.resize)
    raw = data.fibre if task.head == "fibre" else data.colour
    if task.head == "fibre" and task.classes != target.classes:
        raw = np.array([FIBRE_MAP.get(str(v), "") for v in raw])
    return encode(raw, target.classes)


def run(pair: str, *, wd: float, lr: float, batch: int) -> None:
    main_name, extra_name, feats = PAIRS[pair]
    task, extra = TASKS[main_name], TASKS[extra_name]
    names = FEATURE_SETS[feats]
    x, y = features(task, names), labels(task, task)
    xe, ye = features(extra, names), labels(extra, task)
    keep = ye >= 0
    xe, ye = xe[:, keep], ye[keep]
    folds = cv_folds(task.manifest, task.folds, group_by=task.group_by)
    n_classes = len(task.classes)
    settings = {"wd": wd, "lr": lr, "epochs": 60, "dropout": 0.0, "smoothing": 0.0, "balance": "none", "batch": batch}
    data = load_features(task.manifest, BACKBONE, SIZE, task.resize)
    subsets = task.subsets(data)
    print(f"## {pair}: {task.name} folds, {feats} ({BACKBONE} {SIZE} px, mirror-averaged); "
          f"{int(keep.sum())} extra training images from {extra.name}\n")
    print(f"| training data | {SCORE_HEADER} | " + " | ".join(n for n, _ in subsets) + " |\n"
          + "|---" + "|---:" * (5 + len(subsets)) + "|")
    for label, with_extra in ((task.name, False), (f"{task.name} + {extra.name}", True)):
        logits = np.zeros((len(y), n_classes))
        for k in np.unique(folds):
            train = (folds != k) & (y >= 0)
            xt = np.concatenate([x[:, train], xe], axis=1) if with_extra else x[:, train]
            yt = np.concatenate([y[train], ye]) if with_extra else y[train]
            logits[folds == k] = fit_predict(xt, yt, x[0, folds == k], n_classes, settings)
        s = scores(logits, y, folds, n_classes)
        parts = [f"{scores(logits, y, folds, n_classes, mask=m).accuracy:.1%}" for _, m in subsets]
        print(f"| {label} | {s.row()} | " + " | ".join(parts) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pair", choices=sorted(PAIRS))
    parser.add_argument("--wd", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.pair, wd=args.wd, lr=args.lr, batch=args.batch)


if __name__ == "__main__":
    main()
