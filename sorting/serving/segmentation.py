"""Garment segmentation against a uniform belt (classical OpenCV, on a downscaled frame).

Model of the belt: a per-pixel background image. The belt looks the same all along its
direction of travel, so the model starts as the median of the first frame *along* the belt
(one value per row for a belt moving along x): robust to garments already on the belt, and it
already knows fixed bands such as a guard rail or the lens vignette across the belt. Then it is

* updated slowly where the pixel is belt (follows lighting drift), and
* absorbing pixels that stay "foreground" for longer than ``static_s`` seconds: garments
  move with the belt, so anything that does not move (a dirty stain, a label, tape) becomes
  part of the belt. The tracker only makes items of blobs that travel, so a stain seen before
  it is learned never becomes an item.

Foreground = brightness (Y) difference to the background above ``threshold`` (``brighter_threshold``
for pixels brighter than the belt) or colour (|dCr| + |dCb|) difference above ``chroma_threshold``,
then opening/closing and external contours. Regions listed in ``ignore_rois`` (the reference
patch, a bracket in view) are blanked. Each blob becomes a :class:`Detection` with its
full-resolution box, area, centroid, which frame edges it touches and (every
``shape_check_every``-th frame, the costly part) whether its shape looks
like more than one garment: two thick cores in its distance transform (two bodies joined by a
narrow contact), two large contiguous regions of clearly different colour (one garment lying
on another), or very low solidity (deep convexity defects). "Far larger than the
typical item" needs to know which blobs are items, so the tracker checks that.

Real belts (opt-in, written by ``textile-sorter calibrate --belt``): ``belt_model: colour`` replaces the
per-pixel model by the belt's colour (:mod:`~sorting.serving.colour_foreground`: each frame on its own,
for still photos, sun and shade), ``belt_region`` keeps rails and brackets out (followed per frame with
``belt_region_follow_px``), ``split_touching`` cuts blobs of touching garments apart
(:mod:`~sorting.serving.blob_split`) and ``non_garment`` gives each detection a ``kind``
(:mod:`~sorting.serving.non_garment`). A frame the segmentation cannot use raises ``FrameError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from sorting.config import StrictModel
from sorting.errors import ConfigError
from sorting.serving.belt_colour_model import BeltColourConfig
from sorting.serving.belt_region import BeltEdgeFollower, check_polygon, polygon_mask
from sorting.serving.blob_split import SplitConfig, split_blob
from sorting.serving.colour_foreground import ColourForeground, FrameError, exposure_problem
from sorting.serving.instances import instance_outlines
from sorting.serving.learned_detector import DetectorConfig, LearnedBox, LearnedDetector
from sorting.serving.textile_check import TextileCheckConfig
from sorting.serving.non_garment import (
    GARMENT,
    NonGarmentConfig,
    blob_kind,
    blob_measures,
)

log = logging.getLogger(__name__)

# x, y, width, height in full-resolution pixels
Roi = tuple[NonNegativeInt, NonNegativeInt, PositiveInt, PositiveInt]

BODY_MIN_LEVEL_PX = 2.0  # lowest cut of the distance map: below it, outline noise makes "peaks"
BODY_LEVEL_STEP = 1.4
REACH_PX = 3  # an outline this close to the belt region's edge (segmentation-scale px) reaches in from beside the belt


class SegmentationConfig(StrictModel):
    """Belt/background segmentation settings (pixel values in full-resolution pixels)."""

    scale: float = Field(0.5, ge=0.1, le=1.0, description="segmentation resolution / full resolution")
    threshold: int = Field(30, ge=0, le=255)
    # pixels brighter than the belt (default: ``threshold``). Dirt and stains are darker than a belt, so a
    # lower value here finds pale garments on a grey belt without turning stains into items
    brighter_threshold: int | None = Field(None, ge=0, le=255)
    chroma_threshold: int = Field(14, ge=0, le=255)  # on |dCr| + |dCb| (saturates at 255)
    shape_check_every: int = Field(3, ge=1)
    min_area_px: int = Field(1500, ge=0)
    morph_kernel_px: int = Field(7, ge=0)
    background_rate: float = Field(0.02, ge=0, le=1)  # per frame
    background_every: int = Field(2, ge=1)  # update the belt model every n-th frame (at n x the rate): it drifts slowly
    static_s: float = Field(3.0, gt=0)
    border_margin_px: int = Field(3, ge=0)
    edge_contact_px: int = Field(4, ge=0)
    solidity_min: float = Field(0.4, ge=0, le=1)
    body_prominence: float = Field(0.5, ge=0, lt=1)
    body_colour_delta: float = Field(12.0, ge=0)  # two bodies count only if their colours differ this much (0: always)
    colour_split_delta: float = Field(30.0, ge=0)
    colour_split_lightness_weight: float = Field(0.25, ge=0)  # weight of L* against a*b*: < 1 ignores shading, folds
    colour_split_min_share: float = Field(0.12, ge=0, le=1)
    colour_split_contiguity: float = Field(0.8, ge=0, le=1)
    ignore_rois: list[Roi] = []
    # --- real belts (opt-in; ``textile-sorter calibrate --belt`` writes these from frames of the belt) ---
    # "median": the per-pixel belt model above (starts from the first frame, learns along the run);
    # "colour": the belt's colour (belt_colour) says what is belt in each frame on its own, and the belt's
    # brightness around each garment is estimated from that frame's belt pixels (still photos, sun, shade)
    belt_model: Literal["median", "colour"] = "median"
    belt_colour: BeltColourConfig | None = None
    belt_region: list[tuple[int, int]] | None = None  # polygon (full-resolution px): outside is not belt
    belt_region_follow_px: float = Field(default=0.0, ge=0)  # "colour": re-fit the band's edges per frame, +- this
    frame_size: tuple[int, int] | None = None  # (width, height) of the frames belt_region was set up on
    background_sigma_px: float = Field(default=40.0, gt=0)  # reach of the per-frame belt estimate ("colour")
    expected_item_area_px: float | None = None  # typical garment area measured at set-up (informative)
    # a garment's box leaves out this share of its blob's pixels at each of its four sides: the blob's outermost
    # pixels are often not the garment's body (a string, a fringe, a shadow's tail, a bit of belt-edge glare), and a
    # box drawn to them is looser than the item; 0: the outline's own box. Only the box that leaves the line's
    # segmentation (tracking, decisions, evaluate-detection) is trimmed: the textile check and the classifier crop
    # the whole blob (Detection.crop_bbox)
    box_trim: float = Field(default=0.0, ge=0, lt=0.25)
    split_touching: SplitConfig | None = None  # cut blobs of touching garments of different colours apart
    non_garment: NonGarmentConfig | None = None  # tell hands and objects from garments (Detection.kind)
    # a learned detector of garments, hands and objects (``textile-sorter train-belt-detector``): its boxes and
    # kinds replace the blobs, split_touching and non_garment; the belt model above still outlines each thing
    detector: DetectorConfig | None = None
    # an ImageNet classifier's look at each garment's crop: what does not look like cloth becomes an object
    textile_check: TextileCheckConfig | None = None

    def typical_item_area_px(self) -> float:
        """A typical item's area (full-resolution px): measured at set-up, or ten times the smallest kept."""
        return self.expected_item_area_px or 10.0 * self.min_area_px

    @model_validator(mode="after")
    def _real_belt(self) -> SegmentationConfig:
        if self.belt_model == "colour" and self.belt_colour is None:
            raise ValueError("segmentation.belt_model 'colour' needs segmentation.belt_colour "
                             "(run textile-sorter calibrate --belt)")
        if self.belt_region is not None:
            if self.frame_size is None:
                raise ValueError("segmentation.belt_region needs segmentation.frame_size (width, height)")
            try:
                check_polygon(self.belt_region, self.frame_size)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self




