"""Where the belt is in the frame: a polygon, found from frames and checked against the frame.

Rails, brackets, the calibration sticker and whoever stands beside the belt lie outside the belt's
band; the segmentation looks inside the polygon only. A straight belt is a band between two edges
that run along its travel, so :func:`belt_band` fits one straight line to each edge of the belt
pixels (robustly: a hand or a garment hanging over a rail moves a few columns, not the line) and
pulls both in by a small margin.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from sorting.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Point = tuple[int, int]
EDGE_MARGIN_SHARE = 0.02  # of the belt's width, pulled in from each rail
MIN_COLUMN_SHARE = 0.3  # a column (across the belt) must be this much belt to place its edges


def check_polygon(polygon: Sequence[Point], frame_size: tuple[int, int], what: str = "segmentation.belt_region") -> None:
    """ConfigError unless ``polygon`` has 3+ points, all inside a ``(width, height)`` frame, and an area."""
    width, height = frame_size
    if len(polygon) < 3:
        raise ConfigError(f"{what} needs at least 3 points, got {len(polygon)}")
    outside = [tuple(p) for p in polygon if not (0 <= p[0] <= width and 0 <= p[1] <= height)]
    if outside:
        raise ConfigError(f"{what}: points {outside[:3]} lie outside the {width}x{height} frame")
    if cv2.contourArea(np.asarray(polygon, np.float32).reshape(-1, 1, 2)) < 1.0:
        raise ConfigError(f"{what} has no area")


def polygon_mask(polygon: Sequence[Point], shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """uint8 mask (255 inside) of ``polygon`` (full-resolution points) on an image of ``shape`` at ``scale``."""
    mask = np.zeros(shape, np.uint8)
    pts = np.round(np.asarray(polygon, np.float64) * scale).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], 255)
    return mask


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares row = a * column + b (closed form: a few microseconds for a few hundred points)."""
    mx, my = float(x.mean()), float(y.mean())
    dx = x - mx
    var = float(dx @ dx)
    a = float(dx @ (y - my)) / var if var > 0 else 0.0
    return a, my - a * mx


def _robust_line(columns: np.ndarray, rows: np.ndarray, *, keep_px: float, min_share: float,
                 start: tuple[float, float] | None = None, start_px: float | None = None) -> tuple[float, float] | None:
    """Row = a * column + b through most points (a garment lying over the edge pushes its columns' rows
    inwards, all on one side; floor of the belt's colour beyond a rail outwards). From ``start`` (a line
    and how far from it points may lie) or the median row (the belt's edges run nearly along the frame),
    least squares refitted three times on the points within ``keep_px`` of the line. None if less than
    ``min_share`` of the points stay."""
    if len(columns) < 4:
        return None
    x, y = columns.astype(np.float64), rows.astype(np.float64)
    if start is None:
        a, b = 0.0, float(np.median(y))
        reach = max(keep_px, 2.5 * float(np.median(np.abs(y - b))))
    else:
        (a, b), reach = start, max(keep_px, start_px or keep_px)
    for _ in range(3):
        near = np.abs(y - (a * x + b)) <= reach
        if near.sum() < max(4, min_share * len(x)):
            return None
        a, b = _line_fit(x[near], y[near])
        reach = max(keep_px, reach / 2)
    return a, b


def belt_band(belt_share: np.ndarray, *, scale: float = 1.0, along_axis: int = 0,
              margin_share: float = EDGE_MARGIN_SHARE) -> list[Point]:
    """The belt's band as a 4-point polygon (full-resolution pixels) from a map, at ``scale``, of how
    often each pixel was belt (0..1).

    ``along_axis``: 0 when the belt travels along x (its edges are rows), 1 along y.
    """
    share = belt_share if along_axis == 0 else belt_share.T
    height, width = share.shape
    belt = share >= 0.5
    present = belt.sum(axis=0)
    if present.max() == 0:
        raise DataError("no belt found in the frames: is the camera on the belt and the belt model right?")
    cols = np.flatnonzero(present >= MIN_COLUMN_SHARE * present.max())
    if len(cols) < width * 0.2:
        raise DataError("the belt covers too little of the frame along its travel to fit its edges")
    top = np.argmax(belt[:, cols], axis=0)
    bottom = height - 1 - np.argmax(belt[::-1, cols], axis=0)
    fits = [_robust_line(cols, rows, keep_px=max(2.0, 0.01 * height), min_share=0.3) for rows in (top, bottom)]
    if fits[0] is None or fits[1] is None:
        raise DataError("the belt's edges are not straight lines in these frames (too much lies across them)")
    (a_top, b_top), (a_bot, b_bot) = fits
    margin = margin_share * float(np.median(bottom - top))
    corners = []
    for x, (a, b, m) in ((0, (a_top, b_top, margin)), (width, (a_top, b_top, margin)),
                         (width, (a_bot, b_bot, -margin)), (0, (a_bot, b_bot, -margin))):
        y = float(np.clip(a * x + b + m, 0, height))
        corners.append((round(x / scale), round(y / scale)))
    if corners[3][1] - corners[0][1] < 8 / scale or corners[2][1] - corners[1][1] < 8 / scale:
        raise DataError("the belt's two edges meet: no band found")
    return corners if along_axis == 0 else [(y, x) for x, y in corners]


