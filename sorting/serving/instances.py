"""Outlines of the things a learned detector boxed, from the belt model's foreground mask.

Each foreground pixel inside one or more boxes goes to the box whose centre is nearest relative to the box's
size (``((x - cx) / half-width)^2 + ((y - cy) / half-height)^2``): where two boxes of touching garments overlap,
the pixels are shared out between them, not given to both. A thing's outline is the largest piece of its pixels;
a thing the mask does not show (a black garment on a dark belt, a garment the colour of the belt) is outlined by
the ellipse inscribed in its box. Foreground outside every box is nobody's: the detector did not call it a thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

MIN_SHOWN = 0.05  # of its box (at the segmentation scale): a thing with fewer foreground pixels is not shown


class Outline(NamedTuple):
    contour: np.ndarray  # OpenCV contour at the segmentation scale
    area: float  # in mask pixels
    shown: bool  # False: the mask does not show the thing, the contour is its box's ellipse


def _cells(box: Sequence[float], scale: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = shape
    x0, y0 = max(0, math.floor(box[0] * scale)), max(0, math.floor(box[1] * scale))
    x1, y1 = min(w, math.ceil(box[2] * scale)), min(h, math.ceil(box[3] * scale))
    return x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)


def _ellipse(box: Sequence[float], scale: float) -> tuple[np.ndarray, float]:
    centre = (round((box[0] + box[2]) / 2 * scale), round((box[1] + box[3]) / 2 * scale))
    axes = (max(1, round((box[2] - box[0]) / 2 * scale)), max(1, round((box[3] - box[1]) / 2 * scale)))
    points = cv2.ellipse2Poly(centre, axes, 0, 0, 360, 15).reshape(-1, 1, 2).astype(np.int32)
    return points, math.pi * axes[0] * axes[1]


def instance_outlines(mask: np.ndarray, boxes: Sequence[Sequence[float]], scale: float) -> list[Outline]:
    """Per box (full-resolution x0, y0, x1, y1): its :class:`Outline` at the scale of ``mask`` (see the module
    docstring)."""
    shape = mask.shape[:2]
    best = np.full(shape, np.inf, np.float32)
    owner = np.full(shape, -1, np.int32)
    spans = [_cells(b, scale, shape) for b in boxes]
    for k, (box, (x0, y0, x1, y1)) in enumerate(zip(boxes, spans)):
        cx, cy = (box[0] + box[2]) / 2 * scale - 0.5, (box[1] + box[3]) / 2 * scale - 0.5
        hx, hy = max(1.0, (box[2] - box[0]) / 2 * scale), max(1.0, (box[3] - box[1]) / 2 * scale)
        ys = ((np.arange(y0, y1, dtype=np.float32) - cy) / hy) ** 2
        xs = ((np.arange(x0, x1, dtype=np.float32) - cx) / hx) ** 2
        d = ys[:, None] + xs[None, :]
        closer = d < best[y0:y1, x0:x1]
        best[y0:y1, x0:x1][closer] = d[closer]
        owner[y0:y1, x0:x1][closer] = k
    out = []
    for k, (box, (x0, y0, x1, y1)) in enumerate(zip(boxes, spans)):
        own = ((owner[y0:y1, x0:x1] == k) & (mask[y0:y1, x0:x1] > 0)).astype(np.uint8)
        count = int(cv2.countNonZero(own))
        if count < MIN_SHOWN * (x1 - x0) * (y1 - y0):
            out.append(Outline(*_ellipse(box, scale), shown=False))
            continue
        contours, _ = cv2.findContours(own, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))
        out.append(Outline(max(contours, key=cv2.contourArea), float(count), shown=True))
    return out
