"""Deterministic, stratified, group-aware train/val/test split of a manifest.

- Stratified: rows are bucketed by their labels (fibre, colour); each bucket is cut
  with the requested fractions, so rare classes appear in every split once they have
  enough images (a bucket of 3 images cannot be cut 80/10/10 and stays in train).
- Grouped: rows sharing a ``group_by`` value (e.g. ``garment`` when it identifies one
  physical garment photographed several times) and rows with the same SHA-1 always land
  in the same split, so no garment or picture is seen in training and scored in test.
- Deterministic: the result depends only on the rows' content and ``seed``, not on the
  order of the rows.

Importers already drop exact duplicates; :func:`check_no_leak` is the guard for
manifests merged or edited by hand: the same SHA-1 (or group) in two splits is an error.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from sorting.datasets.manifest import COLUMNS, SPLITS, ManifestRow, read_manifest, write_manifest
from sorting.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
_GROUPABLE = tuple(c for c in COLUMNS if c not in ("path", "split", "sha1", "width", "height"))


def _check_fractions(fractions: tuple[float, ...]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers (train val test) summing to 1, "
                          f"got {list(fractions)}")
    return fractions[0], fractions[1], fractions[2]


class _Groups:
    """Union-find over row indices: rows joined by a shared group key end up together."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def _group_rows(rows: list[ManifestRow], group_by: str | None) -> list[list[int]]:
    groups = _Groups(len(rows))
    first: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        keys = [("sha1", row.sha1)]
        if group_by:
            keys.append((group_by, getattr(row, group_by)))
        for key in keys:
            if key[1] is None:
                continue
            if key in first:
                groups.join(i, first[key])
            else:
                first[key] = i
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(rows)):
        members[groups.find(i)].append(i)
    return list(members.values())


def _stratum(rows: list[ManifestRow], members: list[int]) -> tuple[str, str]:
    """The group's most common (fibre, colour) label pair (ties: alphabetical)."""
    counts = Counter((rows[i].fibre or "", rows[i].colour or "") for i in members)
    return min(counts, key=lambda key: (-counts[key], key))


def _shuffled_strata(rows: list[ManifestRow], group_by: str | None, seed: int) -> list[list[list[int]]]:
    """The row groups (same SHA-1 or ``group_by`` value) of each (fibre, colour) stratum, strata in sorted order,
    each stratum's groups ordered by content (not input order) and then shuffled with ``seed``."""
    if group_by is not None and group_by not in _GROUPABLE:
        raise ConfigError(f"cannot group by '{group_by}' (choose one of {', '.join(_GROUPABLE)})")
    strata: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
    for members in _group_rows(rows, group_by):
        strata[_stratum(rows, members)].append(members)
    rng = random.Random(seed)
    out = []
    for key in sorted(strata):
        groups = sorted(strata[key], key=lambda m: min(rows[i].path for i in m))
        rng.shuffle(groups)
        out.append(groups)
    return out


def split_rows(
    rows: list[ManifestRow],
    *,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    seed: int = 0,
    group_by: str | None = None,
) -> list[ManifestRow]:
    """Return copies of ``rows`` (same order) with ``split`` set to train/val/test."""
    targets = _check_fractions(fractions)
    open_splits = [s for s in range(3) if targets[s] > 0]
    assignment: dict[int, str] = {}
    overall = [0, 0, 0]  # rows per split over all strata: breaks ties so rounding does not pile up in one split
    for groups in _shuffled_strata(rows, group_by, seed):
        total = sum(len(m) for m in groups)
        filled = [0, 0, 0]
        for members in groups:
            # the split furthest below its target share of this stratum takes the next group
            done = sum(overall) + len(members)
            chosen = max(open_splits, key=lambda s: (round(targets[s] * total - filled[s], 9),
                                                     targets[s] * done - overall[s], -s))
            filled[chosen] += len(members)
            overall[chosen] += len(members)
            for i in members:
                assignment[i] = SPLITS[chosen]
    result = [replace(row, split=assignment[i]) for i, row in enumerate(rows)]
    check_no_leak(result, group_by=group_by)
    return result


def assign_folds(
    rows: list[ManifestRow],
    folds: int,
    *,
    seed: int = 0,
    group_by: str | None = None,
) -> list[int]:
    """Fold index (0..folds-1) of each row, for k-fold cross-validation.

    Stratified and grouped like :func:`split_rows`: within each (fibre, colour) stratum the groups
    (same SHA-1 or ``group_by`` value) are shuffled with ``seed`` and each goes to the fold holding
    the fewest rows of that stratum so far (ties: fewest rows overall, then the lower index).
    """
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {folds}")
    strata = _shuffled_strata(rows, group_by, seed)
    n_groups = sum(len(groups) for groups in strata)
    if n_groups < folds:
        raise DataError(f"{n_groups} distinct images/groups cannot fill {folds} folds")
    fold_of = [0] * len(rows)
    overall = [0] * folds
    for groups in strata:
        filled = [0] * folds
        for members in groups:
            chosen = min(range(folds), key=lambda f: (filled[f], overall[f], f))
            filled[chosen] += len(members)
            overall[chosen] += len(members)
            for i in members:
                fold_of[i] = chosen
    return fold_of


def check_no_leak(rows: list[ManifestRow], *, group_by: str | None = None, max_examples: int = 5) -> None:
    """Raise :class:`DataError` when one SHA-1 (or ``group_by`` value) is in two splits."""
    keys = [("sha1", "same image bytes")] + ([(group_by, f"same {group_by}")] if group_by else [])
    problems: list[str] = []
    for column, what in keys:
        seen: dict[str, dict[str, str]] = defaultdict(dict)  # key -> split -> first path
        for row in rows:
            value = getattr(row, column)
            if value is not None and row.split is not None:
                seen[value].setdefault(row.split, row.path)
        for value, by_split in seen.items():
            if len(by_split) > 1:
                where = ", ".join(f"{by_split[split]} ({split})" for split in SPLITS if split in by_split)
                problems.append(f"{what} {value[:12]}: {where}")
    if problems:
        shown = "; ".join(problems[:max_examples])
        more = f" and {len(problems) - max_examples} more" if len(problems) > max_examples else ""
        raise DataError(f"{len(problems)} leak(s) between splits: {shown}{more}")


def split_manifest(
    manifest_path: str | Path,
    out_path: str | Path | None = None,
    *,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    seed: int = 0,
    group_by: str | None = None,
) -> tuple[Path, Counter[str]]:
    """Split a manifest file; writes ``out_path`` (default: in place). Returns path and counts."""
    manifest = read_manifest(manifest_path)
    if not manifest.rows:
        raise DataError(f"manifest {manifest_path} has no rows to split")
    rows = split_rows(manifest.rows, fractions=fractions, seed=seed, group_by=group_by)
    out = write_manifest(rows, out_path or manifest_path, root=manifest.root)
    counts = Counter(row.split for row in rows)
    log.debug("split %s: %s", out, dict(counts))
    return out, counts