@dataclass(frozen=True)
class Detection:
    """One foreground blob in full-resolution pixel coordinates."""

    bbox: tuple[int, int, int, int]  # x, y, w, h
    area: float
    centroid: tuple[float, float]
    edges: frozenset[str] = field(default_factory=frozenset)  # subset of left/right/top/bottom
    overlap_suspect: bool = False
    solidity: float = 1.0
    n_cores: int = 1
    two_colour_regions: bool = False
    shape_checked: bool = True  # cores / colour regions were examined in this frame
    # outline at the segmentation scale (OpenCV contour, int32 (N, 1, 2)); for painting neighbours out of a crop
    outline: np.ndarray | None = field(default=None, compare=False, repr=False)
    kind: str = GARMENT  # or "hand" / "object" (segmentation.non_garment): never sorted as a garment
    not_cloth: bool = False  # an object because the textile check found its crop not cloth (it was a garment)
    # the outline's own box where ``bbox`` was trimmed to the garment's body (segmentation.box_trim): the classifier
    # crops the whole blob, as its model was trained to
    whole_bbox: tuple[int, int, int, int] | None = None

    @property
    def crop_bbox(self) -> tuple[int, int, int, int]:
        """The box the classifier's crop is cut around: the whole blob's."""
        return self.whole_bbox or self.bbox


def outline_box(contour: np.ndarray, scale: float, frame: tuple[int, int]) -> tuple[int, int, int, int]:
    """The full-resolution box (x, y, w, h) of an outline at the segmentation ``scale``, inside the ``(width,
    height)`` frame."""
    return _full_resolution(cv2.boundingRect(contour), scale, frame)


