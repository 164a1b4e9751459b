"""Colour classes of the synthetic world: prototypes and within-class shade sampling.

Each plain colour class is a box in CIE Lab (OpenCV float convention: L 0..100, a/b
about -127..127) around its prototype. The boxes are sized so that shades vary the way
real garments do (light/dark navy, beige to brown) but never reach a neighbour class:
navy stays darker and bluer than blue and more saturated than black, grey stays well
below white in lightness. ``multicolour`` garments combine two or three plain classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sorting.errors import ConfigError

MULTICOLOUR = "multicolour"


@dataclass(frozen=True)
class LabBox:
    """Centre (prototype) and half-ranges of one colour class in Lab."""

    centre: tuple[float, float, float]
    half: tuple[float, float, float]


# Centres were chosen from typical garment colours; half-ranges keep neighbours apart.
COLOUR_BOXES: dict[str, LabBox] = {
    "white": LabBox((94.0, 0.0, 2.0), (3.0, 1.5, 3.0)),
    "grey": LabBox((52.0, 0.0, -1.0), (13.0, 1.5, 2.5)),
    "black": LabBox((11.0, 0.0, -1.0), (4.0, 1.5, 2.0)),
    "navy": LabBox((20.0, 9.0, -30.0), (4.0, 4.0, 5.0)),
    "blue": LabBox((45.0, 8.0, -50.0), (8.0, 6.0, 8.0)),
    "green": LabBox((48.0, -40.0, 26.0), (12.0, 9.0, 10.0)),
    "yellow_orange": LabBox((76.0, 14.0, 74.0), (8.0, 10.0, 10.0)),
    "red": LabBox((43.0, 62.0, 40.0), (6.0, 8.0, 10.0)),
    "pink": LabBox((72.0, 36.0, 2.0), (7.0, 8.0, 6.0)),
    "purple": LabBox((32.0, 40.0, -36.0), (7.0, 7.0, 7.0)),
    "brown_beige": LabBox((55.0, 10.0, 26.0), (17.0, 4.0, 6.0)),
}


_XYZ_TO_RGB = np.array(
    [[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560], [0.0556434, -0.2040259, 1.0572252]]
)
_D65 = np.array([0.950456, 1.0, 1.088754])


def lab_to_bgr(lab: np.ndarray) -> np.ndarray:
    """Convert (..., 3) Lab (L 0..100, D65) to float32 sRGB in BGR order, 0..255.

    Plain numpy: cv2.cvtColor has a large fixed cost per call, and shades are drawn one by one.
    """
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0)) * _D65
    rgb = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    srgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb ** (1 / 2.4) - 0.055)
    return (srgb[..., ::-1] * 255.0).astype(np.float32)


def prototype_lab(colour: str) -> np.ndarray:
    """Lab prototype of a plain colour class."""
    return np.asarray(COLOUR_BOXES[colour].centre, dtype=np.float32)


def supported_colours() -> tuple[str, ...]:
    return (*COLOUR_BOXES, MULTICOLOUR)


def check_colours(classes: tuple[str, ...]) -> None:
    """Raise ConfigError if the taxonomy names colours the renderer cannot draw."""
    unknown = [c for c in classes if c not in COLOUR_BOXES and c != MULTICOLOUR]
    if unknown:
        raise ConfigError(
            f"synthetic world cannot render colour class(es) {unknown}; supported: {', '.join(supported_colours())}"
        )


def sample_shade(colour: str, rng: np.random.Generator) -> np.ndarray:
    """One BGR shade (float32, 0..255) of a plain colour class."""
    box = COLOUR_BOXES[colour]
    offset = rng.uniform(-1.0, 1.0, size=3) * np.asarray(box.half)
    return lab_to_bgr(np.asarray(box.centre) + offset)


def multicolour_parts(rng: np.random.Generator, k: int) -> list[str]:
    """Pick ``k`` distinct, clearly different plain classes for a multicolour garment."""
    names = list(COLOUR_BOXES)
    picked: list[str] = []
    while len(picked) < k:
        name = names[int(rng.integers(len(names)))]
        if name in picked:
            continue
        lab = prototype_lab(name)
        if all(np.linalg.norm(lab - prototype_lab(p)) > 35.0 for p in picked):
            picked.append(name)
    return picked
