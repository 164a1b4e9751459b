"""Spectrum file formats -> :class:`Spectrum` (wavelength in nm, absorbance).

Formats, told apart by their content (not their suffix):

- ``nirscan``: the CSV a Texas Instruments DLP NIRscan Nano writes: a header block of ``Key:,value`` lines
  (method, date, temperatures, serial number, ...), then ``Wavelength (nm),Absorbance (AU),Reference Signal
  (unitless),Sample Signal (unitless)`` and one row per wavelength.
- ``ftir``: ATR-FTIR exports as in the FasTEX set: a title line, ``cm-1,%T``, then wavenumber and percent
  transmittance; read as absorbance ``-log10(T / 100)``.
- ``two-column``: ``x,absorbance`` rows without a header (e.g. benchtop FT-NIR ``.txt``). ``x`` is a wavenumber
  in cm-1 when its largest value is above 3000 (NIR/mid-IR instruments write those), else a wavelength in nm;
  ``axis`` forces one.
- ``table``: a plain CSV with one spectrum per row; columns whose names are numbers are the wavelengths (nm, or
  cm-1 with ``axis``), the others are labels (returned as strings, e.g. ``fibre``, ``swatch``, ``composition``).

A file that is none of these, is cut short or holds a malformed row raises :class:`SpectrumError` with a short
countable ``reason`` (the import writes it to the rejects file and carries on).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from sorting.errors import DataError

log = logging.getLogger(__name__)

Axis = Literal["auto", "nm", "cm-1"]
NIRSCAN_HEADER = "Wavelength (nm)"
WAVENUMBER_ABOVE = 3000.0  # an auto axis whose largest value is above this is in cm-1
_MAX_HEADER_LINES = 60
_MIN_POINTS = 8  # fewer x values than this is not a spectrum
_SEPARATORS = re.compile(r"[,;\s]+")  # numeric rows: comma, semicolon, tab or space separated


class SpectrumError(DataError):
    """A spectrum file (or one row of it) that cannot be used; ``reason`` is short and countable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Spectrum:
    """One measured spectrum: wavelengths in nm (ascending) and absorbance at each."""

    wavelength_nm: np.ndarray
    absorbance: np.ndarray
    format: str
    meta: dict[str, str] = field(default_factory=dict)  # instrument header (serial number, date, ...)

    def __post_init__(self) -> None:
        order = np.argsort(self.wavelength_nm, kind="stable")
        self.wavelength_nm = np.asarray(self.wavelength_nm, dtype=np.float64)[order]
        self.absorbance = np.asarray(self.absorbance, dtype=np.float64)[order]


@dataclass
class TableRow:
    """One spectrum of a ``table`` file plus its label cells and 1-based data row number."""

    spectrum: Spectrum
    labels: dict[str, str]
    row: int


def _to_nm(x: np.ndarray, axis: Axis) -> np.ndarray:
    unit = axis if axis != "auto" else ("cm-1" if np.nanmax(x) > WAVENUMBER_ABOVE else "nm")
    if unit == "nm":
        return x
    if np.any(x <= 0):
        raise SpectrumError("malformed", "a wavenumber is zero or negative")
    return 1e7 / x