def _full_resolution(box: Sequence[int], scale: float, frame: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box (x, y, w, h) at the segmentation ``scale`` as the full-resolution pixels it covers, inside ``frame``."""
    x, y, w, h = box
    x0, y0 = int(x / scale), int(y / scale)
    return x0, y0, min(frame[0], int(np.ceil((x + w) / scale))) - x0, min(frame[1], int(np.ceil((y + h) / scale))) - y0


def trimmed_box(contour: np.ndarray, scale: float, frame: tuple[int, int], share: float) -> tuple[int, int, int, int]:
    """The full-resolution box (x, y, w, h) of an outline at the segmentation ``scale`` that leaves out ``share`` of
    its filled pixels beyond each of its sides (the pixels' ``share`` and ``1 - share`` quantiles along each axis),
    inside the ``(width, height)`` frame; ``share`` 0 is :func:`outline_box`."""
    if share <= 0:
        return outline_box(contour, scale, frame)
    x, y, w, h = cv2.boundingRect(contour)
    filled = np.zeros((h, w), np.uint8)
    cv2.drawContours(filled, [contour], -1, 1, cv2.FILLED, offset=(-x, -y))
    total = int(filled.sum())
    if total == 0:
        return _full_resolution((x, y, w, h), scale, frame)
    sides = []
    for counts in (filled.sum(axis=0), filled.sum(axis=1)):  # pixels per column, per row
        cumulative = np.cumsum(counts)
        first = int(np.searchsorted(cumulative, share * total, side="right"))
        last = int(np.searchsorted(cumulative, (1.0 - share) * total, side="left"))
        sides.append((first, max(first, last) + 1))
    (c0, c1), (r0, r1) = sides
    return _full_resolution((x + c0, y + r0, c1 - c0, r1 - r0), scale, frame)


def outline_shape(contour: np.ndarray, scale: float, area: float,
                  box: tuple[int, int, int, int]) -> tuple[tuple[float, float], float]:
    """Full-resolution centroid and solidity of an outline at the segmentation ``scale`` (``area``: its
    full-resolution area; ``box``: where its centre is when the outline has no area)."""
    m = cv2.moments(contour)
    # pixel centre i at the segmentation scale is (i + 0.5) / s - 0.5 at full resolution
    centre = (((m["m10"] / m["m00"] + 0.5) / scale - 0.5, (m["m01"] / m["m00"] + 0.5) / scale - 0.5) if m["m00"]
              else (box[0] + box[2] / 2, box[1] + box[3] / 2))
    hull_area = cv2.contourArea(cv2.convexHull(contour)) / (scale * scale)
    return (float(centre[0]), float(centre[1])), min(1.0, area / hull_area) if hull_area > 0 else 1.0


def frame_edges(box: tuple[int, int, int, int], frame: tuple[int, int], margin: int) -> frozenset[str]:
    """The frame edges (left/right/top/bottom) that ``box`` (x, y, w, h) reaches to within ``margin`` px."""
    x, y, w, h = box
    return frozenset(name for name, hit in (("left", x <= margin), ("right", x + w >= frame[0] - margin),
                                            ("top", y <= margin), ("bottom", y + h >= frame[1] - margin)) if hit)


class BeltSegmenter:
    """Stateful segmenter: call :meth:`segment` once per frame, in order."""

    def __init__(self, cfg: SegmentationConfig, *, fps: float = 30.0, along_axis: int = 0,
                 extra_ignore: list[Roi] | None = None) -> None:
        self.cfg = cfg
        self._along_axis = along_axis  # image axis the belt moves along: 0 = x, 1 = y
        self._static_frames = max(1, int(round(cfg.static_s * fps)))
        self._ignore = list(cfg.ignore_rois) + list(extra_ignore or [])
        self._background: np.ndarray | None = None
        self._background_u8: np.ndarray | None = None  # the belt model rounded, refreshed on update
        self._fg_count: np.ndarray | None = None
        self._ignore_mask: np.ndarray | None = None
        self._shape: tuple[int, int] | None = None
        k = max(1, int(round(cfg.morph_kernel_px * cfg.scale)))
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        # OpenCV anchors an even kernel off-centre, so closing and opening each move the mask by half a
        # pixel-pair (+1 px for k = 4); opening with the anchor one pixel lower moves it back (-1 px)
        self._open_anchor = ((k - 1) // 2, (k - 1) // 2)
        self.last_mask: np.ndarray | None = None
        self._frame = 0
        # look for two colour regions in large blobs; off when the model's layout head judges several garments
        self.check_colours = True
        self._brighter = cfg.threshold if cfg.brighter_threshold is None else cfg.brighter_threshold
        self._colour: ColourForeground | None = None
        self._region: np.ndarray | None = None  # this frame's belt region (the colour model follows the belt)
        self._detector = LearnedDetector(cfg.detector) if cfg.detector is not None else None
        self._entry_edges = frozenset(("left", "right") if along_axis == 0 else ("top", "bottom"))
        self._reach_kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * REACH_PX + 1, 2 * REACH_PX + 1))
        self._inner_region: np.ndarray | None = None  # this frame's belt region less its edge band (when asked)

    def _small(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        size = (max(1, int(round(w * self.cfg.scale))), max(1, int(round(h * self.cfg.scale))))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def _init(self, small: np.ndarray, full_shape: tuple[int, int]) -> None:
        # numpy axis of the belt's travel: columns (1) for x, rows (0) for y
        belt = np.median(small, axis=1 if self._along_axis == 0 else 0, keepdims=True).astype(np.float32)
        self._background = np.ascontiguousarray(np.broadcast_to(belt, small.shape), dtype=np.float32)
        self._background_u8 = cv2.convertScaleAbs(self._background)
        self._fg_count = np.zeros(small.shape[:2], dtype=np.uint16)
        keep = np.full(small.shape[:2], 255, dtype=np.uint8)
        for x, y, w, h in self._ignore:
            s = self.cfg.scale
            x0, y0 = int(x * s), int(y * s)
            x1, y1 = int(np.ceil((x + w) * s)), int(np.ceil((y + h) * s))
            keep[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 0
        region = keep
        if self.cfg.belt_region is not None:
            region = cv2.bitwise_and(keep, polygon_mask(self.cfg.belt_region, small.shape[:2], self.cfg.scale))
        self._ignore_mask = region
        if self.cfg.belt_model == "colour" and self.cfg.belt_colour is not None:
            follower = None
            if self.cfg.belt_region is not None and self.cfg.belt_region_follow_px > 0:
                follower = BeltEdgeFollower(self.cfg.belt_region, small.shape[:2], self.cfg.scale,
                                            along_axis=self._along_axis, follow_px=self.cfg.belt_region_follow_px)
            self._colour = ColourForeground(self.cfg.belt_colour, keep, region, follower=follower,
                                            sigma_px=self.cfg.background_sigma_px * self.cfg.scale,
                                            scale=self.cfg.scale, along_axis=self._along_axis)
        self._shape = full_shape
        log.debug("belt model started, mean YCrCb %s", belt.reshape(-1, 3).mean(axis=0).round(1).tolist())

    def segment(self, image: np.ndarray, normalise: Callable[[np.ndarray], np.ndarray] | None = None,
                *, shape_min_area: float | None = None) -> list[Detection]:
        """Detections in this frame (and update the belt model).

        ``normalise`` (e.g. the live white balance) is applied to the downscaled frame first, so a
        change of the light's colour does not turn the whole belt into foreground.
        ``shape_min_area``: blobs smaller than this skip the costly two-bodies / two-colours checks
        (the tracker counts them only for blobs larger than a typical item).
        """
        full_shape = image.shape[:2]
        self._check_size(full_shape)
        self._inner_region = None
        small = self._small(image)
        if (problem := exposure_problem(small)) is not None:  # before the white balance, which would stretch it
            raise FrameError(f"frame unusable ({problem[0]}: mean level {problem[1]:.0f}): frame skipped")
        if normalise is not None:
            small = normalise(small)
        ycc = cv2.cvtColor(small, cv2.COLOR_BGR2YCrCb)  # the belt model lives in YCrCb: one conversion a frame
        if self._background is None or self._shape != full_shape:
            self._init(ycc, full_shape)
        assert self._background_u8 is not None and self._ignore_mask is not None
        if self._colour is not None:
            mask = self._colour_foreground(small)
        else:
            mask = cv2.bitwise_and(self._foreground(ycc, self._background_u8), self._ignore_mask)
            if self._frame % max(1, self.cfg.background_every) == 0:
                self._update_background(ycc, mask)
        # close first: joins the fragments of a striped or textured garment, then drop specks
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel, anchor=self._open_anchor)
        if self._colour is not None and self._region is not None:
            mask = self._colour.drop_belt_like(mask, small, self._region)
        self.last_mask = mask
        self._frame += 1
        check = (self._frame - 1) % self.cfg.shape_check_every == 0

        def confirm(edges: frozenset[str], box: tuple[int, int, int, int]) -> frozenset[str]:
            return self._confirm_edges(edges, box, image, normalise)

        if self._detector is not None:
            found = self._detector.detect(small, (full_shape[1], full_shape[0]))
            return self._learned_detections(found, mask, small, check_shape=check,
                                            shape_min_area=shape_min_area or 0.0, confirm=confirm)
        return self._detections(mask, small, check_shape=check, shape_min_area=shape_min_area or 0.0, confirm=confirm)

    def rewind(self) -> None:
        """Count the last frame as not seen (to segment the same frame again, e.g. to time it): the shape
        checks run on the same frames as without the repeat. Only for a belt model without memory."""
        if self._colour is None:
            raise RuntimeError("the per-pixel belt model learns from every frame: it cannot rewind")
        self._frame = max(0, self._frame - 1)

    def _check_size(self, full_shape: tuple[int, int]) -> None:
        size = self.cfg.frame_size
        if size is not None and (full_shape[1], full_shape[0]) != tuple(size):
            raise FrameError(f"frame is {full_shape[1]}x{full_shape[0]}, the line's belt was set up on "
                             f"{size[0]}x{size[1]} frames (segmentation.frame_size): frame skipped")

    def _colour_foreground(self, small: np.ndarray) -> np.ndarray:
        """Foreground by the belt's colour (:mod:`~sorting.serving.colour_foreground`); this frame's belt,
        in YCrCb, becomes the belt model (for the edge checks)."""
        assert self._colour is not None
        mask, self._region, belt = self._colour.mask(small)
        self._background_u8 = cv2.cvtColor(cv2.convertScaleAbs(belt), cv2.COLOR_BGR2YCrCb)
        self._background = self._background_u8.astype(np.float32)
        return mask

    def _confirm_edges(self, edges: frozenset[str], bbox: tuple[int, int, int, int], image: np.ndarray,
                       normalise: Callable[[np.ndarray], np.ndarray] | None) -> frozenset[str]:
        """Keep only the frame edges the garment really crosses, judged at full resolution.

        At the segmentation scale a garment that ends a pixel or two short of the edge (and the
        closing kernel) "touches" it; classifying it as cut off would reject a whole garment.
        Cut means at least ``edge_contact_px`` foreground pixels on the frame's outermost line.
        Only the side edges (along the belt) are checked: entering and leaving is the tracker's job.
        """
        assert self._background is not None
        height, width = image.shape[:2]
        x, y, w, h = bbox
        s = self.cfg.scale
        sides = ("top", "bottom") if self._along_axis == 0 else ("left", "right")
        kept = {name for name in edges if name not in sides}
        for name in edges & frozenset(sides):
            if name in ("top", "bottom"):
                line = image[0 if name == "top" else height - 1, x : x + w]
                small_line = self._background[0 if name == "top" else -1]
                idx = np.minimum((np.arange(x, x + w) * s).astype(np.intp), small_line.shape[0] - 1)
            else:
                line = image[y : y + h, 0 if name == "left" else width - 1]
                small_line = self._background[:, 0 if name == "left" else -1]
                idx = np.minimum((np.arange(y, y + h) * s).astype(np.intp), small_line.shape[0] - 1)
            line = np.ascontiguousarray(line).reshape(1, -1, 3)
            if normalise is not None:
                line = normalise(line)
            line = cv2.cvtColor(line, cv2.COLOR_BGR2YCrCb)
            belt = cv2.convertScaleAbs(small_line[idx]).reshape(1, -1, 3)
            if int(np.count_nonzero(self._foreground(line, belt))) >= self.cfg.edge_contact_px:
                kept.add(name)
        return frozenset(kept)

    def _foreground(self, ycc: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Pixels (YCrCb, as the belt model) darker than the belt model by more than ``threshold``,
        brighter by more than ``brighter_threshold``, or whose colour (|dCr| + |dCb|) differs by more
        than ``chroma_threshold``. Belt texture and dirt change brightness only; a dark but coloured
        garment (brown, navy) differs in colour."""
        _, cr, cb = cv2.split(cv2.absdiff(ycc, background))
        y, belt_y = cv2.extractChannel(ycc, 0), cv2.extractChannel(background, 0)
        lum = cv2.bitwise_or(
            cv2.threshold(cv2.subtract(belt_y, y), self.cfg.threshold, 255, cv2.THRESH_BINARY)[1],
            cv2.threshold(cv2.subtract(y, belt_y), self._brighter, 255, cv2.THRESH_BINARY)[1],
        )
        chroma = cv2.threshold(cv2.add(cr, cb), self.cfg.chroma_threshold, 255, cv2.THRESH_BINARY)[1]
        return cv2.bitwise_or(lum, chroma)

    def _update_background(self, small: np.ndarray, raw_mask: np.ndarray) -> None:
        assert self._background is not None and self._fg_count is not None
        every = max(1, self.cfg.background_every)
        rate = min(1.0, self.cfg.background_rate * every)
        cv2.accumulateWeighted(small, self._background, rate, mask=cv2.bitwise_not(raw_mask))
        count = self._fg_count
        count += every
        count[raw_mask == 0] = 0
        if cv2.minMaxLoc(count)[1] >= self._static_frames:
            static = count >= self._static_frames
            self._background[static] = small[static]
            count[static] = 0
            log.debug("absorbed %d static pixels into the belt model", int(static.sum()))
        self._background_u8 = cv2.convertScaleAbs(self._background)

    def _detections(self, mask: np.ndarray, small: np.ndarray, *, check_shape: bool, shape_min_area: float,
                    confirm: Callable[[frozenset[str], tuple[int, int, int, int]], frozenset[str]]) -> list[Detection]:
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if self.cfg.split_touching is not None:
            contours = self._split_touching(contours, small, 2.0 * self.cfg.min_area_px * self.cfg.scale ** 2)
        inv_area = 1.0 / (self.cfg.scale * self.cfg.scale)
        out = []
        for contour in contours:
            area = cv2.contourArea(contour) * inv_area
            if area >= self.cfg.min_area_px:
                out.append(self._detection(contour, small, area, check_shape=check_shape,
                                           shape_min_area=shape_min_area, confirm=confirm))
        return out

    def _detection(self, contour: np.ndarray, small: np.ndarray, area: float, *, check_shape: bool,
                   shape_min_area: float, confirm: Callable[[frozenset[str], tuple[int, int, int, int]], frozenset[str]],
                   learned: LearnedBox | None = None) -> Detection:
        """One blob's detection; with ``learned``, its box and kind are the detector's (the blob is its outline)."""
        s = self.cfg.scale
        height, width = self._shape or small.shape[:2]
        if learned is None:
            box = outline_box(contour, s, (width, height))
        else:
            x0, y0 = int(learned.box[0]), int(learned.box[1])
            x1, y1 = min(width, int(np.ceil(learned.box[2]))), min(height, int(np.ceil(learned.box[3])))
            box = (x0, y0, x1 - x0, y1 - y0)
        (cx, cy), solidity = outline_shape(contour, s, area, box)
        edges = frame_edges(box, (width, height), self.cfg.border_margin_px)
        if edges:
            edges = confirm(edges, box)
        cores, split, kind = self._blob_checks(contour, small, area, edges, check_shape, shape_min_area,
                                               kind=None if learned is None else learned.kind)
        overlap = solidity < self.cfg.solidity_min or cores > 1 or split
        return Detection(
            bbox=box,
            area=float(area),
            centroid=(float(cx), float(cy)),
            edges=edges,
            overlap_suspect=overlap,
            solidity=float(solidity),
            n_cores=cores,
            two_colour_regions=split,
            shape_checked=check_shape,
            outline=contour,
            kind=kind,
        )

    def _learned_detections(self, found: list[LearnedBox], mask: np.ndarray, small: np.ndarray, *, check_shape: bool,
                            shape_min_area: float,
                            confirm: Callable[[frozenset[str], tuple[int, int, int, int]], frozenset[str]]
                            ) -> list[Detection]:
        """The detector's things on the belt, each outlined by the foreground pixels nearest its box's centre
        (:func:`~sorting.serving.instances.instance_outlines`)."""
        assert self._ignore_mask is not None
        region = self._region if self._region is not None else self._ignore_mask
        s = self.cfg.scale
        kept = [b for b in found if (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]) >= self.cfg.min_area_px
                and _inside(region, b.centre, s)]
        detector = self.cfg.detector
        assert detector is not None
        height, width = self._shape or (small.shape[0] / s, small.shape[1] / s)
        grown = [_grown(b.box, detector.grow, (width, height)) for b in kept]
        out = []
        for box, outline in zip(kept, instance_outlines(mask, grown, s)):
            if detector.box == "outline" and outline.shown:
                x, y, w, h = cv2.boundingRect(outline.contour)
                box = LearnedBox((x / s, y / s, (x + w) / s, (y + h) / s), box.kind, box.score)
            out.append(self._detection(outline.contour, small, outline.area / (s * s), check_shape=check_shape,
                                       shape_min_area=shape_min_area, confirm=confirm, learned=box))
        return out

    def _blob_checks(self, contour: np.ndarray, small: np.ndarray, area: float, edges: frozenset[str],
                     check_shape: bool, shape_min_area: float, *, kind: str | None = None) -> tuple[int, bool, str]:
        """(bodies, two colour regions, kind) of one blob: the shape checks on a whole blob every
        ``shape_check_every``-th frame, the kind on every frame when ``non_garment`` is set (and ``kind``, the
        learned detector's, is not given)."""
        non_garment = self.cfg.non_garment if kind is None else None
        if not (check_shape and not edges) and non_garment is None:
            return 1, False, kind or GARMENT
        x, y, w, h = cv2.boundingRect(contour)
        own = np.zeros((h, w), np.uint8)
        cv2.drawContours(own, [contour], -1, 255, -1, offset=(-x, -y))
        roi = small[y : y + h, x : x + w]
        cores, split, kind = 1, False, kind or GARMENT
        if check_shape and not edges:
            cores = self._cores(own, roi)
            split = (self.check_colours and cores <= 1 and area >= shape_min_area
                     and self._two_colour_regions(roi, own))
        if non_garment is not None:
            at_edge = bool(edges & self._entry_edges)
            kind = blob_kind(blob_measures(roi, own, contour), area_px=area,
                             typical_area_px=self.cfg.typical_item_area_px(), at_edge=at_edge, cfg=non_garment,
                             reaches_in=at_edge or not non_garment.hand_reaches_in or self._reaches_region_edge(contour))
        return cores, split, kind

    def _reaches_region_edge(self, contour: np.ndarray) -> bool:
        """Whether the outline comes within REACH_PX (at the segmentation scale) of this frame's belt region's edge
        or the frame's: where an arm comes in from beside the belt."""
        if self._inner_region is None:  # once a frame (reset by segment): the region follows the belt's edges
            region = self._region if self._region is not None else self._ignore_mask
            assert region is not None
            self._inner_region = cv2.erode(region, self._reach_kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        points = contour.reshape(-1, 2)
        return bool((self._inner_region[points[:, 1], points[:, 0]] == 0).any())

    def _split_touching(self, contours: Sequence[np.ndarray], small: np.ndarray, min_area: float) -> list[np.ndarray]:
        """Contours with each blob of touching garments (``split_touching``) replaced by its parts."""
        assert self.cfg.split_touching is not None
        out: list[np.ndarray] = []
        max_solidity = self.cfg.split_touching.max_solidity
        for contour in contours:
            area = cv2.contourArea(contour)
            if area < min_area or area > max_solidity * cv2.contourArea(cv2.convexHull(contour)):
                out.append(contour)
                continue
            x, y, w, h = cv2.boundingRect(contour)
            own = np.zeros((h, w), np.uint8)
            cv2.drawContours(own, [contour], -1, 255, -1, offset=(-x, -y))
            parts = split_blob(own, small[y : y + h, x : x + w], self.cfg.split_touching)
            if len(parts) == 1:
                out.append(contour)
                continue
            for part in parts:
                found, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
                out.extend(found)
        return out

    def _cores(self, own: np.ndarray, roi_bgr: np.ndarray) -> int:
        """Separate bodies of a blob (``own``: its filled outline): peaks of its distance-to-edge map
        that stand out by at least ``body_prominence`` of their own height above the saddle
        joining them.

        Cut the map at a level L: a part whose own peak reaches L / (1 - prominence) rises at least
        that share above any saddle to the rest. Sleeves, legs and sock feet widen into the
        garment's body without a saddle, so one garment has one body at every level; two garments
        joined by a narrow contact have two, even a thin sock beside a thick sweater (which a
        single level relative to the blob's highest peak misses). Levels rise geometrically from
        2 px (at the segmentation scale). The outline is filled first: holes where a fold's
        shadow matched the belt must not cut one garment in two.
        """
        sub = cv2.distanceTransform(cv2.copyMakeBorder(own, 1, 1, 1, 1, cv2.BORDER_CONSTANT), cv2.DIST_L2, 3)
        peak = cv2.minMaxLoc(sub)[1]
        if peak <= 4.0:
            return 1
        rise = 1.0 / (1.0 - self.cfg.body_prominence)
        level = BODY_MIN_LEVEL_PX
        while level * rise <= peak:
            parts = cv2.threshold(sub, level, 255, cv2.THRESH_BINARY)[1].astype(np.uint8)
            n, labels = cv2.connectedComponents(parts)
            if n > 2:
                tops = np.zeros(n, np.float32)
                np.maximum.at(tops, labels.ravel(), sub.ravel())
                bodies = [k for k in range(1, n) if tops[k] >= rise * level]
                if len(bodies) > 1 and self._colours_differ(roi_bgr, labels[1:-1, 1:-1], bodies):
                    return len(bodies)
            level *= BODY_LEVEL_STEP
        return 1

    def _colours_differ(self, roi_bgr: np.ndarray, labels: np.ndarray, bodies: list[int]) -> bool:
        """Whether some two bodies differ in mean colour (weighted Lab, as the colour split) by more
        than ``body_colour_delta``: a garment pinched in two by a fold's shadow has one colour."""
        if self.cfg.body_colour_delta <= 0:
            return True
        lab = self._weighted_lab(roi_bgr)
        means = np.array([cv2.mean(lab, mask=(labels == k).astype(np.uint8))[:3] for k in bodies], np.float32)
        gaps = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=2)
        return float(gaps.max()) > self.cfg.body_colour_delta

    def _weighted_lab(self, roi_bgr: np.ndarray) -> np.ndarray:
        """Lab (float32) with L* scaled by ``colour_split_lightness_weight``: shading is not a second garment."""
        lab = cv2.cvtColor(roi_bgr, cv2.COLOR_BGR2Lab).astype(np.float32)
        lab[..., 0] *= self.cfg.colour_split_lightness_weight
        return lab

    def _two_colour_regions(self, roi_bgr: np.ndarray, own: np.ndarray) -> bool:
        """Two garments of different colour lying on each other: the blob's pixels fall into two
        clearly different colours (weighted Lab distance above ``colour_split_delta``), each at least
        ``colour_split_min_share`` of the blob (a sock against a shirt) and each mostly one contiguous
        region (a striped or printed garment gives many small regions instead)."""
        if self.cfg.colour_split_delta <= 0:
            return False
        lab = self._weighted_lab(roi_bgr[::3, ::3])
        core = cv2.erode(own, None, iterations=2, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        inside = core[::3, ::3] > 0  # the outline's pixels are part belt
        pixels = lab[inside]
        if len(pixels) < 40:
            return False
        criteria = (cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS, 5, 1.0)
        _, labels, centres = cv2.kmeans(pixels, 2, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
        if float(np.linalg.norm(centres[0] - centres[1])) < self.cfg.colour_split_delta:
            return False
        labels = labels.ravel()
        grid = np.zeros(inside.shape, np.uint8)
        for k in (0, 1):
            members = labels == k
            if members.mean() < self.cfg.colour_split_min_share:
                return False
            grid[:] = 0
            grid[inside] = members.astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(grid, connectivity=8)
            if n < 2 or stats[1:, cv2.CC_STAT_AREA].max() < self.cfg.colour_split_contiguity * members.sum():
                return False
        return True


def _grown(box: tuple[float, float, float, float], factor: float, size: tuple[float, float]
           ) -> tuple[float, float, float, float]:
    """``box`` grown by ``factor`` about its centre, kept inside a frame of ``size`` (width, height)."""
    cx, cy, hw, hh = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return (max(0.0, cx - factor * hw), max(0.0, cy - factor * hh),
            min(size[0], cx + factor * hw), min(size[1], cy + factor * hh))


def _inside(region: np.ndarray, point: tuple[float, float], scale: float) -> bool:
    """Whether a full-resolution ``point`` lies in ``region`` (a mask at the segmentation scale)."""
    h, w = region.shape[:2]
    x, y = min(w - 1, max(0, int(point[0] * scale))), min(h - 1, max(0, int(point[1] * scale)))
    return bool(region[y, x])


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


class NeighbourMasker:
    """Crops that show one garment, as the training crops do.

    A crop's margin around its garment (``garment_crop``) often takes in the edge of a neighbour on a
    dense belt. The classifier never saw that in training, and its colour descriptor counts the
    neighbour's pixels as garment. This paints every other detection's outline (filled, plus a
    ``edge_px`` band for the blur around it) inside a crop with the belt's colour: the median of the
    crop's outermost pixels, which are belt apart from where a neighbour reaches the edge.
    """

    def __init__(self, scale: float, *, edge_px: int = 5) -> None:
        self.scale = scale
        self.edge_px = edge_px

    def crop(self, image: np.ndarray, box: tuple[int, int, int, int], own: Detection,
             detections: list[Detection]) -> np.ndarray:
        """``image`` cut to ``box`` (x, y, w, h, already clipped to the image) with other detections painted as belt."""
        x, y, w, h = box
        crop = image[y : y + h, x : x + w]
        others = [d.outline for d in detections
                  if d is not own and d.outline is not None and _overlaps(box, d.bbox)]
        if not others or w < 4 or h < 4:
            return crop
        ring = np.concatenate([crop[0, ::4], crop[-1, ::4], crop[::4, 0], crop[::4, -1]])
        belt = tuple(float(v) for v in np.sort(ring, axis=0)[len(ring) // 2])  # per-channel median
        inv = 1.0 / self.scale
        outlines = [np.round((c + 0.5) * inv - 0.5 - (x, y)).astype(np.int32) for c in others]
        out = crop.copy()
        cv2.drawContours(out, outlines, -1, belt, thickness=cv2.FILLED)
        cv2.drawContours(out, outlines, -1, belt, thickness=2 * self.edge_px)
        return out
