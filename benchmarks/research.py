"""Shared helpers of the research scripts in ``benchmarks/``: cached features, the CLI's folds, probes, scores.

* :func:`load_features` reads the files of ``benchmarks/cache_features.py`` (one backbone / size / resize,
  all tags merged: the views of the same images in the same row order).
* :func:`cv_folds` is ``sorting.datasets.split.assign_folds`` on the manifest's rows, i.e. exactly the folds of
  ``textile-sorter cross-validate -m MANIFEST --folds K --seed S [--group-by garment]``: every candidate of every
  script is scored on the same folds as the product recipes.
* :func:`fit_logreg` is the plain probe: standardise on the training rows, multinomial L2 logistic regression.
* :func:`scores` pools out-of-fold probabilities into accuracy, macro-F1, ECE and purity at 20% reject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from sorting.datasets.manifest import read_manifest
from sorting.datasets.split import assign_folds
from sorting.models.calibration import softmax
from sorting.models.metrics import classification_metrics, expected_calibration_error, purity_at_reject

FEATURES = Path("runs/features")


@dataclass
class FeatureSet:
    """Cached pooled statistics of one manifest: ``x`` (V, N, D), view names, column slices, row metadata."""

    x: np.ndarray
    views: list[str]
    columns: dict[str, tuple[int, int]]
    paths: np.ndarray
    fibre: np.ndarray
    colour: np.ndarray
    group: np.ndarray

    def block(self, names: list[str], views: list[str]) -> np.ndarray:
        """(len(views), N, D') of the named column groups."""
        cols = np.concatenate([np.arange(*self.columns[n]) for n in names])
        idx = [self.views.index(v) for v in views]
        return self.x[idx][:, :, cols]


def load_features(manifest: str, backbone: str, size: int, resize: str = "center_crop",
                  root: Path = FEATURES) -> FeatureSet:
    """Merge every cached file (all tags) of ``manifest`` / ``backbone`` / ``size`` / ``resize``."""
    stem = f"{Path(manifest).stem}-{backbone}-{size}-{resize}"
    files = sorted(root.glob(f"{stem}.npz")) + sorted(root.glob(f"{stem}-*.npz"))
    if not files:
        raise FileNotFoundError(f"no cached features {root}/{stem}*.npz (run benchmarks/cache_features.py)")
    parts = [np.load(f) for f in files]
    first = parts[0]
    for p in parts[1:]:
        if not np.array_equal(p["paths"], first["paths"]):
            raise ValueError(f"{files}: cached files list different images")
    views = [str(v) for p in parts for v in p["views"]]
    return FeatureSet(
        x=np.concatenate([p["features"] for p in parts]), views=views,
        columns={k: tuple(v) for k, v in json.loads(str(first["columns"])).items()},
        paths=first["paths"], fibre=first["fibre"], colour=first["colour"], group=first["group"],
    )


def cv_folds(manifest: str, folds: int = 5, seed: int = 0, group_by: str | None = None) -> np.ndarray:
    """The fold of each manifest row, as ``textile-sorter cross-validate`` assigns them."""
    return np.asarray(assign_folds(read_manifest(manifest).rows, folds, seed=seed, group_by=group_by))


def encode(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """Class index per row, -1 where unlabelled or not in ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(str(v), -1) for v in labels], dtype=np.int64)


def fit_logreg(x_train: np.ndarray, y_train: np.ndarray, c: float, *, balanced: bool = False,
               sample_weight: np.ndarray | None = None) -> tuple[StandardScaler, LogisticRegression]:
    """The plain probe: per-column standardisation fitted on the training rows, then L2 logistic regression."""
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced" if balanced else None)
    clf.fit(scaler.transform(x_train), y_train, sample_weight=sample_weight)
    return scaler, clf


def logreg_logits(model: tuple[StandardScaler, LogisticRegression], x: np.ndarray, n_classes: int) -> np.ndarray:
    """Logits over all ``n_classes`` (classes absent from the training rows get -inf-like logits)."""
    scaler, clf = model
    out = np.full((len(x), n_classes), -30.0)
    out[:, clf.classes_] = clf.decision_function(scaler.transform(x)) if len(clf.classes_) > 2 else np.stack(
        [-clf.decision_function(scaler.transform(x)) / 2, clf.decision_function(scaler.transform(x)) / 2], axis=1)
    return out


@dataclass
class Scores:
    accuracy: float
    macro_f1: float
    fold_accuracy: list[float]
    ece: float
    purity20: float
    reject20: float
    n: int

    def row(self) -> str:
        folds = np.array(self.fold_accuracy)
        return (f"{self.accuracy:.1%} | {folds.mean():.1%} ± {folds.std(ddof=1):.1%} | {self.macro_f1:.3f} | "
                f"{self.ece:.3f} | {self.purity20:.1%} @ {self.reject20:.0%}")


SCORE_HEADER = "pooled acc | mean ± std over folds | macro-F1 | ECE | purity @ reject"


def scores(logits: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int,
           mask: np.ndarray | None = None) -> Scores:
    """Pooled out-of-fold scores over the labelled rows (``y >= 0``, and ``mask`` if given)."""
    keep = (y >= 0) if mask is None else (y >= 0) & mask
    z, t, f = logits[keep], y[keep], folds[keep]
    probs = softmax(z)
    pred = probs.argmax(1)
    m = classification_metrics(t, pred, n_classes)
    per_fold = [float((pred[f == k] == t[f == k]).mean()) for k in np.unique(f)]
    p20 = purity_at_reject(probs, t, rates=(0.2,))[0.2]
    return Scores(float(m["accuracy"]), float(m["macro_f1"]), per_fold, expected_calibration_error(probs, t),
                  p20["purity"], p20["reject_rate"], len(t))