def _float(cell: str, where: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise SpectrumError("malformed", f"{where}: '{cell.strip()[:30]}' is not a number") from None


def _numeric_rows(lines: list[str], first_line: int, n_cols: int) -> np.ndarray:
    """Parse ``n_cols`` leading numbers per line; a bad last line means the file was cut short."""
    values = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        cells = _SEPARATORS.split(line.strip())
        where = f"line {first_line + k}"
        if len(cells) < n_cols or any(not c.strip() for c in cells[:n_cols]):
            reason = "truncated file" if k == len(lines) - 1 else "malformed"
            raise SpectrumError(reason, f"{where} has fewer than {n_cols} values")
        try:
            values.append([float(c) for c in cells[:n_cols]])
        except ValueError:
            if k == len(lines) - 1:
                raise SpectrumError("truncated file", f"{where}: '{line.strip()[:40]}'") from None
            raise SpectrumError("malformed", f"{where}: '{line.strip()[:40]}' is not numeric") from None
    if len(values) < _MIN_POINTS:
        raise SpectrumError("truncated file" if values else "no data", f"{len(values)} data rows")
    return np.asarray(values, dtype=np.float64)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpectrumError("unreadable", str(exc)) from None
    if not raw.strip():
        raise SpectrumError("empty file")
    if b"\x00" in raw[:4096]:
        raise SpectrumError("not a spectrum file", "binary content")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _parse_nirscan(lines: list[str], header_at: int) -> Spectrum:
    meta = {}
    for line in lines[:header_at]:
        key, _, rest = line.partition(",")
        if key.endswith(":"):
            meta[key[:-1].strip()] = rest.strip(", ")
    columns = [c.strip() for c in lines[header_at].split(",")]
    if len(columns) < 2 or not columns[1].lower().startswith("absorbance"):
        raise SpectrumError("malformed", f"expected 'Absorbance (AU)' as column 2, got {columns[1:2]}")
    data = _numeric_rows(lines[header_at + 1 :], header_at + 2, len(columns))  # every row has every column
    return Spectrum(data[:, 0], data[:, 1], "nirscan", meta)


def _parse_ftir(lines: list[str]) -> Spectrum:
    data = _numeric_rows(lines[2:], 3, 2)
    transmittance = np.clip(data[:, 1], 1e-6, None) / 100.0  # %T; noise can dip below zero
    return Spectrum(1e7 / data[:, 0], -np.log10(transmittance), "ftir", {"title": lines[0].strip()})


def _parse_two_column(lines: list[str], axis: Axis) -> Spectrum:
    data = _numeric_rows(lines, 1, 2)
    return Spectrum(_to_nm(data[:, 0], axis), data[:, 1], "two-column")


def _header_numbers(header: list[str]) -> dict[int, float]:
    out = {}
    for i, name in enumerate(header):
        text = name.strip().lower().removesuffix("nm").removesuffix("cm-1").strip()
        try:
            value = float(text)
        except ValueError:
            continue
        if math.isfinite(value) and value > 0:
            out[i] = value
    return out


def read_table(path: str | Path, *, axis: Axis = "auto") -> tuple[list[TableRow], list[tuple[int, SpectrumError]]]:
    """A plain CSV table (one spectrum per row): good rows and ``(row, error)`` for the bad ones."""
    path = Path(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    numbers = _header_numbers(header)
    if len(numbers) < _MIN_POINTS:
        raise SpectrumError("not a spectrum file", f"{path.name}: fewer than {_MIN_POINTS} numeric column names")
    columns = sorted(numbers)
    x_nm = _to_nm(np.array([numbers[i] for i in columns]), axis)
    label_cols = [i for i in range(len(header)) if i not in numbers]
    good, bad = [], []
    for row_no, cells in enumerate(reader, start=1):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            bad.append((row_no, SpectrumError("malformed", f"row {row_no}: {len(cells)} cells, header has {len(header)}")))
            continue
        try:
            values = np.array([_float(cells[i], f"row {row_no}") if cells[i].strip() else np.nan for i in columns])
        except SpectrumError as exc:
            bad.append((row_no, exc))
            continue
        labels = {header[i].strip(): cells[i].strip() for i in label_cols}
        good.append(TableRow(Spectrum(x_nm, values, "table"), labels, row_no))
    return good, bad


def sniff_format(path: str | Path) -> str:
    """``nirscan``, ``ftir``, ``table`` or ``two-column``; SpectrumError for anything else."""
    lines = _read_text(Path(path)).splitlines()
    return _detect(lines)[0]


def _detect(lines: list[str]) -> tuple[str, int]:
    for i, line in enumerate(lines[:_MAX_HEADER_LINES]):
        if line.startswith(NIRSCAN_HEADER):
            return "nirscan", i
    if len(lines) > 2 and lines[1].replace(" ", "").lower().startswith("cm-1,"):
        return "ftir", 1
    first = lines[0].split(",")
    numbers = _SEPARATORS.split(lines[0].strip())
    if len(numbers) >= 2 and all(_is_number(c) for c in numbers[:2]):
        return "two-column", 0
    if len(_header_numbers(first)) >= _MIN_POINTS:
        return "table", 0
    raise SpectrumError("not a spectrum file", f"unrecognised layout (first line '{lines[0].strip()[:40]}')")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_spectrum(path: str | Path, *, axis: Axis = "auto") -> Spectrum:
    """Read a one-spectrum file (NIRscan CSV, FTIR CSV or two-column text); SpectrumError when unusable."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    fmt, at = _detect(lines)
    if fmt == "table":
        raise SpectrumError("not a spectrum file", "a table of spectra (one per row): read it with read_table")
    if fmt == "nirscan":
        return _parse_nirscan(lines, at)
    if fmt == "ftir":
        return _parse_ftir(lines)
    return _parse_two_column(lines, axis)
