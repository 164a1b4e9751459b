"""The renderer shared by the crop dataset and the conveyor video.

A garment is rendered once into a :class:`Sprite` (colour, alpha, drop shadow) in its
pose on the belt; a :class:`Scene` owns the belt (a scrolling textured band), the
white reference strip along the top edge, the lens vignette, the illuminant and sensor
noise, and composes sprites into frame pixels. Crops and video frames both go through
:meth:`Scene.belt_region`, :meth:`Scene.paste` and :meth:`Scene.finish`, so a training
crop looks exactly like what the sorter cuts out of a frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sorting.datasets.synth.colours import MULTICOLOUR, multicolour_parts, sample_shade
from sorting.datasets.synth.garments import Silhouette, make_silhouette
from sorting.datasets.synth.textures import Surface, make_surface, smooth_noise

BELT_BGR = (66.0, 70.0, 72.0)  # dark grey rubber belt, under neutral light
REFERENCE_BGR = (206.0, 206.0, 206.0)  # light-grey reference strip (neutral)
REFERENCE_BAND_PX = 30  # height of the reference strip + guard rail along the top edge
SENSOR_NOISE_SIGMA = 2.0


@dataclass(frozen=True)
class ItemSpec:
    """What to render: labels plus the seed that fixes every random choice of the item."""

    fibre: str
    colour: str
    garment: str
    seed: int


@dataclass(frozen=True)
class Sprite:
    """A posed garment: BGR float32 pixels, coverage ``alpha`` and ``shadow`` in [0, 1]."""

    spec: ItemSpec
    silhouette: Silhouette
    bgr: np.ndarray
    alpha: np.ndarray
    shadow: np.ndarray

    keep: np.ndarray  # float32 HxWx3: share of the belt pixel that stays (after shadow and cover)
    over: np.ndarray  # float32 HxWx3: garment light added on top (alpha-premultiplied colour)

    @classmethod
    def build(cls, spec: ItemSpec, silhouette: Silhouette, bgr: np.ndarray, alpha: np.ndarray,
              shadow: np.ndarray) -> "Sprite":
        """Precompute the compositing terms once, so pasting is two array operations per frame."""
        a = alpha[..., None]
        keep = (1.0 - shadow[..., None] * (1.0 - a)) * (1.0 - a)
        keep = np.ascontiguousarray(np.repeat(keep, 3, axis=2), dtype=np.float32)
        over = np.ascontiguousarray(bgr * a, dtype=np.float32)
        return cls(spec, silhouette, bgr, alpha, shadow, keep, over)

    @property
    def size(self) -> tuple[int, int]:
        return self.silhouette.size

    def mask(self) -> np.ndarray:
        """Boolean garment mask (what a perfect segmenter would return)."""
        return self.alpha > 0.5


@dataclass(frozen=True)
class Lighting:
    """Global illuminant: overall intensity and per-channel BGR gains (colour temperature / cast)."""

    intensity: float = 1.0
    gains_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def vector(self) -> np.ndarray:
        return np.asarray(self.gains_bgr, dtype=np.float32) * np.float32(self.intensity)


def colour_temperature_gains(t: float) -> tuple[float, float, float]:
    """BGR gains for a warm (t > 0) or cool (t < 0) illuminant; |t| <= 1 is a strong shift."""
    return (1.0 - 0.22 * t, 1.0 - 0.02 * abs(t), 1.0 + 0.18 * t)


def random_lighting(rng: np.random.Generator) -> Lighting:
    """Everyday lighting variation (no colour cast): used for crops."""
    return Lighting(float(rng.uniform(0.86, 1.12)), colour_temperature_gains(float(rng.uniform(-0.3, 0.3))))


def _colour_field(colour: str, h: int, w: int, surface: Surface, rng: np.random.Generator) -> np.ndarray:
    if colour != MULTICOLOUR:
        field = np.empty((h, w, 3), np.float32)
        field[:] = sample_shade(colour, rng)
    else:
        parts = multicolour_parts(rng, int(rng.integers(2, 4)))
        shades = np.stack([sample_shade(p, rng) for p in parts]).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        style = rng.integers(4)
        if style == 0:  # stripes
            period = rng.uniform(12, 24)
            angle = rng.choice([0.0, np.pi / 2]) + rng.uniform(-0.1, 0.1)
            coord = xx * np.cos(angle) + yy * np.sin(angle)
            index = np.floor(coord / period).astype(np.int64) % len(parts)
        elif style == 1:  # checks
            period = rng.uniform(14, 26)
            index = (np.floor(xx / period) + np.floor(yy / period)).astype(np.int64) % len(parts)
        elif style == 2:  # floral / camouflage print
            blobs = smooth_noise(h, w, rng.uniform(8, 16), rng)
            cuts = np.quantile(blobs, np.linspace(0, 1, len(parts) + 1)[1:-1])  # equal areas per colour
            index = np.digitize(blobs, cuts).astype(np.int64)
        else:  # colour blocks
            split = rng.uniform(0.4, 0.6)
            index = np.where(yy < split * h, 0, 1) if rng.random() < 0.5 else np.where(xx < split * w, 0, 1)
            index = index.astype(np.int64) % len(parts)
        field = shades[index]
    if surface.heather > 0:
        field *= 1.0 + surface.heather * rng.standard_normal((h, w, 1)).astype(np.float32)
    return field


def _fold_shading(h: int, w: int, surface: Surface, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shading (around 1) and specular highlight (0..1) from a random drape height field."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    height = np.zeros((h, w), np.float32)
    lo, hi = surface.fold_wavelength
    drape = rng.uniform(0, np.pi)  # folds run roughly parallel, like cloth dropped on a belt
    for _ in range(int(rng.integers(3, 6))):
        angle = drape + rng.normal(0.0, 0.35)
        wavelength = rng.uniform(lo, hi)
        warp = 6.0 * smooth_noise(h, w, 40, rng)
        phase = (xx * np.cos(angle) + yy * np.sin(angle) + warp) * (2 * np.pi / wavelength)
        height += rng.uniform(0.5, 1.0) * np.sin(phase + rng.uniform(0, 2 * np.pi)) * wavelength / hi
    if surface.crinkle > 0:
        height += surface.crinkle * 0.5 * smooth_noise(h, w, 5, rng)
    light = rng.uniform(0, 2 * np.pi)
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    slope = gx * np.cos(light) + gy * np.sin(light)
    slope /= float(np.percentile(np.abs(slope), 95)) + 1e-6
    slope = np.clip(slope, -1.0, 1.0)
    shading = 1.0 + 0.22 * surface.fold_depth * slope - 0.05 * surface.fold_depth * (height < 0)
    highlight = np.clip(slope, 0.0, 1.0) ** surface.sheen_power if surface.sheen > 0 else np.zeros_like(slope)
    return shading.astype(np.float32), highlight.astype(np.float32)


def render_sprite(spec: ItemSpec) -> Sprite:
    """Render one garment (texture, folds, sheen, fuzz, shadow) in its pose on the belt."""
    rng = np.random.default_rng(spec.seed)
    sil = make_silhouette(spec.garment, rng)
    w, h = sil.local_size
    surface = make_surface(spec.fibre, h, w, rng)
    colour = _colour_field(spec.colour, h, w, surface, rng)
    shading, highlight = _fold_shading(h, w, surface, rng)
    structure = surface.mod[..., None]
    local = colour * structure * shading[..., None]
    local += 28.0 * (structure - 1.0)  # keeps the structure visible on dark fabrics
    local += (235.0 * surface.sheen) * highlight[..., None]
    if surface.fuzz > 0:
        local = cv2.GaussianBlur(local, (0, 0), 0.5 + 0.5 * surface.fuzz)
    pose = sil.pose_matrix()
    bgr = cv2.warpAffine(local, pose, sil.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    alpha = sil.posed_mask().astype(np.float32) / 255.0
    if surface.fuzz > 0:
        halo = cv2.GaussianBlur(alpha, (0, 0), 1.2 + 1.3 * surface.fuzz)
        speckle = rng.uniform(0.2, 1.0, alpha.shape).astype(np.float32)
        alpha = np.maximum(alpha, np.clip(halo * speckle * 1.3 * surface.fuzz, 0.0, 0.85))
    shadow = cv2.GaussianBlur(alpha, (0, 0), 3.0)
    shadow = cv2.warpAffine(shadow, np.float32([[1, 0, 2], [0, 1, 3]]), sil.size) * 0.4
    return Sprite.build(spec, sil, np.clip(bgr, 0.0, 255.0), alpha, shadow)


class Scene:
    """Belt, reference strip, optics and sensor of one camera; deterministic by ``seed``."""

    def __init__(self, width: int, height: int, *, seed: int = 0, belt_period: int = 2048) -> None:
        rng = np.random.default_rng([seed, 101])
        self.width, self.height = width, height
        self.belt_period = belt_period
        self._belt = self._make_belt(height, belt_period + width, rng)
        self._vignette = self._make_vignette(width, height)
        pad = 64
        self._noise = (rng.standard_normal((2, height + pad, width + pad, 3)) * SENSOR_NOISE_SIGMA).astype(np.float32)

    @property
    def reference_roi(self) -> tuple[int, int, int, int]:
        """x, y, w, h of the neutral reference strip (always visible, never covered)."""
        return (8, 4, self.width - 16, REFERENCE_BAND_PX - 12)

    @property
    def belt_top(self) -> int:
        """First frame row garments may cover (below the reference strip and guard rail)."""
        return REFERENCE_BAND_PX + 4

    def _make_belt(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        # The texture is periodic along x (belt_period) so the belt can scroll forever.
        base = np.empty((h, w, 3), np.float32)
        base[:] = BELT_BGR
        grain = rng.standard_normal((h, self.belt_period)).astype(np.float32)
        grain = cv2.GaussianBlur(grain, (0, 0), 0.8) * 5.0
        streaks = cv2.resize(rng.standard_normal((h, 16)).astype(np.float32), (self.belt_period, h)) * 3.0
        mottle = cv2.resize(rng.standard_normal((h // 40 + 2, self.belt_period // 40)).astype(np.float32),
                            (self.belt_period, h), interpolation=cv2.INTER_CUBIC) * 3.0
        tex = grain + streaks + mottle
        tex = np.concatenate([tex, tex[:, : w - self.belt_period]], axis=1)
        base += tex[..., None]
        band = REFERENCE_BAND_PX
        base[: band - 6] = REFERENCE_BGR
        base[: band - 6] += rng.standard_normal((band - 6, w, 1)).astype(np.float32) * 1.5
        base[band - 6 : band] = (38.0, 40.0, 42.0)  # guard rail between strip and belt
        return base

    @staticmethod
    def _make_vignette(w: int, h: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        return np.repeat((1.0 - 0.07 * r2)[..., None], 3, axis=2).astype(np.float32)

    def belt_region(self, x: int, y: int, w: int, h: int, belt_offset: float) -> np.ndarray:
        """Belt pixels (float32 BGR) of the frame region at (x, y), belt moved by ``belt_offset`` px."""
        start = (int(round(-belt_offset)) + x) % self.belt_period
        if 0 <= y and y + h <= self.height and start + w <= self._belt.shape[1]:
            return self._belt[y : y + h, start : start + w].copy()
        # Regions sticking out of the frame (crops at the border) repeat the edge rows.
        rows = np.clip(np.arange(y, y + h), 0, self.height - 1)
        cols = (np.arange(w) + start) % self.belt_period
        return np.ascontiguousarray(self._belt[rows][:, cols])

    @staticmethod
    def paste(canvas: np.ndarray, sprite: Sprite, x: int, y: int) -> None:
        """Composite ``sprite`` with its top-left corner at canvas (x, y); clipped at the borders."""
        sh, sw = sprite.alpha.shape
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(canvas.shape[1], x + sw), min(canvas.shape[0], y + sh)
        if x0 >= x1 or y0 >= y1:
            return
        sx, sy = x0 - x, y0 - y
        region = canvas[y0:y1, x0:x1]
        region *= sprite.keep[sy : sy + y1 - y0, sx : sx + x1 - x0]
        region += sprite.over[sy : sy + y1 - y0, sx : sx + x1 - x0]

    def finish(self, canvas: np.ndarray, x: int, y: int, lighting: Lighting, noise_key: int) -> np.ndarray:
        """Apply vignette (for frame position x, y), illuminant and sensor noise; return uint8 BGR.

        ``canvas`` (float32) is modified in place.
        """
        h, w = canvas.shape[:2]
        vx0, vy0 = int(np.clip(x, 0, self.width - 1)), int(np.clip(y, 0, self.height - 1))
        vig = self._vignette[vy0 : vy0 + h, vx0 : vx0 + w]
        if vig.shape[:2] != (h, w):  # regions sticking out of the frame (crops at the border)
            vig = cv2.resize(vig, (w, h), interpolation=cv2.INTER_LINEAR)
        cv2.multiply(canvas, vig, dst=canvas)
        gains = lighting.vector()
        lit = cv2.multiply(canvas, (float(gains[0]), float(gains[1]), float(gains[2]), 0.0))
        bank = self._noise[noise_key % len(self._noise)]
        pad = bank.shape[0] - self.height
        oy, ox = (noise_key * 7919) % pad, (noise_key * 104729) % pad
        if h <= bank.shape[0] - oy and w <= bank.shape[1] - ox:
            cv2.add(lit, bank[oy : oy + h, ox : ox + w], dst=lit)
        return cv2.convertScaleAbs(cv2.max(lit, 0.0))  # saturates at 255; no negatives after max()
