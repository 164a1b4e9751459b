"""Drawing what the sorter sees and decides onto frames, and writing them to a video."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from sorting.errors import DataError
from sorting.serving.nir_stage import ASSIGNED
from sorting.serving.records import FrameResult, ItemDecision
from sorting.serving.spectrometer_config import SpotGeometry

log = logging.getLogger(__name__)

_GREEN, _YELLOW, _RED, _WHITE, _CYAN = (60, 200, 60), (0, 215, 255), (40, 40, 230), (255, 255, 255), (230, 200, 0)
_MAGENTA, _GREY = (220, 60, 220), (150, 150, 150)


def _label(img: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int]) -> None:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    x, y = org
    y = max(h + 2, y)
    cv2.rectangle(img, (x, y - h - 3), (x + w + 2, y + base - 1), colour, -1)
    cv2.putText(img, text, (x + 1, y - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def _spots(img: np.ndarray, result: FrameResult, spots: SpotGeometry, axis: int) -> None:
    """The spectrometer's spots, each joined to the garment its scans of this frame went to (magenta), grey when
    they read the belt or could not be used; spots upstream of the view are marked on its entry edge."""
    h, w = img.shape[:2]
    extent = w if axis == 0 else h
    reading: dict[int, tuple[str, int | None]] = {}
    for outcome in result.scans:
        reading[outcome.scan.spot] = (outcome.outcome, outcome.track_id)
    centres = {tv.track_id: tv.centroid for tv in result.tracks}
    r = max(2, int(round(spots.diameter / 2)))
    for k, across in enumerate(spots.across):
        along = spots.along
        inside = 0 <= along < extent
        a = along if inside else (0 if spots.sign > 0 else extent - 1)
        x, y = (int(round(a)), int(round(across))) if axis == 0 else (int(round(across)), int(round(a)))
        outcome, track = reading.get(k, ("", None))
        colour = _MAGENTA if outcome == ASSIGNED else _GREY
        if inside:
            cv2.circle(img, (x, y), r, colour, 2)
        else:
            cv2.drawMarker(img, (x, y), colour, cv2.MARKER_TRIANGLE_UP, 2 * r, 2)
        if outcome == ASSIGNED and track in centres:
            cx, cy = centres[track]
            cv2.line(img, (x, y), (int(round(cx)), int(round(cy))), _MAGENTA, 1)
    if not 0 <= spots.along < extent:
        _label(img, f"NIR spots {abs(spots.along if spots.sign > 0 else spots.along - extent):.0f} px upstream",
               (4, h - 6), _GREY)


def tile_grid(tiles: list[np.ndarray], columns: int, *, fill: int = 0) -> np.ndarray:
    """Equal-sized tiles laid out in rows of ``columns``, the last row padded with tiles of ``fill``: a contact sheet
    (the belt set-up's overlay, a textile head's mistakes)."""
    tiles = tiles + [np.full_like(tiles[0], fill)] * (-len(tiles) % columns)
    return np.vstack([np.hstack(tiles[k:k + columns]) for k in range(0, len(tiles), columns)])


def decision_text(decision: ItemDecision) -> str:
    """What a decided item's label adds: the NIR reading (if any) and the bin, with the reason for a reject (an
    operator must see a phone or a hand go to reject *as* one, not as a garment of some colour)."""
    text = ""
    if decision.nir is not None and decision.nir.usable:
        text += f" NIR {decision.nir.fibre} {decision.nir.confidence or 0:.2f}"
    text += f" -> {decision.bin_name}"
    if decision.bin == decision.reject_bin:
        text += f" ({decision.decision.kind})"
    return text


def annotate_frame(result: FrameResult, *, decision_line_px: float, axis: int = 0,
                   spots: SpotGeometry | None = None) -> np.ndarray:
    """A copy of ``result.image`` with boxes, ids, labels + confidence, bins, decision line and fps; with
    ``spots`` (a line with a spectrometer) the sensor's spots and the garment each one is reading."""
    if result.image is None:
        raise ValueError("frame result carries no image (loop run with keep_images=False)")
    img = result.image.copy()
    h, w = img.shape[:2]
    pos = int(round(decision_line_px))
    if axis == 0:
        cv2.line(img, (pos, 0), (pos, h - 1), _CYAN, 1)
    else:
        cv2.line(img, (0, pos), (w - 1, pos), _CYAN, 1)
    decided = {d.track_id: d for d in result.decisions}
    for tr in result.tracks:
        x, y, bw, bh = tr.bbox
        colour = _GREEN if tr.confirmed else _WHITE
        if tr.overlap:
            colour = _YELLOW
        text = f"#{tr.track_id}"
        if tr.label:
            text += f" {tr.label}"
        if tr.nir_scans:
            text += f" nir:{tr.nir_scans}"
        decision = decided.get(tr.track_id)
        if decision is not None:
            colour = _RED if decision.bin == decision.reject_bin else _GREEN
            text += decision_text(decision)
            thickness = 3
        else:
            thickness = 1
        cv2.rectangle(img, (x, y), (x + bw, y + bh), colour, thickness)
        _label(img, text, (x, y - 2), colour)
    if spots is not None:
        _spots(img, result, spots, axis)
    status = f"frame {result.index}  {result.fps:5.1f} fps  items {result.items_decided}"
    if result.no_frame:
        status += "  NO CAMERA FRAME"
    _label(img, status, (4, 16), _WHITE)
    return img


class VideoWriter:
    """MP4 writer that opens lazily on the first frame (size taken from it)."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self._writer: cv2.VideoWriter | None = None

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise DataError(f"cannot write video {self.path} (codec mp4v not available?)")
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            log.info("annotated video written to %s", self.path)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
