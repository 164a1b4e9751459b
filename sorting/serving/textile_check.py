"""Is it cloth? A check of every garment detection by an ImageNet classifier, before it can reach a product bin.

The belt model finds everything that is not belt: garments, but also phones, earbud cases, a computer mouse, a
ruler, tape. :mod:`~sorting.serving.non_garment` tells many of them apart by their outline and pixels; what it
misses (a white mouse next to a white rag, a phone lying flat) ImageNet has seen by the thousand. Each crop of a
``garment`` detection goes through EfficientNet-Lite0 with its ImageNet weights
(:mod:`sorting.models.textile_check_export`: the summed probability of the garment and textile classes); below
``min_score`` the detection becomes an ``object`` (routed like the other non-garments: reject or ignore, and
counted). Nothing in it was trained on belt photos; ``min_score`` was chosen on the development photos
(serving/README.md, "Is it cloth?").

The crops of one frame go through the network as one batch (about 10 ms per crop on one core); on a moving
belt a garment is scored once, when it comes into view (its box overlapping last frame's keeps the score).
``segmentation.textile_check: {}`` uses the packaged weights, exported once to the cache folder
(``$TEXTILE_SORTER_CACHE`` or ``~/.cache/textile-sorter``; that first export needs torch, serving after it
onnxruntime only); ``model: FILE`` names an exported file instead (``textile-sorter export-textile-check``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import Field

from sorting.config import StrictModel
from sorting.errors import ModelFileError
from sorting.serving.non_garment import GARMENT, OBJECT

log = logging.getLogger(__name__)

METADATA_KEY = "textile_check"
FORMAT_VERSION = 1
CACHE_NAME = "textile-check-lite0.onnx"


class TextileCheckConfig(StrictModel):
    """``segmentation.textile_check``: garment detections whose crop does not look like cloth become objects."""

    model: Path | None = None  # None: the packaged ImageNet Lite0, exported once to the cache folder
    min_score: float = Field(0.05, ge=0, lt=1)  # summed ImageNet textile probability a garment needs
    threads: int = Field(1, ge=1)  # onnxruntime threads
    # on a moving belt (tracking.scene: belt) a garment whose box overlaps one scored in the last frame by this
    # IoU keeps that score: each garment is scored when it comes into view, not on every frame
    reuse_iou: float = Field(0.5, gt=0, le=1)


def cache_dir() -> Path:
    """Where exported built-in models are kept (``$TEXTILE_SORTER_CACHE`` or ``~/.cache/textile-sorter``)."""
    env = os.environ.get("TEXTILE_SORTER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "textile-sorter"


def default_model() -> Path:
    """The packaged check's ONNX file, exported on first use (needs torch once)."""
    path = cache_dir() / CACHE_NAME
    if not path.is_file():
        from sorting.models.textile_check_export import export_textile_check

        log.info("exporting the textile check (ImageNet EfficientNet-Lite0) to %s, once", path)
        export_textile_check(path)
    return path


class TextileCheck:
    """``scores(image, boxes)`` -> textile score per box; ``relabel(image, detections)`` applies ``min_score``."""

    def __init__(self, cfg: TextileCheckConfig) -> None:
        import onnxruntime as ort

        path = Path(cfg.model) if cfg.model is not None else default_model()
        if not path.is_file():
            raise ModelFileError(f"segmentation.textile_check.model: {path} not found (write one with "
                                 "textile-sorter export-textile-check, or leave model out for the packaged one)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = cfg.threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise ModelFileError(f"cannot load textile check {path}: {str(exc).splitlines()[0][:200]}") from None
        meta = _metadata(self.session, path)
        self.size = int(meta["input_size"])
        self.min_score = cfg.min_score
        self.reuse_iou = cfg.reuse_iou
        self._last: list[tuple[tuple[int, int, int, int], float]] = []  # last frame's garment boxes and scores
        self.input_name = self.session.get_inputs()[0].name

    def scores(self, image_bgr: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
        """Textile score of each ``(x, y, w, h)`` box of ``image_bgr`` (an empty box scores 0)."""
        if not boxes:
            return np.zeros(0, np.float32)
        height, width = image_bgr.shape[:2]
        batch = np.zeros((len(boxes), self.size, self.size, 3), np.uint8)
        empty = np.zeros(len(boxes), bool)
        for i, (x, y, w, h) in enumerate(boxes):
            crop = image_bgr[max(0, y):min(height, y + h), max(0, x):min(width, x + w)]
            if crop.size == 0:
                empty[i] = True
                continue
            batch[i] = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = (batch[..., ::-1].astype(np.float32) - 127.0) * (1.0 / 128.0)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
        out = np.asarray(out, np.float32).reshape(-1)
        out[empty] = 0.0
        return out

    def relabel(self, image_bgr: np.ndarray, detections: list[Any], *, reuse: bool = False) -> list[Any]:
        """``detections`` with the garments whose crop scores below ``min_score`` turned into objects; with
        ``reuse`` (a moving belt: consecutive frames show the same things), a garment overlapping one of the
        previous frame by ``reuse_iou`` keeps its score instead of being scored again."""
        garments = [i for i, d in enumerate(detections) if d.kind == GARMENT]
        scores: dict[int, float] = {}
        for i in garments if reuse else []:
            if (previous := self._previous(detections[i].bbox)) is not None:
                scores[i] = previous
        todo = [i for i in garments if i not in scores]
        scores.update(zip(todo, self.scores(image_bgr, [detections[i].bbox for i in todo]).tolist()))
        self._last = [(detections[i].bbox, scores[i]) for i in garments]
        return [replace(d, kind=OBJECT) if scores.get(i, 1.0) < self.min_score else d for i, d in enumerate(detections)]

    def _previous(self, box: tuple[int, int, int, int]) -> float | None:
        """The score of last frame's garment box that overlaps ``box`` most, if by ``reuse_iou``."""
        best, score = self.reuse_iou, None
        for old, value in self._last:
            overlap = _iou(box, old)
            if overlap >= best:
                best, score = overlap, value
        return score


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two ``(x, y, w, h)`` boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0, w) * max(0, h)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _metadata(session: Any, path: Path) -> dict[str, Any]:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ModelFileError(f"{path} is not a textile check (no '{METADATA_KEY}' metadata): write one with "
                             "textile-sorter export-textile-check")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: textile check format {meta.get('format')}, this sorter reads {FORMAT_VERSION}")
    return meta
