"""A spectral dataset = a manifest (one row per spectrum) + ``<stem>.spectra.npz`` beside it.

The manifest is the image manifest (:mod:`sorting.datasets.manifest`) with these meanings: ``path`` is the
spectrum's file (``file.csv#row`` for one row of a table), ``fibre`` its class (a taxonomy fibre or
``background``), ``composition`` the blend (``cotton:55,polyester:45``), ``garment`` the physical swatch
(``source/swatch``: the group column of ``data split --group-by garment`` and ``cross-validate``), ``source``
the dataset, ``sha1`` the hash of the spectrum's values. So splitting, folds and leak checks are the image ones.

The ``.npz`` holds the grid (:class:`~sorting.datasets.spectra_grid.WavelengthGrid`), the absorbance matrix on
the grid (float32, N x points), each spectrum's instrument serial number and its key: the row's ``sha1``, so a
manifest split, moved or cut into folds (paths rebased) still finds its spectra. A manifest written elsewhere
(``data split -o``) takes a copy of the sidecar (:func:`copy_spectra`) or names it (``spectra=``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sorting.datasets.manifest import Manifest, ManifestRow, read_manifest
from sorting.datasets.spectra_grid import WavelengthGrid
from sorting.errors import DataError

SPECTRA_SUFFIX = ".spectra.npz"


def spectra_path(manifest_path: str | Path) -> Path:
    """``data/nir.csv`` -> ``data/nir.spectra.npz``."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.stem + SPECTRA_SUFFIX)


def is_spectral_manifest(manifest_path: str | Path) -> bool:
    """True when the manifest has spectra beside it (written by ``data import-spectra``)."""
    return spectra_path(manifest_path).is_file()


def copy_spectra(from_manifest: str | Path, to_manifest: str | Path) -> Path | None:
    """Copy ``from_manifest``'s sidecar next to ``to_manifest`` (None when it has none)."""
    source, target = spectra_path(from_manifest), spectra_path(to_manifest)
    if not source.is_file():
        return None
    if source.resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return target


def write_spectra(manifest_path: str | Path, grid: WavelengthGrid, keys: list[str], absorbance: np.ndarray,
                  instruments: list[str]) -> Path:
    """Write the sidecar of ``manifest_path`` atomically; ``keys`` are the rows' ``sha1`` values."""
    out = spectra_path(manifest_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    matrix = np.asarray(absorbance, dtype=np.float32).reshape(len(keys), grid.points)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".npz", dir=out.parent)
    os.close(fd)
    try:
        np.savez_compressed(tmp, grid=json.dumps(grid.to_dict()), keys=np.array(keys, dtype=str),
                            absorbance=matrix, instruments=np.array(instruments, dtype=str))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


@dataclass
class SpectralSet:
    """Rows of a spectral manifest (optionally one split) with their spectra on one grid."""

    rows: list[ManifestRow]
    absorbance: np.ndarray  # (N, points) float32, row i is rows[i]
    grid: WavelengthGrid
    instruments: list[str]
    manifest: Manifest

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, keep: list[int] | np.ndarray) -> "SpectralSet":
        idx = np.asarray(keep, dtype=int)
        return SpectralSet([self.rows[i] for i in idx], self.absorbance[idx], self.grid,
                           [self.instruments[i] for i in idx], self.manifest)

    def labels(self) -> list[str | None]:
        return [row.fibre for row in self.rows]

    def groups(self) -> list[str]:
        """The physical swatch of each row (``garment``; the path when it has none)."""
        return [row.garment or row.path for row in self.rows]


def load_spectral_set(manifest_path: str | Path, *, split: str | None = None, all_rows: bool = True,
                      spectra: str | Path | None = None) -> SpectralSet:
    """Read a spectral manifest and its spectra (``spectra``: the sidecar, default beside the manifest);
    ``split`` keeps one split (``all_rows=False`` with ``split=None``: the rows without a split).
    DataError when the sidecar is missing or lacks a row's spectrum."""
    manifest = read_manifest(manifest_path)
    sidecar = Path(spectra) if spectra else spectra_path(manifest_path)
    if not sidecar.is_file():
        raise DataError(f"{manifest_path} has no spectra beside it ({sidecar.name}): import spectra with "
                        "`textile-sorter data import-spectra`")
    try:
        with np.load(sidecar, allow_pickle=False) as data:
            grid = WavelengthGrid.from_dict(json.loads(str(data["grid"])))
            keys = [str(k) for k in data["keys"]]
            matrix = np.asarray(data["absorbance"], dtype=np.float32)
            instruments = [str(s) for s in data["instruments"]]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{sidecar}: not a spectra file written by data import-spectra ({exc})") from None
    index = {k: i for i, k in enumerate(keys)}
    rows = manifest.rows if (split is None and all_rows) else manifest.subset(split)
    missing = [r.path for r in rows if r.sha1 not in index]
    if missing:
        raise DataError(f"{sidecar.name} lacks {len(missing)} spectra of {Path(manifest_path).name} (e.g. {missing[0]}); "
                        "import them again")
    take = [index[r.sha1] for r in rows]  # type: ignore[index]
    return SpectralSet(list(rows), matrix[take], grid, [instruments[i] for i in take], manifest)


@dataclass
class LineHoldout:
    """A spectral set cut by swatch into what a line's model trains on and what a simulated line may scan."""

    train: SpectralSet
    line: SpectralSet
    train_only: list[str]  # classes with a single swatch: all in train, the line has no unseen spectra of them


def line_holdout(data: SpectralSet, *, fraction: float = 0.3, seed: int = 0) -> LineHoldout:
    """Hold ``fraction`` of each class's swatches (``garment`` groups) out for the simulated spectrometer.

    Stratified and grouped like ``data split --group-by garment --fractions 1-f 0 f``: no swatch is in both
    parts, and a class with one swatch stays whole in ``train`` (listed in ``train_only``), so the simulated
    spectrometer only ever returns spectra of swatches the line's model did not train on.
    """
    from sorting.datasets.split import split_rows

    rows = split_rows(data.rows, fractions=(1.0 - fraction, 0.0, fraction), seed=seed, group_by="garment")
    train = [i for i, r in enumerate(rows) if r.split == "train"]
    line = [i for i, r in enumerate(rows) if r.split == "test"]
    in_line = {rows[i].fibre for i in line}
    only = sorted({r.fibre or "" for r in rows} - in_line)
    return LineHoldout(data.subset(train), data.subset(line), only)
