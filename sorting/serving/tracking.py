"""Tracking items along the belt and aggregating their class probabilities over every view.

Motion along the belt is nearly known (belt speed x dt), so each track predicts its next
centroid and takes the nearest unclaimed detection inside a gate. A track becomes an *item*
(``confirmed``) once it has been seen ``min_hits`` times and has travelled ``min_travel_px``
along the belt: static blobs (a stain before the belt model absorbs it) never become items.

Each item is decided exactly once: when its centroid crosses the decision line
(:meth:`Tracker.due`), or, if it vanishes before the line, as ``lost``
(:attr:`TrackUpdate.lost`); at shutdown :meth:`Tracker.drain` hands over the rest. A decided
track keeps being tracked until it leaves, so it is never re-detected as a new item.

Views: an item is classified only while it is whole (touching no frame edge), every
``classify_every``-th frame and at most ``max_views`` times. An item that touches a *side*
edge in every frame (cut off by the field of view) is classified from those partial views
with a lower weight and flagged ``cut_off``.

Overlap evidence (the item goes to reject): two tracks merging into one blob; a piece splitting
off the blob mid-belt (a new blob inside the track's predicted box is absorbed, not made a new
item, and counts as evidence); and, over the frames whose shape was examined, a share of frames
with very low solidity, far above the typical item area (``large_area_factor``), or with two
thick bodies / two large colour regions *while* clearly larger than a typical item
(``evidence_area_factor``): a single sock has two thick parts and a multicolour garment two
colours, but neither is larger than a typical item. The typical area is the median over the
last ``typical_area_window`` decided items (whole, never merged; one sample each, large ones
included so the median does not drift down); until 5 are known, shape evidence counts alone.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from sorting.config import StrictModel
from sorting.serving.non_garment import GARMENT, NOT_CLOTH
from sorting.serving.segmentation import Detection

log = logging.getLogger(__name__)

Direction = Literal["+x", "-x", "+y", "-y"]
_EPS = 1e-6
FRAGMENT_MIN_SHARE = 0.3  # of a new blob's box inside a track's predicted box: a piece of that track
SATELLITE_MAX_AREA_SHARE = 0.5  # a piece is at most this share of the garment's visible area ...
SATELLITE_MIN_INSIDE = 0.5  # ... with at least this share of its box inside the garment's box


class TrackingConfig(StrictModel):
    """Tracker, decision line and per-item aggregation settings (fractions and weights are in 0..1)."""

    # "belt": a moving belt, items tracked across frames and decided at the decision line; "still": every frame
    # is a new scene (photos of a stopped belt, a sampling station): each detection is an item decided in its frame
    scene: Literal["belt", "still"] = "belt"
    decision_line_px: float = 480.0  # image coordinate along the belt; the line config checks it lies in the frame
    max_match_px: float = Field(60.0, gt=0)
    max_missed_frames: int = Field(5, ge=0)
    min_hits: int = Field(3, ge=1)
    min_travel_px: float = Field(15.0, ge=0)
    classify_every: int = Field(2, ge=1)
    max_views: int = Field(6, ge=1)
    border_view_weight: float = Field(0.3, ge=0, le=1)
    aggregation: Literal["mean", "log_sum"] = "mean"
    ood_min_fraction: float = Field(0.5, ge=0, le=1)
    overlap_min_frames: int = Field(2, ge=1)
    overlap_min_fraction: float = Field(0.4, ge=0, le=1)
    colour_min_fraction: float = Field(0.6, ge=0, le=1)
    evidence_area_factor: float = Field(1.2, gt=0)
    fragment_max_whole_frames: int = Field(10, ge=0)
    fragment_margin_px: float = Field(10.0, ge=0)
    cut_off: Literal["reject", "best_view"] = "reject"
    velocity_smoothing: float = Field(0.3, ge=0, le=1)
    large_area_factor: float = Field(3.0, gt=0)
    typical_area_window: int = Field(50, ge=1)  # items


@dataclass(frozen=True)
class BeltAxis:
    """Which image axis the belt moves along and in which sense."""

    direction: Direction = "+x"

    @property
    def axis(self) -> int:
        return 0 if self.direction[1] == "x" else 1

    @property
    def sign(self) -> float:
        return 1.0 if self.direction[0] == "+" else -1.0

    @property
    def entry_exit_edges(self) -> frozenset[str]:
        return frozenset({"left", "right"}) if self.axis == 0 else frozenset({"top", "bottom"})

    @property
    def entry_edge(self) -> str:
        return {"+x": "left", "-x": "right", "+y": "top", "-y": "bottom"}[self.direction]

    def along(self, point: tuple[float, float]) -> float:
        """Signed position along the belt: grows in the direction of travel."""
        return self.sign * point[self.axis]

    def velocity(self, speed_px_s: float) -> np.ndarray:
        v = np.zeros(2)
        v[self.axis] = self.sign * speed_px_s
        return v


@dataclass
class ShapeEvidence:
    """How one item's blob looked, frame by frame: the evidence of several garments and of a cut-off view.

    ``checked`` counts the frames whose shape was examined; ``cores``, ``colours``, ``huge`` and
    ``thin`` count those with two thick bodies, two large colour regions (both while clearly larger
    than a typical item), far more than a typical item's area, or very low solidity; ``signs``
    those with any of them. ``merges`` counts frames shared with another track's blob; ``whole``
    and ``side`` the frames seen whole or cut by a side edge of the field of view.
    """

    checked: int = 0
    cores: int = 0
    colours: int = 0
    huge: int = 0
    thin: int = 0
    signs: int = 0
    merges: int = 0
    whole: int = 0
    side: int = 0
    not_garment: Counter[str] = field(default_factory=Counter)  # frames seen as a hand / an object


@dataclass
class Views:
    """The classified views of one item: the running probability aggregate and its best crop.

    Probabilities are summed with each view's weight (``log_space``: log-probabilities, a
    product of experts); :meth:`probs` normalises them. The best crop (the largest detection,
    latest on ties) is kept for the decision log and handed over once by :meth:`take_best_crop`.
    """

    log_space: bool = False
    n: int = 0
    n_whole: int = 0
    ood: int = 0
    ood_by_head: Counter[str] = field(default_factory=Counter)  # views each head called out of distribution
    last_frame: int = -(10**9)
    weight_sum: float = 0.0
    prob_sums: dict[str, np.ndarray] = field(default_factory=dict)
    best_area: float = -1.0
    best_crop: np.ndarray | None = field(default=None, repr=False)

    def add(self, probs: dict[str, np.ndarray], *, ood: bool, whole: bool, weight: float, frame: int,
            crop: np.ndarray | None = None, area: float = 0.0, ood_heads: Iterable[str] = ()) -> None:
        """Fold one classified view into the aggregate (and keep its crop if it is the largest so far);
        ``ood_heads``: the heads that called this view out of distribution."""
        for head, p in probs.items():
            p = np.asarray(p, dtype=np.float64)
            term = np.log(np.clip(p, _EPS, 1.0)) if self.log_space else p
            self.prob_sums[head] = self.prob_sums.get(head, 0.0) + weight * term
        self.weight_sum += weight
        self.n += 1
        self.n_whole += int(whole)
        self.ood += int(ood)
        self.ood_by_head.update(ood_heads)
        self.last_frame = frame
        if crop is not None and area >= self.best_area:
            self.best_area, self.best_crop = area, crop

    def probs(self) -> dict[str, np.ndarray]:
        """Aggregated class probabilities per head (empty if never classified)."""
        if self.weight_sum <= 0:
            return {}
        out = {}
        for head, total in self.prob_sums.items():
            if self.log_space:
                z = total / self.weight_sum
                z = np.exp(z - z.max())
                out[head] = (z / z.sum()).astype(np.float32)
            else:
                out[head] = (total / self.weight_sum).astype(np.float32)
        return out

    def take_best_crop(self) -> np.ndarray | None:
        """The best crop, handed over once (the item is decided: the track need not hold it any more)."""
        crop, self.best_crop = self.best_crop, None
        return crop


@dataclass
class Track:
    """One item (or candidate item) on the belt: where it is and goes, and what was seen of it."""

    id: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area: float
    velocity: np.ndarray
    first_frame: int
    first_t: float
    last_frame: int
    last_t: float
    start_along: float
    hits: int = 1
    missed: int = 0
    confirmed: bool = False
    decided: bool = False
    detection: Detection | None = None  # this frame's detection, None when missed
    merged: bool = False  # shares its blob with another track this frame
    satellite_frames: int = 0  # consecutive frames spent mostly inside a much larger track's box
    shape: ShapeEvidence = field(default_factory=ShapeEvidence)
    views: Views = field(default_factory=Views)


@dataclass(frozen=True)
class ItemSummary:
    """What the policy needs about a finished item, plus its tracking history."""

    track_id: int
    probs: dict[str, np.ndarray]
    n_views: int
    ood: bool
    overlap: bool  # shape evidence of several garments (two bodies, far too large, ragged, merged tracks)
    two_colours: bool  # two large regions of different colour: several garments, or one colour-block garment
    cut_off: bool
    first_frame: int
    last_frame: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    # "hand" / "object" / "not_cloth" (an object by the textile check) when seen as one in at least half of its frames
    not_garment: str | None = None
    ood_heads: frozenset[str] = frozenset()  # the heads out of distribution in at least ood_min_fraction of views


@dataclass
class TrackUpdate:
    """Result of :meth:`Tracker.update`: live tracks and items lost before the decision line."""

    active: list[Track]
    lost: list[Track]


class Tracker:
    """Nearest-prediction tracker along the belt with per-item evidence.

    Association is greedy, cheapest pair first: every (track, detection) pair whose distance
    between predicted and observed centroid is inside the gate, sorted by distance. On a belt
    the motion is nearly known, so the gated pairs rarely compete and the greedy order is both
    the clearest rule and the one the benchmark clips were tuned with.
    """

    def __init__(self, cfg: TrackingConfig, *, speed_px_s: float, direction: Direction = "+x") -> None:
        self.cfg = cfg
        self.belt = BeltAxis(direction)
        self._speed_px_s = float(speed_px_s)
        self._tracks: list[Track] = []
        self._next_id = 1
        self._last_t: float | None = None
        self._frames_seen = 0
        self._item_areas: deque[float] = deque(maxlen=cfg.typical_area_window)
        self._typical_area: float | None = None  # median of _item_areas once 5 are known

    @property
    def last_t(self) -> float | None:
        """Source time of the last frame seen."""
        return self._last_t

    @property
    def speed_px_s(self) -> float:
        """Belt speed new items start with (pixels per second)."""
        return self._speed_px_s

    def set_belt_speed(self, speed_px_s: float) -> None:
        """A measured belt speed (an encoder): new items start at it; tracks keep their own estimate."""
        self._speed_px_s = float(speed_px_s)

    @property
    def shape_evidence_min_area(self) -> float | None:
        """Blobs below this area cannot give two-bodies/two-colours evidence (None: not known yet)."""
        return None if self._typical_area is None else self._typical_area * self.cfg.evidence_area_factor

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks)

    def _new_track(self, det: Detection, frame: int, t: float) -> Track:
        track = Track(
            id=self._next_id, centroid=det.centroid, bbox=det.bbox, area=det.area,
            velocity=self.belt.velocity(self._speed_px_s), first_frame=frame, first_t=t, last_frame=frame,
            last_t=t, start_along=self.belt.along(det.centroid), detection=det,
            views=Views(log_space=self.cfg.aggregation == "log_sum"),
        )
        self._next_id += 1
        self._note(track, det)
        return track

    def _note(self, track: Track, det: Detection) -> None:
        """Add this frame's shape evidence of ``det`` to ``track`` (not while it crosses the entry/exit edge)."""
        side = det.edges - self.belt.entry_exit_edges
        shape = track.shape
        if det.kind != GARMENT:
            shape.not_garment[NOT_CLOTH if det.not_cloth else det.kind] += 1
        if det.edges & self.belt.entry_exit_edges:
            return
        typical = self._typical_area
        if det.shape_checked:
            big = typical is None or det.area >= self.cfg.evidence_area_factor * typical  # = shape_evidence_min_area
            signs = (
                det.n_cores > 1,
                big and det.two_colour_regions,
                typical is not None and det.area > self.cfg.large_area_factor * typical,
                det.overlap_suspect and det.n_cores <= 1 and not det.two_colour_regions,  # low solidity
            )
            shape.checked += 1
            shape.cores += signs[0]
            shape.colours += signs[1]
            shape.huge += signs[2]
            shape.thin += signs[3]
            shape.signs += any(signs)
        if not det.edges:
            shape.whole += 1
        elif side:
            shape.side += 1

    def update(self, detections: list[Detection], frame: int, t: float) -> TrackUpdate:
        """Associate this frame's detections with the tracks; return live and lost tracks."""
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        self._frames_seen += 1
        predicted = {tr.id: np.asarray(tr.centroid) + tr.velocity * dt for tr in self._tracks}
        predicted_boxes = {tr.id: _shift_box(tr.bbox, tr.velocity * dt) for tr in self._tracks}
        track_of = self._match(predicted, detections)
        owner = {di: ti for ti, di in track_of.items()}
        sharing = self._merges(predicted, detections, track_of, owner)
        absorbed = self._absorb_entering(sharing) | self._absorb_satellites(track_of, detections)
        shared = {ti for group in sharing.values() for ti in group}
        lost: list[Track] = []
        alive: list[Track] = []
        for ti, tr in enumerate(self._tracks):
            if ti in absorbed:
                continue
            di = track_of.get(ti)
            if di is None:
                if self._coast(tr, predicted[tr.id]):
                    alive.append(tr)
                else:
                    self._retire(tr, lost)
                continue
            self._follow(tr, detections[di], predicted[tr.id], merged=ti in shared, frame=frame, t=t, dt=dt)
            alive.append(tr)
        for di, det in enumerate(detections):
            if di not in owner:
                parent = self._fragment_parent(det, self._tracks, predicted_boxes, frame)
                if parent is None:
                    alive.append(self._new_track(det, frame, t))
                else:
                    parent.bbox = union_box(parent.bbox, det.bbox)  # the garment spans both pieces
                    log.debug("blob at %s is a piece of track %d (absorbed)", det.bbox, parent.id)
        self._tracks = alive
        return TrackUpdate(active=list(alive), lost=lost)

    def _match(self, predicted: dict[int, np.ndarray], detections: list[Detection]) -> dict[int, int]:
        """Track index -> detection index: gated pairs, cheapest first, each track and detection once."""
        pairs = []
        for ti, tr in enumerate(self._tracks):
            px, py = predicted[tr.id]
            for di, det in enumerate(detections):
                dist = math.hypot(det.centroid[0] - px, det.centroid[1] - py)
                if dist <= self.cfg.max_match_px + 0.25 * max(det.bbox[2], det.bbox[3]):
                    pairs.append((dist, ti, di))
        pairs.sort()
        track_of: dict[int, int] = {}
        claimed: set[int] = set()
        for _, ti, di in pairs:
            if ti not in track_of and di not in claimed:
                track_of[ti] = di
                claimed.add(di)
        return track_of

    def _merges(self, predicted: dict[int, np.ndarray], detections: list[Detection], track_of: dict[int, int],
                owner: dict[int, int]) -> dict[int, list[int]]:
        """Unmatched tracks whose predicted centroid lies inside a claimed, larger blob: they share it.

        Adds them to ``track_of``; returns detection index -> the track indices sharing it (owner first).
        """
        sharing: dict[int, list[int]] = {}
        for ti, tr in enumerate(self._tracks):
            if ti in track_of:
                continue
            px, py = predicted[tr.id]
            for di in owner:
                x, y, w, h = detections[di].bbox
                if x <= px <= x + w and y <= py <= y + h and detections[di].area > 1.3 * tr.area:
                    track_of[ti] = di
                    sharing.setdefault(di, [owner[di]]).append(ti)
                    break
        return sharing

    def _coast(self, tr: Track, predicted: np.ndarray) -> bool:
        """No detection this frame: coast on belt motion; False once missed for too long."""
        tr.detection = None
        tr.merged = False
        tr.missed += 1
        tr.centroid = tuple(predicted)
        return tr.missed <= self.cfg.max_missed_frames

    def _follow(self, tr: Track, det: Detection, predicted: np.ndarray, *, merged: bool, frame: int, t: float,
                dt: float) -> None:
        """``tr`` seen as ``det`` this frame (``merged``: sharing the blob with another track)."""
        tr.merged = merged
        if merged:
            new_centroid = tuple(predicted)  # the blob's centroid is not this garment's
            tr.shape.merges += 1
        else:
            new_centroid = det.centroid
            if not det.edges and not det.overlap_suspect and dt > 0 and tr.missed == 0:
                observed = (np.asarray(det.centroid) - np.asarray(tr.centroid)) / dt
                a = self.cfg.velocity_smoothing
                tr.velocity = (1 - a) * tr.velocity + a * observed
            tr.area = det.area
        tr.centroid = (float(new_centroid[0]), float(new_centroid[1]))
        tr.bbox = det.bbox
        tr.detection = det
        tr.hits += 1
        tr.missed = 0
        tr.last_frame, tr.last_t = frame, t
        self._note(tr, det)
        if not tr.confirmed and tr.hits >= self.cfg.min_hits:
            travel = self.belt.along(tr.centroid) - tr.start_along
            tr.confirmed = travel >= self.cfg.min_travel_px

    def _fragment_parent(self, det: Detection, tracks: list[Track],
                         boxes: dict[int, tuple[float, float, float, float]], frame: int) -> Track | None:
        """The track this new blob is a piece of, if the blob appeared mid-belt (not over the entry
        edge, after start-up): the track whose predicted box (grown by ``fragment_margin_px``) covers a
        good part of the blob's box (a sleeve or trouser leg cut off by a fold, or a touching pair coming
        apart); else a track that entered in the last ``fragment_max_whole_frames`` frames and whose box
        is within twice the margin of the blob. The second case is a garment split while it entered (a
        dark sock whose belt-bright sheen cuts it in two: the trailing piece was below ``min_area_px``
        while it crossed the edge, so it was never seen there). A separate garment is seen on the entry
        edge and never comes here."""
        if self._frames_seen <= 1 or self.belt.entry_edge in det.edges:
            return None
        margin = self.cfg.fragment_margin_px
        for tr in tracks:
            if _share_inside(det.bbox, boxes[tr.id], margin) >= FRAGMENT_MIN_SHARE:
                return tr
        for tr in tracks:
            entering = not tr.decided and frame - tr.first_frame <= self.cfg.fragment_max_whole_frames
            if entering and _share_inside(det.bbox, boxes[tr.id], 2 * margin) > 0:
                return tr
        return None

    def _absorb_satellites(self, track_of: dict[int, int], detections: list[Detection]) -> set[int]:
        """Pieces of one dark garment that entered as separate blobs and never join (a shadow band
        cuts a sleeve off): a much smaller track whose box lies mostly inside a larger track's box
        for ``fragment_max_whole_frames`` frames in a row is that garment's piece and is dropped
        (the larger track's box takes it in). Returns the dropped track indices."""
        dropped: set[int] = set()
        m = self.cfg.fragment_margin_px
        for ti, di in track_of.items():
            small, det = self._tracks[ti], detections[di]
            inside = any(
                tj != ti and dj != di and det.area < SATELLITE_MAX_AREA_SHARE * detections[dj].area
                and _share_inside(det.bbox, detections[dj].bbox, m) >= SATELLITE_MIN_INSIDE
                for tj, dj in track_of.items()
            )
            small.satellite_frames = small.satellite_frames + 1 if inside else 0
            if inside and not small.decided and small.satellite_frames >= self.cfg.fragment_max_whole_frames:
                dropped.add(ti)
                log.debug("track %d is a piece of a larger garment beside it (absorbed)", small.id)
        return dropped

    def _absorb_entering(self, sharing: dict[int, list[int]]) -> set[int]:
        """Parts of one garment seen as separate blobs for a short while (two legs entering, a
        sleeve cut off by a dark fold) that now form one blob: the oldest track takes over and the
        younger ones, seen whole in fewer than ``fragment_max_whole_frames`` frames, are dropped
        (they were never separate items). Returns the dropped track indices."""
        dropped: set[int] = set()
        for di, group in list(sharing.items()):
            keep = min(group, key=lambda ti: self._tracks[ti].id)
            others = [ti for ti in group if ti != keep]
            if any(self._tracks[ti].decided or self._tracks[ti].shape.whole >= self.cfg.fragment_max_whole_frames
                   for ti in others):
                continue
            for ti in others:
                dropped.add(ti)
                log.debug("track %d absorbed into %d (fragment of one garment)", self._tracks[ti].id,
                          self._tracks[keep].id)
            del sharing[di]
        return dropped

    def _retire(self, track: Track, lost: list[Track]) -> None:
        if track.decided:
            return
        if track.confirmed:
            log.info("item %d lost before the decision line (%d hits)", track.id, track.hits)
            lost.append(track)
            track.decided = True
        else:
            log.debug("dropped candidate %d (%d hits, never travelled: not an item)", track.id, track.hits)

    def views_to_classify(self, frame: int) -> list[Track]:
        """Tracks whose detection in this frame should be classified (whole, spaced, capped)."""
        out = []
        for tr in self._tracks:
            det = tr.detection
            if det is None or tr.decided or tr.merged or tr.views.n >= self.cfg.max_views:
                continue
            if det.edges & self.belt.entry_exit_edges:
                continue
            if det.edges and tr.shape.whole > 0:
                continue  # it has been seen whole: side-cut views add nothing
            if frame - tr.views.last_frame >= self.cfg.classify_every or (self._past_line(tr) and tr.views.n == 0):
                out.append(tr)
        return out

    def view_weight(self, track: Track) -> float:
        det = track.detection
        return 1.0 if det is not None and not det.edges else self.cfg.border_view_weight

    def _past_line(self, track: Track) -> bool:
        return self.belt.along(track.centroid) >= self.belt.sign * self.cfg.decision_line_px

    def due(self) -> list[Track]:
        """Confirmed, undecided tracks whose centroid has reached the decision line (marked decided)."""
        out = [tr for tr in self._tracks if tr.confirmed and not tr.decided and self._past_line(tr)]
        for tr in out:
            self._mark_decided(tr)
        return out

    def _mark_decided(self, tr: Track) -> None:
        tr.decided = True
        if tr.shape.whole > 0 and tr.shape.merges == 0:
            self._item_areas.append(tr.area)  # one sample per item, big ones included
            if len(self._item_areas) >= 5:
                self._typical_area = float(np.median(self._item_areas))

    def drain(self) -> list[Track]:
        """At shutdown: every confirmed, undecided track (marked decided), then forget all tracks."""
        out = [tr for tr in self._tracks if tr.confirmed and not tr.decided]
        for tr in out:
            tr.decided = True
        self._tracks = []
        return out

    def summary(self, track: Track) -> ItemSummary:
        """The evidence gathered about ``track``, with the configured cut-off and OOD rules."""
        shape, views = track.shape, track.views
        never_whole = shape.whole == 0 and shape.side > 0
        cut_off = never_whole and (self.cfg.cut_off == "reject" or views.n == 0)
        ood = views.n > 0 and views.ood / views.n >= self.cfg.ood_min_fraction
        ood_heads = frozenset(h for h, n in views.ood_by_head.items() if n / views.n >= self.cfg.ood_min_fraction)
        seen = max(1, shape.checked)

        def shown(frames: int, share: float) -> bool:
            return frames >= self.cfg.overlap_min_frames and frames / seen >= share

        share = self.cfg.overlap_min_fraction
        overlap = shown(shape.cores, share) or shown(shape.huge, share) or shown(shape.thin, share) or shape.merges > 0
        kind = shape.not_garment.most_common(1)
        not_garment = kind[0][0] if kind and 2 * sum(shape.not_garment.values()) >= track.hits else None
        return ItemSummary(
            track_id=track.id, probs=views.probs(), n_views=views.n, ood=ood, overlap=overlap,
            two_colours=shown(shape.colours, self.cfg.colour_min_fraction), cut_off=cut_off,
            first_frame=track.first_frame, last_frame=track.last_frame, centroid=track.centroid, bbox=track.bbox,
            not_garment=not_garment, ood_heads=ood_heads,
        )


