"""What the sorter loop yields: per-frame results, item decisions and track snapshots.

A small module of plain records so that the loop, the annotator, the console and the
benchmarks share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sorting.serving.fusion import NirEvidence
from sorting.serving.nir_stage import ScanOutcome
from sorting.serving.policy import Decision, Ended
from sorting.serving.segmentation import Detection
from sorting.serving.tracking import ItemSummary


@dataclass(frozen=True)
class TrackView:
    """A snapshot of one track for drawing and evaluation."""

    track_id: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    confirmed: bool
    decided: bool
    overlap: bool
    n_views: int
    label: str
    nir_scans: int = 0  # spectrometer scans given to it so far (lines with a spectrometer)


@dataclass(frozen=True)
class ItemDecision:
    """One item's final decision; ``ended``: it crossed the decision line, was lost, or was in flight at shutdown."""

    track_id: int
    uid: str | None
    frame: int
    t_decision: float
    ended: Ended
    decision: Decision
    summary: ItemSummary
    latency_ms: float
    reject_bin: int
    camera_decision: Decision | None = None  # on a line with a spectrometer: what the camera alone would decide
    nir: NirEvidence | None = None  # on a line with a spectrometer: its reading of the item

    @property
    def bin(self) -> int:
        return self.decision.bin

    @property
    def bin_name(self) -> str:
        return self.decision.bin_name


@dataclass
class FrameResult:
    """What happened in one loop iteration. ``image`` is the raw frame and ``tracks`` the live
    tracks' display views; both only when the loop keeps images for drawing."""

    index: int
    t: float
    image: np.ndarray | None
    detections: list[Detection] = field(default_factory=list)
    tracks: list[TrackView] = field(default_factory=list)
    decisions: list[ItemDecision] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    n_classified: int = 0
    fps: float = 0.0
    items_decided: int = 0
    no_frame: bool = False
    scans: list[ScanOutcome] = field(default_factory=list)  # spectrometer scans resolved in this frame
