"""Copy-paste augmentation of the belt detector's training photos: labelled things cut out of some training photos
and laid onto others, beside or against what is already there.

Why: the development photos hold few cluttered scenes (31 of 180 photos), and that is where the detector fails:
touching garments, garments beside phones, tape and rulers. Pasting real cut-outs makes new scenes of that kind with
exact boxes for what was pasted (the "simple copy-paste" of instance segmentation, Ghiasi et al., CVPR 2021).

* **The bank** (:func:`build_bank`): each labelled box of the wanted kinds that overlaps no other label, cut out by
  OpenCV's GrabCut inside the box (the box's surroundings as background: the boxes are hand-drawn and loose). Only
  the samples it is given feed it: the training frames of a run, never its validation frames.
* **Pasting** (:class:`CopyPaste`): with probability ``p`` a frame gets 1 .. ``max_items`` cut-outs from other
  photos, flipped at random; each is laid against an item already there (share ``touching``) or anywhere in the band
  of rows where labelled things lie. A thing left less than half in view by what was laid on it leaves the loss
  (an ignored box), as a synthetic item partly in view does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sorting.training.belt_detector_data import Box, DetectorSample

log = logging.getLogger(__name__)

MAX_LABEL_OVERLAP = 0.05  # a box sharing more of its area with another label is not cut out (it holds a neighbour)
MIN_MASK_SHARE = 0.2  # a cut-out whose mask covers less of its box is GrabCut's failure, not a thing
GRABCUT_ITERATIONS = 4
COVERED = 0.5  # a thing with more of its box under pasted ones leaves the loss


@dataclass(frozen=True)
class Cutout:
    """A labelled thing cut out of a photo: its box's pixels and its mask (alpha 0..1), at the model's input size."""

    image: np.ndarray  # BGR uint8 (h, w, 3)
    alpha: np.ndarray  # float32 (h, w)
    kind: int  # index into KINDS
    source: str  # the photo it came from


def _overlap_share(box: Box, other: Box) -> float:
    w = min(box[2], other[2]) - max(box[0], other[0])
    h = min(box[3], other[3]) - max(box[1], other[1])
    area = (box[2] - box[0]) * (box[3] - box[1])
    return max(0.0, w) * max(0.0, h) / area if area > 0 else 1.0


def cut_out(image: np.ndarray, box: Box) -> np.ndarray | None:
    """The thing's mask inside ``box`` (uint8 0/1, the box's size) by GrabCut, or None where it finds none."""
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(image.shape[1], int(np.ceil(box[2]))), min(image.shape[0], int(np.ceil(box[3])))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    margin = max(4, (x1 - x0 + y1 - y0) // 8)  # belt around the box: GrabCut's background
    rx0, ry0 = max(0, x0 - margin), max(0, y0 - margin)
    rx1, ry1 = min(image.shape[1], x1 + margin), min(image.shape[0], y1 + margin)
    roi = np.ascontiguousarray(image[ry0:ry1, rx0:rx1])
    mask = np.zeros(roi.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(roi, mask, (x0 - rx0, y0 - ry0, x1 - x0, y1 - y0), bgd, fgd, GRABCUT_ITERATIONS,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # a box whose surroundings give GrabCut no background to learn
        return None
    inside = mask[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
    fg = ((inside == cv2.GC_FGD) | (inside == cv2.GC_PR_FGD)).astype(np.uint8)
    return fg if fg.mean() >= MIN_MASK_SHARE else None


def build_bank(samples: Sequence[DetectorSample], kinds: Sequence[int]) -> list[Cutout]:
    """Cut-outs of every labelled thing of ``kinds`` in ``samples`` that overlaps no other label."""
    bank = []
    for s in samples:
        for i, (box, kind) in enumerate(s.boxes):
            others = [b for j, (b, _) in enumerate(s.boxes) if j != i] + list(s.ignore)
            if kind not in kinds or any(_overlap_share(box, o) > MAX_LABEL_OVERLAP for o in others):
                continue
            fg = cut_out(s.image, box)
            if fg is None:
                continue
            x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
            h, w = fg.shape
            alpha = cv2.GaussianBlur(fg.astype(np.float32), (3, 3), 0)  # soft edges, no hard seam
            bank.append(Cutout(s.image[y0:y0 + h, x0:x0 + w].copy(), alpha, kind, s.name))
    log.info("copy-paste bank: %d cut-outs from %d frames", len(bank), len(samples))
    return bank


def row_band(samples: Sequence[DetectorSample]) -> tuple[float, float]:
    """The rows where labelled things lie (the belt, as the labels show it): 1st to 99th percentile of box edges."""
    tops = [b[1] for s in samples for b, _ in s.boxes]
    bottoms = [b[3] for s in samples for b, _ in s.boxes]
    if not tops:
        return 0.0, float(samples[0].image.shape[0]) if samples else 0.0
    return float(np.percentile(tops, 1)), float(np.percentile(bottoms, 99))


class CopyPaste:
    """``paste(sample)`` -> (image, boxes, ignore) with cut-outs laid on it (see the module docstring)."""

    def __init__(self, bank: Sequence[Cutout], band: tuple[float, float], *, p: float, max_items: int,
                 touching: float, seed: int) -> None:
        if not bank:
            raise ValueError("copy-paste needs at least one cut-out")
        self.bank, self.band = list(bank), band
        self.p, self.max_items, self.touching = p, max_items, touching
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: DetectorSample) -> tuple[np.ndarray, list[tuple[Box, int]], list[Box]]:
        boxes, ignore = list(sample.boxes), list(sample.ignore)
        if self.rng.random() >= self.p:
            return sample.image, boxes, ignore
        image = sample.image.copy()
        height, width = image.shape[:2]
        top = np.full((height, width), -1, np.int32)  # which pasted thing shows at each pixel (-1: the photo)
        layers = [-1] * len(boxes)  # the layer of each box: the photo's, or the paste that brought it
        for layer in range(int(self.rng.integers(1, self.max_items + 1))):
            cut = self._pick(sample.name)
            if cut is None:
                break
            piece, alpha = cut.image, cut.alpha
            if self.rng.random() < 0.5:
                piece, alpha = piece[:, ::-1], alpha[:, ::-1]
            if self.rng.random() < 0.5:
                piece, alpha = piece[::-1], alpha[::-1]
            h, w = alpha.shape
            if w >= width or h >= height:
                continue
            x, y = self._place(boxes, w, h, width, height)
            region = image[y:y + h, x:x + w].astype(np.float32)
            a = alpha[..., None]
            image[y:y + h, x:x + w] = np.clip(a * piece + (1 - a) * region + 0.5, 0, 255).astype(np.uint8)
            top[y:y + h, x:x + w][alpha > 0.5] = layer
            boxes.append(((float(x), float(y), float(x + w), float(y + h)), cut.kind))
            layers.append(layer)
        kept = []
        for (box, kind), layer in zip(boxes, layers):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            under = top[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]
            if under.size and (under > layer).mean() > COVERED:
                ignore.append(box)
            else:
                kept.append((box, kind))
        return image, kept, ignore

    def _pick(self, source: str) -> Cutout | None:
        for _ in range(8):  # a cut-out from another photo
            cut = self.bank[int(self.rng.integers(len(self.bank)))]
            if cut.source != source:
                return cut
        return None

    def _place(self, boxes: Sequence[tuple[Box, int]], w: int, h: int, width: int, height: int) -> tuple[int, int]:
        """Top-left corner: against a random item already there (share ``touching``), else anywhere in the band."""
        if boxes and self.rng.random() < self.touching:
            (ax0, ay0, ax1, ay1), _ = boxes[int(self.rng.integers(len(boxes)))]
            acx, acy = (ax0 + ax1) / 2, (ay0 + ay1) / 2
            reach = self.rng.uniform(0.7, 1.0)  # < 1: the boxes overlap a little, as touching things' loose boxes do
            side = int(self.rng.integers(4))
            if side < 2:  # left or right of it
                cx = acx + (1 if side else -1) * reach * ((ax1 - ax0) + w) / 2
                cy = acy + self.rng.uniform(-0.5, 0.5) * ((ay1 - ay0) + h) / 2
            else:  # above or below it
                cx = acx + self.rng.uniform(-0.5, 0.5) * ((ax1 - ax0) + w) / 2
                cy = acy + (1 if side == 3 else -1) * reach * ((ay1 - ay0) + h) / 2
            x, y = int(round(cx - w / 2)), int(round(cy - h / 2))
        else:
            low, high = int(self.band[0]), int(self.band[1]) - h
            if high <= low:
                low, high = 0, height - h
            x, y = int(self.rng.integers(0, width - w + 1)), int(self.rng.integers(low, high + 1))
        return min(max(0, x), width - w), min(max(0, y), height - h)
