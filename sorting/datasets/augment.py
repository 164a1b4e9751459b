"""Training-time augmentation presets (albumentations 2.x) on RGB uint8 crops.

Training only: evaluation and serving see unaugmented images through ``preprocess()``.
Output stays RGB uint8 of the input's shape; normalisation is ``preprocess()``'s job.

Presets model what changes between conveyor frames: item orientation (any rotation,
either side up), small tilt/perspective, exposure, lamp colour temperature, motion blur
and JPEG artefacts of the camera link. ``colour_safe=True`` (use it whenever the model
has a colour head) keeps photometric changes inside what the line's white-balance
calibration leaves over: no hue/saturation jitter, only a narrow colour-temperature band
around the white point and mild brightness/contrast. Without it, a strong warm shift
turns grey into beige and blue into navy, and the colour label becomes a lie.
"""

from __future__ import annotations

import os

# albumentations asks PyPI for a newer version on import; a sorting line is offline, so never ask
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from sorting.errors import ConfigError

PRESETS: tuple[str, ...] = ("none", "flip", "light", "medium", "heavy", "texture")

# Strength per preset. Geometry: rotation (deg), scale, translate (fraction of size),
# perspective scale. Camera: blur sigma, motion-blur kernel, JPEG quality, noise std (fraction of 255).
_GEOMETRY = {
    "light": dict(rotate=15, scale=(0.95, 1.05), translate=0.0, p_affine=0.5, perspective=None),
    "medium": dict(rotate=45, scale=(0.9, 1.1), translate=0.05, p_affine=0.7, perspective=(0.02, 0.06)),
    "heavy": dict(rotate=180, scale=(0.8, 1.2), translate=0.1, p_affine=0.9, perspective=(0.04, 0.1)),
}
_QUALITY = {
    "light": dict(sigma=(0.1, 1.0), motion=None, p_blur=0.1, jpeg=(75, 100), p_jpeg=0.2, noise=None),
    "medium": dict(sigma=(0.1, 1.5), motion=(3, 7), p_blur=0.2, jpeg=(50, 100), p_jpeg=0.3, noise=(0.01, 0.04)),
    "heavy": dict(sigma=(0.1, 2.5), motion=(3, 11), p_blur=0.35, jpeg=(25, 100), p_jpeg=0.5, noise=(0.02, 0.08)),
}
# brightness/contrast limit, colour temperature band (K, must include the 6000 K white point),
# its probability, hue/sat/value shift (None: off)
_PHOTOMETRIC = {
    ("light", True): dict(bc=0.1, kelvin=(5800, 7000), p_kelvin=0.3, hsv=None),
    ("medium", True): dict(bc=0.15, kelvin=(5500, 7500), p_kelvin=0.3, hsv=None),
    ("heavy", True): dict(bc=0.2, kelvin=(5500, 7500), p_kelvin=0.5, hsv=None),
    ("light", False): dict(bc=0.15, kelvin=(4500, 9000), p_kelvin=0.3, hsv=None),
    ("medium", False): dict(bc=0.2, kelvin=(4000, 10000), p_kelvin=0.5, hsv=(8, 20, 10)),
    ("heavy", False): dict(bc=0.3, kelvin=(3000, 15000), p_kelvin=0.7, hsv=(15, 30, 20)),
}


def _geometric(preset: str) -> list[A.BasicTransform]:
    g = _GEOMETRY[preset]
    transforms: list[A.BasicTransform] = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),  # a garment lies on the belt either way up
        A.Affine(
            rotate=(-g["rotate"], g["rotate"]),
            scale=g["scale"],
            translate_percent=(-g["translate"], g["translate"]),
            border_mode=cv2.BORDER_REFLECT_101,  # continues the fabric instead of adding black
            p=g["p_affine"],
        ),
    ]
    if g["perspective"]:
        transforms.append(A.Perspective(scale=g["perspective"], border_mode=cv2.BORDER_REFLECT_101, p=0.3))
    return transforms


def _photometric(preset: str, colour_safe: bool) -> list[A.BasicTransform]:
    c = _PHOTOMETRIC[(preset, colour_safe)]
    transforms: list[A.BasicTransform] = [
        A.RandomBrightnessContrast(brightness_limit=c["bc"], contrast_limit=c["bc"], p=0.5),
        A.PlanckianJitter(mode="blackbody", temperature_limit=c["kelvin"], p=c["p_kelvin"]),
    ]
    if c["hsv"]:
        hue, sat, val = c["hsv"]
        transforms.append(A.HueSaturationValue(hue_shift_limit=hue, sat_shift_limit=sat, val_shift_limit=val, p=0.3))
    return transforms


def _camera(preset: str) -> list[A.BasicTransform]:
    q = _QUALITY[preset]
    blurs: list[A.BasicTransform] = [A.GaussianBlur(sigma_limit=q["sigma"], p=1.0)]
    if q["motion"]:
        blurs.append(A.MotionBlur(blur_limit=q["motion"], p=1.0))  # belt movement during exposure
    transforms: list[A.BasicTransform] = [
        A.OneOf(blurs, p=q["p_blur"]),
        A.ImageCompression(compression_type="jpeg", quality_range=q["jpeg"], p=q["p_jpeg"]),
    ]
    if q["noise"]:
        transforms.append(A.GaussNoise(std_range=q["noise"], p=0.2))
    return transforms


def _texture() -> list[A.BasicTransform]:
    """Close-up fabric photos: any orientation and up to 1.6x zoom (a crop of the weave), no colour,
    blur or JPEG changes: the label lives in the fine texture, which blur and heavy compression erase."""
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(rotate=(-180, 180), scale=(1.0, 1.6), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_REFLECT_101, p=0.9),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.3),
    ]


def build_augmentation(preset: str, *, colour_safe: bool, seed: int | None = None) -> A.Compose:
    """Build a training augmentation pipeline: ``aug(image=rgb_uint8)["image"]``.

    ``preset``: one of :data:`PRESETS` (``none`` is the identity, ``flip`` only mirrors left-right:
    the catalogue recipes that train on cached frozen-backbone features; ``texture`` is geometry-only
    for close-up fabric photos). ``colour_safe``:
    keep photometric changes label-preserving for the colour head. ``seed`` makes the
    random draws reproducible (tests, debugging).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset '{preset}' (expected one of {', '.join(PRESETS)})")
    if preset == "none":
        return A.Compose([], seed=seed)
    if preset == "flip":
        return A.Compose([A.HorizontalFlip(p=0.5)], seed=seed)
    if preset == "texture":
        return A.Compose(_texture(), seed=seed)
    return A.Compose([*_geometric(preset), *_photometric(preset, colour_safe), *_camera(preset)], seed=seed)
