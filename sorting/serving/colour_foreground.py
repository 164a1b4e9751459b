"""Foreground on a coloured belt, each frame on its own (still photos, or a video without warm-up).

Three masks at the segmentation scale, from :class:`~sorting.serving.belt_colour_model.BeltColourConfig`:

* *not belt-coloured*: distance to the belt colour above ``max_distance`` (white, red, black...);
* *surely belt*: distance below ``sure_distance``: this frame's belt, from which the belt's colour
  around every pixel is spread (a normalised Gaussian blur of ``sigma_px`` on a 4x coarser grid, so it
  reaches under garments);
* *off the local belt colour*: chromaticity further than ``local_max_distance`` local sigmas from that
  local belt colour (a navy or royal-blue garment on a blue belt: far from the belt next to it, though
  within the spread of the belt across frames), or darker than ``local_dark_ratio`` times it (a black
  garment), or brighter than ``local_bright_ratio`` times it (a light-blue garment). A garment's shadow keeps
  the belt's chromaticity and is rarely that dark.

Where a patch of belt is not surely belt in a frame (its colour between ``sure_distance`` and ``max_distance`` of the
model: light, shade, white balance), the local belt colour there is spread from further away, and the local tests can
take the plain belt for a thing: a blob that looks like the belt just around it is dropped
(:meth:`ColourForeground.drop_belt_like`, after the segmentation's morphology).

Blobs lying wholly along the region's edges (``edge_strip_px`` across the belt) are dropped: the strip of a rail,
a bracket or a shadow that the region's straight edges leave in view, each a reject the line would count for
nothing.

Surely-belt pixels leave out the darkest DARK_SHARE of the belt-coloured ones in the frame (black
garments hide there), and the foreground loses single-pixel noise with a median filter.

The belt region is the configured polygon, or (``follow``) that band re-fitted to this frame's belt.
A frame with almost no belt in view (lens covered, something over the belt) raises :class:`FrameError`; so
does a black or saturated one (:func:`exposure_problem`, checked before any belt model sees the frame).
"""

from __future__ import annotations

import cv2
import numpy as np

from sorting.errors import ConfigError, DataError
from sorting.serving.belt_colour_model import BeltColourConfig, BeltColourLookup, chromaticity
from sorting.serving.belt_region import BeltEdgeFollower

MIN_BELT_SHARE = 0.02  # of the belt region surely belt, or the frame is unusable
DARK_SHARE = 0.15  # the darkest share of belt-coloured pixels in a frame is not used as surely belt
MEDIAN_PX = 5  # median filter of the foreground (at the segmentation scale)
GRID = 4  # the local belt colour is spread on a grid this much coarser than the segmentation scale
SURROUND_PX = 4  # the belt around a blob: this far from it (at the segmentation scale), not foreground, in the region
MIN_SURROUND_PX = 20  # fewer such pixels (a blob among others) and the blob is kept


BLACK_LEVEL = 12  # a frame darker than this on average shows nothing (lens capped, lights off) ...
SATURATED_LEVEL = 243  # ... and one brighter than this is blown out


class FrameError(DataError):
    """A frame the segmentation cannot use (another size than the line's belt set-up, black, saturated,
    no belt in view): the frame is skipped with this one message, the run goes on."""


def exposure_problem(small_bgr: np.ndarray) -> tuple[str, float] | None:
    """``("black" | "saturated", mean level)`` for a frame too dark or too bright on average to show anything,
    else None. Checked before any belt model sees the frame, so that none learns its belt from it."""
    level = float(np.mean(cv2.mean(small_bgr)[:3]))
    if level < BLACK_LEVEL:
        return "black", level
    if level > SATURATED_LEVEL:
        return "saturated", level
    return None


