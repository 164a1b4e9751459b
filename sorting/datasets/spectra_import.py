"""``data import-spectra``: spectrum files -> a spectral manifest, its spectra on one grid, and a rejects file.

Every input (a file, or a row of a table file) ends up either in the manifest or in the rejects CSV
(``path,reason,detail``), never both, never neither; one bad file never stops the import. Reasons: ``not a
spectrum file``, ``empty file``, ``truncated file``, ``malformed``, ``no data``, ``nan values``, ``does not cover
the grid``, ``shorter than the grid``, ``flat``, ``saturated``, ``no label``, ``unknown label 'X'``,
``bad composition``, ``conflicting labels`` (the labels CSV and the file name disagree), ``duplicate``.

Labels come from ``--labels`` (a CSV ``file,fibre,composition,swatch``; ``file`` relative to the input folder or
a bare file name) when it lists the file, else from the file name (:class:`~sorting.datasets.spectra_labels.NameRules`);
a table file's own ``fibre``/``composition``/``swatch`` columns label its rows.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sorting.datasets.importers import ImportReport, Reject, default_rejects_path, write_rejects
from sorting.datasets.manifest import ManifestRow, relative_path, write_manifest
from sorting.datasets.spectra_grid import DEFAULT_NIR_GRID, WavelengthGrid, on_grid
from sorting.datasets.spectra_labels import LabelError, NameRules, SpectralLabels, format_composition
from sorting.datasets.spectra_readers import Axis, Spectrum, SpectrumError, read_spectrum, read_table, sniff_format
from sorting.datasets.spectra_store import write_spectra
from sorting.errors import DataError

log = logging.getLogger(__name__)

SPECTRUM_SUFFIXES = frozenset({".csv", ".txt", ".dpt", ".dat", ".tsv"})
LABEL_COLUMNS = {"fibre": ("fibre", "label", "class", "material"), "composition": ("composition",),
                 "swatch": ("swatch", "sample", "group", "specimen")}


@dataclass
class LabelSource:
    """Raw labels of one spectrum: from a labels CSV / table cells (``given``) and from its name."""

    given: dict[str, str] = field(default_factory=dict)
    stem: str = ""  # the scan's name: its id in per-scan groups
    from_name: bool = True  # False for a table's rows: the table's file name labels none of them


@dataclass
class _Entry:
    origin: str  # shown in rejects and written as the manifest path (relative to the manifest)
    spectrum: Spectrum
    labels: LabelSource
    source: str


@dataclass
class SpectraImport:
    """Options of one import (what ``data import-spectra`` passes)."""

    grid: WavelengthGrid = DEFAULT_NIR_GRID
    labels: SpectralLabels | None = None
    names: NameRules | None = None
    label_table: dict[str, dict[str, str]] = field(default_factory=dict)  # file -> fibre/composition/swatch
    axis: Axis = "auto"
    source: str | None = None
    progress: bool = True


def read_label_table(path: str | Path) -> dict[str, dict[str, str]]:
    """A labels CSV: ``file`` (or ``path``) plus any of fibre/label, composition, swatch/sample columns."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            records = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"labels file {path}: {exc}") from None
    if not records or not ({"file", "path"} & set(records[0])):
        raise DataError(f"labels file {path}: needs a header with a 'file' (or 'path') column and label columns")
    table = {}
    for record in records:
        key = (record.get("file") or record.get("path") or "").strip()
        if key:
            table[key] = _label_cells(record)
    return table


def _label_cells(record: dict[str, str]) -> dict[str, str]:
    lowered = {str(k).strip().lower(): (v or "").strip() for k, v in record.items() if k}
    out = {}
    for name, candidates in LABEL_COLUMNS.items():
        value = next((lowered[c] for c in candidates if lowered.get(c)), "")
        if value:
            out[name] = value
    return out


