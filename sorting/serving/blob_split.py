"""Cut a blob of touching garments apart where their colours meet.

Two garments that touch on the belt are one foreground blob. When they differ in colour, the
blob's pixels fall into two clearly different colours (weighted Lab: lightness counts less, so a
fold's shading is not a second garment), each a large contiguous region (a printed or striped
garment gives many small interleaved regions instead, and is left whole). The blob is then cut
along the border between the two regions, and each side again (three garments in a row).
All of it runs at half the segmentation scale (a blob is large; its colours are not fine detail).
"""

from __future__ import annotations

import cv2
import numpy as np

from sorting.config import StrictModel

STEP = 2  # the split works on every 2nd pixel of the blob in each direction
RIM_PX = 2  # the blob's outline band (at the split's scale) that mixes garment and belt


class SplitConfig(StrictModel):
    """When a blob is cut in two (sizes in pixels at the segmentation scale)."""

    colour_delta: float = 35.0  # weighted-Lab distance between the two colours
    lightness_weight: float = 0.35
    min_share: float = 0.15  # each colour at least this share of the blob
    contiguity: float = 0.75  # ... and mostly (this share) one connected region
    min_part_px: int = 150  # a part smaller than this is not a garment of its own
    min_outline_share: float = 0.5  # each part has this share of its outline on the belt (not a print inside)
    depth: int = 2  # cut the parts again (2: up to four garments)
    max_solidity: float = 0.9  # look only at blobs less convex than this (two garments rarely make a convex one)


def _weighted_lab(roi_bgr: np.ndarray, weight: float) -> np.ndarray:
    lab = cv2.cvtColor(roi_bgr, cv2.COLOR_BGR2Lab).astype(np.float32)
    lab[..., 0] *= weight
    return lab


def _two_colours(lab: np.ndarray, own: np.ndarray, cfg: SplitConfig) -> list[np.ndarray] | None:
    """The blob's two garments (uint8 masks), or None if it is one garment.

    Only the blob's core (RIM_PX in from its outline) is clustered: its rim mixes garment and belt and
    would wrap one colour around the other."""
    core = cv2.erode(own, None, iterations=RIM_PX, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    sample = lab[core > 0]
    min_part = cfg.min_part_px / (STEP * STEP)
    if len(sample) < 2 * min_part:
        return None
    criteria = (cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS, 8, 0.5)
    # deterministic start: the two sides of the colours' main axis
    centred = sample - sample.mean(axis=0)
    axis = np.linalg.svd(centred[:: max(1, len(centred) // 500)], full_matrices=False)[2][0]
    proj = centred @ axis
    start = (proj > np.median(proj)).astype(np.int32).reshape(-1, 1)
    _, assigned, centres = cv2.kmeans(sample, 2, start, criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS)
    if float(np.linalg.norm(centres[0] - centres[1])) < cfg.colour_delta:
        return None
    labels = np.zeros(core.shape, np.uint8)
    labels[core > 0] = assigned.ravel().astype(np.uint8) + 1
    labels = cv2.medianBlur(labels, 3)  # mixed pixels where the colours meet
    labels[core == 0] = 0
    total = int(np.count_nonzero(core))
    core_rim = cv2.subtract(core, cv2.erode(core, None, borderType=cv2.BORDER_CONSTANT, borderValue=0))
    parts = []
    for k in (1, 2):
        region = (labels == k).astype(np.uint8)
        count = int(region.sum())
        if count < cfg.min_share * total or count < min_part:
            return None
        n, comp, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        if n < 2 or stats[1:, cv2.CC_STAT_AREA].max() < cfg.contiguity * count:
            return None
        # a garment lying beside another has much of its outline on the belt; a print or a patch inside
        # a garment has its outline inside the blob
        big = (comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
        outline, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        edge = np.zeros_like(big)
        cv2.drawContours(edge, outline, -1, 1, 1)  # its outer outline: dark folds inside it are no border
        on_belt = cv2.countNonZero(cv2.bitwise_and(edge, core_rim))
        if on_belt < cfg.min_outline_share * max(1, cv2.countNonZero(edge)):
            return None
        parts.append(big)
    # give the rim back: each rim pixel to the part nearer to it
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RIM_PX + 3, 2 * RIM_PX + 3))
    first = cv2.bitwise_and(cv2.dilate(parts[0], grow), own)
    second = cv2.bitwise_and(cv2.dilate(parts[1], grow), cv2.subtract(own, first))
    return [cv2.bitwise_or(first, parts[0]) * 255, cv2.bitwise_or(second, parts[1]) * 255]


def split_blob(own: np.ndarray, roi_bgr: np.ndarray, cfg: SplitConfig) -> list[np.ndarray]:
    """The parts (uint8 masks of ``own``'s shape) of one blob; ``[own]`` when it stays whole."""
    h, w = own.shape
    size = ((w + STEP - 1) // STEP, (h + STEP - 1) // STEP)
    half = cv2.resize(own, size, interpolation=cv2.INTER_NEAREST)
    lab = _weighted_lab(cv2.resize(roi_bgr, size, interpolation=cv2.INTER_AREA), cfg.lightness_weight)
    parts = [half]
    for _ in range(cfg.depth):
        out = []
        for part in parts:
            halves = _two_colours(lab, part, cfg)
            out.extend([part] if halves is None else halves)
        if len(out) == len(parts):
            break
        parts = out
    if len(parts) == 1:
        return [own]
    return [cv2.bitwise_and(cv2.resize(p, (w, h), interpolation=cv2.INTER_NEAREST), own) for p in parts]
