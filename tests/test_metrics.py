"""Metrics and calibration against hand-computed values and constructed examples."""

from __future__ import annotations

import numpy as np
import pytest

from sorting.models.calibration import (
    energy_scores,
    energy_thresholds,
    fit_temperature,
    nll,
    softmax,
)
from sorting.models.metrics import (
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    purity_at_reject,
    purity_reject_curve,
)


def test_classification_metrics_hand_computed():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, num_classes=4)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # class 0: P=2/2 R=2/3; class 1: P=1/2 R=1/2; class 2: P=1/2 R=1; class 3 absent.
    assert m["precision"][:3] == pytest.approx([1.0, 0.5, 0.5])
    assert m["recall"][:3] == pytest.approx([2 / 3, 0.5, 1.0])
    f1 = [0.8, 0.5, 2 / 3]
    assert m["f1"][:3] == pytest.approx(f1)
    assert m["support"] == [3, 2, 1, 0]
    # absent class 3 (never true, never predicted) is left out of the macro average
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_predicted_but_absent_class_counts_in_macro_f1():
    m = classification_metrics([0, 0], [0, 1], num_classes=2)
    assert m["f1"] == pytest.approx([2 / 3, 0.0])
    assert m["macro_f1"] == pytest.approx(1 / 3)


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], num_classes=3)


def test_ece_perfectly_calibrated_toy_is_zero():
    # 10 items at confidence 0.8 of which 8 are right, 10 at 0.6 with 6 right.
    probs = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 10)
    y = np.array([0] * 8 + [1] * 2 + [0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)


def test_ece_overconfident_hand_computed():
    # confidence 0.9, accuracy 0.5 -> gap 0.4 on every item
    probs = np.array([[0.9, 0.1]] * 4)
    assert expected_calibration_error(probs, [0, 0, 1, 1]) == pytest.approx(0.4)


def test_purity_curve_constructed_example():
    # confidences 0.9 (right), 0.8 (right), 0.7 (wrong), 0.6 (right), 0.55 (wrong)
    conf = [0.9, 0.8, 0.7, 0.6, 0.55]
    probs = np.array([[c, 1 - c] for c in conf])
    y = np.array([0, 0, 1, 0, 1])
    curve = purity_reject_curve(probs, y)
    assert curve.thresholds.tolist() == pytest.approx([0.55, 0.6, 0.7, 0.8, 0.9])
    assert curve.reject_rate.tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert curve.purity.tolist() == pytest.approx([3 / 5, 3 / 4, 2 / 3, 1.0, 1.0])
    assert np.all(np.diff(curve.thresholds) > 0)
    assert np.all(np.diff(curve.reject_rate) > 0)
    table = purity_at_reject(probs, y, rates=(0.0, 0.05, 0.2, 0.5))
    assert table[0.0]["purity"] == pytest.approx(0.6)
    assert table[0.0]["reject_rate"] == 0.0
    assert table[0.05]["reject_rate"] == pytest.approx(0.2)  # first threshold reaching >= 5%
    assert table[0.2]["purity"] == pytest.approx(0.75)
    assert table[0.5]["threshold"] == pytest.approx(0.8)
    assert table[0.5]["accepted"] == 2


def test_purity_rises_when_confidence_ranks_correctness():
    rng = np.random.default_rng(0)
    n = 400
    conf = rng.uniform(0.51, 1.0, n)  # class 0 is always the top-1 prediction
    correct = rng.uniform(size=n) < conf  # higher confidence -> more likely right
    y = np.where(correct, 0, 1)
    probs = np.stack([conf, 1 - conf], axis=1)
    curve = purity_reject_curve(probs, y)
    assert curve.purity[0] == pytest.approx(correct.mean())
    table = purity_at_reject(probs, y)
    purities = [table[r]["purity"] for r in (0.0, 0.05, 0.10, 0.20)]
    assert purities[-1] > purities[0]


def test_purity_curve_ties_move_together():
    probs = np.array([[0.7, 0.3]] * 4)
    curve = purity_reject_curve(probs, [0, 0, 0, 1])
    assert len(curve.thresholds) == 1
    assert purity_at_reject(probs, [0, 0, 0, 1], rates=(0.1,))[0.1]["reject_rate"] == 0.0


def _synthetic_logits(n: int = 3000, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution (calibrated at T=1)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, classes))
    probs = softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_fit_temperature_recovers_scale_two():
    logits, labels = _synthetic_logits()
    t = fit_temperature(logits * 2.0, labels)
    assert t == pytest.approx(2.0, rel=0.1)


def test_temperature_reduces_nll_of_overconfident_logits():
    logits, labels = _synthetic_logits(n=500, seed=1)
    over = logits * 4.0
    t = fit_temperature(over, labels)
    assert t > 1.5
    assert nll(over, labels, t) < nll(over, labels, 1.0)
    ece_before = expected_calibration_error(softmax(over), labels)
    assert expected_calibration_error(softmax(over, t), labels) < ece_before


def test_fit_temperature_few_samples_is_bounded_and_ignores_unlabelled():
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    t = fit_temperature(logits, [0, 1, -1])  # separable: optimum runs to the lower bound
    assert 0.05 <= t <= 1.0
    assert fit_temperature(logits[:1], [0]) == 1.0


def test_energy_scores_and_threshold():
    logits = np.array([[0.0, 0.0], [10.0, 0.0]])
    e = energy_scores(logits, 1.0)
    assert e[0] == pytest.approx(-np.log(2.0))
    assert e[1] == pytest.approx(-(10.0 + np.log1p(np.exp(-10.0))))
    assert energy_scores(logits, 2.0)[0] == pytest.approx(-2.0 * np.log(2.0))
    val = np.random.default_rng(0).normal(size=(1000, 4)) * 3
    low, high = energy_thresholds(val, 1.0, (0.95, 0.99))
    assert np.mean(energy_scores(val, 1.0) > high) == pytest.approx(0.01, abs=0.002)
    assert np.mean(energy_scores(val, 1.0) > low) == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ValueError):
        energy_thresholds(val, 0.0, (0.99,))
    with pytest.raises(ValueError, match="quantiles"):
        energy_thresholds(val, 1.0, (0.0,))
