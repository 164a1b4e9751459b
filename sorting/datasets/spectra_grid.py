"""One wavelength grid per dataset and model: resampling onto it and the checks a spectrum must pass first.

Every spectrum of a dataset is resampled onto the dataset's grid (:class:`WavelengthGrid`, evenly spaced in nm or
in cm-1), and the grid travels with the manifest (``<stem>.spectra.npz``) and inside every model, so a spectrum
is always compared with spectra on the same wavelengths. Resampling (:func:`resample`) averages the source over
each grid cell when the source is finer than the grid (an FT-NIR's 2,307 points onto a 4 nm grid) and
interpolates linearly otherwise, so a fine instrument is not reduced to a noisy pick of single points.

:func:`check_spectrum` raises :class:`~sorting.datasets.spectra_readers.SpectrumError` for what cannot be
resampled honestly: NaNs, a range that does not cover the grid, fewer points than the grid (upsampling would
invent resolution), a flat line (no light or no sample) and a clipped (saturated) detector.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sorting.datasets.spectra_readers import Spectrum, SpectrumError
from sorting.errors import ConfigError

GridUnit = Literal["nm", "cm-1"]
FLAT_PEAK_TO_PEAK = 1e-4  # absorbance units over the grid; below this the spectrum carries no information
SATURATED_ABSORBANCE = 6.0  # < 1 ppm of the light came back: the detector saw its own noise
# equal values in a row at the spectrum's max or min = a clipped detector: at least this many and 3% of the grid
# (fewer is the quantisation of a file written with few decimals)
CLIPPED_RUN = 4
CLIPPED_SHARE = 0.03
_SPEC = re.compile(r"^\s*([\d.]+)\s*:\s*([\d.]+)\s*:\s*([\d.]+)\s*(nm|cm-1)?\s*$")


@dataclass(frozen=True)
class WavelengthGrid:
    """``points`` values evenly spaced from ``start`` to ``stop`` (inclusive) in ``unit``; ``nm`` is ascending."""

    start: float
    stop: float
    points: int
    unit: GridUnit = "nm"

    def __post_init__(self) -> None:
        if self.points < 8 or self.start == self.stop or min(self.start, self.stop) <= 0:
            raise ConfigError(f"a wavelength grid needs >= 8 points between two different positive values, got {self}")

    @classmethod
    def parse(cls, spec: str) -> "WavelengthGrid":
        """``START:STOP:STEP[unit]``, e.g. ``910:1690:4`` (nm) or ``4000:650:4cm-1``."""
        match = _SPEC.match(spec)
        if not match:
            raise ConfigError(f"grid '{spec}' is not START:STOP:STEP with an optional unit nm or cm-1 (e.g. 910:1690:4)")
        start, stop, step = (float(match.group(i)) for i in (1, 2, 3))
        if step <= 0:
            raise ConfigError(f"grid '{spec}': the step must be positive")
        points = int(round(abs(stop - start) / step)) + 1
        return cls(start, start + np.sign(stop - start) * step * (points - 1), points, match.group(4) or "nm")  # type: ignore[arg-type]

    @property
    def values(self) -> np.ndarray:
        """The grid in its own unit (as given)."""
        return np.linspace(self.start, self.stop, self.points)

    @property
    def nm(self) -> np.ndarray:
        """The grid points in nm, ascending."""
        v = self.values if self.unit == "nm" else 1e7 / self.values
        return np.sort(v)

    def spec(self) -> str:
        step = abs(self.stop - self.start) / (self.points - 1)
        return f"{self.start:g}:{self.stop:g}:{step:g}" + ("" if self.unit == "nm" else self.unit)

    def to_dict(self) -> dict[str, object]:
        return {"start": self.start, "stop": self.stop, "points": self.points, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "WavelengthGrid":
        return cls(float(data["start"]), float(data["stop"]), int(data["points"]), str(data.get("unit", "nm")))  # type: ignore[arg-type]


# The NIRscan Nano's 900-1700 nm range less its ragged ends (units start at 901.5-901.6 and stop at 1700.6-1701.3):
# every instrument of the data covers it; 196 points at 4 nm, below the Nano's 228 (no upsampling).
DEFAULT_NIR_GRID = WavelengthGrid(910.0, 1690.0, 196)


def _cell_edges(grid_nm: np.ndarray) -> np.ndarray:
    mid = (grid_nm[1:] + grid_nm[:-1]) / 2
    return np.concatenate([[grid_nm[0] - (mid[0] - grid_nm[0])], mid, [grid_nm[-1] + (grid_nm[-1] - mid[-1])]])


def resample(wavelength_nm: np.ndarray, values: np.ndarray, grid_nm: np.ndarray) -> np.ndarray:
    """``values`` (ascending ``wavelength_nm``) on ``grid_nm``: cell means from a finer source, else linear."""
    x, y = np.asarray(wavelength_nm, dtype=np.float64), np.asarray(values, dtype=np.float64)
    source_step = np.median(np.diff(x))
    grid_step = np.median(np.diff(grid_nm))
    if source_step * 1.5 >= grid_step:
        return np.interp(grid_nm, x, y)
    # mean over each grid cell = difference of the running integral at the cell edges / cell width
    integral = np.concatenate([[0.0], np.cumsum(np.diff(x) * (y[1:] + y[:-1]) / 2)])
    edges = np.clip(_cell_edges(grid_nm), x[0], x[-1])
    at_edges = np.interp(edges, x, integral)
    return (at_edges[1:] - at_edges[:-1]) / (edges[1:] - edges[:-1])


def check_spectrum(spectrum: Spectrum, grid: WavelengthGrid) -> None:
    """Raise SpectrumError (nan values, does not cover the grid, shorter than the grid, flat, saturated)."""
    x, y = spectrum.wavelength_nm, spectrum.absorbance
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise SpectrumError("nan values", f"{int(np.sum(~np.isfinite(y)))} of {len(y)} values are NaN or infinite")
    grid_nm = grid.nm
    half = (grid_nm[1] - grid_nm[0]) / 2
    if x[0] > grid_nm[0] + half or x[-1] < grid_nm[-1] - half:
        raise SpectrumError("does not cover the grid",
                            f"spectrum {x[0]:.1f}-{x[-1]:.1f} nm, grid {grid_nm[0]:.1f}-{grid_nm[-1]:.1f} nm")
    inside = (x >= grid_nm[0] - half) & (x <= grid_nm[-1] + half)
    if inside.sum() < grid.points:
        raise SpectrumError("shorter than the grid", f"{int(inside.sum())} points in the grid's range, grid has {grid.points}")
    within = y[inside]
    if np.ptp(within) < FLAT_PEAK_TO_PEAK:
        raise SpectrumError("flat", f"absorbance varies by {np.ptp(within):.2g} over the grid")
    if np.max(within) > SATURATED_ABSORBANCE:
        raise SpectrumError("saturated", f"absorbance {np.max(within):.2f} > {SATURATED_ABSORBANCE:g} (no light returned)")
    run = max(CLIPPED_RUN, int(np.ceil(CLIPPED_SHARE * grid.points)))
    for extreme in (np.max(within), np.min(within)):
        at = np.flatnonzero(within == extreme)
        if len(at) >= run and _longest_run(at) >= run:
            raise SpectrumError("saturated", f"{_longest_run(at)} equal values in a row at {extreme:g} (clipped detector)")


def _longest_run(indices: np.ndarray) -> int:
    breaks = np.flatnonzero(np.diff(indices) != 1)
    bounds = np.concatenate([[-1], breaks, [len(indices) - 1]])
    return int(np.max(np.diff(bounds)))


def on_grid(spectrum: Spectrum, grid: WavelengthGrid) -> np.ndarray:
    """Checked and resampled: absorbance at ``grid.nm`` (float32)."""
    check_spectrum(spectrum, grid)
    return resample(spectrum.wavelength_nm, spectrum.absorbance, grid.nm).astype(np.float32)
