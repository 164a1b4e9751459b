"""The simulated spectrometer of the synthetic world (``spectrometer.source: sim``).

Each spot scans ``rate_hz`` times a second (the spots interleaved in time). A scan reads the footprint of
:class:`~sorting.serving.spectrometer_config.SpotGeometry` (the spot's disc swept along the belt during the
scan) at the scan's time; :class:`~sorting.datasets.synth.belt_truth.BeltTruth` says which garment masks
cover which part of it. The scan is a **real** spectrum: for one garment a scan of that garment's fibre drawn
from :class:`SpectraPool` (spectra of swatches the line's model never trained on), for the bare belt a
``background`` scan, for a footprint shared by garments and belt their mix in reflectance (coverage-weighted),
plus the instrument's noise. Its ``truth`` says what was there: the garment's id, ``background``,
``two:<a>,<b>`` or ``edge:<id>`` (one garment and belt), so a benchmark can score the association.

It runs on the clip's own time: a line that sorts a rendered clip offline (frame time), where a frame's time
is its index / fps (``period_s``: a clip played in a loop starts over).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from sorting.datasets.spectra_labels import BACKGROUND
from sorting.datasets.spectra_store import load_spectral_set
from sorting.datasets.synth.belt_truth import BELT, BeltTruth
from sorting.errors import ConfigError, DataError
from sorting.serving.spectrometer import Scan, SpectrometerStats
from sorting.serving.spectrometer_config import SimSpectraConfig, SpotGeometry

log = logging.getLogger(__name__)

SIM_INSTRUMENT = "simulated"


class SpectraPool:
    """Real spectra by fibre class to draw simulated scans from (see :class:`SimSpectraConfig`)."""

    def __init__(self, by_class: dict[str, np.ndarray], wavelength_nm: np.ndarray, unknown_as: str) -> None:
        if BACKGROUND not in by_class:
            raise ConfigError(f"spectrometer.sim.spectra has no '{BACKGROUND}' scans (the bare belt)")
        if unknown_as not in by_class:
            raise ConfigError(f"spectrometer.sim.unknown_as '{unknown_as}' has no spectra in spectrometer.sim.spectra "
                              f"(classes: {', '.join(sorted(by_class))})")
        self.by_class = by_class
        self.wavelength_nm = wavelength_nm
        self.unknown_as = unknown_as

    @classmethod
    def load(cls, cfg: SimSpectraConfig) -> SpectraPool:
        data = load_spectral_set(cfg.spectra, split=cfg.split, all_rows=cfg.split is None)
        labels = np.array([lab or "" for lab in data.labels()])
        by_class = {c: data.absorbance[labels == c].astype(np.float64) for c in sorted(set(labels)) if c}
        log.info("simulated spectrometer: %s", ", ".join(f"{c} {len(v)}" for c, v in by_class.items()))
        return cls(by_class, data.grid.nm, cfg.unknown_as)

    def source_class(self, fibre: str) -> str:
        """The class whose spectra a garment of ``fibre`` gets (``unknown_as`` when the pool has none of it)."""
        return fibre if fibre in self.by_class else self.unknown_as

    def draw(self, fibre: str, rng: np.random.Generator) -> np.ndarray:
        rows = self.by_class[self.source_class(fibre)]
        return rows[int(rng.integers(len(rows)))]


def footprint_offsets(geometry: SpotGeometry, *, along_steps: int = 7, across_steps: int = 5) -> np.ndarray:
    """Sample points (d_along, d_across) of one scan's footprint: the disc swept along the belt by the smear."""
    r, half_smear = geometry.diameter / 2, geometry.smear / 2
    out = []
    for da in np.linspace(-(r + half_smear), r + half_smear, along_steps):
        for dc in np.linspace(-r, r, across_steps):
            beyond = max(0.0, abs(da) - half_smear)
            if beyond ** 2 + dc ** 2 <= r ** 2 + 1e-9:
                out.append((da, dc))
    return np.asarray(out, dtype=np.float64)


