"""Garments inside a clump: where in a detection that is not a garment as a whole the textile check sees cloth.

On a busy belt a garment often touches a phone, a tray or a hand: the belt model finds one blob, and the textile
check (or the hand and object rules) rightly calls the whole of it no garment, so the garment is lost with it.
:class:`ClothCarver` looks inside such a detection when it is large (``min_area`` times a typical item): the check's
network runs once over the detection's box and scores every window of its last feature map as if it were a crop
(:class:`ClothMap`: the average of the window's features through the ImageNet classifier, then the check's own
scorer and threshold; a head on the features reads the average itself). The blob's pixels where the map says cloth,
in pieces of at least ``min_piece`` times a typical item cut apart like any blob (``split_touching``), become garment
detections if each piece's own crop then passes the check as any garment must; the rest stays what it was (an object
or a hand, routed as such).

The other way round, a clump can pass the crop check as a garment when cloth fills most of its box (garments on a
tray beside phones and a mouse). A garment detection of ``garment_min_area`` typical items or more is looked into
too: when the map calls less than ``garment_max_cloth`` of its blob cloth, it is carved the same way and what is
left is an object; when no piece is confirmed, the whole clump is an object. Settings were chosen by scene
cross-validation on the development photos (``benchmarks/belt_cross_validation.py``; serving/REAL_BELT.md, "Garments
inside clumps"): no more hands or objects are taken for garments than without carving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np

from sorting.errors import ModelFileError
from sorting.models.textile_check_format import FEATURES
from sorting.serving.blob_split import SplitConfig, split_blob
from sorting.serving.non_garment import GARMENT, OBJECT
from sorting.serving.segmentation import (
    Detection,
    frame_edges,
    outline_box,
    outline_shape,
)
from sorting.serving.detection_eval import Box, corners
from sorting.serving.textile_check import CarveConfig, LastFrameBoxes, TextileCheck

log = logging.getLogger(__name__)

CropScores = Callable[[np.ndarray, list[tuple[int, int, int, int]]], np.ndarray]
CropMap = Callable[[tuple[int, int, int, int]], "tuple[np.ndarray, tuple[int, int, int, int]] | None"]


class ClothMap:
    """Textile scores of the windows of a region, from one run of the check's network over it."""

    def __init__(self, check: TextileCheck) -> None:
        import onnx
        from onnx import numpy_helper

        names = check.meta.get("classifier")
        if not names or not check.has_maps:
            raise ModelFileError(f"{check.path}: this textile check has no feature map or names no classifier weights "
                                 f"(format {check.meta.get('format')}): export it again (textile-sorter "
                                 "export-textile-check) to carve garments out of clumps")
        weights = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(check.path)).graph.initializer
                   if init.name in (names["weight"], names["bias"])}
        if set(weights) != {names["weight"], names["bias"]} or weights[names["weight"]].ndim != 2:
            raise ModelFileError(f"{check.path}: the classifier weights its metadata names are not in the file")
        self.weight = weights[names["weight"]].astype(np.float32)  # (1000, channels)
        self.bias = weights[names["bias"]].astype(np.float32)
        self.stride = int(check.meta.get("feature_stride", 32))
        self.check = check

    def scores(self, image_bgr: np.ndarray, box: tuple[int, int, int, int], *, scale: float,
               window: int) -> np.ndarray:
        """Scores ``(rows, cols)`` of the cells of ``box`` (x, y, w, h) of the frame seen at ``scale``; cell
        ``(i, j)`` covers ``stride / scale`` frame pixels from the box's corner, its score that of the ``window``
        x ``window`` cells around it."""
        x, y, w, h = box
        crop = cv2.resize(image_bgr[y:y + h, x:x + w], (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
        net_in = (crop[..., ::-1].astype(np.float32) - 127.0) * (1.0 / 128.0)
        features = self.check.session.run([FEATURES], {self.check.input_name: net_in.transpose(2, 0, 1)[None]})[0][0]
        return self.scores_of(features, window)

    def scores_of(self, features: np.ndarray, window: int) -> np.ndarray:
        """Scores ``(rows, cols)`` of the cells of a feature map ``(channels, rows, cols)``, each that of the
        ``window`` x ``window`` cells around it."""
        pooled = _window_mean(features, window)
        channels, rows, cols = pooled.shape
        cells = pooled.reshape(channels, -1)
        if self.check.reads_features:  # the head reads the window's features as they are
            return self.check.map_scorer.score(None, cells.T).reshape(rows, cols)
        logits = self.weight @ cells + self.bias[:, None]
        logits -= logits.max(axis=0, keepdims=True)
        logprobs = logits - np.log(np.exp(logits).sum(axis=0, keepdims=True))
        return self.check.map_scorer.score(logprobs.T).reshape(rows, cols)


def _window_mean(features: np.ndarray, window: int) -> np.ndarray:
    """Mean of each cell's ``window`` x ``window`` neighbourhood (cells past the map's edge left out)."""
    _, rows, cols = features.shape
    integral = np.pad(features.astype(np.float64), ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
    r = window // 2
    r0, r1 = np.clip(np.arange(rows) - r, 0, rows), np.clip(np.arange(rows) + window - r, 0, rows)
    c0, c1 = np.clip(np.arange(cols) - r, 0, cols), np.clip(np.arange(cols) + window - r, 0, cols)
    sums = (integral[:, r1][:, :, c1] - integral[:, r0][:, :, c1] - integral[:, r1][:, :, c0]
            + integral[:, r0][:, :, c0])
    counts = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return (sums / counts).astype(np.float32)


class ClothCarver:
    """``carve(image, detections)``: large non-garment detections with the garments inside them cut out."""

    def __init__(self, cfg: CarveConfig, cloth_map: ClothMap, confirm: CropScores, *, min_score: float,
                 seg_scale: float, typical_area_px: float, min_area_px: float, border_margin_px: int,
                 split: SplitConfig | None = None, reuse_iou: float = 0.5, crop_map: CropMap | None = None) -> None:
        """``confirm``: the check's score of crops (``TextileCheck.scores``), which each carved piece must pass as
        any garment does; ``min_score``: the check's threshold (``cfg.min_score`` replaces it for the map only);
        ``split``: the line's ``split_touching``, applied to each carved piece (garments in a clump touch);
        ``reuse_iou``: the check's, for large garments already found whole in the previous frame; ``crop_map``:
        the feature map of the check's own crop of a box this frame (``TextileCheck.crop_map``), for
        ``garment_screen``."""
        self.crop_map = crop_map
        self._whole = LastFrameBoxes(reuse_iou)  # last frame's large garment detections found to be about all cloth
        self.cfg = cfg
        self.confirm = confirm
        self.crop_min_score = min_score
        self.split = split
        self.map = cloth_map
        self.min_score = cfg.min_score if cfg.min_score is not None else min_score
        self.seg_scale = seg_scale
        self.typical_area_px = typical_area_px
        self.min_area_px = min_area_px
        self.border_margin_px = border_margin_px
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))  # cleans the cloth mask's edges

    def carve(self, image_bgr: np.ndarray, detections: list[Detection], *, reuse: bool = False,
              shift: tuple[float, float] = (0.0, 0.0),
              wait: Callable[[Detection], bool] | None = None) -> list[Detection]:
        """``detections`` with the clumps carved; with ``reuse`` (a moving belt), a large garment detection that
        overlaps one of the previous frame found to be about all cloth by ``reuse_iou`` (that one moved by ``shift``,
        the belt's travel since) is left whole unlooked; a detection ``wait`` holds back (a thing still coming into
        view) is left as it is."""
        out: list[Detection] = []
        whole: list[Box] = []  # this frame's large garments found to be about all cloth
        for det in detections:
            if det.outline is None or (wait is not None and wait(det)):
                out.append(det)
            elif det.kind in self.cfg.kinds and det.area >= self.cfg.min_area * self.typical_area_px:
                out.extend(self._carve_one(image_bgr, det, *self._cloth(image_bgr, det)))
            elif (det.kind == GARMENT and self.cfg.garment_min_area is not None
                    and det.area >= self.cfg.garment_min_area * self.typical_area_px):
                out.extend(self._carve_garment(image_bgr, det, shift if reuse else None, whole))
            else:
                out.append(det)
        self._whole.keep(whole, [True] * len(whole))
        return out

    def _carve_garment(self, image_bgr: np.ndarray, det: Detection, shift: tuple[float, float] | None,
                       whole: list[Box]) -> list[Detection]:
        """A large garment detection: left whole if the map calls most of it cloth (or, with ``shift``, the belt's
        travel on a moving belt, called last frame's detection it overlaps so; either way its box joins ``whole``),
        else it is a clump (a garment on a tray, beside phones): the cloth in it is carved out and the rest is an
        object."""
        box = corners(det.bbox)
        frame = (image_bgr.shape[1], image_bgr.shape[0])
        if (shift is not None and self._whole.find([box], shift, frame)[0]) or self._whole_on_its_crop(det):
            whole.append(box)
            return [det]
        region, blob, cloth = self._cloth(image_bgr, det)
        share = cv2.countNonZero(cloth) / max(1, cv2.countNonZero(blob))
        if share >= self.cfg.garment_max_cloth:
            whole.append(box)
            return [det]
        log.debug("a garment detection of %.0f px is %.0f%% cloth: carved as a clump", det.area, 100 * share)
        return self._carve_one(image_bgr, replace(det, kind=OBJECT), region, blob, cloth)

    def _whole_on_its_crop(self, det: Detection) -> bool:
        """Whether the map of the check's own crop of ``det`` (its feature map, kept when the check scored it:
        coarser than the carving map, but free) calls at least ``garment_screen`` of its blob cloth."""
        screen = self.cfg.garment_screen
        found = self.crop_map(det.bbox) if self.crop_map is not None and screen is not None else None
        if screen is None or found is None or det.outline is None:
            return False
        features, region = found
        blob = self._blob_in(det, region)
        scores = cv2.resize(self.map.scores_of(features, self.cfg.window), blob.shape[::-1],
                            interpolation=cv2.INTER_LINEAR)
        return cv2.countNonZero(self._cloth_in(blob, scores)) >= screen * max(1, cv2.countNonZero(blob))

    def _carve_one(self, image_bgr: np.ndarray, det: Detection, region: tuple[int, int, int, int], blob: np.ndarray,
                   cloth: np.ndarray) -> list[Detection]:
        """``det`` cut into the confirmed cloth pieces (garments) and the rest (``det``'s kind); ``det`` itself when
        no piece is confirmed."""
        height, width = image_bgr.shape[:2]
        x0, y0, x1, y1 = region
        s = self.seg_scale
        inv_area = 1.0 / (s * s)
        pieces = [c for c in cv2.findContours(cloth, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
                  if cv2.contourArea(c) * inv_area >= self.cfg.min_piece * self.typical_area_px]
        if pieces and self.split is not None:
            small = cv2.resize(image_bgr[y0:y1, x0:x1], blob.shape[::-1], interpolation=cv2.INTER_AREA)
            pieces = [part for piece in pieces for part in self._split(piece, small)]
        # the map proposes, the check's own crop of each piece confirms (a phone beside a garment can look like cloth
        # to a window that holds both)
        shift = np.int32([int(x0 * s), int(y0 * s)])
        boxes = [outline_box(c + shift, s, (width, height)) for c in pieces]
        pieces = [c for c, score in zip(pieces, self.confirm(image_bgr, boxes)) if score >= self.crop_min_score]
        if not pieces:
            return [det]
        taken = np.zeros_like(blob)
        cv2.drawContours(taken, pieces, -1, 255, thickness=cv2.FILLED)
        rest = cv2.bitwise_and(blob, cv2.bitwise_not(cv2.dilate(taken, self._kernel)))
        rest = cv2.morphologyEx(rest, cv2.MORPH_OPEN, self._kernel)
        others = [c for c in cv2.findContours(rest, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
                  if cv2.contourArea(c) * inv_area >= self.min_area_px]
        log.debug("carved %d garment(s) out of a %s of %.0f px", len(pieces), det.kind, det.area)
        return ([self._piece(c + shift, det, GARMENT, (width, height)) for c in pieces]
                + [self._piece(c + shift, det, det.kind, (width, height)) for c in others])

    def _cloth(self, image_bgr: np.ndarray, det: Detection) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]:
        """The frame region (x0, y0, x1, y1) scored around ``det`` (its box and a cell of context), and in it, at the
        segmentation scale, the blob's mask and the part of it the map calls cloth."""
        height, width = image_bgr.shape[:2]
        s = self.seg_scale
        cell = self.map.stride / self.cfg.scale  # frame px per feature cell
        x, y, w, h = det.bbox
        x0, y0 = max(0, x - int(cell)), max(0, y - int(cell))
        x1, y1 = min(width, x + w + int(cell)), min(height, y + h + int(cell))
        scores = self.map.scores(image_bgr, (x0, y0, x1 - x0, y1 - y0), scale=self.cfg.scale, window=self.cfg.window)
        blob = self._blob_in(det, (x0, y0, x1, y1))
        size = blob.shape[::-1]
        cell_small = cell * s
        cells_px = (max(1, round(scores.shape[1] * cell_small)), max(1, round(scores.shape[0] * cell_small)))
        up = cv2.resize(scores, cells_px, interpolation=cv2.INTER_LINEAR)
        up = cv2.copyMakeBorder(up, 0, max(0, size[1] - up.shape[0]), 0, max(0, size[0] - up.shape[1]),
                                cv2.BORDER_REPLICATE)[:size[1], :size[0]]
        return (x0, y0, x1, y1), blob, self._cloth_in(blob, up)

    def _blob_in(self, det: Detection, region: tuple[int, int, int, int]) -> np.ndarray:
        """``det``'s blob as a mask of the frame region ``(x0, y0, x1, y1)`` at the segmentation scale."""
        s = self.seg_scale
        x0, y0, x1, y1 = region
        ox, oy = int(x0 * s), int(y0 * s)
        blob = np.zeros((max(1, int(np.ceil(y1 * s)) - oy), max(1, int(np.ceil(x1 * s)) - ox)), np.uint8)
        cv2.drawContours(blob, [det.outline - np.int32([ox, oy])], -1, 255, thickness=cv2.FILLED)
        return blob

    def _cloth_in(self, blob: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The part of ``blob`` where ``scores`` (a map resized to it) say cloth, its ragged edges opened away."""
        return cv2.morphologyEx(np.where(scores >= self.min_score, blob, 0).astype(np.uint8), cv2.MORPH_OPEN,
                                self._kernel)

    def _split(self, contour: np.ndarray, small: np.ndarray) -> list[np.ndarray]:
        """``contour``'s parts by colour and necks (``split_touching``, as the segmenter splits blobs)."""
        x, y, w, h = cv2.boundingRect(contour)
        own = np.zeros((h, w), np.uint8)
        cv2.drawContours(own, [contour], -1, 255, thickness=cv2.FILLED, offset=(-x, -y))
        parts = split_blob(own, small[y:y + h, x:x + w], self.split)
        if len(parts) == 1:
            return [contour]
        return [c for part in parts
                for c in cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))[0]]

    def _piece(self, contour: np.ndarray, parent: Detection, kind: str, frame: tuple[int, int]) -> Detection:
        """A detection of ``contour`` (segmentation scale, frame coordinates) cut out of ``parent``."""
        s = self.seg_scale
        box = outline_box(contour, s, frame)
        area = cv2.contourArea(contour) / (s * s)
        centre, solidity = outline_shape(contour, s, area, box)
        # a piece touches only frame edges its parent was confirmed to cross
        edges = frame_edges(box, frame, self.border_margin_px) & parent.edges
        return replace(parent, bbox=box, area=float(area), centroid=centre, edges=edges, solidity=solidity,
                       overlap_suspect=False, n_cores=1, two_colour_regions=False, outline=contour, kind=kind,
                       not_cloth=parent.not_cloth and kind != GARMENT)  # cloth carved out of what the check refused
