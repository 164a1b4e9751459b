"""White balance and exposure correction from a white/grey reference patch on the belt.

Factory light is warm and changes over the day; a colour classifier trained under neutral
light then calls white garments "yellow". A neutral reference patch (a painted strip of the
belt or a card) in view of the camera gives per-channel gains: ``gain_c = target / patch_c``
split into a white balance (green channel = 1) and one exposure gain. The correction is
applied to the crops that go to the classifier and to the downscaled frame the segmenter
sees (one diagonal ``cv2.transform``), never to the full frame, so it costs next to nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import yaml

from sorting.config import read_yaml
from sorting.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Roi = tuple[int, int, int, int]  # x, y, width, height in full-resolution pixels


@dataclass(frozen=True)
class ColourGains:
    """Per-channel white balance (B, G, R; G = 1) and an overall exposure gain."""

    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exposure: float = 1.0
    n_frames: int = 0
    patch_bgr: tuple[float, float, float] | None = None

    @property
    def total(self) -> np.ndarray:
        return np.asarray(self.white_balance, dtype=np.float32) * np.float32(self.exposure)


class ColourCorrector:
    """Applies :class:`ColourGains` to BGR uint8 images with one ``cv2.transform`` call.

    A diagonal transform rounds and saturates exactly like a per-channel lookup table, at a third
    of the cost of a 3-channel ``cv2.LUT`` (it runs on every frame and every crop).
    """

    def __init__(self, white_balance: Iterable[float] = (1.0, 1.0, 1.0), exposure: float = 1.0) -> None:
        gains = np.asarray(list(white_balance), dtype=np.float32) * np.float32(exposure)
        if gains.shape != (3,) or not np.all(np.isfinite(gains)) or np.any(gains <= 0):
            raise ConfigError(f"colour gains must be 3 positive numbers, got {gains.tolist()}")
        self.gains = gains
        self.identity = bool(np.allclose(gains, 1.0))
        self._matrix = np.diag(gains).astype(np.float32)

    def apply(self, image_bgr: np.ndarray) -> np.ndarray:
        """Corrected copy of a BGR uint8 image (the input itself when gains are 1)."""
        if self.identity:
            return image_bgr
        return cv2.transform(image_bgr, self._matrix)


def _check_roi(roi: Roi, shape: tuple[int, ...]) -> tuple[slice, slice]:
    x, y, w, h = (int(v) for v in roi)
    height, width = shape[:2]
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ConfigError(f"reference patch roi {list(roi)} is outside the {width}x{height} frame")
    return slice(y, y + h), slice(x, x + w)


def patch_colour(frame: np.ndarray, roi: Roi, *, max_patch_spread: float = 25.0, step: int = 2) -> np.ndarray | None:
    """Median BGR of the reference patch in one frame (every ``step``-th pixel), or None when the
    patch is not uniform (10-90 % spread of a channel above ``max_patch_spread``: something covers it)."""
    rows, cols = _check_roi(roi, frame.shape)
    patch = frame[rows, cols][::step, ::step].reshape(-1, 3).astype(np.float32)
    q10, q50, q90 = np.percentile(patch, [10, 50, 90], axis=0)
    if float(np.max(q90 - q10)) > max_patch_spread:
        return None
    return q50


def gains_from_patch(patch_bgr: np.ndarray, target_level: float, n_frames: int = 1) -> ColourGains:
    """Gains mapping a measured patch colour to neutral grey at ``target_level``."""
    patch_bgr = np.asarray(patch_bgr, dtype=np.float64)
    if np.any(patch_bgr < 5.0):
        raise DataError(f"reference patch too dark to calibrate (median BGR {patch_bgr.round(1).tolist()})")
    if np.any(patch_bgr > 254.0):
        log.warning("reference patch is saturated (BGR %s): lower the camera exposure", patch_bgr.round(1).tolist())
    white_balance = patch_bgr[1] / patch_bgr
    return ColourGains(
        white_balance=tuple(round(float(g), 5) for g in white_balance),  # type: ignore[arg-type]
        exposure=round(target_level / float(patch_bgr[1]), 5),
        n_frames=n_frames,
        patch_bgr=tuple(round(float(v), 2) for v in patch_bgr),  # type: ignore[arg-type]
    )


def measure_gains(
    frames: Iterable[np.ndarray],
    roi: Roi,
    *,
    target_level: float = 200.0,
    max_patch_spread: float = 25.0,
) -> ColourGains:
    """Gains that map the reference patch to neutral grey at ``target_level``.

    Per frame the patch colour is the per-channel median of its pixels; frames where the patch
    is not uniform (a garment half over it) are skipped, and the median over the remaining
    frames is used, so a garment fully covering the patch in a minority of frames does not
    move the result.
    """
    samples = []
    n_seen = 0
    for frame in frames:
        n_seen += 1
        colour = patch_colour(frame, roi, max_patch_spread=max_patch_spread, step=1)
        if colour is not None:
            samples.append(colour)
    if not samples:
        raise DataError(
            f"reference patch not usable in any of {n_seen} frames (covered, not uniform, or no frames)"
        )
    return gains_from_patch(np.median(np.stack(samples), axis=0), target_level, len(samples))


class ContinuousWhiteBalance:
    """Follows slow light changes: re-measures the (never covered) reference patch every
    ``every`` frames and smooths the patch colour (EMA), building a new corrector."""

    def __init__(self, roi: Roi, target_level: float, *, every: int = 5, smoothing: float = 0.3) -> None:
        self.roi, self.target_level, self.every, self.smoothing = roi, target_level, every, smoothing
        self._patch: np.ndarray | None = None
        self._count = 0

    def update(self, frame: np.ndarray) -> ColourCorrector | None:
        """A new corrector when it is time to re-measure and the patch is usable, else None."""
        self._count += 1
        if (self._count - 1) % self.every:
            return None
        colour = patch_colour(frame, self.roi, step=4)  # a sparse sample suffices, and it runs every few frames
        if colour is None or np.any(colour < 5.0):
            return None
        a = self.smoothing
        self._patch = colour if self._patch is None else (1 - a) * self._patch + a * colour
        gains = gains_from_patch(self._patch, self.target_level)
        return ColourCorrector(gains.white_balance, gains.exposure)


def write_gains(line_path: str | Path, gains: ColourGains) -> Path:
    """Store ``gains`` in the ``calibration`` section of a line config YAML, keeping every other key.

    The previous file is kept as ``<name>.bak``. YAML comments are not preserved (the fields
    are documented in ``serving/README.md``).
    """
    path = Path(line_path)
    data = read_yaml(path)
    section = dict(data.get("calibration") or {})
    section["white_balance"] = [float(g) for g in gains.white_balance]
    section["exposure_gain"] = float(gains.exposure)
    section["calibrated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data["calibration"] = section
    backup = path.with_name(path.name + ".bak")
    backup.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def calibrate_line(line_path: str | Path, *, source: str | None = None, n_frames: int = 30,
                   max_wait_s: float = 30.0) -> ColourGains:
    """Measure the gains from ``n_frames`` frames of the line's camera (or ``source``) and write them.

    Uses ``calibration.reference_roi`` and ``calibration.target_level`` of the line config.
    """
    from sorting.serving.line_config import load_line_config
    from sorting.serving.sources import open_source

    cfg = load_line_config(line_path)
    roi = cfg.calibration.reference_roi
    if roi is None:
        raise ConfigError(f"{line_path}: set calibration.reference_roi (x, y, w, h of the white/grey patch) first")
    cam = cfg.camera
    frames: list[np.ndarray] = []
    deadline = time.monotonic() + max_wait_s
    with open_source(source or cam.source, fps=cam.fps, width=cam.width, height=cam.height,
                     backoff=cam.reconnect.backoff(), max_frames=n_frames) as src:
        while len(frames) < n_frames and time.monotonic() < deadline:
            frame = src.read(cam.read_timeout_s)
            if frame is not None:
                frames.append(frame.image)
            elif src.exhausted:
                break
    if not frames:
        raise DataError(f"no frames from {source or cam.source} within {max_wait_s:.0f} s")
    gains = measure_gains(frames, roi, target_level=cfg.calibration.target_level)
    write_gains(line_path, gains)
    log.info("calibrated %s from %d frames: white balance %s, exposure %.3f", line_path, gains.n_frames,
             gains.white_balance, gains.exposure)
    return gains