class ColourForeground:
    """``mask(small_bgr)`` -> (foreground, belt region, local belt BGR float32) at the segmentation scale.

    ``keep``: 255 where the segmentation may look at all (ignored rectangles blanked); ``region``: the
    configured belt region within ``keep``; ``follower``: re-fits the region to each frame's belt.
    """

    def __init__(self, model: BeltColourConfig, keep: np.ndarray, region: np.ndarray, *, sigma_px: float,
                 scale: float = 1.0, along_axis: int = 0, follower: BeltEdgeFollower | None = None) -> None:
        self.model = model
        self.keep, self.region, self.follower = keep, region, follower
        self.lookup = BeltColourLookup(model)
        self.sigma = sigma_px
        strip = round(model.edge_strip_px * scale)
        # a line across the belt (rows when it travels along x): the rails run along the travel
        self._strip_kernel = (np.ones((2 * strip + 1, 1) if along_axis == 0 else (1, 2 * strip + 1), np.uint8)
                              if strip > 0 else None)
        if self._strip_kernel is not None and cv2.countNonZero(region) and not cv2.countNonZero(
                cv2.erode(region, self._strip_kernel)):
            raise ConfigError(f"segmentation.belt_colour.edge_strip_px {model.edge_strip_px} reaches across the whole "
                              "belt region: every blob would be dropped (calibrate --belt sets 13% of the belt's width)")
        self._inv_sigma: tuple[np.ndarray, np.ndarray] | None = None
        if model.local_sigma:
            levels = np.arange(256, dtype=np.float64)
            edges = np.asarray(model.intensity_edges)
            band = np.clip(np.searchsorted(edges, levels, side="right") - 1, 0, len(edges) - 2)
            sig = np.asarray(model.local_sigma, np.float64)[band]
            self._inv_sigma = ((1.0 / sig[:, 0]).astype(np.float32).reshape(256, 1),
                               (1.0 / sig[:, 1]).astype(np.float32).reshape(256, 1))

    def belt_region(self, sure: np.ndarray) -> np.ndarray:
        """This frame's belt region (the configured one, or followed to where the belt is)."""
        if self.follower is None:
            return self.region
        return cv2.bitwise_and(self.follower.region(sure), self.keep)

    @staticmethod
    def bright_enough(candidates: np.ndarray, level: np.ndarray) -> np.ndarray:
        """``candidates`` less their darkest DARK_SHARE: a black garment's chromaticity is noise, and a dark
        belt colour band cannot tell it from the belt; within one frame the belt is brighter."""
        hist = cv2.calcHist([level], [0], candidates, [256], [0, 256]).ravel()
        total = hist.sum()
        if total == 0:
            return candidates
        cut = int(np.searchsorted(np.cumsum(hist), DARK_SHARE * total))
        return cv2.bitwise_and(candidates, cv2.threshold(level, cut - 1, 255, cv2.THRESH_BINARY)[1])

    def local_belt(self, small: np.ndarray, sure: np.ndarray) -> np.ndarray:
        """The belt's BGR colour (float32) on the coarse grid, spread from the surely-belt pixels."""
        h, w = sure.shape
        tiny = (max(1, w // GRID), max(1, h // GRID))
        weight = cv2.resize(sure, tiny, interpolation=cv2.INTER_AREA).astype(np.float32)
        values = cv2.resize(cv2.bitwise_and(small, small, mask=sure), tiny, interpolation=cv2.INTER_AREA)
        num = cv2.GaussianBlur(values.astype(np.float32), (0, 0), self.sigma / GRID)
        den = cv2.GaussianBlur(weight, (0, 0), self.sigma / GRID)
        return num * (255.0 / np.maximum(den, 1e-2))[..., None]

    def off_local_colour(self, small: np.ndarray, belt_grid: np.ndarray) -> np.ndarray:
        """Pixels whose chromaticity is more than ``local_max_distance`` local sigmas from the belt beside
        them, or which are darker than ``local_dark_ratio`` or brighter than ``local_bright_ratio`` times it (OpenCV
        calls on whole images)."""
        assert self._inv_sigma is not None
        h, w = small.shape[:2]
        ref = belt_grid + 1.0
        ref_total = ref.sum(axis=2)
        ref_chroma = np.dstack([ref[..., 0] / ref_total, ref[..., 2] / ref_total, ref_total])  # small grid
        ref_b, ref_r, ref_total = cv2.split(cv2.resize(ref_chroma, (w, h), interpolation=cv2.INTER_LINEAR))
        px_b, px_g, px_r = cv2.split(cv2.add(small.astype(np.float32), 1.0))
        total = cv2.add(cv2.add(px_b, px_g), px_r)
        level = cv2.convertScaleAbs(total, alpha=1.0 / 3.0)
        inv_b, inv_r = (cv2.LUT(level, t) for t in self._inv_sigma)
        d_b = cv2.multiply(cv2.subtract(cv2.divide(px_b, total), ref_b), inv_b)
        d_r = cv2.multiply(cv2.subtract(cv2.divide(px_r, total), ref_r), inv_r)
        off = cv2.compare(cv2.magnitude(d_b, d_r), self.model.local_max_distance, cv2.CMP_GT)
        if self.model.local_dark_ratio > 0:
            off = cv2.bitwise_or(off, cv2.compare(total, ref_total * self.model.local_dark_ratio, cv2.CMP_LT))
        if self.model.local_bright_ratio > 0:
            off = cv2.bitwise_or(off, cv2.compare(total, ref_total * self.model.local_bright_ratio, cv2.CMP_GT))
        return off

    def drop_belt_like(self, fg: np.ndarray, small: np.ndarray, region: np.ndarray) -> np.ndarray:
        """``fg`` without the blobs whose mean colour is within ``belt_like_chroma`` local sigmas (chromaticity) and
        ``belt_like_brightness`` (|log| of the brightness ratio) of the belt around them (``SURROUND_PX`` wide, not
        foreground, in ``region``) and no more than ``belt_like_texture`` times as uneven in brightness. A garment, a
        hand or an object differs from the belt beside it (a belt-blue garment by the shading of its folds); plain
        belt that the local tests took for a thing does not. A blob with too little belt around it is kept."""
        model = self.model
        if self._inv_sigma is None or model.belt_like_chroma <= 0 or model.belt_like_brightness <= 0:
            return fg
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        if n <= 1:
            return fg
        belt = cv2.bitwise_and(cv2.bitwise_not(fg), region)
        kernel = np.ones((2 * SURROUND_PX + 1, 2 * SURROUND_PX + 1), np.uint8)
        height, width = fg.shape
        out = fg
        for k in range(1, n):
            x, y, w, h = stats[k, :4]
            x0, y0 = max(0, x - SURROUND_PX), max(0, y - SURROUND_PX)
            x1, y1 = min(width, x + w + SURROUND_PX), min(height, y + h + SURROUND_PX)
            blob = cv2.compare(labels[y0:y1, x0:x1], int(k), cv2.CMP_EQ)
            ring = cv2.bitwise_and(cv2.dilate(blob, kernel), belt[y0:y1, x0:x1])
            if cv2.countNonZero(ring) < MIN_SURROUND_PX or not self._like_belt(small[y0:y1, x0:x1], blob, ring):
                continue
            if out is fg:
                out = fg.copy()
            out[y0:y1, x0:x1][blob > 0] = 0
        return out

    def _like_belt(self, bgr: np.ndarray, blob: np.ndarray, ring: np.ndarray) -> bool:
        """Whether the ``blob`` pixels look like the ``ring`` of belt around them (see :meth:`drop_belt_like`); the
        cheap tests on the mean colours first, the brightness spread only for a blob that passes them."""
        assert self._inv_sigma is not None
        model = self.model
        means = np.array([cv2.mean(bgr, mask=m)[:3] for m in (blob, ring)])
        level, chroma = chromaticity(means)
        brightness = level + 1.0  # (B+G+R)/3 of the +1 pixels
        if abs(np.log(brightness[0] / brightness[1])) >= model.belt_like_brightness:
            return False
        band = min(255, int(brightness[1]))
        d_b, d_r = (chroma[0] - chroma[1]) * (self._inv_sigma[0][band, 0], self._inv_sigma[1][band, 0])
        if np.hypot(d_b, d_r) >= model.belt_like_chroma:
            return False
        grey = cv2.transform(bgr, np.full((1, 3), 1.0 / 3.0, np.float32))
        blob_sd, ring_sd = (float(cv2.meanStdDev(grey, mask=m)[1][0, 0]) for m in (blob, ring))
        return blob_sd <= model.belt_like_texture * max(ring_sd, 1.0)

    def mask(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(foreground, belt region, local belt BGR float32) of one frame; FrameError if no belt is in view."""
        distance = self.lookup.distance_map(small)
        level = cv2.transform(small, np.full((1, 3), 1.0 / 3.0, np.float32))
        sure = cv2.bitwise_and(cv2.threshold(distance, self.lookup.sure_level, 255, cv2.THRESH_BINARY_INV)[1],
                               self.keep)
        sure = self.bright_enough(sure, level)
        region = self.belt_region(sure)
        sure = cv2.bitwise_and(sure, region)
        share = cv2.countNonZero(sure) / max(1, cv2.countNonZero(region))
        if share < MIN_BELT_SHARE:
            # black and saturated frames never get here (BeltSegmenter.segment refuses them first)
            level = float(np.mean(cv2.mean(small)[:3]))
            raise FrameError(f"frame unusable (no belt in view: {share:.1%} of the belt region looks like belt, "
                             f"mean level {level:.0f}): frame skipped")
        belt_grid = self.local_belt(small, sure)
        fg = cv2.threshold(distance, self.lookup.max_level, 255, cv2.THRESH_BINARY)[1]
        if self._inv_sigma is not None:
            fg = cv2.bitwise_or(fg, self.off_local_colour(small, belt_grid))
        fg = cv2.medianBlur(fg, MEDIAN_PX)
        belt = cv2.resize(belt_grid, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)
        fg = cv2.bitwise_and(fg, region)
        if self._strip_kernel is not None:
            fg = drop_edge_strips(fg, region, self._strip_kernel)
        return fg, region, belt


def drop_edge_strips(fg: np.ndarray, region: np.ndarray, across: np.ndarray) -> np.ndarray:
    """``fg`` without the blobs that lie wholly along the belt region's edges, never reaching further across the belt
    than the ``across`` kernel (a line across the belt): a rail's bright edge or its shadow, which the region's
    straight edges leave in view where the belt's edge wanders. A blob that reaches into the belt further than that
    (a garment, or an arm reaching in over the rail) is kept whole: its outline and where it enters stay as they are."""
    inner = cv2.bitwise_and(cv2.erode(region, across), fg)
    n, labels = cv2.connectedComponents(fg, connectivity=8)
    if n <= 1:
        return fg
    keep = np.zeros(n, np.uint8)
    keep[np.unique(labels[inner > 0])] = 255  # inner lies within fg: never the background's label 0
    return keep[labels]
