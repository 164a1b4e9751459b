"""benchmarks/belt_cross_validation.py: how the development scenes are dealt to folds."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cv():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports belt_errors, a script beside it
    try:
        spec = importlib.util.spec_from_file_location("belt_cross_validation",
                                                      ROOT / "benchmarks" / "belt_cross_validation.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_other_partitions_deal_the_same_groups_evenly_but_differently():
    """Partition 0 is the usual round-robin of groups in order; others shuffle the groups by their seed first, so
    each is a different, reproducible, even partition; blocks are runs of consecutive groups."""
    fold_of_groups = _cv().fold_of_groups
    groups = [3, 1, 2, 7, 5, 4, 6, 9, 8, 10, 12, 11] * 2  # one per photo, repeated
    usual = fold_of_groups(groups, 3)
    assert usual == {g: i % 3 for i, g in enumerate(range(1, 13))}
    assert fold_of_groups(groups, 3, partition=0) == usual
    one, two = fold_of_groups(groups, 3, partition=1), fold_of_groups(groups, 3, partition=2)
    assert one == fold_of_groups(groups, 3, partition=1) and len({str(usual), str(one), str(two)}) == 3
    for fold in (one, two):
        assert set(fold) == set(groups) and sorted(Counter(fold.values()).values()) == [4, 4, 4]
    assert fold_of_groups(groups, 3, blocked=True) == {g: (g - 1) // 4 for g in range(1, 13)}
