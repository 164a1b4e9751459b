"""The belt's colour: which pixels are belt, learned from frames of the belt itself.

A coloured belt (the usual blue or green) keeps its chromaticity ``(b, r) = (B, R) / (B + G + R)``
under shade, sun patches and a garment's shadow; only its brightness changes. Garments of almost
any colour, black and navy included, have another chromaticity. So the model is, per brightness
band (``I = (B + G + R) / 3``), a 2-D Gaussian of the belt's chromaticity: a pixel is belt when its
Mahalanobis distance to the band's Gaussian is small. Dark pixels have noisy chromaticity, so each
band has its own spread.

Fitting must survive garments, rails and people in the frames: a robust Gaussian (the densest half
of the pixels, as the minimum-covariance-determinant estimator finds it, then reweighted at 3 sigma)
starts in the most populated band (belt there outnumbers the rest) and grows band by band into darker
and brighter ones, each starting from its neighbour's fit, so it locks onto the belt's mode and not
onto a garment's. A band whose fit strays from its neighbour (too few belt pixels, another mean, a far
wider spread) copies its neighbour instead (widened towards the dark end).

At run time the model is a 64 x 64 x 64 BGR lookup table of distances (one indexed read per pixel,
0.8 ms for a 480 x 270 frame on one core).
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import Field, model_validator

from sorting.config import StrictModel
from sorting.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_EDGES = (0, 10, 16, 22, 30, 40, 52, 66, 84, 106, 134, 170, 256)
LUT_BINS = 64  # per channel: 4 grey levels a bin (the index keeps the top 6 bits)
DISTANCE_SCALE = 16.0  # lookup table value = distance x scale, saturated at 255
TRIM_SIGMA = 3.0
MIN_BAND_PIXELS = 200
MIN_BAND_INLIERS = 0.3  # share of a band's pixels that must be belt for its own fit to count
NOISE_GROWTH = 4.0  # a darker band's covariance grows with (brightness ratio)^2, at most this much a band


class BeltColourConfig(StrictModel):
    """A fitted belt colour: per brightness band the belt's chromaticity mean and covariance.

    ``max_distance``: above it a pixel is not belt (foreground). ``sure_distance``: below it a pixel
    is surely belt (used to estimate the belt's colour around each garment in each frame).
    ``local_sigma``: per band, the spread (b, r) of a belt pixel's chromaticity around the belt's colour
    next to it in the same frame (far tighter than across frames: sun, shade and the camera's white
    balance move the whole belt); a pixel more than ``local_max_distance`` of them from its local belt
    is foreground (a navy garment on a blue belt); so is a pixel darker than ``local_dark_ratio`` times
    the belt beside it (a black garment, whose chromaticity is noise), or brighter than ``local_bright_ratio``
    times it (a light-blue garment: the belt's chromaticity, but the belt is never that bright beside itself).
    ``edge_strip_px``: blobs that never reach further into the belt than this from its region's edges are dropped
    (:func:`~sorting.serving.colour_foreground.drop_edge_strips`). ``belt_like_chroma`` and ``belt_like_brightness``:
    a blob whose mean colour differs from the belt just around it by less than both, and whose brightness varies
    no more than ``belt_like_texture`` times as much as the belt's there, is dropped: where a patch of
    belt is not surely belt (its distance to the model lies between ``sure_distance`` and ``max_distance``), the
    local belt colour is spread from further away and the local tests can call plain belt a thing
    (:meth:`~sorting.serving.colour_foreground.ColourForeground.drop_belt_like`).
    Empty ``local_sigma``: no local test. Defaults were chosen on the development photos
    (benchmarks/belt_split.json; ``local_bright_ratio`` by scene cross-validation, serving/REAL_BELT.md).
    """

    intensity_edges: list[float] = Field(default_factory=lambda: list(DEFAULT_EDGES))
    means: list[tuple[float, float]]
    covariances: list[tuple[float, float, float]]  # var_b, cov_br, var_r
    max_distance: float = Field(default=6.0, gt=0, le=15)
    sure_distance: float = Field(default=2.0, gt=0, le=15)
    local_sigma: list[tuple[float, float]] = Field(default_factory=list)
    local_max_distance: float = Field(default=6.0, gt=0)
    local_dark_ratio: float = Field(default=0.5, ge=0, lt=1)
    local_bright_ratio: float = Field(default=1.6, ge=0)  # 0: no brightness test
    # a blob lying wholly within this many (full-resolution) px of the belt region's edges, measured across the belt,
    # is a rail's edge, a bracket or a shadow showing, not a thing on the belt (0: kept; calibrate --belt sets it)
    edge_strip_px: int = Field(default=0, ge=0)
    # a blob whose mean colour is this close to the belt just around it, in chromaticity (local sigmas) and in
    # brightness (|log| of the ratio), is belt the local tests took for a thing. On the development photos of the
    # conveyor, no garment, hand or object blob came within 5 sigmas and 0.17 of its surroundings (5th percentiles),
    # while a third of the blobs on nothing labelled did. Opt in with 2.0; 0 (off) by default, because with the whole
    # set-up run again on what it leaves, one CV partition and a features head on the busy scene each found a garment
    # or more fewer (serving/REAL_BELT.md)
    belt_like_chroma: float = Field(default=0.0, ge=0)
    belt_like_brightness: float = Field(default=0.2, ge=0)
    # ... and as smooth: its brightness varies at most this many times as much as the belt's around it (a crumpled
    # belt-blue garment's folds shade it: 1.65 times, where plain belt taken for a thing was 0.3-1.1 times)
    belt_like_texture: float = Field(default=1.3, gt=0)

    @model_validator(mode="after")
    def _shapes(self) -> BeltColourConfig:
        n = len(self.intensity_edges) - 1
        if n < 1 or len(self.means) != n or len(self.covariances) != n:
            raise ValueError(f"belt_colour: {len(self.intensity_edges)} edges need {n} means and covariances, "
                             f"got {len(self.means)} and {len(self.covariances)}")
        if self.local_sigma and (len(self.local_sigma) != n or min(min(v) for v in self.local_sigma) <= 0):
            raise ValueError(f"belt_colour.local_sigma needs {n} positive (b, r) pairs")
        if any(b <= a for a, b in zip(self.intensity_edges, self.intensity_edges[1:])):
            raise ValueError("belt_colour.intensity_edges must increase")
        for var_b, cov, var_r in self.covariances:
            if var_b <= 0 or var_r <= 0 or var_b * var_r <= cov * cov:
                raise ValueError("belt_colour.covariances must be positive definite (var_b, cov_br, var_r)")
        return self


def chromaticity(pixels_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brightness ``(B+G+R)/3`` and chromaticity ``(B, R) / (B+G+R)`` of (N, 3) BGR pixels (+1 per channel)."""
    px = pixels_bgr.reshape(-1, 3).astype(np.float32) + 1.0
    total = px.sum(axis=1)
    return total / 3.0 - 1.0, np.stack([px[:, 0] / total, px[:, 2] / total], axis=1)


def _truncated_variance(q: float) -> float:
    """Variance share of a 2-D standard Gaussian kept within squared distance ``q`` (a consistency factor)."""
    inside = 1.0 - np.exp(-q / 2)
    return (1.0 - np.exp(-q / 2) * (1.0 + q / 2)) / inside


def _robust_gaussian(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The densest half of ``x`` near the start (concentration steps as in FastMCD), made consistent, then
    reweighted at TRIM_SIGMA; (mean, covariance, share of x within TRIM_SIGMA) or None if too few points."""
    if len(x) < MIN_BAND_PIXELS:
        return None
    h = len(x) // 2
    q_half = -2.0 * np.log(0.5)  # squared distance holding half of a 2-D Gaussian
    for _ in range(20):
        d = x - mean
        dist = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        near = np.argpartition(dist, h)[:h]
        new_mean = x[near].mean(axis=0)
        new_cov = np.cov(x[near].T) + np.eye(2) * 1e-7
        converged = np.allclose(new_mean, mean, atol=1e-5) and np.allclose(new_cov, cov, rtol=1e-3)
        mean, cov = new_mean, new_cov
        if converged:
            break
    cov = cov / _truncated_variance(q_half)
    d = x - mean
    keep = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) < TRIM_SIGMA**2
    if keep.sum() < MIN_BAND_PIXELS // 4:
        return None
    mean = x[keep].mean(axis=0)
    cov = np.cov(x[keep].T) / _truncated_variance(TRIM_SIGMA**2) + np.eye(2) * 1e-7
    return mean, cov, float(keep.mean())


def _shaped_gaussian(x: np.ndarray, mean: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The belt's mean in a band next to a fitted one, and its covariance as ``shape`` times a scale in
    [1/2, 2]: the shape is not refitted, so black garments in a dark band cannot stretch it towards grey.
    None when too few pixels of the band lie near the belt colour."""
    if len(x) < MIN_BAND_PIXELS:
        return None
    inv = np.linalg.inv(shape)
    for _ in range(10):
        d = x - mean
        dist = np.einsum("ni,ij,nj->n", d, inv, d)
        keep = dist < TRIM_SIGMA**2
        if keep.sum() < max(MIN_BAND_PIXELS // 4, MIN_BAND_INLIERS * len(x)):
            return None
        mean = x[keep].mean(axis=0)
    scale = float(np.clip(np.median(dist[keep]) / (-2.0 * np.log(0.5)), 0.5, 2.0))
    return mean, shape * scale


def fit_belt_colour(pixels_bgr: np.ndarray, *, edges: tuple[float, ...] = DEFAULT_EDGES,
                    max_distance: float = 6.0, sure_distance: float = 2.0) -> BeltColourConfig:
    """Fit the belt's colour to pixels of the belt region (garments on it are allowed, as a minority)."""
    brightness, chroma = chromaticity(pixels_bgr)
    n = len(edges) - 1
    band = np.clip(np.searchsorted(np.asarray(edges), brightness, side="right") - 1, 0, n - 1)
    counts = np.bincount(band, minlength=n)
    start = int(np.argmax(counts))
    if counts[start] < MIN_BAND_PIXELS:
        raise DataError(f"too few belt pixels to learn the belt's colour ({int(counts.sum())})")
    x = chroma[band == start]
    median = np.median(x, axis=0)
    mad = np.median(np.abs(x - median), axis=0) * 1.4826 + 1e-3
    first = _robust_gaussian(x, median, np.diag(mad**2))
    if first is None:
        raise DataError("the belt region has no dominant colour: is the belt in view and mostly free?")
    means, covs = np.zeros((n, 2)), np.zeros((n, 2, 2))
    means[start], covs[start] = first[0], first[1]
    centres = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
    for step in (1, -1):
        k = start + step
        while 0 <= k < n:
            prev = k - step
            # the neighbour's shape, wider in darker bands (chromaticity noise grows as 1 / brightness)
            shape = covs[prev] * float(np.clip((centres[prev] / centres[k]) ** 2, 1.0, NOISE_GROWTH))
            fit = _shaped_gaussian(chroma[band == k], means[prev], shape)
            if fit is not None and _mahalanobis(fit[0], means[prev], shape) <= 3.0:
                means[k], covs[k] = fit
            else:
                means[k], covs[k] = means[prev], shape
            k += step
    log.info("belt colour: chromaticity (b, r) %s in the most common brightness band %g-%g",
             np.round(means[start], 3).tolist(), edges[start], edges[start + 1])
    return BeltColourConfig(
        intensity_edges=[float(e) for e in edges],
        means=[(round(float(m[0]), 5), round(float(m[1]), 5)) for m in means],
        covariances=[(float(c[0, 0]), float(c[0, 1]), float(c[1, 1])) for c in covs],
        max_distance=max_distance, sure_distance=sure_distance,
    )


def colour_from_grey(cfg: BeltColourConfig) -> float:
    """How far the belt's chromaticity lies from grey (1/3, 1/3), the median over its bands."""
    means = np.asarray(cfg.means)
    return float(np.median(np.linalg.norm(means - 1.0 / 3.0, axis=1)))


def band_index(cfg: BeltColourConfig, brightness: np.ndarray) -> np.ndarray:
    """The brightness band of each brightness value."""
    edges = np.asarray(cfg.intensity_edges)
    return np.clip(np.searchsorted(edges, brightness, side="right") - 1, 0, len(edges) - 2)


def _mahalanobis(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    d = x - mean
    return float(np.sqrt(d @ np.linalg.inv(cov) @ d))


def distances(cfg: BeltColourConfig, pixels_bgr: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each BGR pixel to the belt model (exact, for fitting and tests)."""
    brightness, chroma = chromaticity(pixels_bgr)
    band = band_index(cfg, brightness)
    means = np.asarray(cfg.means)
    c = np.asarray(cfg.covariances)
    covs = np.stack([np.stack([c[:, 0], c[:, 1]], 1), np.stack([c[:, 1], c[:, 2]], 1)], 1)
    d = chroma - means[band]
    return np.sqrt(np.einsum("ni,nij,nj->n", d, np.linalg.inv(covs)[band], d))


class BeltColourLookup:
    """The fitted model as a BGR lookup table (6 bits a channel) of the distance to the belt colour."""

    def __init__(self, cfg: BeltColourConfig) -> None:
        self.cfg = cfg
        centres = np.arange(LUT_BINS, dtype=np.float32) * (256 // LUT_BINS) + (256 // LUT_BINS - 1) / 2
        b, g, r = np.meshgrid(centres, centres, centres, indexing="ij")
        grid = np.stack([b.ravel(), g.ravel(), r.ravel()], axis=1)
        d = distances(cfg, grid) * DISTANCE_SCALE
        self._table = np.clip(np.round(d), 0, 255).astype(np.uint8)  # index (b << 12) | (g << 6) | r
        self.max_level = int(min(255, round(cfg.max_distance * DISTANCE_SCALE)))
        self.sure_level = int(min(255, round(cfg.sure_distance * DISTANCE_SCALE)))

    def distance_map(self, image_bgr: np.ndarray) -> np.ndarray:
        """uint8 image: the distance to the belt colour x DISTANCE_SCALE (255: 16 or more)."""
        q = np.right_shift(image_bgr, 2)
        index = q[..., 0].astype(np.int32)
        index <<= 6
        index |= q[..., 1]
        index <<= 6
        index |= q[..., 2]
        return self._table[index]
