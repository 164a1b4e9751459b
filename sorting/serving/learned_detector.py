"""The learned belt detector at serving time (onnxruntime, no torch): boxes and kinds of the things on the belt.

Opt-in with ``segmentation.detector.model: belt_detector.onnx`` (a file written by ``textile-sorter
train-belt-detector``). The file (see :mod:`sorting.models.belt_detector_export`) gives, per cell of a coarse grid
over the frame, the probability that the cell is the core of a garment, a hand or an object, and the expected
log width and height of that thing's box. :func:`decode_cells` turns that into boxes: every 8-connected group of
cells whose core probability (any kind) is above ``min_score`` is one thing; a group with two peaks (two touching
things whose cores met) is cut between them; its centre is the probability-weighted mean of its cells, its size the
weighted mean of their sizes, its kind the kind with the most probability in it. With ``views`` 4 (the default) the
cells are the mean over the frame and its three mirror images: the network learned with both flips, and where one
view sees a garment in two pieces the others outvote it (70.2 against 58.0 ms a held-out photo on one core,
serving/REAL_BELT.md).

The segmentation (:class:`~sorting.serving.segmentation.BeltSegmenter`) keeps its belt model for the outlines:
each foreground pixel goes to the box whose centre is nearest (relative to the box's size), and a thing's box is
by default that of its outline (``box: outline``): the size heads are the network's weak part.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from sorting.config import StrictModel
from sorting.errors import ModelFileError
from sorting.serving.onnx_file import json_metadata, open_session

log = logging.getLogger(__name__)

METADATA_KEY = "belt_detector"
FORMAT_VERSION = 1
# the frame's mirror images a detector with ``views`` > 1 also reads (it learned with both flips), as flips of the
# input's axes (2: rows, top-bottom; 3: columns, left-right), then the cells' axes (1: rows, 2: columns)
MIRROR_AXES = ((2,), (3,), (2, 3))
PEAK_DIP = 0.8  # two peaks of one group are two things when the path between them dips below this share of the lower


class DetectorConfig(StrictModel):
    """``segmentation.detector``: the learned detector of garments, hands and objects (opt-in)."""

    model: Path  # ONNX file from ``textile-sorter train-belt-detector``; relative to the line config's folder
    min_score: float = Field(0.5, gt=0, lt=1)  # core probability above which cells form a thing
    # each thing's box: that of its outline in the belt model's foreground (``outline``; the learned box where the
    # mask does not show the thing) or the detector's own (``learned``). Outline: recall 72.5% / precision 61.7%
    # against 61.5% / 52.3% at IoU 0.5 on the development photos the detector did not train on (serving/REAL_BELT.md)
    box: Literal["learned", "outline"] = "outline"
    grow: float = Field(1.0, ge=1.0, le=3.0)  # the boxes are grown by this before foreground is shared out
    # two peaks of one group of cores are two things when the straight path between them dips below this share of
    # the lower peak
    peak_dip: float = Field(PEAK_DIP, gt=0, le=1)
    # the cells are the mean over the frame and its first views - 1 mirror images (top-bottom, left-right, both);
    # each mirror costs one more run of the network. 4 against 1: recall 83.7% / precision 92.4% against 82.7% /
    # 89.6% in the scene CV of the development photos, fewer pieces of garments (serving/REAL_BELT.md, "Mirror views")
    views: int = Field(1 + len(MIRROR_AXES), ge=1, le=1 + len(MIRROR_AXES))
    threads: int = Field(1, ge=1)  # onnxruntime threads (the loop has two cores)


@dataclass(frozen=True)
class LearnedBox:
    """One thing found by the detector, in full-resolution pixels."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    kind: str  # garment, hand or object
    score: float  # the highest core probability of its cells

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


