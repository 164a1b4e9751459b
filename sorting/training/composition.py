"""Cotton share of cotton/polyester items: PLS regression on preprocessed spectra, grouped by specimen.

The share is read from a manifest row's ``composition`` (only rows made of cotton and/or polyester count).
:func:`fit_composition` picks the number of PLS components by grouped cross-validation on its training data
(unless the recipe fixes it) and returns a :class:`~sorting.models.spectral_net.CompositionHead` (its own
preprocessing + the PLS model folded into one affine map). :func:`composition_cv` is the honest figure: outer
grouped folds, each choosing its components on its own training part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cross_decomposition import PLSRegression

from sorting.datasets.spectra_store import SpectralSet
from sorting.datasets.spectral_preprocess import SpectralPreprocessor
from sorting.datasets.split import assign_folds
from sorting.errors import DataError
from sorting.models.spectral_net import CompositionHead, _tensor
from sorting.models.spectral_scores import (
    COMPOSITION_CLASSES,
    WITHIN_POINTS,
    cotton_share,
)
from sorting.training.spectral_config import CompositionConfig
from sorting.training.spectral_models import affine_from

log = logging.getLogger(__name__)

def share_rows(data: SpectralSet) -> tuple[np.ndarray, np.ndarray]:
    """Indices of rows with a cotton/polyester composition and their cotton shares."""
    shares = [cotton_share(r.composition) for r in data.rows]
    keep = np.array([i for i, s in enumerate(shares) if s is not None], dtype=int)
    return keep, np.array([shares[i] for i in keep], dtype=np.float64)


def _pls(x: np.ndarray, y: np.ndarray, n: int) -> PLSRegression:
    return PLSRegression(n_components=max(1, min(n, x.shape[0] - 1, x.shape[1])), scale=False).fit(x, y)


def _folds(data: SpectralSet, k: int, seed: int) -> np.ndarray:
    groups = len(set(data.groups()))
    if groups < 2:
        raise DataError(f"composition needs spectra of at least 2 specimens (groups), got {groups}")
    return np.asarray(assign_folds(data.rows, min(k, groups), seed=seed, group_by="garment"))


def choose_components(data: SpectralSet, cfg: CompositionConfig, seed: int) -> int:
    """The fewest components whose grouped-CV mean absolute error is within ``within_best`` points of the lowest:
    a PLS model with many components fits one instrument's fine detail and does not carry over to another."""
    if cfg.components is not None:
        return cfg.components
    folds = _folds(data, cfg.folds, seed)
    _, y = share_rows(data)
    pre = SpectralPreprocessor(cfg.preprocess, data.grid.points)
    errors = []
    for n in range(1, cfg.max_components + 1):
        pred = np.empty_like(y)
        for k in np.unique(folds):
            train, test = folds != k, folds == k
            p = pre.fit(data.absorbance[train])
            pred[test] = _pls(p.transform(data.absorbance[train]), y[train], n).predict(p.transform(data.absorbance[test])).ravel()
        errors.append(float(np.mean(np.abs(pred - y))))
    best = float(min(errors))
    chosen = next(n for n, e in enumerate(errors, start=1) if e <= best + cfg.within_best)
    log.info("composition: %d PLS components (grouped CV MAE %.2f points; best %.2f)", chosen, errors[chosen - 1], best)
    return chosen


def fit_composition(data: SpectralSet, cfg: CompositionConfig, seed: int) -> tuple[CompositionHead, dict]:
    """The composition head trained on every cotton/polyester row of ``data``, and its description."""
    keep, y = share_rows(data)
    if len(keep) < 4:
        raise DataError(f"composition training data has {len(keep)} cotton/polyester spectra with a composition; need >= 4")
    blends = data.subset(keep)
    n = choose_components(blends, cfg, seed)
    pre = SpectralPreprocessor(cfg.preprocess, data.grid.points).fit(blends.absorbance)
    pls = _pls(pre.transform(blends.absorbance), y, n)
    weight, bias = affine_from(lambda f: pls.predict(f).ravel(), data.grid.points, 1)
    head = CompositionHead(data.grid.points, snv=cfg.preprocess.snv)
    with torch.no_grad():
        head.preprocess.matrix.copy_(_tensor(pre.matrix))
        head.preprocess.centre.copy_(_tensor(pre.centre))
        head.linear.weight.copy_(_tensor(weight))
        head.linear.bias.copy_(_tensor(bias))
    info = {"output": "cotton_share", "unit": "%", "applies_to": list(COMPOSITION_CLASSES), "components": n,
            "preprocess": pre.to_dict(), "trained_on": sorted({r.source or "" for r in blends.rows}),
            "n_spectra": len(keep), "n_specimens": len(set(blends.groups())),
            "share_range": [float(y.min()), float(y.max())]}
    return head.eval(), info


@dataclass
class CompositionScores:
    n: int
    mae: float
    within: float  # share of spectra within WITHIN_POINTS of the declared share

    @classmethod
    def of(cls, predicted: np.ndarray, truth: np.ndarray) -> "CompositionScores":
        err = np.abs(np.asarray(predicted) - np.asarray(truth))
        return cls(int(len(err)), float(err.mean()) if len(err) else float("nan"),
                   float(np.mean(err <= WITHIN_POINTS)) if len(err) else float("nan"))


def composition_cv(data: SpectralSet, cfg: CompositionConfig, *, folds: int, seed: int) -> tuple[CompositionScores, np.ndarray, np.ndarray]:
    """Outer grouped CV of the whole composition fit: scores plus per-row predictions and truths."""
    keep, y = share_rows(data)
    blends = data.subset(keep)
    fold_of = _folds(blends, folds, seed)
    pred = np.empty_like(y)
    for k in np.unique(fold_of):
        train = blends.subset(np.flatnonzero(fold_of != k))
        head, _ = fit_composition(train, cfg, seed)
        with torch.no_grad():
            pred[fold_of == k] = head(_tensor(blends.absorbance[fold_of == k])).numpy()
    return CompositionScores.of(pred, y), pred, y
