"""The spectrometer on the line: each scan given to the garment it read; the garment's scans read at its decision.

Per frame (:meth:`NirStage.update`, the loop's ``nir`` stage), after tracking:

1. **Arrivals.** The scans the source sent since the last frame (``poll`` never blocks: a silent
   spectrometer gives none). A scan stamped later than now (+ ``future_tolerance_s``), with non-finite values,
   or on wavelengths that do not cover the spectral model's grid is refused with that reason and counted.
2. **Association.** A scan is resolved at the first frame where the belt has carried its footprint (the spot's
   disc swept along the belt during the scan) wholly into the view: belt speed x (frame time - scan time) from
   the spot. There every detection's mask (its outline, filled, at the segmentation scale) is drawn into one
   small label image and the footprint's points are looked up in it (one vectorised lookup for all the frame's
   scans). All points on one detection, tracked by one garment: the scan is ``assigned`` to that garment.
   Otherwise it is not used: ``no_garment`` (bare belt), ``edge`` (part garment, part belt: a mixed spectrum),
   ``two_garments`` (two masks, or one blob shared by two tracks), ``decided`` (its garment crossed the decision
   line already), ``past`` (the footprint passed the decision line before the scan arrived).

At the decision (:meth:`NirStage.evidence`: one model call for all the frame's items) each garment's scans
are read by the spectral model; a scan it calls the bare belt (``background``: a mask a little larger than its
garment) is left out, and the others are averaged: the mean of their calibrated probabilities (a soft vote, as
the camera's views are averaged), OOD when at least half of them are, the mean cotton share. From the mean
probabilities come the class, its confidence and the fusion likelihood over the camera's fibre classes
(:mod:`.fusion`). So the spectral model runs once per frame in which items are decided, never per scan.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sorting.datasets.spectra_grid import resample
from sorting.datasets.spectra_labels import BACKGROUND
from sorting.errors import ModelFileError
from sorting.models.spectral_onnx import (
    GridMismatchError,
    SpectralClassifier,
    SpectralPredictions,
)
from sorting.serving.fusion import CONFUSION_KEY, FusionRule, NirEvidence, NirLikelihood
from sorting.serving.spectrometer import Scan, Spectrometer
from sorting.serving.spectrometer_config import SpotGeometry
from sorting.serving.tracking import Track

log = logging.getLogger(__name__)

ASSIGNED = "assigned"
REFUSED = ("future", "bad", "grid", "past")  # refused on arrival or too late: a problem of the source or its timing
UNUSED = ("no_garment", "edge", "two_garments", "decided")  # read, but not of one tracked garment
OUTCOMES = (ASSIGNED, *UNUSED, *REFUSED)
MAX_PENDING = 20_000  # scans waiting for their footprint to enter the view (a stopped belt): oldest refused first
MAX_SCANS_PER_ITEM = 256  # a garment that lies still under a spot (a stopped belt) keeps its first scans
OOD_MIN_FRACTION = 0.5  # an item's reading is out of distribution when at least this share of its scans is


@dataclass(frozen=True)
class ScanOutcome:
    """What became of one scan: ``outcome`` (one of :data:`OUTCOMES`) and the track it went to (or touched)."""

    scan: Scan
    outcome: str
    track_id: int | None = None


def lookup_offsets(geometry: SpotGeometry) -> np.ndarray:
    """Footprint points (d_along, d_across) the loop looks up: centre, ends, sides and four corners inside it."""
    r, half = geometry.diameter / 2, geometry.smear / 2
    c = 0.7 * r
    return np.array([(0, 0), (-(half + r), 0), (half + r, 0), (0, -r), (0, r),
                     (-(half + c), -c), (-(half + c), c), (half + c, -c), (half + c, c)], dtype=np.float64)


class NirStage:
    """The loop's spectrometer stage (see the module docstring)."""

    def __init__(self, source: Spectrometer, model: SpectralClassifier, geometry: SpotGeometry, *, axis: int,
                 camera_fibres: Sequence[str] | None, rule: FusionRule = "product", outline_scale: float = 1.0,
                 future_tolerance_s: float = 0.05) -> None:
        self.source = source
        self.model = model
        self.geometry = geometry
        self.axis = axis
        self.outline_scale = outline_scale
        self.future_tolerance_s = future_tolerance_s
        self.rule: FusionRule = rule
        self._offsets = lookup_offsets(geometry)
        self._grid = model.grid_nm
        self._checked_wl: np.ndarray | None = None
        self._on_grid = False
        if source.wavelength_nm is not None:
            self._check_grid(source.wavelength_nm)  # GridMismatchError at start-up: one line, nothing started
        self.likelihood = self._likelihood(camera_fibres)
        self._pending: deque[tuple[Scan, np.ndarray]] = deque()
        self._overflow: list[ScanOutcome] = []  # scans pushed out of a full queue (refused as ``past``)
        self._items: dict[int, list[np.ndarray]] = {}  # track id -> its assigned scans on the model's grid
        self.counts: Counter[str] = Counter()
        self.last_scan_t: float | None = None
        self.infer_s = 0.0  # time spent in the spectral model (inference, as the camera model's classify stage)

    def _likelihood(self, camera_fibres: Sequence[str] | None) -> NirLikelihood | None:
        if not camera_fibres:
            return None  # a camera model without a fibre head: nothing to fuse with
        try:
            return NirLikelihood(self.model.metadata.labels, camera_fibres, rule=self.rule,
                                 confusion=self.model.metadata.metrics.get(CONFUSION_KEY))
        except ValueError as exc:
            raise ModelFileError(f"{self.model.path.name}: {exc}") from None

    def set_camera_fibres(self, camera_fibres: Sequence[str] | None) -> None:
        """The camera model changed (hot reload): fuse over its fibre classes from now on."""
        self.likelihood = self._likelihood(camera_fibres)

    def _check_grid(self, wavelength_nm: np.ndarray) -> None:
        """GridMismatchError unless the model can read spectra on these wavelengths; remembered for the next scans
        (a source sends the same wavelengths scan after scan)."""
        self.model.check_grid(wavelength_nm)
        self._checked_wl = wavelength_nm
        self._on_grid = bool(np.array_equal(wavelength_nm, self._grid))

    # -- per frame ------------------------------------------------------------------------
    def update(self, now: float, frame_t: float, tracks: Sequence[Track], frame_shape: tuple[int, int],
               speed_px_s: float) -> list[ScanOutcome]:
        """Take the new scans, resolve those whose footprint is in view, give them to their garments (module
        docstring); what became of each scan resolved or refused now."""
        out: list[ScanOutcome] = []
        for scan in self.source.poll(now):
            refused = self._arrive(scan, now)
            if refused is not None:
                out.append(ScanOutcome(scan, refused))
        out += self._overflow
        self._overflow = []
        ready = self._ready(frame_t, frame_shape, speed_px_s, out)
        if ready:
            out += self._associate(ready, tracks, frame_shape)
        alive = {tr.id for tr in tracks}
        for gone in [tid for tid in self._items if tid not in alive]:
            del self._items[gone]  # a candidate that never became an item, a fragment absorbed by its garment
        self.counts.update(o.outcome for o in out)
        return out

    def _arrive(self, scan: Scan, now: float) -> str | None:
        """Queue a new scan on the model's grid, or the reason it is refused."""
        self.last_scan_t = now
        if scan.t > now + self.future_tolerance_s:
            log.debug("scan %s stamped %.3f s in the future: refused", scan.name, scan.t - now)
            return "future"
        wl, values = np.asarray(scan.wavelength_nm), np.asarray(scan.absorbance)
        if values.shape != wl.shape or values.ndim != 1 or not np.all(np.isfinite(values)):
            return "bad"
        if wl is not self._checked_wl:
            if not np.all(np.isfinite(wl)):
                return "bad"
            try:
                self._check_grid(wl)
            except GridMismatchError as exc:
                log.warning("scan %s refused: %s", scan.name or f"at {scan.t:.3f} s", exc)
                return "grid"
        spectrum = values if self._on_grid else resample(wl, values, self._grid)
        if len(self._pending) >= MAX_PENDING:  # the belt stands still: the oldest scan can no longer be placed
            self._overflow.append(ScanOutcome(self._pending.popleft()[0], "past"))
        self._pending.append((scan, spectrum.astype(np.float32)))
        return None

    def _ready(self, frame_t: float, frame_shape: tuple[int, int], speed_px_s: float,
               out: list[ScanOutcome]) -> list[tuple[Scan, np.ndarray, float]]:
        """Pending scans whose footprint the belt has carried wholly into the view by ``frame_t``, with the
        footprint's centre along the belt then; those carried past the decision line go to ``out`` as ``past``."""
        if not self._pending:
            return []
        g = self.geometry
        t = np.fromiter((scan.t for scan, _ in self._pending), float, len(self._pending))
        centre = g.along + g.sign * speed_px_s * (frame_t - t)
        upstream = centre - g.sign * g.half_length
        past = g.sign * (centre + g.sign * g.half_length - g.decision_line_px) > 0
        ready_now = (t <= frame_t) & (upstream >= 0) & (upstream < frame_shape[1 - self.axis])
        ready, keep = [], deque()
        for (scan, spectrum), c, late, go, waits in zip(self._pending, centre.tolist(), past.tolist(),
                                                        ready_now.tolist(), (t > frame_t).tolist()):
            if not waits and late:
                out.append(ScanOutcome(scan, "past"))
            elif go:
                ready.append((scan, spectrum, c))
            else:
                keep.append((scan, spectrum))  # not yet taken, or still upstream of the view
        self._pending = keep
        return ready

    def _label_image(self, tracks: Sequence[Track], frame_shape: tuple[int, int], along: tuple[float, float]
                     ) -> tuple[np.ndarray, tuple[int, int], list[list[Track]]]:
        """The detections of this frame that reach into the strip ``along`` (image px along the belt) filled with
        their number (1..n) at the segmentation scale, the strip's origin there (x, y), and the tracks that share
        each detection. Only the strip the footprints lie in is drawn."""
        s, axis = self.outline_scale, self.axis
        full = (max(1, round(frame_shape[0] * s)), max(1, round(frame_shape[1] * s)))  # rows, columns
        lo = min(max(0, int(np.floor(along[0] * s)) - 1), full[1 - axis] - 1)
        hi = max(lo + 1, min(full[1 - axis], int(np.ceil(along[1] * s)) + 2))
        shape = (full[0], hi - lo) if axis == 0 else (hi - lo, full[1])
        origin = (lo, 0) if axis == 0 else (0, lo)
        labels = np.zeros(shape, np.int32)
        owners: dict[int, list[Track]] = {}
        dets = {}
        for tr in tracks:
            det = tr.detection
            if det is not None and det.bbox[axis] <= along[1] and det.bbox[axis] + det.bbox[axis + 2] >= along[0]:
                owners.setdefault(id(det), []).append(tr)
                dets[id(det)] = det
        groups = []
        for n, (key, det) in enumerate(dets.items(), start=1):
            if det.outline is not None:
                cv2.drawContours(labels, [det.outline], -1, n, thickness=cv2.FILLED, offset=(-origin[0], -origin[1]))
            else:
                x, y, w, h = det.bbox
                cv2.rectangle(labels, (round(x * s) - origin[0], round(y * s) - origin[1]),
                              (round((x + w) * s) - 1 - origin[0], round((y + h) * s) - 1 - origin[1]), n,
                              thickness=cv2.FILLED)
            groups.append(owners[key])
        return labels, origin, groups

    def _associate(self, ready: list[tuple[Scan, np.ndarray, float]], tracks: Sequence[Track],
                   frame_shape: tuple[int, int]) -> list[ScanOutcome]:
        """Look every ready scan's footprint up in the frame's label image (one vectorised lookup)."""
        scale, g = self.outline_scale, self.geometry
        along = np.array([centre for *_, centre in ready])[:, None] + self._offsets[None, :, 0]
        across = np.array([g.across[scan.spot] for scan, *_ in ready])[:, None] + self._offsets[None, :, 1]
        labels, origin, groups = self._label_image(tracks, frame_shape, (float(along.min()), float(along.max())))
        x, y = (along, across) if self.axis == 0 else (across, along)
        xi = np.round((x + 0.5) * scale - 0.5).astype(np.int64) - origin[0]
        yi = np.round((y + 0.5) * scale - 0.5).astype(np.int64) - origin[1]
        inside = (xi >= 0) & (xi < labels.shape[1]) & (yi >= 0) & (yi < labels.shape[0])
        hits = np.where(inside, labels[np.clip(yi, 0, labels.shape[0] - 1), np.clip(xi, 0, labels.shape[1] - 1)], 0)
        low, high = hits.min(axis=1), hits.max(axis=1)
        two = np.any((hits != high[:, None]) & (hits != 0), axis=1)  # two detections under one footprint
        out: list[ScanOutcome] = []
        for (scan, spectrum, _), lo, hi, mixed in zip(ready, low.tolist(), high.tolist(), two.tolist()):
            if hi == 0:
                out.append(ScanOutcome(scan, "no_garment"))
                continue
            owners = groups[hi - 1]
            if mixed or len(owners) > 1:
                out.append(ScanOutcome(scan, "two_garments"))  # two masks, or one blob of two tracked garments
            elif lo == 0:
                out.append(ScanOutcome(scan, "edge", owners[0].id))
            elif owners[0].decided:
                out.append(ScanOutcome(scan, "decided", owners[0].id))
            else:
                scans = self._items.setdefault(owners[0].id, [])
                if len(scans) < MAX_SCANS_PER_ITEM:
                    scans.append(spectrum)
                out.append(ScanOutcome(scan, ASSIGNED, owners[0].id))
        return out

    # -- per item -------------------------------------------------------------------------
    def scans_of(self, track_id: int) -> int:
        """Scans given to this track so far (for drawing)."""
        return len(self._items.get(track_id, ()))

    def evidence(self, tracks: Sequence[Track]) -> dict[int, NirEvidence]:
        """The NIR evidence of items being decided (their scans are forgotten): one model call for all."""
        items = {tr.id: self._items.pop(tr.id, []) for tr in tracks}
        out = {tid: NirEvidence(scans=0) for tid in items}
        read = [(tid, scans) for tid, scans in items.items() if scans]
        if not read:
            return out
        started = time.perf_counter()
        pred = self.model.predict(np.stack([spectrum for _, scans in read for spectrum in scans]))
        self.infer_s += time.perf_counter() - started
        belt = np.array([lab == BACKGROUND for lab in pred.labels])
        start = 0
        for tid, scans in read:
            rows = slice(start, start + len(scans))
            start += len(scans)
            out[tid] = self._item_evidence(pred, rows, belt)
        return out

    def _item_evidence(self, pred: SpectralPredictions, rows: slice, belt: np.ndarray) -> NirEvidence:
        """One garment's reading from its scans' predictions (``belt``: the model's background column)."""
        probs = pred.probs[rows]
        keep = ~belt[np.argmax(probs, axis=1)]  # scans read as the bare belt are left out
        n_belt = int(np.sum(~keep))
        if not np.any(keep):
            return NirEvidence(scans=0, belt_scans=n_belt, fibre=BACKGROUND)
        mean = probs[keep].mean(axis=0)
        k = int(np.argmax(mean))
        share = None if pred.cotton_share is None else float(np.mean(pred.cotton_share[rows][keep]))
        ood = bool(np.mean(pred.ood[rows][keep]) >= OOD_MIN_FRACTION)
        likelihood = self.likelihood(mean) if self.likelihood is not None else None
        return NirEvidence(scans=int(np.sum(keep)), belt_scans=n_belt, fibre=pred.labels[k],
                           confidence=float(mean[k]), ood=ood, cotton_share=share, likelihood=likelihood,
                           probs=mean)

    def close(self) -> None:
        self.source.close()
