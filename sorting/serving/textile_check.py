"""Is it cloth? A check of every garment detection by an ImageNet classifier, before it can reach a product bin.

The belt model finds everything that is not belt: garments, but also phones, earbud cases, a computer mouse, a
ruler, tape. :mod:`~sorting.serving.non_garment` tells many of them apart by their outline and pixels; what it
misses (a white mouse next to a white rag, a phone lying flat) ImageNet has seen by the thousand. Each crop of a
``garment`` detection goes through EfficientNet-Lite0 with its ImageNet weights
(:mod:`sorting.models.textile_check_export`); its score is the summed probability of the ImageNet garment and
textile classes (:class:`ClassSum`: nothing trained on belt photos, ``min_score`` 0.05 chosen on the development
photos, serving/REAL_BELT.md "Is it cloth?"). Below ``min_score`` the detection becomes an ``object`` (routed like
the other non-garments: reject or ignore, and counted).

With ``head: FILE`` (``textile-sorter fit-textile-check``: a logistic regression fitted to the labelled photos of a
line, on the 1,000 ImageNet log-probabilities or on the network's own features, each crop's last feature map averaged
over its cells) the score is that head's probability instead, and its threshold the one it was fitted with; with
``class_floor`` too (:class:`Floored`), a crop whose textile classes sum to less than that scores 0 whatever the head
says: a head fitted on photos without phones can let a phone through, ImageNet rarely calls one cloth.

The crops of one frame go through the network as one batch (about 10 ms per crop on one core); on a moving
belt a garment whose box overlaps last frame's keeps its score instead of being scored again, and a thing still
coming into view is scored once it is in (``relabel``'s ``wait``).
``segmentation.textile_check: {}`` uses the packaged weights, exported once to the cache folder
(``$TEXTILE_SORTER_CACHE`` or ``~/.cache/textile-sorter``; that first export needs torch, serving after it
onnxruntime only); ``model: FILE`` names an exported file instead (``textile-sorter export-textile-check``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal, get_args

import cv2
import numpy as np
from pydantic import Field, model_validator

from sorting.config import StrictModel
from sorting.errors import ModelFileError
from sorting.models.textile_check_format import FEATURES, FORMAT_VERSION, METADATA_KEY, OUTPUT
from sorting.serving.detection_eval import Box, corners, iou_matrix
from sorting.serving.non_garment import GARMENT, OBJECT
from sorting.serving.onnx_file import json_metadata, open_session

log = logging.getLogger(__name__)

CACHE_NAME = f"textile-check-lite0-v{FORMAT_VERSION}.onnx"
HEAD_FORMAT = 1
CLASS_SUM_MIN_SCORE = 0.05  # the class list's threshold, chosen on the development photos of the conveyor
MAX_CONTEXT = 2.0  # a crop grown more than twice its box is more neighbour than thing
# what a fitted head reads of each crop: the 1,000 ImageNet log-probabilities, or the network's last feature map
# averaged over its cells (the classifier's own input)
HeadInputs = Literal["logprobs", "features"]
# a head fitted with mirrors (fit-textile-check --mirrors) scores each crop as the mean over the crop and these mirror
# images of it: a garment is cloth from any side, a phone is a phone; one view's quirks (a fold's shadow, glare) weigh
# a third
MIRRORS = ("left-right", "top-bottom")


class CarveConfig(StrictModel):
    """``segmentation.textile_check.carve``: look for garments inside large non-garment detections."""

    kinds: list[Literal["object", "hand"]] = Field(default_factory=lambda: ["object", "hand"])
    min_area: float = Field(2.0, gt=0)  # times the typical item area: smaller non-garments are left whole
    min_piece: float = Field(0.25, gt=0)  # times the typical item area: a smaller cloth piece stays in the clump
    # the map's resolution, as a share of the frame's: 0.75 by scene CV (0.5 and 1.0 compared; serving/REAL_BELT.md)
    scale: float = Field(0.75, gt=0, le=1)
    window: int = Field(3, ge=1, le=9)  # feature cells averaged into one score (a cell is 32 / scale frame px)
    min_score: float | None = Field(None, ge=0, lt=1)  # a window's score that is cloth; None: the check's own
    # garment detections of at least this many typical items are looked into too, and carved when the map calls less
    # than garment_max_cloth of their blob cloth (a garment merged with a tray, phones, a hand); None: left whole
    garment_min_area: float | None = Field(3.0, gt=0)
    garment_max_cloth: float = Field(0.8, gt=0, le=1)
    # such a garment is left whole without the finer map when the map of the check's own crop of it (computed
    # anyway, coarser) calls at least this share of its blob cloth; most large garments are, and the finer map is
    # most of carving's time; None: always the finer map
    garment_screen: float | None = Field(0.9, gt=0, le=1)


class TextileCheckConfig(StrictModel):
    """``segmentation.textile_check``: garment detections whose crop does not look like cloth become objects."""

    model: Path | None = None  # None: the packaged ImageNet Lite0, exported once to the cache folder
    head: Path | None = None  # a linear head on the ImageNet outputs (fit-textile-check); None: the class list
    # the score a garment needs; None: 0.05 of summed textile-class probability, or the head's own threshold
    min_score: float | None = Field(None, ge=0, lt=1)
    threads: int = Field(1, ge=1)  # onnxruntime threads
    # on a moving belt (tracking.scene: belt) a garment whose box overlaps one scored in the last frame by this
    # IoU keeps that score instead of being scored on every frame
    reuse_iou: float = Field(0.5, gt=0, le=1)
    # a detection the object rule called an object is a garment after all when its crop scores at least this (the
    # rule's flat, solid rectangles include folded garments); None: the rule has the last word. Hands never are.
    objects_back_from: float | None = Field(None, gt=0, lt=1)
    # with a head: a crop whose summed probability of the ImageNet garment and textile classes is below this is not
    # cloth, whatever the head says (a head knows only what its photos showed; ImageNet has seen phones by the
    # thousand); None: the head alone
    class_floor: float | None = Field(None, gt=0, lt=1)
    carve: CarveConfig | None = None  # look for garments inside large detections that are not garments as a whole
    # with a head fitted with mirrors: only a crop whose own score is within this many log-odds of min_score (or of
    # objects_back_from), or below the class floor, is scored again as the mean over it and its mirror images; the
    # others are far from any decision. In scene CV on the conveyor's development photos 2.0 scored as well as a second
    # look at every crop, in 30% less time (serving/REAL_BELT.md, "Mirror images"). None: every crop
    mirrors_margin: float | None = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _carving_needs_a_head(self) -> TextileCheckConfig:
        if self.carve is not None and self.head is None:
            raise ValueError("carve needs a head fitted to the line's photos (textile-sorter fit-textile-check): the "
                             "class list is too lenient for it and lets phones beside a garment through as cloth")
        if self.class_floor is not None and self.head is None:
            raise ValueError("class_floor needs a head (textile-sorter fit-textile-check): without one the class list "
                             "is the check already")
        if self.objects_back_from is not None and self.head is None:
            raise ValueError("objects_back_from needs a head fitted to the line's photos (textile-sorter "
                             "fit-textile-check): the class list's score says too little to overrule the object rule")
        return self


class LastFrameBoxes:
    """Values worked out for the previous frame's boxes, found again by overlap: on a moving belt consecutive frames
    show the same things, so what was learnt of one (its textile score; that it is all cloth) holds while its box,
    moved on as the belt moved, overlaps the new one by ``min_iou``."""

    def __init__(self, min_iou: float) -> None:
        self.min_iou = min_iou
        self._boxes: list[Box] = []
        self._values: list[Any] = []

    def find(self, boxes: list[Box], shift: tuple[float, float] = (0.0, 0.0),
             frame: tuple[int, int] | None = None) -> list[Any]:
        """Per ``(x0, y0, x1, y1)`` box, the value of the previous frame's box it overlaps most, if by ``min_iou``
        (else None), the previous boxes moved by ``shift`` (x, y: how far the belt carried them since) and cut to the
        ``(width, height)`` frame. Without the shift a garment on a fast belt (30 px a frame, 60 px long) overlaps its
        own last box by less than 0.5; without the cut, one leaving the view is cut shorter every frame. Either way
        it would be scored again on every frame."""
        if not boxes or not self._boxes:
            return [None] * len(boxes)
        dx, dy = shift
        width, height = frame if frame is not None else (np.inf, np.inf)
        moved = []
        for x0, y0, x1, y1 in self._boxes:
            left, top = max(0.0, x0 + dx), max(0.0, y0 + dy)
            moved.append((left, top, max(left, min(width, x1 + dx)), max(top, min(height, y1 + dy))))  # out: empty
        overlap = iou_matrix(boxes, moved)
        return [self._values[int(row.argmax())] if row.max() >= self.min_iou else None for row in overlap]

    def keep(self, boxes: list[Box], values: list[Any]) -> None:
        """This frame's boxes and their values, for the next frame to find."""
        self._boxes, self._values = list(boxes), list(values)