class BeltEdgeFollower:
    """The belt region of one frame: the configured band with its two edges re-fitted to where this
    frame's belt is (a camera bumped, a belt running off-centre), each end moving at most ``follow_px``.

    Works on the band polygons :func:`belt_band` writes (4 points, two edges along the belt's travel).
    """

    def __init__(self, polygon: Sequence[Point], shape: tuple[int, int], scale: float, *, along_axis: int = 0,
                 follow_px: float, margin_share: float = EDGE_MARGIN_SHARE, column_step: int = 2) -> None:
        if len(polygon) != 4:
            raise ConfigError("segmentation.belt_region_follow_px needs a 4-point belt band as belt_region")
        self._fixed = polygon_mask(polygon, shape, scale)
        pts = np.asarray(polygon, np.float64) * scale
        if along_axis == 1:
            pts, shape = pts[:, ::-1], (shape[1], shape[0])
        self.shape, self.along_axis = shape, along_axis
        left, right = sorted(pts, key=lambda p: p[0])[:2], sorted(pts, key=lambda p: p[0])[2:]
        (tl, bl), (tr, br) = sorted(left, key=lambda p: p[1]), sorted(right, key=lambda p: p[1])
        width = max(1.0, tr[0] - tl[0])
        self.top = (tl[0], tl[1], (tr[1] - tl[1]) / width)  # x0, y at x0, slope
        self.bottom = (bl[0], bl[1], (br[1] - bl[1]) / width)
        self.follow = follow_px * scale
        self.margin = margin_share * float((bl[1] - tl[1] + br[1] - tr[1]) / 2) / (1.0 - 2.0 * margin_share)
        self.step = column_step
        self.columns = np.arange(0, shape[1], column_step)
        self.ends = np.array([0.0, float(shape[1])])

    def _edge_rows(self, edge: tuple[float, float, float], x: np.ndarray) -> np.ndarray:
        x0, y0, slope = edge
        return y0 + slope * (x - x0)

    def region(self, sure: np.ndarray) -> np.ndarray:
        """uint8 mask (255: belt region) for this frame, from its surely-belt pixels (same scale and shape)."""
        view = sure if self.along_axis == 0 else sure.T
        height = self.shape[0]
        cols = self.columns
        top_cal, bot_cal = self._edge_rows(self.top, cols), self._edge_rows(self.bottom, cols)
        r0 = int(max(0, np.floor(top_cal.min() - self.margin - self.follow)))
        r1 = int(min(height, np.ceil(bot_cal.max() + self.margin + self.follow)))
        window = view[r0:r1, :: self.step] > 0
        has = window.any(axis=0)
        if has.sum() < 4:
            return self._fixed
        first = r0 + np.argmax(window, axis=0)
        last = r1 - 1 - np.argmax(window[::-1], axis=0)
        corners = []
        for edge, rows, inward in ((self.top, first, self.margin), (self.bottom, last, -self.margin)):
            cal = self._edge_rows(edge, self.ends)
            x0, y0, slope = edge
            line = _robust_line(cols[has], rows[has], keep_px=3.0, min_share=0.3, start=(slope, y0 - slope * x0),
                                start_px=self.follow + 2.0 * self.margin)
            ends = cal if line is None else line[0] * self.ends + line[1] + inward
            corners.append(np.clip(ends, cal - self.follow, cal + self.follow))
        x_end = self.ends[1]
        pts = [(0.0, corners[0][0]), (x_end, corners[0][1]), (x_end, corners[1][1]), (0.0, corners[1][0])]
        mask = np.zeros(self.shape, np.uint8)
        cv2.fillPoly(mask, [np.round(np.asarray(pts)).astype(np.int32).reshape(-1, 1, 2)], 255)
        return mask if self.along_axis == 0 else np.ascontiguousarray(mask.T)
