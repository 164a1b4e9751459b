"""Temperature scaling and energy-based out-of-distribution scores (numpy only).

The temperature ``T`` per head is fitted on validation logits after training, stored in
the checkpoint and the ONNX metadata, and applied everywhere as ``softmax(logits / T)``.
The OOD threshold is a high quantile of the validation energies: an item whose energy
``-T * logsumexp(logits / T)`` is above it looks unlike anything seen in training.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Validation quantiles whose energy thresholds every model stores, for a line's ``ood_quantile`` (serving/BINS.md)
LINE_OOD_QUANTILES = (0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
# Temperatures outside this range mean the fit is degenerate (e.g. a handful of perfectly
# separated samples drive T -> 0); clamping keeps the stored value usable.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _as_logits(logits: Any) -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"logits must be (N, C), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("logits contain NaN or infinite values")
    return arr


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return t


def logsumexp(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable log(sum(exp(x))) along ``axis``."""
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Calibrated class probabilities ``softmax(logits / T)``, float64 (N, C)."""
    z = _as_logits(logits) / _check_temperature(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    z = _as_logits(logits) / _check_temperature(temperature)
    y = np.asarray(labels, dtype=np.int64)
    return float(np.mean(logsumexp(z) - z[np.arange(len(y)), y]))


def fit_temperature(logits: Any, labels: Any) -> float:
    """Temperature minimising validation NLL (labels < 0 are ignored as unlabelled).

    NLL is convex in 1/T, hence unimodal in log T, so a golden-section search over
    log T in [MIN_TEMPERATURE, MAX_TEMPERATURE] finds the optimum without gradients or
    randomness. With fewer than two labelled samples there is nothing to fit and 1.0 is
    returned.
    """
    z = _as_logits(logits)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"logits has {z.shape[0]} rows but labels has {y.shape[0]} entries")
    keep = y >= 0
    z, y = z[keep], y[keep]
    if y.size and y.max() >= z.shape[1]:
        raise ValueError(f"labels hold class indices outside 0..{z.shape[1] - 1}")
    if y.size < 2:
        log.warning("temperature scaling needs at least 2 labelled samples, got %d: using T=1", y.size)
        return 1.0
    true_logit = z[np.arange(y.size), y]

    def objective(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        return float(np.mean(logsumexp(scaled) - true_logit / math.exp(log_t)))

    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = objective(a), objective(b)
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = objective(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = objective(b)
    t = math.exp((lo + hi) / 2)
    if t <= MIN_TEMPERATURE * 1.001 or t >= MAX_TEMPERATURE * 0.999:
        log.warning("fitted temperature %.3g hit the search bound (too few or separable samples?)", t)
    return t


def energy_scores(logits: Any, temperature: float) -> np.ndarray:
    """Energy ``-T * logsumexp(logits / T)`` per row; higher = less like the training data."""
    t = _check_temperature(temperature)
    return -t * logsumexp(_as_logits(logits) / t)


def energy_thresholds(logits: Any, temperature: float, quantiles: tuple[float, ...]) -> list[float]:
    """OOD thresholds: the ``quantiles`` of in-distribution (validation) energies, from one pass over them."""
    if not all(0.0 < q <= 1.0 for q in quantiles):
        raise ValueError(f"quantiles must be in (0, 1], got {quantiles}")
    energies = energy_scores(logits, temperature)
    if energies.size == 0:
        raise ValueError("cannot set an OOD threshold from zero validation samples")
    return [float(v) for v in np.quantile(energies, quantiles)]
