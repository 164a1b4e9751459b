"""Garment silhouettes as polygons: t-shirt, shirt, sweater, trousers, skirt, towel, sock.

Outlines are drawn in a unit box (x right, y down), jittered per item so no two
garments are identical, scaled to a length in frame pixels (garments are 90-200 px
long in a 640x480 conveyor frame) and rotated to a random pose on the belt.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Unit-box outline, width/height aspect range, and length range (px at conveyor scale).
_OUTLINES: dict[str, tuple[list[tuple[float, float]], tuple[float, float], tuple[int, int]]] = {
    "tshirt": (
        [(0.32, 0.0), (0.42, 0.05), (0.58, 0.05), (0.68, 0.0), (1.0, 0.18), (0.9, 0.4), (0.76, 0.31),
         (0.77, 1.0), (0.23, 1.0), (0.24, 0.31), (0.1, 0.4), (0.0, 0.18)],
        (1.0, 1.25), (120, 190),
    ),
    "shirt": (
        [(0.36, 0.0), (0.5, 0.09), (0.64, 0.0), (0.78, 0.05), (1.0, 0.86), (0.89, 0.9), (0.74, 0.36),
         (0.74, 1.0), (0.26, 1.0), (0.26, 0.36), (0.11, 0.9), (0.0, 0.86), (0.22, 0.05)],
        (0.95, 1.15), (140, 200),
    ),
    "sweater": (
        [(0.37, 0.0), (0.63, 0.0), (0.8, 0.06), (1.0, 0.12), (1.0, 0.33), (0.78, 0.31), (0.77, 1.0),
         (0.23, 1.0), (0.22, 0.31), (0.0, 0.33), (0.0, 0.12), (0.2, 0.06)],
        (1.45, 1.75), (150, 200),
    ),
    "trousers": (
        [(0.04, 0.0), (0.96, 0.0), (1.0, 1.0), (0.58, 1.0), (0.5, 0.32), (0.42, 1.0), (0.0, 1.0)],
        (0.5, 0.62), (150, 200),
    ),
    "skirt": (
        [(0.24, 0.0), (0.76, 0.0), (0.9, 0.5), (1.0, 0.97), (0.5, 1.0), (0.0, 0.97), (0.1, 0.5)],
        (0.85, 1.05), (110, 170),
    ),
    "towel": ([(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)], (0.55, 1.6), (100, 190)),
    "sock": (
        [(0.0, 0.0), (0.46, 0.0), (0.47, 0.6), (0.98, 0.66), (1.0, 1.0), (0.16, 1.0), (0.0, 0.86)],
        (0.6, 0.72), (90, 125),
    ),
}

GARMENTS: tuple[str, ...] = tuple(_OUTLINES)


@dataclass(frozen=True)
class Silhouette:
    """A garment outline in its own (unrotated) frame and its pose on the belt.

    ``local`` is the polygon in local pixels inside a ``local_size`` (w, h) box;
    ``angle_deg`` rotates it onto the belt; ``posed`` is the rotated polygon inside the
    ``size`` (w, h) box of the posed sprite.
    """

    garment: str
    local: np.ndarray
    local_size: tuple[int, int]
    angle_deg: float
    posed: np.ndarray
    size: tuple[int, int]

    def posed_mask(self) -> np.ndarray:
        mask = np.zeros((self.size[1], self.size[0]), np.uint8)
        cv2.fillPoly(mask, [np.round(self.posed * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
        return mask

    def pose_matrix(self) -> np.ndarray:
        """2x3 affine matrix mapping local pixels to posed-sprite pixels."""
        w, h = self.local_size
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), self.angle_deg, 1.0)
        m[0, 2] += self.size[0] / 2.0 - w / 2.0
        m[1, 2] += self.size[1] / 2.0 - h / 2.0
        return m


def _wobble(points: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Subdivide edges and displace vertices so outlines look like cloth, not CAD."""
    out = []
    n = len(points)
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        length = float(np.linalg.norm(b - a))
        steps = max(1, int(length / 0.12))
        for s in range(steps):
            out.append(a + (b - a) * (s / steps))
    arr = np.asarray(out)
    return arr + rng.normal(0.0, amount, size=arr.shape)


def make_silhouette(garment: str, rng: np.random.Generator, *, pad: int = 6) -> Silhouette:
    """Random outline of ``garment`` with a random size and pose."""
    outline, (amin, amax), (lmin, lmax) = _OUTLINES[garment]
    aspect = rng.uniform(amin, amax)
    length = rng.uniform(lmin, lmax)
    w_unit, h_unit = (length, length / aspect) if aspect >= 1 else (length * aspect, length)
    pts = _wobble(np.asarray(outline, dtype=np.float64), rng, 0.008)
    pts = np.clip(pts, 0.0, 1.0) * np.array([w_unit, h_unit]) + pad
    local_size = (int(np.ceil(w_unit)) + 2 * pad, int(np.ceil(h_unit)) + 2 * pad)
    angle = float(rng.uniform(0.0, 360.0))
    m = cv2.getRotationMatrix2D((local_size[0] / 2.0, local_size[1] / 2.0), angle, 1.0)
    centre = np.array([local_size[0] / 2.0, local_size[1] / 2.0])
    rotated = (pts - centre) @ m[:, :2].T
    half = np.ceil(np.abs(rotated).max(axis=0) + pad)
    size = (int(2 * half[0]), int(2 * half[1]))
    posed = rotated + half
    return Silhouette(garment, pts.astype(np.float32), local_size, angle, posed.astype(np.float32), size)
