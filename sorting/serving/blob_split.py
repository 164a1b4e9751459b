"""Cut a blob of touching items apart: where their colours meet, or where it narrows to a bridge.

Two garments that touch on the belt are one foreground blob. When they differ in colour, the
blob's pixels fall into two clearly different colours (weighted Lab: lightness counts less, so a
fold's shading is not a second garment), each a large contiguous region (a printed or striped
garment gives many small interleaved regions instead, and is left whole; with ``region_share``, one of
the two colours may be scattered when its largest region alone is that share of the blob: a plain
garment beside a striped one whose stripes share its colour). The blob is then cut between the two
regions, every other pixel going to the nearer one, and each side again (three garments in a row). A blob
that stays whole is also cut where it narrows to a bridge (a ruler, a sleeve or a corner touching the
next item): eroded by ``neck_px`` it falls apart into bodies of garment size, and a watershed from them
shares the blob out. Only blobs less convex than ``max_solidity`` are looked at. All of it runs at
half the segmentation scale (a blob is large; its colours are not fine detail).
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
    # ... or, for one of the two colours, its largest region alone this share of the blob (None: off): a plain
    # garment beside a striped one, whose stripes share its colour and scatter it
    region_share: float | None = None
    min_part_px: int = 150  # a part smaller than this is not a garment of its own
    min_outline_share: float = 0.5  # each part has this share of its outline on the belt (not a print inside)
    depth: int = 2  # cut the parts again (2: up to four garments)
    max_solidity: float = 0.9  # look only at blobs less convex than this (two garments rarely make a convex one)
    # also cut bridges narrower than 2 x this (0: off); calibrate --belt sets it from the typical item's size
    # (8 on the conveyor photos' dev part: +3.7 points recall, -1.0 precision with the textile check, +1.2 ms)
    neck_px: int = 0


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
    scattered = 0  # colours that are not one region
    for k in (1, 2):
        region = (labels == k).astype(np.uint8)
        count = int(region.sum())
        if count < cfg.min_share * total or count < min_part:
            return None
        n, comp, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        largest = int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0
        if largest < cfg.contiguity * count:
            scattered += 1
            if cfg.region_share is None or scattered > 1 or largest < max(cfg.region_share * total, min_part):
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
    # every other pixel of the blob to the part nearer to it: the rim, specks, and a scattered colour's other regions
    # (stripes inside the other garment, or a third garment, which the next round of the split looks at)
    near = [cv2.distanceTransform(1 - part, cv2.DIST_L2, 3) for part in parts]
    first = (own > 0) & (near[0] <= near[1])
    return [(first * 255).astype(np.uint8), (((own > 0) & ~first) * 255).astype(np.uint8)]


def _necks(own: np.ndarray, cfg: SplitConfig) -> list[np.ndarray] | None:
    """Two or more bodies joined by bridges narrower than 2 x ``neck_px`` (a ruler or a sleeve across to
    the next item): the blob eroded that far falls apart into parts of garment size; each blob pixel goes
    to the nearest part. None if it stays in one piece."""
    radius = max(1, round(cfg.neck_px / STEP))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    cores = cv2.erode(own, disk, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cores, connectivity=8)
    big = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= cfg.min_part_px / (STEP * STEP)]
    if len(big) < 2:
        return None
    markers = np.zeros(own.shape, np.int32)
    for i, k in enumerate(big, start=1):
        markers[labels == k] = i
    dist = cv2.distanceTransform(cv2.bitwise_not(cv2.compare(markers, 0, cv2.CMP_GT)), cv2.DIST_L2, 3)
    cv2.watershed(cv2.merge([cv2.convertScaleAbs(dist)] * 3), markers)
    return [cv2.bitwise_and(((markers == i) * 255).astype(np.uint8), own) for i in range(1, len(big) + 1)]


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
            halves = _two_colours(lab, part, cfg) or (_necks(part, cfg) if cfg.neck_px > 0 else None)
            out.extend([part] if halves is None else halves)
        if len(out) == len(parts):
            break
        parts = out
    if len(parts) == 1:
        return [own]
    return [cv2.bitwise_and(cv2.resize(p, (w, h), interpolation=cv2.INTER_NEAREST), own) for p in parts]
