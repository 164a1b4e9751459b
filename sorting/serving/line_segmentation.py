"""A line's segmentation stage as the sorter loop runs it, on its own: white balance, belt model, crops.

``serve`` builds these parts from the line config in :class:`sorting.serving.loop.SorterLoop`;
:class:`LineSegmentation` builds them the same way so that ``evaluate-detection`` (and anything
else that scores detections) measures exactly what the loop sees: the continuous white balance
(when the line has a reference patch) applied to the frame the segmenter gets, the reference
patch ignored, the textile check of each garment (when the line has one) and the garments it finds inside
clumps, and the classifier's crops with neighbours painted out and the colour corrected.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sorting.datasets.preprocess import garment_crop_box
from sorting.serving.cloth_carve import ClothCarver, ClothMap
from sorting.serving.colour_calibration import ColourCorrector, ContinuousWhiteBalance
from sorting.serving.line_config import LineConfig
from sorting.serving.non_garment import GARMENT
from sorting.serving.segmentation import BeltSegmenter, Detection, NeighbourMasker, trimmed_box
from sorting.serving.textile_check import TextileCheck
from sorting.serving.tracking import BeltAxis
from sorting.serving.timing import StageTimer


class LineSegmentation:
    """Per frame: ``segment(image)`` then, if wanted, ``crops(image, detections)``."""

    def __init__(self, cfg: LineConfig, *, fps: float | None = None) -> None:
        cal = cfg.calibration
        self.corrector = ColourCorrector(cal.white_balance if cal.apply else (1, 1, 1),
                                         cal.exposure_gain if cal.apply else 1.0)
        self.white_balance = (
            ContinuousWhiteBalance(cal.reference_roi, cal.target_level, every=cal.continuous_every,
                                   smoothing=cal.continuous_smoothing)
            if cal.apply and cal.continuous and cal.reference_roi is not None else None
        )
        along = 0 if cfg.belt.direction[1] == "x" else 1
        patch = [cal.reference_roi] if cal.reference_roi is not None else []
        self.segmenter = BeltSegmenter(cfg.segmentation, fps=fps or cfg.camera.fps or 30.0, along_axis=along,
                                       extra_ignore=patch)
        self.masker = NeighbourMasker(cfg.segmentation.scale)
        seg = cfg.segmentation
        self.textile_check: TextileCheck | None = None
        self.carver: ClothCarver | None = None
        if seg.textile_check is not None:
            self.textile_check = TextileCheck(seg.textile_check)
            if seg.textile_check.carve is not None:
                self.carver = ClothCarver(seg.textile_check.carve, ClothMap(self.textile_check),
                                          self.textile_check.scores, min_score=self.textile_check.min_score,
                                          seg_scale=seg.scale, typical_area_px=seg.typical_item_area_px(),
                                          min_area_px=seg.min_area_px, border_margin_px=seg.border_margin_px,
                                          split=seg.split_touching, reuse_iou=seg.textile_check.reuse_iou,
                                          crop_map=self.textile_check.crop_map)
        self._moving_belt = cfg.tracking.scene == "belt"  # consecutive frames show the same garments
        self._belt = BeltAxis(cfg.belt.direction)
        # how far the belt moves from one frame to the next at its nominal speed (the loop gives the measured one)
        self._px_per_frame = cfg.belt.pixels_per_second / (fps or cfg.camera.fps or 30.0)
        self._decision_line = cfg.tracking.decision_line_px
        # wall time of each stage (belt model, textile check, carve): the last frame's and the means
        self.timer = StageTimer(())
        self.along_axis = along
        self._box_trim, self._scale = seg.box_trim, seg.scale

    def segment(self, image: np.ndarray, *, shape_min_area: float | None = None, trim: bool = True,
                moved_px: float | None = None) -> list[Detection]:
        """Detections in ``image`` (raises :class:`~sorting.serving.segmentation.FrameError` for a frame it
        cannot use); the white balance follows the reference patch first, as in the loop. Garment boxes are
        trimmed (``segmentation.box_trim``) unless ``trim`` is False: the boxes the textile check crops. On a moving
        belt, ``moved_px`` is how far the belt moved since the last frame segmented (default: one frame at the
        belt's nominal speed): the check and carving find last frame's things there again instead of scoring them
        anew."""
        if self.white_balance is not None:
            self.corrector = self.white_balance.update(image) or self.corrector
        normalise = self.corrector.apply if self.white_balance is not None else None
        self.timer.start_frame()
        with self.timer.stage("belt model"):
            detections = self.segmenter.segment(image, normalise, shape_min_area=shape_min_area)
        wait = self.coming_into_view if self._moving_belt else None
        shift = self._travel(moved_px) if self._moving_belt else (0.0, 0.0)  # a still scene reuses nothing
        if self.textile_check is not None:
            with self.timer.stage("textile check"):
                detections = self.textile_check.relabel(image, detections, reuse=self._moving_belt, shift=shift,
                                                        wait=wait)
        if self.carver is not None:
            with self.timer.stage("carve"):
                detections = self.carver.carve(image, detections, reuse=self._moving_belt, shift=shift, wait=wait)
        return self._trimmed(detections, image.shape) if trim and self._box_trim > 0 else detections

    def _travel(self, moved_px: float | None) -> tuple[float, float]:
        """The belt's travel ``(x, y)`` in px: ``moved_px`` along its direction, or one frame at its nominal speed."""
        dx, dy = self._belt.velocity(self._px_per_frame if moved_px is None else moved_px)
        return float(dx), float(dy)

    def _trimmed(self, detections: list[Detection], shape: tuple[int, ...]) -> list[Detection]:
        """The garments' boxes trimmed to their body (``segmentation.box_trim``), each keeping its whole box for the
        classifier's crop; hands and objects as they are."""
        frame = (shape[1], shape[0])
        return [replace(d, bbox=trimmed_box(d.outline, self._scale, frame, self._box_trim), whole_bbox=d.bbox)
                if d.kind == GARMENT and d.outline is not None else d for d in detections]

    def coming_into_view(self, det: Detection) -> bool:
        """On a moving belt: whether ``det`` is still coming into view, so the textile check and carving wait for
        it. It touches the edge things enter by (and not the far one: a thing longer than the view is never whole),
        and its leading end has not reached the decision line (every item is checked before it is decided). A
        part of a thing is not the thing (the class list takes a garment's flat corner for an object), and a box
        that grows every frame would be scored again on every frame."""
        belt = self._belt
        if belt.entry_edge not in det.edges or (det.edges & belt.entry_exit_edges) - {belt.entry_edge}:
            return False
        x, y, w, h = det.bbox
        leading = max(belt.along((x, y)), belt.along((x + w, y + h)))  # as the tracker decides: along the belt
        return leading < belt.sign * self._decision_line

    def crops(self, image: np.ndarray, detections: list[Detection]) -> list[np.ndarray]:
        """The classifier's view of every detection (the loop crops only tracks due for a view)."""
        return [self.corrector.apply(self.masker.crop(image, garment_crop_box(image.shape, d.crop_bbox), d, detections))
                for d in detections]
