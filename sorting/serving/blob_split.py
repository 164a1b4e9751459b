"""Cut a blob of touching garments apart where their colours meet.

Two garments that touch on the belt are one foreground blob. When they differ in colour, the
blob's pixels fall into two clearly different colours (weighted Lab: lightness counts less, so a
fold's shading is not a second garment), each a large contiguous region (a printed or striped
garment gives many small interleaved regions instead, and is left whole). The blob is then cut
along the border between the two regions, and each side again (three garments in a row).
"""

from __future__ import annotations

import cv2
import numpy as np

from sorting.config import StrictModel

SAMPLE_STEP = 2  # k-means on every 2nd pixel of the blob in each direction


class SplitConfig(StrictModel):
    """When a blob is cut in two (sizes in pixels at the segmentation scale)."""

    colour_delta: float = 25.0  # weighted-Lab distance between the two colours
    lightness_weight: float = 0.35
    min_share: float = 0.15  # each colour at least this share of the blob
    contiguity: float = 0.75  # ... and mostly (this share) one connected region
    min_part_px: int = 150  # a part smaller than this is not a garment of its own
    min_outline_share: float = 0.5  # each part has this share of its outline on the belt (not a print inside)
    depth: int = 2  # cut the parts again (2: up to four garments)


def _weighted_lab(roi_bgr: np.ndarray, weight: float) -> np.ndarray:
    lab = cv2.cvtColor(roi_bgr, cv2.COLOR_BGR2Lab).astype(np.float32)
    lab[..., 0] *= weight
    return lab


def _two_colours(lab: np.ndarray, own: np.ndarray, cfg: SplitConfig) -> np.ndarray | None:
    """Label image (1, 2 inside the blob, 0 outside) of the blob's two colours, or None if it is one garment."""
    sample = lab[::SAMPLE_STEP, ::SAMPLE_STEP][own[::SAMPLE_STEP, ::SAMPLE_STEP] > 0]
    if len(sample) < 2 * cfg.min_part_px // (SAMPLE_STEP * SAMPLE_STEP):
        return None
    criteria = (cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS, 8, 0.5)
    # deterministic start: the two sides of the colours' main axis
    centred = sample - sample.mean(axis=0)
    axis = np.linalg.svd(centred[:: max(1, len(centred) // 500)], full_matrices=False)[2][0]
    proj = centred @ axis
    start = (proj > np.median(proj)).astype(np.int32).reshape(-1, 1)
    _, _, centres = cv2.kmeans(sample, 2, start, criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS)
    if float(np.linalg.norm(centres[0] - centres[1])) < cfg.colour_delta:
        return None
    d0 = np.sum((lab - centres[0]) ** 2, axis=2)
    d1 = np.sum((lab - centres[1]) ** 2, axis=2)
    labels = np.where(d1 < d0, 2, 1).astype(np.uint8)
    labels[own == 0] = 0
    # a garment's pixels near the other colour's border are mixed: smooth the labels a little
    labels = cv2.medianBlur(labels, 5)
    labels[own == 0] = 0
    total = int(np.count_nonzero(own))
    inner = cv2.erode(own, None, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    for k in (1, 2):
        region = (labels == k).astype(np.uint8)
        count = int(region.sum())
        if count < cfg.min_share * total or count < cfg.min_part_px:
            return None
        n, comp, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        if n < 2 or stats[1:, cv2.CC_STAT_AREA].max() < cfg.contiguity * count:
            return None
        # a garment lying beside another has much of its outline on the belt; a print or a patch inside
        # a garment has its outline inside the blob
        big = (comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
        edge = cv2.subtract(big, cv2.erode(big, None, borderType=cv2.BORDER_CONSTANT, borderValue=0))
        on_belt = cv2.countNonZero(cv2.bitwise_and(edge, cv2.bitwise_not(inner)))
        if on_belt < cfg.min_outline_share * max(1, cv2.countNonZero(edge)):
            return None
    return labels


def split_blob(own: np.ndarray, roi_bgr: np.ndarray, cfg: SplitConfig) -> list[np.ndarray]:
    """The parts (uint8 masks of ``own``'s shape) of one blob; ``[own]`` when it stays whole."""
    parts = [own]
    lab = _weighted_lab(roi_bgr, cfg.lightness_weight)
    for _ in range(cfg.depth):
        out = []
        for part in parts:
            labels = _two_colours(lab, part, cfg)
            if labels is None:
                out.append(part)
                continue
            for k in (1, 2):
                n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == k).astype(np.uint8), connectivity=8)
                big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                out.append(((comp == big) * 255).astype(np.uint8))
        if len(out) == len(parts):
            break
        parts = out
    return parts
