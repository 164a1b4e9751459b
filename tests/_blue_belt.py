"""Tiny synthetic frames of a blue belt between two metal rails, for the real-belt segmentation tests.

The belt is a dark blue with sensor noise and a brightness gradient across it (sun on one side),
the rails are grey bands above and below it. Garments are irregular textured polygons (red, white,
black, navy: the hard one on a blue belt); a hand is a smooth skin-coloured arm reaching in from the
right edge; a phone is a small black rounded rectangle.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

W, H = 480, 270
BELT_TOP, BELT_BOTTOM = 40, 220  # rows of the belt band; rails above and below
BELT_BGR = (120, 85, 35)
RAIL_BGR = (170, 170, 165)
COLOURS = {"red": (40, 40, 190), "white": (215, 220, 220), "black": (22, 22, 24), "navy": (75, 45, 30)}


@dataclass(frozen=True)
class Thing:
    kind: str  # garment, hand, object
    colour: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive-exclusive)


def _garment(img: np.ndarray, rng: np.random.Generator, centre: tuple[int, int], size: int, bgr: tuple[int, ...]) -> tuple[int, int, int, int]:
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = size * rng.uniform(0.7, 1.0, 9)
    pts = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1).astype(np.int32)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [pts], 255)
    weave = rng.normal(0, 9, img.shape[:2])[..., None]  # fabric texture
    cloth = np.clip(np.asarray(bgr, np.float32) + weave, 0, 255)
    img[mask > 0] = cloth[mask > 0]
    x, y, w, h = cv2.boundingRect(pts)
    return x, y, x + w, y + h


def blue_belt_frame(seed: int = 0, *, garments: tuple[str, ...] = ("red", "white", "black", "navy"),
                    hand: bool = False, phone: bool = False, shift: int = 0) -> tuple[np.ndarray, list[Thing]]:
    """A frame (BGR uint8, W x H) and what is on it. ``shift`` moves the belt band down (a bumped camera)."""
    rng = np.random.default_rng(seed)
    img = np.empty((H, W, 3), np.float32)
    img[:] = RAIL_BGR
    top, bottom = BELT_TOP + shift, BELT_BOTTOM + shift
    gradient = np.linspace(0.8, 1.2, W, dtype=np.float32)[None, :, None]
    img[top:bottom] = np.asarray(BELT_BGR, np.float32) * gradient
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    things = []
    slots = [(70, 95), (180, 150), (290, 95), (390, 160)]
    for (cx, cy), name in zip(slots, garments):
        box = _garment(img, rng, (cx, cy + shift), 32, COLOURS[name])
        things.append(Thing("garment", name, box))
    if hand:
        arm = np.array([[W, 50 + shift], [W - 95, 62 + shift], [W - 100, 80 + shift], [W, 95 + shift]], np.int32)
        cv2.fillPoly(img, [arm], (120, 160, 215))  # smooth skin
        things.append(Thing("hand", "skin", (W - 100, 50 + shift, W, 96 + shift)))
    if phone:
        cv2.rectangle(img, (150, 50 + shift), (192, 73 + shift), (20, 20, 20), -1)
        things.append(Thing("object", "phone", (150, 50 + shift, 193, 74 + shift)))
    return np.clip(img, 0, 255).astype(np.uint8), things
