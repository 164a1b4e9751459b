"""What on the belt is not a garment: a hand or arm, or a rigid object (phone, earbuds, tape, a tool).

A garment must never be sorted from a hand, and a hand or a phone must never be ejected as a
garment. Each blob gets a ``kind`` from a few measures of its pixels and outline (at the
segmentation scale), with thresholds chosen on the development photos (benchmarks/belt_split.json,
labels in benchmarks/belt_non_garment_boxes.csv):

* **hand**: most of it skin-coloured (YCrCb skin range, not too dark), smooth (skin has almost no
  fine texture, fabric has weave, knit and folds), and long (an arm reaching in) or entering at a
  frame edge; or, entering at a frame edge, almost all glare and without any texture (an arm in the
  sun, overexposed past the skin range). With ``hand_reaches_in`` a hand also reaches the belt region's
  edge or the frame's: a hand is at the end of an arm that comes from beside the belt, while a pale pink
  or beige rag lying on the belt does not touch its edges;
* **object**: smaller than a typical garment, rigid-shaped (fills its rotated bounding rectangle and
  its convex hull: cards, phones, earbud cases, rulers) and plastic- or metal-looking (a large share of
  near-white pixels, or very dark, or grey).

Everything else is a garment. The loop decides what to do with the others (reject or ignore).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from sorting.config import StrictModel

GARMENT, HAND, OBJECT = "garment", "hand", "object"
# a track whose detections the textile check turned from garments into objects (Detection.not_cloth): a reject of
# its own, so an operator sees how many garments the check holds back
NOT_CLOTH = "not_cloth"
SKIN_CR = (135, 175)
SKIN_CB = (85, 130)
SKIN_MIN_Y = 60


class NonGarmentConfig(StrictModel):
    """Thresholds of :func:`blob_kind` (chosen on the development photos), and what the line does with a hand
    or an object: ``reject`` tracks it and sends it to the reject bin (reason ``not_a_garment``), ``ignore``
    drops it before tracking (a hand that reaches over the belt); either way it is counted, never ejected."""

    route: Literal["reject", "ignore"] = "reject"

    hand_skin_share: float = Field(default=0.5, ge=0, le=1)
    hand_max_texture: float = Field(default=0.13, gt=0)
    hand_min_elongation: float = Field(default=2.2, ge=1)
    hand_glare_share: float = Field(default=0.8, ge=0, le=1)  # share of pixels with Y >= 200 (an overexposed arm)
    hand_glare_texture: float = Field(default=0.05, gt=0)
    # a hand reaches the belt region's (or the frame's) edge: a skin-coloured blob lying inside the belt is cloth
    hand_reaches_in: bool = True
    object_max_area: float = Field(default=1.5, gt=0)  # times the expected item area (or min_area_px x 10)
    object_min_rectangularity: float = Field(default=0.8, ge=0, le=1)
    object_min_solidity: float = Field(default=0.95, ge=0, le=1)
    object_bright_share: float = Field(default=0.25, ge=0, le=1)  # share of pixels with Y >= 200
    object_dark_level: int = Field(default=60, ge=0, le=255)  # median value (HSV V) below this: a black object
    object_grey_saturation: int = Field(default=40, ge=0, le=255)  # median saturation below this: grey metal


def _median_u8(values: np.ndarray) -> float:
    """Median of uint8 values (from their histogram: linear time)."""
    counts = np.bincount(values.ravel(), minlength=256).cumsum()
    return float(np.searchsorted(counts, (counts[-1] + 1) // 2))


def blob_measures(roi_bgr: np.ndarray, own: np.ndarray, contour: np.ndarray) -> dict[str, float]:
    """Skin share, texture, shape and brightness measures of one blob (``own``: its filled mask in ``roi_bgr``)."""
    inner = cv2.erode(own, None, iterations=2, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    if inner.sum() < 20:
        inner = own > 0
    grey = cv2.cvtColor(roi_bgr, cv2.COLOR_BGR2GRAY)  # = Y of YCrCb
    laplace = cv2.convertScaleAbs(cv2.Laplacian(grey, cv2.CV_16S, ksize=3))[::2, ::2][inner[::2, ::2]]
    pixels = np.ascontiguousarray(roi_bgr[::2, ::2][inner[::2, ::2]]).reshape(-1, 1, 3)  # every 4th is plenty
    y, cr, cb = (c.ravel() for c in cv2.split(cv2.cvtColor(pixels, cv2.COLOR_BGR2YCrCb)))
    hsv = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV).reshape(-1, 3)
    skin = (cr >= SKIN_CR[0]) & (cr <= SKIN_CR[1]) & (cb >= SKIN_CB[0]) & (cb <= SKIN_CB[1]) & (y >= SKIN_MIN_Y)
    (_, (w, h), _) = cv2.minAreaRect(contour)
    area = cv2.contourArea(contour)
    hull = cv2.contourArea(cv2.convexHull(contour))
    return {
        "skin": float(skin.mean()),
        "texture": _median_u8(laplace) / (_median_u8(y) + 10.0),  # relative: fabric weave and folds
        "rectangularity": area / (w * h) if w * h > 0 else 0.0,
        "solidity": area / hull if hull > 0 else 1.0,
        "elongation": max(w, h) / max(1.0, min(w, h)),
        "bright": float((y >= 200).mean()),
        "value": _median_u8(hsv[:, 2]),
        "saturation": _median_u8(hsv[:, 1]),
    }


def blob_kind(measures: dict[str, float], *, area_px: float, typical_area_px: float, at_edge: bool,
              cfg: NonGarmentConfig, reaches_in: bool = True) -> str:
    """``garment``, ``hand`` or ``object`` (areas in full-resolution pixels). ``at_edge``: the blob touches a
    frame edge where items enter or leave; ``reaches_in``: it may be a hand's arm (it touches the belt region's edge
    or the frame's, or the line does not ask, ``hand_reaches_in``)."""
    m = measures
    if m["skin"] >= cfg.hand_skin_share and m["texture"] < cfg.hand_max_texture and (
            m["elongation"] >= cfg.hand_min_elongation or at_edge) and reaches_in:
        return HAND
    if at_edge and m["bright"] >= cfg.hand_glare_share and m["texture"] < cfg.hand_glare_texture:
        return HAND
    looks_rigid = m["rectangularity"] >= cfg.object_min_rectangularity and m["solidity"] >= cfg.object_min_solidity
    looks_hard = (m["bright"] >= cfg.object_bright_share or m["value"] < cfg.object_dark_level
                  or m["saturation"] < cfg.object_grey_saturation)
    if area_px < cfg.object_max_area * typical_area_px and looks_rigid and looks_hard:
        return OBJECT
    return GARMENT
