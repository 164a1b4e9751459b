"""Drawing what the sorter sees and decides onto frames, and writing them to a video."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from sorting.errors import DataError
from sorting.serving.records import FrameResult

log = logging.getLogger(__name__)

_GREEN, _YELLOW, _RED, _WHITE, _CYAN = (60, 200, 60), (0, 215, 255), (40, 40, 230), (255, 255, 255), (230, 200, 0)


def _label(img: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int]) -> None:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    x, y = org
    y = max(h + 2, y)
    cv2.rectangle(img, (x, y - h - 3), (x + w + 2, y + base - 1), colour, -1)
    cv2.putText(img, text, (x + 1, y - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def annotate_frame(result: FrameResult, *, decision_line_px: float, axis: int = 0) -> np.ndarray:
    """A copy of ``result.image`` with boxes, ids, labels + confidence, bins, decision line and fps."""
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
        decision = decided.get(tr.track_id)
        if decision is not None:
            colour = _RED if decision.bin == decision.reject_bin else _GREEN
            text += f" -> {decision.bin_name}"
            thickness = 3
        else:
            thickness = 1
        cv2.rectangle(img, (x, y), (x + bw, y + bh), colour, thickness)
        _label(img, text, (x, y - 2), colour)
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
