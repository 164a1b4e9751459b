"""Classification metrics and the sorting view (bin purity vs. reject rate), numpy only.

Used by the training loop (validation macro-F1 for early stopping), by evaluation
(metrics.json / summary.md) and by tests. Inputs are plain integer labels and
probability arrays; nothing here knows about heads, models or files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

DEFAULT_REJECT_RATES: tuple[float, ...] = (0.0, 0.05, 0.10, 0.20)


def _as_labels(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer class indices")
    return arr.astype(np.int64)


def _as_probs(probs: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = _as_labels(y_true, "y_true")
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but y_true has {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"y_true holds class indices outside 0..{p.shape[1] - 1}")
    return p, y


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns predicted classes."""
    yt = _as_labels(y_true, "y_true")
    yp = _as_labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length ({yt.size} vs {yp.size})")
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    for name, arr in (("y_true", yt), ("y_pred", yp)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} holds class indices outside 0..{num_classes - 1}")
    flat = yt * num_classes + yp
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den with 0 where den == 0 (sklearn's zero_division=0)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_metrics(y_true: Any, y_pred: Any, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Macro-F1 averages over the classes that occur in ``y_true`` or ``y_pred`` (classes that
    are neither present nor predicted have no defined F1 and would only drag the mean to 0).
    Undefined precision/recall (no predictions / no samples of a class) count as 0.
    All values are plain Python types, ready for JSON.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.astype(np.int64).tolist(),
        "confusion_matrix": cm.tolist(),
    }


def expected_calibration_error(probs: Any, y_true: Any, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / N (top-1 confidence)."""
    p, y = _as_probs(probs, y_true)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if y.size == 0:
        return 0.0
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Bin b holds confidences in (b/n, (b+1)/n]; confidence 0 falls into bin 0.
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / y.size)


class PurityRejectCurve(NamedTuple):
    """One point per distinct confidence threshold, threshold rising (reject rate rising).

    Items with top-1 probability >= ``thresholds[i]`` are accepted; ``purity[i]`` is the
    accuracy of the accepted items (bin purity), ``reject_rate[i]`` the fraction rejected.
    """

    thresholds: np.ndarray
    reject_rate: np.ndarray
    purity: np.ndarray


def purity_reject_curve(probs: Any, y_true: Any) -> PurityRejectCurve:
    """Purity of the accepted items as the confidence threshold rises.

    The first point (lowest threshold) accepts everything: reject rate 0 and purity equal
    to accuracy. Ties in confidence are accepted or rejected together, as a real threshold
    would do. An empty input gives empty arrays.
    """
    p, y = _as_probs(probs, y_true)
    if y.size == 0:
        empty = np.zeros(0, dtype=np.float64)
        return PurityRejectCurve(empty, empty.copy(), empty.copy())
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    conf_sorted, correct_sorted = conf[order], correct[order]
    cum_correct = np.cumsum(correct_sorted)
    # Last index of each run of equal confidences (in descending order) = accept-all-ties point.
    is_last = np.r_[conf_sorted[1:] != conf_sorted[:-1], True]
    idx = np.flatnonzero(is_last)[::-1]  # from lowest threshold (accept most) upward
    accepted = idx + 1
    return PurityRejectCurve(
        thresholds=conf_sorted[idx],
        reject_rate=1.0 - accepted / y.size,
        purity=cum_correct[idx] / accepted,
    )


def purity_at_reject(
    probs: Any, y_true: Any, rates: Sequence[float] = DEFAULT_REJECT_RATES
) -> dict[float, dict[str, float]]:
    """Purity when rejecting (at least) each target fraction of least-confident items.

    For every target rate, picks the lowest threshold whose reject rate reaches the target
    and returns ``{rate: {"purity", "threshold", "reject_rate", "accepted"}}`` where
    ``reject_rate`` is the rate actually achieved (ties can push it above the target). When
    no threshold reaches the target (all confidences tied), the strictest point is used.
    """
    curve = purity_reject_curve(probs, y_true)
    n = len(np.asarray(y_true))
    out: dict[float, dict[str, float]] = {}
    for rate in rates:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"reject rate {rate} must be in [0, 1)")
        if n == 0:
            out[float(rate)] = {"purity": float("nan"), "threshold": float("nan"), "reject_rate": 0.0, "accepted": 0}
            continue
        reached = np.flatnonzero(curve.reject_rate >= rate - 1e-12)
        i = int(reached[0]) if reached.size else len(curve.thresholds) - 1
        rej = float(curve.reject_rate[i])
        out[float(rate)] = {
            "purity": float(curve.purity[i]),
            "threshold": float(curve.thresholds[i]),
            "reject_rate": rej,
            "accepted": int(round((1.0 - rej) * n)),
        }
    return out
