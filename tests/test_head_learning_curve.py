"""benchmarks/head_learning_curve.py: out-of-fold scores of heads fitted on a share of each fold's training scenes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

ROOT = Path(__file__).resolve().parents[1]


def _curve():
    spec = importlib.util.spec_from_file_location("head_learning_curve", ROOT / "benchmarks" / "head_learning_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _crops(n_groups: int = 12, per_group: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    y = rng.integers(0, 2, len(groups))
    y[::per_group], y[1::per_group] = 0, 1  # every scene shows both
    x = rng.normal(size=(len(y), 5)) + 1.5 * y[:, None]
    return x, y, groups


def test_every_training_scene_is_the_plain_out_of_fold_fit():
    x, y, groups = _crops()
    scores = _curve().out_of_fold(x, y, groups, 1.0, 4, 1.0, np.random.default_rng(0))
    expected = np.zeros(len(y))
    for train, test in GroupKFold(4).split(x, y, groups):
        expected[test] = LogisticRegression(C=1.0, max_iter=5000).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    np.testing.assert_allclose(scores, expected)


def test_a_share_of_the_scenes_fits_on_fewer_and_depends_on_the_draw():
    x, y, groups = _crops()
    curve = _curve()
    full = curve.out_of_fold(x, y, groups, 1.0, 4, 1.0, np.random.default_rng(0))
    a = curve.out_of_fold(x, y, groups, 0.3, 4, 1.0, np.random.default_rng(1))
    b = curve.out_of_fold(x, y, groups, 0.3, 4, 1.0, np.random.default_rng(2))
    assert not np.allclose(a, full) and not np.allclose(a, b)
    assert ((a > 0) & (a < 1)).all()
