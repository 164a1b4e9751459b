"""Per-fibre surface appearance: weave/knit structure, yarn irregularity, fuzz and sheen.

Each fibre class has its own construction, exaggerated so it survives the camera's
scale (a garment is 90-200 px long and its crop is shrunk to about 96 px for the model,
so structure periods are 9-17 frame px: 4-8 px in the crop, above the resize's blur):

=========== ===========================================================
cotton      plain weave or denim twill (white weft flecks), matte
polyester   smooth, broad specular sheen on folds
wool        knitted V-stitch columns, surface fuzz and a fuzzy outline
viscose     fluid drape (many narrow folds) with soft sheen
polyamide   ripstop grid with moderate sheen
acrylic     coarse rib knit with pills (small bobbles)
linen       coarse irregular weave, slubs (thick yarn streaks), crinkles
silk        satin: very smooth, narrow bright highlights
polycotton  regular diagonal twill, slight sheen
other       terry/boucle loops (bumpy blobs), matte
=========== ===========================================================

The structure is a multiplicative modulation ``mod`` (around 1) plus fold geometry
and sheen parameters; :mod:`sorting.datasets.synth.scene` turns them into pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from sorting.errors import ConfigError


@dataclass(frozen=True)
class Surface:
    """How one fibre looks: structure map plus fold/sheen parameters."""

    mod: np.ndarray  # float32 HxW, multiplicative around 1.0
    fold_wavelength: tuple[float, float]  # px range of drape folds
    fold_depth: float  # shading strength of folds
    crinkle: float  # strength of small sharp wrinkles
    sheen: float  # specular strength (0 = matte)
    sheen_power: float  # highlight sharpness (higher = narrower)
    fuzz: float  # blur + halo of loose fibres (0 = crisp)
    heather: float  # per-pixel colour variation of mixed yarns


def smooth_noise(h: int, w: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise in [-1, 1] with features about ``cell`` px wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(big / 2.0, -1.0, 1.0)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx, yy


def _rotate_coords(xx: np.ndarray, yy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return xx * c + yy * s, -xx * s + yy * c


def _tri(x: np.ndarray) -> np.ndarray:
    """Triangle wave in [-1, 1] with period 1 (sharper than a sine, cheaper than a square)."""
    return 4.0 * np.abs(x - np.floor(x + 0.5)) - 1.0


def _plain_weave(xx, yy, period: float) -> np.ndarray:
    return np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)


def _cotton(h, w, rng):
    xx, yy = _grid(h, w)
    xx, yy = _rotate_coords(xx, yy, rng.uniform(-0.2, 0.2))
    if rng.random() < 0.35:  # denim: steep twill, white weft flecks
        period = rng.uniform(9.0, 11.0)
        twill = _tri((xx + 0.4 * yy) / period)
        flecks = (rng.random((h, w)) < 0.05).astype(np.float32)
        flecks = np.clip(cv2.GaussianBlur(flecks, (5, 5), 1.2) * 3.0, 0.0, 1.0)
        mod = 1.0 + 0.24 * twill + 0.45 * flecks + 0.05 * smooth_noise(h, w, 20, rng)
        return Surface(mod, (45, 90), 0.55, 0.1, 0.0, 1.0, 0.0, 0.05)
    period = rng.uniform(10.0, 12.0)
    mod = 1.0 + 0.26 * _plain_weave(xx, yy, period) + 0.07 * smooth_noise(h, w, 14, rng)
    return Surface(mod, (40, 80), 0.55, 0.15, 0.0, 1.0, 0.0, 0.03)


def _polyester(h, w, rng):
    mod = 1.0 + 0.015 * smooth_noise(h, w, 3, rng)
    return Surface(mod, (70, 140), 0.5, 0.0, rng.uniform(0.35, 0.5), rng.uniform(1.6, 2.4), 0.0, 0.0)


def _wool(h, w, rng):
    xx, yy = _grid(h, w)
    col_w = rng.uniform(11.0, 14.0)
    row_h = col_w * rng.uniform(0.7, 0.85)
    local = xx / col_w - np.floor(xx / col_w)
    chevron = np.sin(2 * np.pi * (yy / row_h + 1.1 * np.abs(local - 0.5)))
    column = np.cos(2 * np.pi * xx / col_w)
    fuzz = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.9)
    mod = 1.0 + 0.3 * chevron + 0.1 * column + 0.12 * fuzz
    return Surface(mod, (60, 120), 0.4, 0.0, 0.0, 1.0, rng.uniform(0.8, 1.0), 0.06)


def _viscose(h, w, rng):
    mod = 1.0 + 0.02 * smooth_noise(h, w, 4, rng)
    return Surface(mod, (14, 26), 0.9, 0.0, rng.uniform(0.22, 0.32), rng.uniform(1.8, 2.5), 0.0, 0.0)


def _polyamide(h, w, rng):
    xx, yy = _grid(h, w)
    xx, yy = _rotate_coords(xx, yy, rng.uniform(-0.15, 0.15))
    cell = rng.uniform(14.0, 17.0)
    lines = np.maximum(np.abs(_tri(xx / cell)), np.abs(_tri(yy / cell)))
    grid = np.clip((lines - 0.72) / 0.28, 0.0, 1.0)
    mod = 1.0 + 0.38 * grid - 0.08 + 0.03 * _plain_weave(xx, yy, 3.0)
    return Surface(mod.astype(np.float32), (50, 100), 0.45, 0.0, rng.uniform(0.2, 0.3), 3.0, 0.0, 0.0)


def _acrylic(h, w, rng):
    xx, yy = _grid(h, w)
    period = rng.uniform(10.0, 13.0)
    ribs = _tri(xx / period + 0.03 * smooth_noise(h, w, 30, rng))
    pills = (rng.random((h, w)) < 0.012).astype(np.float32)
    pills = cv2.GaussianBlur(pills, (7, 7), 1.6) * 12.0
    mod = 1.0 + 0.3 * ribs + 0.35 * np.clip(pills, 0, 1.5) - 0.04
    return Surface(mod, (60, 120), 0.45, 0.0, 0.0, 1.0, 0.35, 0.03)


def _linen(h, w, rng):
    xx, yy = _grid(h, w)
    period = rng.uniform(9.0, 11.0)
    jitter = 0.5 * smooth_noise(h, w, 12, rng)
    weave = _plain_weave(xx + jitter * 2.0, yy, period)
    slubs = np.zeros((h, w), np.float32)
    for _ in range(int(h * w / 450)):
        x0, y0 = rng.uniform(-20, w), rng.uniform(0, h)
        length = rng.uniform(12, 40)
        thick = int(rng.integers(3, 5))
        sign = 1.0 if rng.random() < 0.6 else -1.0
        cv2.line(slubs, (int(x0), int(y0)), (int(x0 + length), int(y0 + rng.uniform(-1, 1))), sign, thick)
    slubs = cv2.GaussianBlur(slubs, (3, 3), 0.8)
    mod = 1.0 + 0.14 * weave + 0.24 * slubs + 0.05 * smooth_noise(h, w, 8, rng)
    return Surface(mod, (35, 70), 0.5, rng.uniform(0.7, 1.0), 0.0, 1.0, 0.0, 0.08)


def _silk(h, w, rng):
    _, yy = _grid(h, w)
    floats = 0.03 * np.sin(2 * np.pi * yy / 3.0)
    mod = 1.0 + floats + 0.01 * smooth_noise(h, w, 6, rng)
    return Surface(mod, (40, 80), 0.5, 0.0, rng.uniform(0.85, 1.0), rng.uniform(10.0, 16.0), 0.0, 0.0)


def _polycotton(h, w, rng):
    xx, yy = _grid(h, w)
    period = rng.uniform(11.0, 13.5)
    twill = _tri((xx + yy) / period)
    mod = 1.0 + 0.26 * twill + 0.03 * smooth_noise(h, w, 16, rng)
    return Surface(mod, (45, 90), 0.5, 0.0, rng.uniform(0.08, 0.14), 2.5, 0.0, 0.0)


def _other(h, w, rng):
    loops = rng.random((h, w)).astype(np.float32)
    loops = cv2.GaussianBlur(loops, (0, 0), 2.6)
    loops = (loops - loops.mean()) / (loops.std() + 1e-6)
    mod = 1.0 + 0.22 * np.clip(loops, -2.0, 2.0)
    return Surface(mod, (50, 100), 0.5, 0.0, 0.0, 1.0, 0.15, 0.02)


_FIBRES: dict[str, Callable[[int, int, np.random.Generator], Surface]] = {
    "cotton": _cotton,
    "polyester": _polyester,
    "wool": _wool,
    "viscose": _viscose,
    "polyamide": _polyamide,
    "acrylic": _acrylic,
    "linen": _linen,
    "silk": _silk,
    "polycotton": _polycotton,
    "other": _other,
}

FIBRES: tuple[str, ...] = tuple(_FIBRES)


def check_fibres(classes: tuple[str, ...]) -> None:
    """Raise ConfigError if the taxonomy names fibres the renderer cannot draw."""
    unknown = [c for c in classes if c not in _FIBRES]
    if unknown:
        raise ConfigError(f"synthetic world cannot render fibre class(es) {unknown}; supported: {', '.join(FIBRES)}")


def make_surface(fibre: str, h: int, w: int, rng: np.random.Generator) -> Surface:
    """Structure and sheen of ``fibre`` for an ``h`` x ``w`` local garment image."""
    surface = _FIBRES[fibre](h, w, rng)
    return replace(surface, mod=surface.mod.astype(np.float32))
