"""The one preprocessing function: image (uint8, HxWx3) -> normalised float32 CHW tensor.

Evaluation, training (after augmentation), ONNX export metadata and serving all call
:func:`preprocess` / :func:`preprocess_batch` with a :class:`PreprocessConfig`; the config
travels inside checkpoints and ONNX ``metadata_props`` so train/serve skew cannot happen.
BGR->RGB conversion happens here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from sorting.config import StrictModel, build_config

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# EfficientNet-Lite weights expect (x - 127) / 128 per channel.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
# A garment crop is its bounding box grown by this share of its width/height on each side.
# The synthetic crop dataset and the sorter both cut crops this way: a model trained on one
# margin sees different belt/garment proportions (and higher OOD energies) on another.
GARMENT_CROP_MARGIN = 0.10


class PreprocessConfig(StrictModel):
    """How an image becomes model input. Mean/std are in 0..255 pixel units, RGB order."""

    input_size: int = 224
    resize: Literal["letterbox", "stretch", "center_crop"] = "letterbox"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    colour_order: Literal["RGB"] = "RGB"
    pad_value: int = 127

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessConfig":
        return build_config(cls, json.loads(text), "preprocessing metadata")


def grow_box(
    bbox: tuple[int, int, int, int], margin: float = GARMENT_CROP_MARGIN
) -> tuple[int, int, int, int]:
    """Box (x, y, w, h) grown by ``margin`` of its width/height on each side (may leave the image)."""
    x, y, w, h = bbox
    mx, my = int(round(w * margin)), int(round(h * margin))
    return x - mx, y - my, w + 2 * mx, h + 2 * my


def garment_crop_box(shape: tuple[int, ...], bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The box (x, y, w, h) of :func:`garment_crop` in an image of ``shape`` (grown, clipped)."""
    x, y, w, h = grow_box(bbox)
    x0, y0 = max(0, x), max(0, y)
    return x0, y0, min(shape[1], x + w) - x0, min(shape[0], y + h) - y0


def garment_crop(image: np.ndarray, bbox: tuple[int, int, int, int]) -> np.ndarray:
    """The classifier's view of a garment: its box grown by :data:`GARMENT_CROP_MARGIN`, clipped to the image."""
    x, y, w, h = garment_crop_box(image.shape, bbox)
    return image[y : y + h, x : x + w]


def resize_to_input(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resize a uint8 HxWx3 image to ``cfg.input_size`` square with ``cfg.resize``."""
    size = cfg.input_size
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("cannot preprocess an empty image")
    if cfg.resize == "stretch":
        interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
        return cv2.resize(image, (size, size), interpolation=interp)
    if cfg.resize == "center_crop":
        scale = size / min(h, w)
    else:  # letterbox
        scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    if cfg.resize == "center_crop":
        top, left = (nh - size) // 2, (nw - size) // 2
        return resized[top : top + size, left : left + size]
    canvas = np.full((size, size, 3), cfg.pad_value, dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    return canvas


def preprocess(
    image: np.ndarray, cfg: PreprocessConfig, *, input_order: Literal["BGR", "RGB"] = "BGR"
) -> np.ndarray:
    """Turn one uint8 image (OpenCV BGR by default) into a float32 (3, S, S) array."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 image, got shape {image.shape} dtype {image.dtype}")
    resized = resize_to_input(image, cfg)
    if input_order == "BGR":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(cfg.std, dtype=np.float32)
    out = (resized.astype(np.float32) - mean) * inv_std
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess_batch(
    images: Sequence[np.ndarray], cfg: PreprocessConfig, *, input_order: Literal["BGR", "RGB"] = "BGR"
) -> np.ndarray:
    """Stack :func:`preprocess` over a batch: float32 (N, 3, S, S)."""
    if len(images) == 0:
        return np.zeros((0, 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    return np.stack([preprocess(img, cfg, input_order=input_order) for img in images])
