"""Fitting the parts of a :class:`~sorting.models.spectral_net.SpectralModel` on spectra (numpy in, module out).

- :func:`fit_classifier`: preprocessing (its centre) + the linear family (scikit-learn's logistic regression,
  folded into one affine map by probing its decision function) or the 1D CNN (PyTorch, augmented every epoch);
- :func:`fit_mahalanobis`: the OOD score's PCA subspace, class means and shrunk shared covariance;
- :func:`augment_spectra`: random offset, scale, tilt, noise and wavelength shift of raw absorbance.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from sorting.datasets.spectral_preprocess import SpectralPreprocessor
from sorting.models.spectral_net import LOGITS, MahalanobisScore, SpectralModel, _tensor
from sorting.training.spectral_config import SpectralAugmentConfig, SpectralTrainConfig

log = logging.getLogger(__name__)


def augment_spectra(x: np.ndarray, rng: np.random.Generator, cfg: SpectralAugmentConfig) -> np.ndarray:
    """One random draw per spectrum of what another swatch position or instrument may change."""
    n, points = x.shape
    pos = np.linspace(-0.5, 0.5, points)
    shift = rng.uniform(-cfg.shift, cfg.shift, (n, 1))
    idx = np.clip(np.arange(points)[None, :] + shift, 0, points - 1)
    lo = np.floor(idx).astype(int)
    hi = np.minimum(lo + 1, points - 1)
    frac = idx - lo
    rows = np.arange(n)[:, None]
    shifted = x[rows, lo] * (1 - frac) + x[rows, hi] * frac
    scale = 1 + rng.uniform(-cfg.scale, cfg.scale, (n, 1))
    offset = rng.uniform(-cfg.offset, cfg.offset, (n, 1)) + rng.uniform(-cfg.slope, cfg.slope, (n, 1)) * pos
    return shifted * scale + offset + rng.normal(0, cfg.noise, x.shape)


def affine_from(decision: Any, features: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with ``decision(x) == x @ W.T + b`` for an affine ``decision`` (probed at 0 and the unit vectors).
    ``classes`` outputs; a two-class scikit-learn classifier's single score s becomes the logits (0, s)."""
    probe = np.vstack([np.zeros(features), np.eye(features)])
    out = np.asarray(decision(probe), dtype=np.float64).reshape(features + 1, -1)
    if classes == 2 and out.shape[1] == 1:
        out = np.hstack([np.zeros_like(out), out])
    bias = out[0]
    return (out[1:] - bias).T.reshape(classes, features), bias


def _fit_linear(features: np.ndarray, y: np.ndarray, classes: int, config: SpectralTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    scale = float(features.std()) or 1.0
    model = LogisticRegression(C=config.model.linear.C, class_weight="balanced", max_iter=config.model.linear.max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features / scale, y)
    present = list(model.classes_)
    w_present, b_present = affine_from(lambda f: model.decision_function(f / scale), features.shape[1], len(present))
    weight = np.zeros((classes, features.shape[1]))
    bias = np.full(classes, -1e4)  # a class with no training spectra is never predicted
    weight[present], bias[present] = w_present, b_present
    return weight, bias


def _class_weights(y: np.ndarray, classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1)), 0.0)
    return _tensor(weights / weights[counts > 0].mean())


def _fit_cnn(model: SpectralModel, x: np.ndarray, y: np.ndarray, config: SpectralTrainConfig, rng: np.random.Generator) -> list[float]:
    cfg = config.model.cnn
    torch.manual_seed(int(rng.integers(2**31)))
    with torch.no_grad():
        model.classifier.scale.fill_(float(model.preprocess(_tensor(x)).std()) or 1.0)
    optimizer = torch.optim.AdamW(model.classifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * max(1, -(-len(x) // cfg.batch_size)))
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(y, int(model.arch()["classes"])), label_smoothing=cfg.label_smoothing)
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(x))
        batch_x = _tensor(augment_spectra(x[order], rng, config.augment))
        total = 0.0
        for start in range(0, len(x), cfg.batch_size):
            xb, yb = batch_x[start:start + cfg.batch_size], torch.as_tensor(y[order][start:start + cfg.batch_size])
            if len(xb) < 2:
                continue
            loss = loss_fn(model(xb)[LOGITS], yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(xb)
        losses.append(total / len(x))
    model.eval()
    return losses


def fit_classifier(x: np.ndarray, y: np.ndarray, classes: int, config: SpectralTrainConfig, *,
                   seed: int) -> tuple[SpectralModel, SpectralPreprocessor, list[float]]:
    """Preprocessing + classifier on raw absorbance ``x`` (N, points) with class indices ``y`` (0..classes-1).
    Returns the module (OOD part not fitted yet), the fitted numpy preprocessor and the CNN's loss per epoch."""
    rng = np.random.default_rng(seed)
    pre = SpectralPreprocessor(config.preprocess, x.shape[1]).fit(x)
    arch = {"points": x.shape[1], "classes": classes, "family": config.model.family, "snv": config.preprocess.snv,
            "cnn": config.model.cnn.model_dump(include={"channels", "kernel", "dropout"}),
            "ood": {"method": config.ood.method, "components": config.ood.components}}
    model = SpectralModel(arch)
    model.preprocess.matrix.copy_(_tensor(pre.matrix))
    model.preprocess.centre.copy_(_tensor(pre.centre))
    if config.model.family == "cnn":
        return model, pre, _fit_cnn(model, x, y, config, rng)
    train_x = x
    train_y = y
    if config.augment.copies:
        train_x = np.vstack([x] + [augment_spectra(x, rng, config.augment) for _ in range(config.augment.copies)])
        train_y = np.concatenate([y] * (config.augment.copies + 1))
    weight, bias = _fit_linear(pre.transform(train_x), train_y, classes, config)
    with torch.no_grad():
        model.classifier.linear.weight.copy_(_tensor(weight))
        model.classifier.linear.bias.copy_(_tensor(bias))
    model.eval()
    return model, pre, []


def fit_mahalanobis(module: MahalanobisScore, features: np.ndarray, y: np.ndarray, components: int) -> None:
    """PCA subspace of the training features, class means in it, inverse of the Ledoit-Wolf shared covariance."""
    mean = features.mean(axis=0)
    centred = features - mean
    k = max(1, min(components, len(features) - 1, features.shape[1]))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projection = np.zeros((features.shape[1], module.projection.shape[1]))
    projection[:, :k] = vt[:k].T
    z = centred @ projection
    classes = module.class_means.shape[0]
    means = np.full((classes, projection.shape[1]), 1e6)  # a class without spectra is far from everything
    within = np.zeros_like(z)
    for c in np.unique(y):
        means[c] = z[y == c].mean(axis=0)
        within[y == c] = z[y == c] - means[c]
    cov = LedoitWolf().fit(within[:, :k]).covariance_
    whiten = np.zeros((projection.shape[1], projection.shape[1]))
    whiten[:k, :k] = np.linalg.cholesky(np.linalg.inv(cov))
    residual = centred - z @ projection.T
    with torch.no_grad():
        module.mean.copy_(_tensor(mean))
        module.projection.copy_(_tensor(projection))
        module.class_means.copy_(_tensor(means))
        module.whiten.copy_(_tensor(whiten))
        module.residual_scale.fill_(float(np.mean((residual**2).sum(axis=1))) or 1.0)


def predict(model: SpectralModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """Model outputs as numpy for raw absorbance ``x``."""
    with torch.inference_mode():
        out = model.eval()(_tensor(x))
    return {k: v.numpy().astype(np.float64) for k, v in out.items()}