class StillTracker(Tracker):
    """``tracking.scene: still``: every frame is a new scene (photos of a stopped belt, a sampling station).

    Each detection is an item of its frame only: classified in it and decided in it, with nothing carried
    over to the next frame. An item touching the frame's edge is cut off.
    """

    def update(self, detections: list[Detection], frame: int, t: float) -> TrackUpdate:
        self._last_t = t
        self._frames_seen += 1
        self._tracks = [self._new_track(det, frame, t) for det in detections]
        for tr in self._tracks:
            tr.confirmed = True
            if tr.detection is not None and tr.detection.edges:  # cut by the frame, whichever edge
                tr.shape.whole, tr.shape.side = 0, 1
        return TrackUpdate(active=list(self._tracks), lost=[])

    def views_to_classify(self, frame: int) -> list[Track]:
        return [tr for tr in self._tracks if not tr.decided and tr.views.n == 0]

    def due(self) -> list[Track]:
        out = [tr for tr in self._tracks if not tr.decided]
        for tr in out:
            self._mark_decided(tr)
        return out


def make_tracker(cfg: TrackingConfig, *, speed_px_s: float, direction: Direction = "+x") -> Tracker:
    """The tracker of ``tracking.scene``: a moving belt (:class:`Tracker`) or still scenes (:class:`StillTracker`)."""
    kind = StillTracker if cfg.scene == "still" else Tracker
    return kind(cfg, speed_px_s=speed_px_s, direction=direction)


def _shift_box(bbox: tuple[int, int, int, int], shift: np.ndarray) -> tuple[float, float, float, float]:
    x, y, w, h = bbox
    return float(x + shift[0]), float(y + shift[1]), float(w), float(h)


def _share_inside(box: tuple[float, float, float, float], outer: tuple[float, float, float, float],
                  margin: float) -> float:
    """Share of ``box``'s area inside ``outer`` grown by ``margin`` on every side (0 when apart)."""
    bx, by, bw, bh = box
    x, y, w, h = outer
    ix = min(bx + bw, x + w + margin) - max(bx, x - margin)
    iy = min(by + bh, y + h + margin) - max(by, y - margin)
    return ix * iy / (bw * bh) if ix > 0 and iy > 0 and bw * bh > 0 else 0.0


def union_box(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The smallest (x, y, w, h) box holding both."""
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return x0, y0, x1 - x0, y1 - y0