def _files(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(file, its input root) for every spectrum-like file under the inputs, sorted."""
    found = []
    for root in inputs:
        if root.is_file():
            found.append((root, root.parent))
        elif root.is_dir():
            found += [(p, root) for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in SPECTRUM_SUFFIXES]
        else:
            raise DataError(f"input {root} does not exist")
    return found


def _read_entries(path: Path, root: Path, opts: SpectraImport, rejects: list[Reject], manifest_dir: Path) -> list[_Entry]:
    origin = relative_path(path, manifest_dir)
    source = opts.source or root.name
    rel = path.relative_to(root).as_posix()
    given = opts.label_table.get(rel) or opts.label_table.get(path.name) or {}
    try:
        if sniff_format(path) != "table":
            return [_Entry(origin, read_spectrum(path, axis=opts.axis), LabelSource(dict(given), path.stem), source)]
        rows, bad = read_table(path, axis=opts.axis)
    except SpectrumError as exc:
        rejects.append(Reject(origin, exc.reason, exc.detail))
        return []
    rejects += [Reject(f"{origin}#{n}", exc.reason, exc.detail) for n, exc in bad]
    return [_Entry(f"{origin}#{r.row}", r.spectrum, LabelSource(_label_cells(r.labels), f"{path.stem}-{r.row}", False), source)
            for r in rows]


def resolve_entry(labels: LabelSource, vocab: SpectralLabels, names: NameRules) -> tuple[str, str | None, str]:
    """(class, composition text or None, swatch) of one spectrum; LabelError when unresolvable or conflicting."""
    given = labels.given
    parsed = None
    try:
        parsed = names.parse(labels.stem, vocab) if labels.from_name else None
    except LabelError:
        if not given.get("fibre") and not given.get("composition"):
            raise
    if parsed is None and not given.get("fibre") and not given.get("composition"):
        raise LabelError("no label", "the row has no fibre or composition cell")
    shares = vocab.composition(given["composition"]) if given.get("composition") else None
    if shares is None and parsed is not None and parsed.composition is not None:
        shares = vocab.composition(parsed.composition)
    from_name = _class_of(parsed.label, parsed.composition, vocab) if parsed else None
    label = given.get("fibre")
    cls = vocab.blends.classify(shares) if shares else (vocab.resolve(label) if label else from_name)
    if cls is None:
        raise LabelError(f"unknown label '{label}'", f"not a class of taxonomy {vocab.taxonomy.version} nor in its alias map")
    if label and shares and vocab.resolve(label) not in (None, cls):
        raise LabelError("conflicting labels", f"fibre '{label}' but composition {format_composition(shares)} is {cls}")
    if given and from_name is not None and from_name != cls:
        raise LabelError("conflicting labels", f"labels file says {cls}, the file name says {from_name}")
    swatch = given.get("swatch") or (parsed.swatch if parsed else labels.stem)
    if cls in names.per_scan_groups:
        swatch = labels.stem
    return cls, format_composition(shares) if shares else None, swatch


def _class_of(label: str | None, composition: dict[str, float] | None, vocab: SpectralLabels) -> str | None:
    if composition is not None:
        return vocab.blends.classify(vocab.composition(composition))
    return vocab.resolve(label)


def spectrum_sha1(values: np.ndarray) -> str:
    """Hash of a spectrum's raw values (identical scans are duplicates; the key of the spectra sidecar)."""
    return hashlib.sha1(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()


def import_spectra(inputs: list[str | Path], out: str | Path, opts: SpectraImport,
                   *, rejects_path: str | Path | None = None) -> ImportReport:
    """Import spectrum files/folders into manifest ``out`` (+ sidecar + rejects); returns the report."""
    out = Path(out)
    vocab = opts.labels or SpectralLabels.load()
    names = opts.names or NameRules.load()
    rejects: list[Reject] = []
    files = _files([Path(p) for p in inputs])
    entries = [e for path, root in tqdm(files, desc="reading spectra", unit="file", disable=None if opts.progress else True)
               for e in _read_entries(path, root, opts, rejects, out.parent)]
    scanned = len(entries) + len(rejects)
    rows, matrix, instruments, first = [], [], [], {}
    for entry in entries:
        try:
            values = on_grid(entry.spectrum, opts.grid)
            cls, composition, swatch = resolve_entry(entry.labels, vocab, names)
        except (SpectrumError, LabelError) as exc:
            rejects.append(Reject(entry.origin, exc.reason, exc.detail))
            continue
        sha1 = spectrum_sha1(entry.spectrum.absorbance)
        if sha1 in first:
            rejects.append(Reject(entry.origin, "duplicate", f"same values as {first[sha1]}"))
            continue
        first[sha1] = entry.origin
        rows.append(ManifestRow(path=entry.origin, fibre=cls, garment=f"{entry.source}/{swatch}", composition=composition,
                                source=entry.source, sha1=sha1))
        matrix.append(values)
        instruments.append(entry.spectrum.meta.get("Serial Number", entry.spectrum.format))
    if not rows:
        log.warning("no spectrum of %d inputs was kept", scanned)
    write_manifest(rows, out)
    write_spectra(out, opts.grid, [r.sha1 for r in rows], np.array(matrix).reshape(len(rows), opts.grid.points),  # type: ignore[misc]
                  instruments)
    rejects_file = write_rejects(rejects, Path(rejects_path) if rejects_path else default_rejects_path(out))
    return ImportReport(out, rejects_file, rows, rejects, ("fibre",), scanned,
                        {"fibre": Counter(r.fibre for r in rows)}, Counter(r.reason for r in rejects))
