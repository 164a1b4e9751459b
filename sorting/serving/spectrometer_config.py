"""The ``spectrometer`` section of a line config: where the NIR spectrometer reads, how fast, and from what.

Geometry is in the camera's image pixels, as everything else on the line: the spots read at one position
*along* the belt (``along_px``, an image coordinate on the belt's axis that may lie outside the view, upstream
of it; or ``upstream_m``: a distance upstream of the decision line) and at one or more positions *across* it
(``across_px``: a probe bar, or the points a line scanner is sampled at). A spot is a disc of ``spot_px``
(or ``spot_m``) on the belt; during one scan (``scan_ms``) the belt carries the garment on, so a scan reads a
stadium: the disc swept along the belt by speed x scan time.

The spots must lie upstream of the decision line, by at least half a footprint: an item is decided when it
crosses that line, and a reading taken after its decision cannot change it (move the decision line
downstream, or the spectrometer upstream).

``source``: ``sim`` (the simulated spectrometer of the synthetic world, :mod:`.spectrometer_sim`), ``folder:<dir>``
(spectrum files written by the vendor's software, read as they appear) or ``seabreeze[:<serial>]`` (an Ocean
Insight spectrometer through the optional ``seabreeze`` package). What the line does when a garment has no
reading or an out-of-distribution one is the bins file's choice (``nir:`` in ``serving/BINS.md``), not this
file's: it is a purity decision per product, like the thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from sorting.config import StrictModel
from sorting.errors import ConfigError

SOURCES = ("sim", "folder", "seabreeze")


class SimSpectraConfig(StrictModel):
    """What the simulated spectrometer returns (``source: sim``): real spectra, never ones the model learnt.

    For the garment under the spot it draws a scan of that garment's fibre from ``spectra`` (rows of ``split``:
    the ``line`` part of the swatch hold-out, ``data split ... --fractions 0.7 0 0.3``: test); the bare belt's
    ``background`` when nothing is there. Fibres without spectra there draw ``unknown_as``'s spectra (by default
    ``other``: in the hold-out that is the acetate swatch, a fibre the line's model never saw). Each scan gets
    the instrument's noise: white noise of ``noise_au`` and a baseline offset of ``offset_au`` (standard
    deviations, absorbance units) and a multiplicative scale of +-``scale`` (distance to the probe).
    """

    spectra: Path
    split: str | None = "test"
    unknown_as: str = "other"
    noise_au: float = Field(default=0.002, ge=0)
    offset_au: float = Field(default=0.01, ge=0)
    scale: float = Field(default=0.03, ge=0, lt=0.5)
    seed: int = 0


class SpectrometerConfig(StrictModel):
    """A NIR spectrometer on the line (see the module docstring)."""

    source: str = Field(min_length=1)
    model: Path  # the exported spectral model (ONNX); its grid must be covered by the sensor's wavelengths
    threads: int | None = Field(default=1, ge=1)
    along_px: float | None = None
    upstream_m: float | None = Field(default=None, gt=0)
    across_px: list[float] = Field(min_length=1, max_length=64)
    spot_px: float | None = Field(default=None, gt=0)
    spot_m: float | None = Field(default=None, gt=0)
    scan_ms: float = Field(default=5.0, gt=0, le=5000)
    rate_hz: float = Field(default=100.0, gt=0, le=10_000)  # scans per second, per spot
    future_tolerance_s: float = Field(default=0.05, ge=0)  # a scan stamped later than now + this is refused
    silent_s: float = Field(default=1.0, gt=0)  # the spectrometer alarm: no scan for this long
    file_delay_s: float = Field(default=0.0, ge=0)  # folder: the file is written this long after the scan's middle
    settle_s: float = Field(default=0.05, ge=0)  # folder: a file is read once unchanged for this long
    serial: str | None = None  # folder / seabreeze: scans of another instrument are refused
    reference: Path | None = None  # seabreeze: white reference (intensities), two-column text
    dark: Path | None = None  # seabreeze: dark counts, two-column text
    sim: SimSpectraConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SpectrometerConfig:
        kind = self.kind
        if kind not in SOURCES:
            raise ValueError(f"spectrometer.source '{self.source}': expected sim, folder:<dir> or seabreeze[:<serial>]")
        if kind == "folder" and not self.source.partition(":")[2].strip():
            raise ValueError("spectrometer.source folder needs its folder: folder:<dir>")
        if kind == "sim" and self.sim is None:
            raise ValueError("spectrometer.source sim needs spectrometer.sim.spectra (the line part of the swatches)")
        if kind == "seabreeze" and self.reference is None:
            raise ValueError("spectrometer.source seabreeze needs spectrometer.reference (a white reference: the "
                             "absorbance is -log10((sample - dark) / (reference - dark)))")
        if (self.along_px is None) == (self.upstream_m is None):
            raise ValueError("spectrometer: give exactly one of along_px (image position along the belt) or "
                             "upstream_m (distance upstream of the decision line)")
        if (self.spot_px is None) == (self.spot_m is None):
            raise ValueError("spectrometer: give exactly one of spot_px or spot_m (the spot's diameter on the belt)")
        return self

    @property
    def kind(self) -> str:
        """``sim``, ``folder`` or ``seabreeze``."""
        return self.source.partition(":")[0].strip().lower()

    @property
    def argument(self) -> str:
        """What follows ``kind:`` in ``source`` (the folder, the serial number), or ''."""
        return self.source.partition(":")[2].strip()

    def geometry(self, *, decision_line_px: float, sign: float, px_per_m: float | None,
                 speed_px_s: float) -> SpotGeometry:
        """The spots in image pixels on a belt running towards ``sign`` (+1: growing image coordinate).

        ConfigError when metres are given and the line has no ``belt.px_per_m``.
        """
        if (self.upstream_m is not None or self.spot_m is not None) and px_per_m is None:
            raise ConfigError("spectrometer: upstream_m / spot_m are metres: set belt.px_per_m to convert them")
        scale = px_per_m or 0.0
        along = self.along_px if self.along_px is not None else \
            decision_line_px - sign * float(self.upstream_m or 0.0) * scale
        spot = self.spot_px if self.spot_px is not None else float(self.spot_m or 0.0) * scale
        return SpotGeometry(along=along, across=tuple(self.across_px), diameter=spot,
                            smear=speed_px_s * self.scan_ms / 1000.0, sign=sign, decision_line_px=decision_line_px)


@dataclass(frozen=True)
class SpotGeometry:
    """Where the spots read, in image pixels: ``along`` (the coordinate on the belt's axis, which grows towards
    ``sign``), ``across`` per spot, the disc ``diameter``, the ``smear`` (belt travel during one scan)."""

    along: float
    across: tuple[float, ...]
    diameter: float
    smear: float
    sign: float
    decision_line_px: float

    def points(self, axis: int, along: float, across: float, offsets: np.ndarray) -> np.ndarray:
        """Image points (x, y) of footprint ``offsets`` (d_along, d_across) centred at (``along``, ``across``)
        on a belt along image ``axis`` (0: x)."""
        a = along + offsets[:, 0]
        c = across + offsets[:, 1]
        return np.stack([a, c], axis=1) if axis == 0 else np.stack([c, a], axis=1)

    @property
    def half_length(self) -> float:
        """Half the footprint's length along the belt (disc radius + half the smear)."""
        return self.diameter / 2 + self.smear / 2

    def problems(self, *, along_extent: int | None, across_extent: int | None) -> list[str]:
        """What is wrong with this geometry on a frame of these extents (empty: nothing)."""
        out = []
        if self.sign * (self.decision_line_px - self.along) < self.half_length:
            out.append(f"spectrometer: the spots (along {self.along:g} px, footprint +-{self.half_length:.1f} px) are "
                       f"not upstream of the decision line ({self.decision_line_px:g} px): a reading taken after the "
                       "item's decision cannot change it; move the spots upstream or the decision line downstream")
        if across_extent is not None:
            outside = [a for a in self.across if not 0 <= a < across_extent]
            if outside:
                out.append(f"spectrometer.across_px {outside} lies outside the {across_extent} px of the frame across "
                           "the belt")
        if along_extent is not None and self.diameter >= along_extent:
            out.append(f"spectrometer: a spot of {self.diameter:g} px is larger than the frame")
        return out
