"""Augmentation presets: shape/dtype kept, reproducible, colour-safe keeps the hue."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sorting.datasets.augment import PRESETS, build_augmentation
from sorting.errors import ConfigError


def _fabric_rgb(colour: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A textured patch of one colour (RGB uint8), 72x96: not square, so shape bugs show."""
    rng = np.random.default_rng(seed)
    shade = cv2.GaussianBlur(rng.normal(1.0, 0.08, (72, 96)).astype(np.float32), (5, 5), 1)
    return np.clip(np.array(colour, np.float32) * shade[:, :, None], 0, 255).astype(np.uint8)


def _mean_hue_deg(rgb: np.ndarray) -> float:
    """Circular mean hue in degrees (saturation-weighted)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    angle = hsv[..., 0] / 256.0 * 2 * np.pi
    weight = hsv[..., 1]
    return float(np.degrees(np.arctan2((np.sin(angle) * weight).sum(), (np.cos(angle) * weight).sum())) % 360)


def _hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("colour_safe", [True, False])
def test_presets_keep_shape_and_dtype(preset: str, colour_safe: bool) -> None:
    aug = build_augmentation(preset, colour_safe=colour_safe, seed=0)
    image = _fabric_rgb((40, 90, 200))
    for _ in range(5):
        out = aug(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8


def test_seed_makes_augmentation_reproducible() -> None:
    image = _fabric_rgb((200, 60, 40))
    first = [build_augmentation("heavy", colour_safe=False, seed=7)(image=image)["image"] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    aug = build_augmentation("heavy", colour_safe=False, seed=7)
    assert any(not np.array_equal(aug(image=image)["image"], image) for _ in range(3))


def test_none_preset_is_identity() -> None:
    image = _fabric_rgb((10, 200, 30))
    np.testing.assert_array_equal(build_augmentation("none", colour_safe=True)(image=image)["image"], image)


def test_colour_safe_keeps_mean_hue_and_unsafe_does_not() -> None:
    """Over many draws of the heavy preset, colour-safe hue drift stays small; unsafe drifts further."""
    worst = {}
    for colour_safe in (True, False):
        aug = build_augmentation("heavy", colour_safe=colour_safe, seed=1)
        drifts = []
        for colour in [(200, 40, 40), (40, 160, 60), (40, 60, 180), (180, 150, 40)]:
            image = _fabric_rgb(colour)
            reference = _mean_hue_deg(image)
            drifts += [_hue_distance(_mean_hue_deg(aug(image=image)["image"]), reference) for _ in range(30)]
        worst[colour_safe] = float(np.percentile(drifts, 95))
    assert worst[True] < 8.0, worst
    assert worst[False] > 2 * worst[True], worst


def test_unknown_preset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown augmentation preset 'extreme'"):
        build_augmentation("extreme", colour_safe=True)