class SimulatedSpectrometer:
    """Scans of the synthetic belt (see the module docstring); ``poll(now)`` returns those up to ``now``.

    ``busy_s`` is the time spent simulating: the instrument's work, not the line's (a benchmark leaves it out of
    the loop's own time).
    """

    def __init__(self, truth: BeltTruth, pool: SpectraPool, geometry: SpotGeometry, *, axis: int, rate_hz: float,
                 cfg: SimSpectraConfig, period_s: float | None = None) -> None:
        self.name = "sim"
        self.stats = SpectrometerStats()
        self.truth, self.pool, self.geometry, self.axis = truth, pool, geometry, axis
        self.period_s = period_s
        self._step = 1.0 / rate_hz / len(geometry.across)  # the spots take turns
        self._next = 0  # index of the next scan over all spots: its time is index * step
        self._offsets = footprint_offsets(geometry)
        self._centres = [geometry.points(axis, geometry.along, a, self._offsets) for a in geometry.across]
        self._rng = np.random.default_rng(cfg.seed)
        self._cfg = cfg
        self.truths: Counter[str] = Counter()  # what the scans saw: garment / background / two / edge
        self.busy_s = 0.0

    @property
    def wavelength_nm(self) -> np.ndarray:
        return self.pool.wavelength_nm

    def poll(self, now: float) -> list[Scan]:
        started = time.perf_counter()
        last = int(np.floor(now / self._step + 1e-9))
        ks = np.arange(self._next, max(self._next, last + 1))
        self._next = int(ks[-1]) + 1 if len(ks) else self._next
        out = self._scans(ks) if len(ks) else []
        self.stats.scans += len(out)
        self.busy_s += time.perf_counter() - started
        return out

    def _scans(self, ks: np.ndarray) -> list[Scan]:
        """The scans of indices ``ks``: what lay under each footprint, and a noisy spectrum of it."""
        n_spots, n_pts = len(self.geometry.across), len(self._offsets)
        times = ks * self._step
        spots = ks % n_spots
        world_t = np.mod(times, self.period_s) if self.period_s else times
        points = np.concatenate([self._centres[s] for s in spots])
        under = self.truth.cover(np.repeat(world_t, n_pts), points).reshape(len(ks), n_pts)
        low, high = under.min(axis=1), under.max(axis=1)
        spectra = np.empty((len(ks), len(self.pool.wavelength_nm)))
        truths = []
        for row, (lo, hi) in enumerate(zip(low, high)):
            if lo == hi:  # one thing under the whole footprint: the belt or one garment
                truths.append(BACKGROUND if hi == BELT else str(int(hi)))
                spectra[row] = self.pool.draw(BACKGROUND if hi == BELT else self.truth.fibre[int(hi)], self._rng)
            else:
                spectra[row], truth = self._mixed(under[row])
                truths.append(truth)
        spectra = self._noisy(spectra)
        for truth in truths:
            self.truths["garment" if truth[0].isdigit() else truth.split(":")[0]] += 1
        return [Scan(float(t), self.pool.wavelength_nm, spectrum, int(spot), SIM_INSTRUMENT, truth)
                for t, spot, spectrum, truth in zip(times, spots, spectra, truths)]

    def _mixed(self, under: np.ndarray) -> tuple[np.ndarray, str]:
        """A footprint shared by garments (and belt): its parts mix in reflectance; ``two:`` or ``edge:``."""
        ids, counts = np.unique(under, return_counts=True)
        garments = [int(g) for g in ids if g != BELT]
        truth = "two:" + ",".join(map(str, garments)) if len(garments) > 1 else f"edge:{garments[0]}"
        reflectance = sum(n / len(under) * 10.0 ** -self.pool.draw(
            BACKGROUND if g == BELT else self.truth.fibre[int(g)], self._rng) for g, n in zip(ids, counts))
        return -np.log10(reflectance), truth

    def _noisy(self, absorbance: np.ndarray) -> np.ndarray:
        """Each row with its own scale (distance to the probe) and baseline offset, plus white noise."""
        cfg, rng, n = self._cfg, self._rng, len(absorbance)
        scale = 1.0 + rng.uniform(-cfg.scale, cfg.scale, (n, 1))
        return absorbance * scale + rng.normal(0.0, cfg.offset_au, (n, 1)) + rng.normal(0.0, cfg.noise_au,
                                                                                          absorbance.shape)

    def close(self) -> None:
        """Nothing to release."""


def open_simulated(cfg: SimSpectraConfig, geometry: SpotGeometry, *, axis: int, rate_hz: float,
                   ground_truth: str | Path | None = None, truth: BeltTruth | None = None,
                   period_s: float | None = None) -> SimulatedSpectrometer:
    """The simulated spectrometer over a clip's world: ``truth``, or rebuilt from its ``ground_truth`` file."""
    if truth is None:
        if ground_truth is None:
            raise ConfigError("spectrometer.source sim needs the synthetic world: a rendered clip with its "
                              "conveyor_gt.json beside the video")
        try:
            gt = json.loads(Path(ground_truth).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the clip's ground truth {ground_truth}: {exc}") from None
        truth = BeltTruth.from_ground_truth(gt)
    return SimulatedSpectrometer(truth, SpectraPool.load(cfg), geometry, axis=axis, rate_hz=rate_hz, cfg=cfg,
                                 period_s=period_s)


def clip_ground_truth_path(video: str | Path) -> Path:
    """Where a rendered clip keeps its ground truth (``conveyor_gt.json`` beside ``conveyor.mp4``)."""
    return Path(video).with_name("conveyor_gt.json")