class LearnedDetector:
    """``detect(frame_bgr)`` -> :class:`LearnedBox` list; the frame may be the full one or a downscaled copy."""

    def __init__(self, cfg: DetectorConfig) -> None:
        path = Path(cfg.model)
        if not path.is_file():
            raise ModelFileError(f"segmentation.detector.model: {path} not found")
        self.session = open_session(path, threads=cfg.threads, what="belt detector")
        meta = json_metadata(self.session, path, key=METADATA_KEY, version=FORMAT_VERSION, what="belt detector",
                             writer="textile-sorter train-belt-detector")
        arch = meta["arch"]
        self.input_size = (int(arch["input_width"]), int(arch["input_height"]))
        self.kinds = list(meta["kinds"])
        self.stride = int(meta["stride"])
        self.min_score = cfg.min_score
        self.peak_dip = cfg.peak_dip
        self.mirrors = MIRROR_AXES[: cfg.views - 1]
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def cells(self, frame_bgr: np.ndarray) -> np.ndarray:
        """The model's per-cell output ``(kinds + 2, GH, GW)`` for one frame (the mean over its views)."""
        small = cv2.resize(frame_bgr, self.input_size, interpolation=cv2.INTER_AREA)
        x = ((small[..., ::-1].astype(np.float32) - 127.0) * (1.0 / 128.0)).transpose(2, 0, 1)[None]
        out = self._run(x)
        for axes in self.mirrors:
            out = out + np.flip(self._run(np.flip(x, axes)), tuple(a - 1 for a in axes))
        return out / (1 + len(self.mirrors))

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0][0]

    def detect(self, frame_bgr: np.ndarray, full_size: tuple[int, int]) -> list[LearnedBox]:
        """Things in ``frame_bgr`` with boxes in the pixels of a ``full_size`` (width, height) frame."""
        scale = (full_size[0] / self.input_size[0], full_size[1] / self.input_size[1])
        return decode_cells(self.cells(frame_bgr), self.kinds, stride=self.stride, min_score=self.min_score,
                            scale=scale, size=full_size, peak_dip=self.peak_dip)


def _split_peaks(core: np.ndarray, labels: np.ndarray, n: int, peak_dip: float) -> tuple[np.ndarray, int]:
    """Cut groups with two or more peaks (local maxima standing out from the path between them) by a
    watershed from the peaks: two touching things whose cores met."""
    peaks = (core >= cv2.dilate(core, np.ones((3, 3), np.uint8))) & (labels > 0)
    ys, xs = np.nonzero(peaks)
    if len(ys) <= n:
        return labels, n
    markers = np.zeros(core.shape, np.int32)
    kept = 0
    for group in range(1, n + 1):
        mine = [(core[y, x], y, x) for y, x in zip(ys, xs) if labels[y, x] == group]
        mine.sort(reverse=True)
        chosen: list[tuple[float, int, int]] = []
        for value, y, x in mine:
            if all(_separate(core, labels == group, (y, x), (cy, cx), peak_dip * min(value, cv))
                   for cv, cy, cx in chosen):
                chosen.append((value, y, x))
        for _, y, x in chosen:
            kept += 1
            markers[y, x] = kept
    if kept == n:
        return labels, n
    image = cv2.cvtColor(np.clip(255 * (1 - core), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    cv2.watershed(image, markers)
    markers[(labels == 0) | (markers < 0)] = 0
    return markers, kept


def _separate(core: np.ndarray, group: np.ndarray, a: tuple[int, int], b: tuple[int, int], floor: float) -> bool:
    """Whether the straight path between two peaks dips below ``floor`` (or leaves the group)."""
    steps = max(abs(a[0] - b[0]), abs(a[1] - b[1])) + 1
    ys = np.rint(np.linspace(a[0], b[0], steps)).astype(int)
    xs = np.rint(np.linspace(a[1], b[1], steps)).astype(int)
    return bool((~group[ys, xs]).any() or core[ys, xs].min() < floor)


def decode_cells(cells: np.ndarray, kinds: list[str], *, stride: int, min_score: float,
                 scale: tuple[float, float], size: tuple[int, int], peak_dip: float = PEAK_DIP) -> list[LearnedBox]:
    """Boxes from the per-cell output (see the module docstring); ``scale``: frame pixels per input pixel."""
    k = len(kinds)
    probs, log_w, log_h = cells[:k], cells[k], cells[k + 1]
    core = (1.0 - probs[0]).astype(np.float32)
    n, labels = cv2.connectedComponents((core > min_score).astype(np.uint8), connectivity=8)
    labels, n = _split_peaks(core, labels, n - 1, peak_dip)
    out = []
    for group in range(1, n + 1):
        ys, xs = np.nonzero(labels == group)
        if not len(ys):
            continue
        w = core[ys, xs]
        total = float(w.sum())
        # cell i spans input pixels [i, i + 1) * stride: its centre is (i + 0.5) * stride (box coordinates are edges)
        cx = (float((xs * w).sum()) / total + 0.5) * stride
        cy = (float((ys * w).sum()) / total + 0.5) * stride
        bw = math.exp(float((log_w[ys, xs] * w).sum()) / total)
        bh = math.exp(float((log_h[ys, xs] * w).sum()) / total)
        kind = kinds[1 + int(np.argmax(probs[1:, ys, xs].sum(axis=1)))]
        sx, sy = scale
        x0, x1 = max(0.0, (cx - bw / 2) * sx), min(float(size[0]), (cx + bw / 2) * sx)
        y0, y1 = max(0.0, (cy - bh / 2) * sy), min(float(size[1]), (cy + bh / 2) * sy)
        if x1 > x0 and y1 > y0:
            out.append(LearnedBox((x0, y0, x1, y1), kind, float(w.max())))
    return out