def cache_dir() -> Path:
    """Where exported built-in models are kept (``$TEXTILE_SORTER_CACHE`` or ``~/.cache/textile-sorter``)."""
    env = os.environ.get("TEXTILE_SORTER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "textile-sorter"


def default_model() -> Path:
    """The packaged check's ONNX file, exported on first use (needs torch once); where the cache folder cannot be
    written (a read-only home), into the system's temporary folder instead."""
    places = (cache_dir() / CACHE_NAME, Path(tempfile.gettempdir()) / "textile-sorter" / CACHE_NAME)
    for path in places:
        if path.is_file():
            return path
    # torch is needed for the export only
    from sorting.models.textile_check_export import export_textile_check

    for path in places:
        try:
            log.info("exporting the textile check (ImageNet EfficientNet-Lite0) to %s, once", path)
            return export_textile_check(path)
        except OSError as exc:
            log.warning("cannot write the textile check to %s (%s)", path, exc)
    raise ModelFileError(f"the textile check could not be written to {places[0].parent} nor {places[1].parent}: set "
                         "TEXTILE_SORTER_CACHE to a writable folder")


class TextileCheck:
    """``scores(image, boxes)`` -> textile score per box; ``relabel(image, detections)`` applies ``min_score``."""

    def __init__(self, cfg: TextileCheckConfig, *, crop_size: int | None = None, context: float | None = None) -> None:
        """``crop_size``: the side crops are resized to (default: the head's, or the network's native 224 px);
        ``context``: each box is grown by this about its centre before it is cropped (default: the head's, or 1)."""
        path = Path(cfg.model) if cfg.model is not None else default_model()
        if not path.is_file():
            raise ModelFileError(f"segmentation.textile_check.model: {path} not found (write one with "
                                 "textile-sorter export-textile-check, or leave model out for the packaged one)")
        self.session = open_session(path, threads=cfg.threads, what="textile check")
        meta = json_metadata(self.session, path, key=METADATA_KEY, version=FORMAT_VERSION, what="textile check",
                             writer="textile-sorter export-textile-check")
        self.scorer: ClassSum | TextileHead | Floored = (
            TextileHead.load(cfg.head) if cfg.head is not None else ClassSum(meta["textile_indices"]))
        # the carving map's windows are small parts of a garment: the floor is for whole crops, the map keeps the head
        self.map_scorer = self.scorer
        if cfg.class_floor is not None and isinstance(self.scorer, TextileHead):
            self.scorer = Floored(self.scorer, ClassSum(meta["textile_indices"]), cfg.class_floor)
        self.size = crop_size or self.scorer.input_size or int(meta["input_size"])
        self.context = context or self.map_scorer.context
        self.mirrors = self.map_scorer.mirrors  # score each crop with its mirror images too
        self.min_score = cfg.min_score if cfg.min_score is not None else self.scorer.min_score
        self.objects_back_from = cfg.objects_back_from
        self.mirrors_margin = cfg.mirrors_margin
        self._last = LastFrameBoxes(cfg.reuse_iou)  # last frame's checked boxes and their scores
        self.input_name = self.session.get_inputs()[0].name
        self.path, self.meta = path, meta
        outputs = {out.name: out for out in self.session.get_outputs()}
        self.has_maps = FEATURES in outputs
        self.reads_features = self.map_scorer.inputs == "features"
        if self.reads_features:
            _check_feature_width(self.map_scorer, outputs.get(FEATURES), cfg.head, path)
        self._crop_maps: dict[tuple[int, ...], tuple[np.ndarray, tuple[int, int, int, int]]] = {}
        # an INT8 file (export-textile-check --int8) carries the recipe it was quantized with
        self.quantized = "quantization" in self.session.get_modelmeta().custom_metadata_map
        head = self.map_scorer if isinstance(self.map_scorer, TextileHead) else None
        fitted_on = head.info.get("fitted_on", {}).get("check_model", {}) if head is not None else {}
        if fitted_on.get("quantized", self.quantized) != self.quantized:
            log.warning("textile check head %s was fitted on the %s network, the line runs the %s one (%s): its scores "
                        "and threshold do not fit it; fit it again with fit-textile-check --check-model %s", cfg.head,
                        "INT8" if fitted_on["quantized"] else "FP32", "INT8" if self.quantized else "FP32",
                        path.name, path)

    def crop_region(self, box: tuple[int, int, int, int], frame: tuple[int, int]) -> tuple[int, int, int, int]:
        """The frame region ``(x0, y0, x1, y1)`` a ``(x, y, w, h)`` box's crop is cut from in a ``(width, height)``
        frame: the box grown by the context, clipped to the frame."""
        x, y, w, h = grown_box(box, self.context)
        return max(0, x), max(0, y), min(frame[0], x + w), min(frame[1], y + h)

    def logprobs(self, image_bgr: np.ndarray, boxes: list[tuple[int, int, int, int]], *,
                 keep_maps: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """ImageNet log-probabilities ``(len(boxes), 1000)`` of the ``(x, y, w, h)`` boxes' crops, and which
        boxes were empty (no pixel in the frame); with ``keep_maps`` (and a network that gives its feature map),
        each crop's feature map is kept for :meth:`crop_map`."""
        logprobs, _, empty = self.outputs(image_bgr, boxes, keep_maps=keep_maps)
        return logprobs, empty

    def outputs(self, image_bgr: np.ndarray, boxes: list[tuple[int, int, int, int]], *, features: bool = False,
                keep_maps: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Per ``(x, y, w, h)`` box's crop: the ImageNet log-probabilities ``(n, 1000)``; with ``features``, the last
        feature map averaged over its cells ``(n, channels)`` (else None; zeros for an empty box); and which boxes
        were empty (no pixel in the frame). ``keep_maps``: see :meth:`logprobs`."""
        if features and not self.has_maps:
            raise ModelFileError(f"{self.path} gives no feature map: export the check again (textile-sorter "
                                 "export-textile-check)")
        height, width = image_bgr.shape[:2]
        batch = np.zeros((len(boxes), self.size, self.size, 3), np.uint8)
        empty = np.zeros(len(boxes), bool)
        regions = [self.crop_region(box, (width, height)) for box in boxes]
        for i, (x0, y0, x1, y1) in enumerate(regions):
            crop = image_bgr[y0:y1, x0:x1]
            if crop.size == 0:
                empty[i] = True
                continue
            batch[i] = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = (batch[..., ::-1].astype(np.float32) - 127.0) * (1.0 / 128.0)
        maps = features or (keep_maps and self.has_maps)
        out = self.session.run([OUTPUT, FEATURES] if maps else [OUTPUT],
                               {self.input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
        if maps and keep_maps:
            self._crop_maps.update({tuple(box): (fmap, region)
                                    for box, fmap, region, none in zip(boxes, out[1], regions, empty) if not none})
        pooled = None
        if features:
            pooled = np.asarray(out[1], np.float32).mean(axis=(2, 3))
            pooled[empty] = 0.0
        return np.asarray(out[0], np.float32), pooled, empty

    def view_outputs(self, image_bgr: np.ndarray, boxes: list[tuple[int, int, int, int]], *, views: int,
                     features: bool = False, keep_maps: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """:meth:`outputs` of each box's crop and of its first ``views - 1`` mirror images (:data:`MIRRORS`), stacked
        on the second axis: log-probabilities ``(n, views, 1000)``, pooled features ``(n, views, channels)`` or None,
        and which boxes were empty. Only the crop itself keeps its feature map (``keep_maps``)."""
        if not 1 <= views <= 1 + len(MIRRORS):
            raise ValueError(f"views {views}: a crop has {len(MIRRORS)} mirror images")
        logprobs, pooled, empty = self.outputs(image_bgr, boxes, features=features, keep_maps=keep_maps)
        return (*self._with_mirrors(image_bgr, boxes, logprobs, pooled, views - 1), empty)

    def _with_mirrors(self, image_bgr: np.ndarray, boxes: list[tuple[int, int, int, int]], logprobs: np.ndarray,
                      pooled: np.ndarray | None, mirrors: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The crops' own outputs with those of their first ``mirrors`` mirror images stacked after them (axis 1): a
        mirror image of a crop is the crop of the mirrored frame at the mirrored box."""
        height, width = image_bgr.shape[:2]
        seen = [(logprobs, pooled)]
        for mirror in MIRRORS[:mirrors]:
            if mirror == "left-right":
                flipped, moved = image_bgr[:, ::-1], [(width - x - w, y, w, h) for x, y, w, h in boxes]
            else:
                flipped, moved = image_bgr[::-1], [(x, height - y - h, w, h) for x, y, w, h in boxes]
            seen.append(self.outputs(flipped, moved, features=pooled is not None)[:2])
        stacked = np.stack([view[1] for view in seen], axis=1) if pooled is not None else None
        return np.stack([view[0] for view in seen], axis=1), stacked

    def scores(self, image_bgr: np.ndarray, boxes: list[tuple[int, int, int, int]], *,
               keep_maps: bool = False) -> np.ndarray:
        """Textile score of each ``(x, y, w, h)`` box of ``image_bgr`` (an empty box scores 0); ``keep_maps``: see
        :meth:`logprobs`."""
        if not boxes:
            return np.zeros(0, np.float32)
        logprobs, pooled, empty = self.outputs(image_bgr, boxes, features=self.reads_features, keep_maps=keep_maps)
        out = self.scorer.score(logprobs, pooled)
        near = self._near_a_decision(out, logprobs) & ~empty if self.mirrors else np.zeros(len(boxes), bool)
        if near.any():  # a second look, with the mirror images, where the crop alone is close to a threshold
            again = [box for box, look in zip(boxes, near) if look]
            views, view_pooled = self._with_mirrors(image_bgr, again, logprobs[near],
                                                    None if pooled is None else pooled[near], len(MIRRORS))
            out[near] = self.scorer.score(views, view_pooled)
        out[empty] = 0.0
        return out

    def _near_a_decision(self, scores: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
        """Which crops score within ``mirrors_margin`` log-odds of ``min_score`` or ``objects_back_from``, or are under
        the class floor (fitted on the mean of the views, so one view may fall under it alone); all of them without a
        margin."""
        if self.mirrors_margin is None:
            return np.ones(len(scores), bool)
        odds = _log_odds(scores)
        thresholds = [t for t in (self.min_score, self.objects_back_from) if t is not None]
        near = np.any([np.abs(odds - _log_odds(np.float32(t))) < self.mirrors_margin for t in thresholds], axis=0)
        if isinstance(self.scorer, Floored):
            near |= self.scorer.below_floor(logprobs)
        return near

    def forget_maps(self) -> None:
        """Drop the crop feature maps kept so far (:meth:`logprobs` with ``keep_maps``)."""
        self._crop_maps = {}

    def crop_map(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
        """The feature map ``(channels, rows, cols)`` of ``box``'s crop as the last :meth:`relabel` scored it, and
        the frame region ``(x0, y0, x1, y1)`` the crop covers; None if it was not scored there (a reused score, a
        network without the map)."""
        return self._crop_maps.get(tuple(box))

    def relabel(self, image_bgr: np.ndarray, detections: list[Any], *, reuse: bool = False,
                shift: tuple[float, float] = (0.0, 0.0), wait: Callable[[Any], bool] | None = None) -> list[Any]:
        """``detections`` with the garments whose crop scores below ``min_score`` turned into objects (and, with
        ``objects_back_from``, the objects scoring at least that turned into garments); with ``reuse`` (a moving belt:
        consecutive frames show the same things), a detection overlapping one of the previous frame by ``reuse_iou``,
        that one moved by ``shift`` (x, y px: the belt's travel since), keeps its score instead of being scored
        again; a detection ``wait`` holds back (a thing still coming into view) is left as it is, unscored."""
        checked = [i for i, d in enumerate(detections)
                   if (d.kind == GARMENT or (d.kind == OBJECT and self.objects_back_from is not None))
                   and not (wait is not None and wait(d))]
        boxes = [corners(detections[i].bbox) for i in checked]
        frame = (image_bgr.shape[1], image_bgr.shape[0])
        found = self._last.find(boxes, shift, frame) if reuse else [None] * len(checked)
        scores = {i: score for i, score in zip(checked, found) if score is not None}
        todo = [i for i in checked if i not in scores]
        self.forget_maps()  # keep this frame's only (carving reads them: ClothCarver's garment_screen)
        scores.update(zip(todo, self.scores(image_bgr, [detections[i].bbox for i in todo], keep_maps=True).tolist()))
        self._last.keep(boxes, [scores[i] for i in checked])
        return [self._kind_after(d, scores.get(i)) for i, d in enumerate(detections)]

    def _kind_after(self, det: Any, score: float | None) -> Any:
        if score is None:
            return det
        if det.kind == GARMENT and score < self.min_score:
            return replace(det, kind=OBJECT, not_cloth=True)
        if det.kind == OBJECT and self.objects_back_from is not None and score >= self.objects_back_from:
            return replace(det, kind=GARMENT)
        return det


def _check_feature_width(head: TextileHead, output: Any, head_path: Path | None, model_path: Path) -> None:
    """A head on the features needs a network that gives its feature map, as wide as the head's weights."""
    if output is None:
        raise ModelFileError(f"textile check head {head_path} reads the network's features, and {model_path} gives no "
                             "feature map: export the check again (textile-sorter export-textile-check)")
    width = output.shape[1] if len(output.shape) > 1 else None
    if isinstance(width, int) and width != len(head.weights):
        raise ModelFileError(f"textile check head {head_path} reads {len(head.weights)} features and {model_path} "
                             f"gives {width}: fit the head on this network (fit-textile-check --check-model)")


def grown_box(box: tuple[int, int, int, int], factor: float) -> tuple[int, int, int, int]:
    """The ``(x, y, w, h)`` box grown by ``factor`` about its centre (an empty box stays as it is)."""
    x, y, w, h = box
    if factor == 1.0 or w <= 0 or h <= 0:
        return box
    grown_w, grown_h = int(round(w * factor)), int(round(h * factor))
    return int(round(x + (w - grown_w) / 2)), int(round(y + (h - grown_h) / 2)), grown_w, grown_h


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1.0 - p))


def mean_over_views(values: np.ndarray) -> np.ndarray:
    """Per crop: ``(n,)`` as it is, ``(n, views)`` averaged over the views."""
    return values.mean(axis=1) if values.ndim == 2 else values


class ClassSum:
    """The summed ImageNet probability of the textile classes (no fitting)."""

    min_score = CLASS_SUM_MIN_SCORE
    input_size = None  # the network's own (224 px: the class list needs the detail)
    context = 1.0  # the box alone: the threshold was chosen on such crops
    inputs: HeadInputs = "logprobs"
    mirrors = False  # the crop alone

    def __init__(self, indices: list[int]) -> None:
        self.indices = np.asarray(indices, np.intp)

    def score(self, logprobs: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Per crop, from its log-probabilities ``(n, 1000)``, or ``(n, views, 1000)`` for the mean over a crop's
        views (``features`` unused)."""
        return mean_over_views(np.exp(logprobs[..., self.indices]).sum(axis=-1)).astype(np.float32)


@dataclass(frozen=True)
class Floored:
    """A fitted head's score, 0 where the summed probability of the textile classes is below ``floor``: the head's
    photos may have shown no phone, but ImageNet has; a garment's crop nearly always gives those classes some
    probability."""

    head: TextileHead
    classes: ClassSum
    floor: float

    @property
    def min_score(self) -> float:
        return self.head.min_score

    @property
    def input_size(self) -> int:
        return self.head.input_size

    def below_floor(self, logprobs: np.ndarray) -> np.ndarray:
        """Which crops' textile classes sum to less than the floor (over a crop's views: their mean)."""
        return self.classes.score(logprobs) < self.floor

    def score(self, logprobs: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        out = self.head.score(logprobs, features)
        out[self.below_floor(logprobs)] = 0.0
        return out


@dataclass(frozen=True)
class TextileHead:
    """A logistic regression on the ImageNet log-probabilities or on the pooled features of a crop, fitted to a line's
    labelled crops (:mod:`sorting.apps.textile_head`), with the threshold it was fitted with."""

    weights: np.ndarray  # (1000,) on log-probabilities; (channels,) on features, their standardisation folded in
    bias: float
    min_score: float
    input_size: int  # the crops' side it was fitted on
    info: dict[str, Any]  # what it was fitted on and how well it separated out of fold
    context: float = 1.0  # the crops were the box grown by this about its centre (a file without it: 1.0)
    inputs: HeadInputs = "logprobs"  # a file without it: logprobs
    mirrors: bool = False  # fitted on each crop and its mirror images (MIRRORS), scores their mean (a file without it: no)

    def score(self, logprobs: np.ndarray | None, features: np.ndarray | None = None) -> np.ndarray:
        """Per crop, from its log-probabilities ``(n, 1000)`` or its pooled features ``(n, channels)``, whichever
        the head reads (the other may be None); ``(n, views, ...)``: the mean of the views' probabilities."""
        x = features if self.inputs == "features" else logprobs
        if x is None:
            raise ValueError(f"this textile head reads {self.inputs}, which were not given")
        z = x.astype(np.float64) @ self.weights + self.bias
        return mean_over_views(1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"textile_head": HEAD_FORMAT, "inputs": self.inputs, "bias": self.bias, "min_score": self.min_score,
                "input_size": self.input_size, "context": self.context, "mirrors": self.mirrors, **self.info,
                "weights": [float(f"{w:.7g}") for w in self.weights]}
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextileHead:
        """Read a head file; anything else is one :class:`ModelFileError`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("textile_head") != HEAD_FORMAT:
                raise ValueError(f"not a textile head of format {HEAD_FORMAT}")
            inputs = data.get("inputs", "logprobs")
            if inputs not in get_args(HeadInputs):
                raise ValueError(f"inputs {inputs!r} is not {' or '.join(get_args(HeadInputs))}")
            weights = np.asarray(data["weights"], np.float64)
            if (weights.ndim != 1 or (inputs == "logprobs" and weights.size != 1000) or weights.size == 0
                    or not np.isfinite(weights).all()):
                raise ValueError(f"{weights.size} weights, {'1000' if inputs == 'logprobs' else 'one a channel,'} "
                                 "finite ones expected")
            size = int(data["input_size"])
            if not 32 <= size <= 512:
                raise ValueError(f"input_size {size} is not 32..512")
            context = float(data.get("context", 1.0))
            if not 1.0 <= context <= MAX_CONTEXT:
                raise ValueError(f"context {context} is not 1..{MAX_CONTEXT}")
            mirrors = data.get("mirrors", False)
            if not isinstance(mirrors, bool):
                raise ValueError(f"mirrors {mirrors!r} is not true or false")
            info = {k: v for k, v in data.items() if k not in
                    ("textile_head", "inputs", "weights", "bias", "min_score", "input_size", "context", "mirrors")}
            return cls(weights, float(data["bias"]), float(data["min_score"]), size, info, context, inputs, mirrors)
        except FileNotFoundError:
            raise ModelFileError(f"segmentation.textile_check.head: {path} not found (fit one with "
                                 "textile-sorter fit-textile-check)") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"segmentation.textile_check.head: {path} is not a textile head ({exc})") from None
