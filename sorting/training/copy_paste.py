"""Copy-paste augmentation of the belt detector's frames: things cut out of the training frames, pasted onto others.

The development photos show a few hundred garments in a few dozen layouts, and most of them show no object at all
(the cluttered scenes are a sixth of the photos). Pasting labelled things of one frame into another (Ghiasi et al.,
"Simple Copy-Paste is a Strong Data Augmentation Method for Instance Segmentation", 2021) makes new layouts from
the same photos: garments touching garments, phones and tape beside garments that never lay beside one. No pixel
comes from outside the training frames, so it keeps to the set-up photos as the rest of training does.

What is pasted is a thing's labelled box, not an outline (the photos have no masks): the hand-drawn boxes are
loose, so their margin is belt, which blends into the belt it lands on, and the box's edge is feathered. Each lands
centred on where some labelled thing lay in some training frame (on the belt, or at its edge where a hand reached
in), maybe mirrored. A labelled thing whose centre the pasted box covers is hidden: it leaves the loss (neither a
thing nor background), as a thing partly in view does. Hands are not pasted: they reach in from beside the belt,
never lie in its middle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from sorting.models.belt_detector import KINDS

Box = tuple[float, float, float, float]
PASTED_KINDS = ("garment", "object")
FEATHER_PX = 2  # input pixels over which a pasted box's edge fades into the frame
MIN_SIDE_PX = 3 * FEATHER_PX  # a labelled box narrower than this (input pixels) would be all feathered edge
JITTER = 0.25  # a pasted box's centre moves up to this share of its own size from the labelled centre it lands on


class LabelledFrame(Protocol):
    """What is cut out of a training frame (a :class:`~sorting.training.belt_detector_data.DetectorSample`)."""

    image: np.ndarray  # BGR, at the model's input size
    boxes: list[tuple[Box, int]]  # (x0, y0, x1, y1) in its pixels, index into KINDS


@dataclass(frozen=True)
class Cutout:
    """A labelled thing's box pixels (BGR) and its kind (an index into KINDS)."""

    pixels: np.ndarray
    kind: int


def cut_out(samples: Sequence[LabelledFrame], kinds: Sequence[str] = PASTED_KINDS) -> tuple[list[Cutout], np.ndarray]:
    """The box pixels of every labelled thing of ``kinds`` in ``samples``, and the centres ``(n, 2)`` of all their
    labelled boxes, hands' too (where things lie on this belt)."""
    wanted = {KINDS.index(k) for k in kinds}
    cutouts, centres = [], []
    for s in samples:
        height, width = s.image.shape[:2]
        for (x0, y0, x1, y1), kind in s.boxes:
            centres.append(((x0 + x1) / 2, (y0 + y1) / 2))
            c0, r0 = max(0, int(round(x0))), max(0, int(round(y0)))
            c1, r1 = min(width, int(round(x1))), min(height, int(round(y1)))
            if kind in wanted and c1 - c0 >= MIN_SIDE_PX and r1 - r0 >= MIN_SIDE_PX:
                cutouts.append(Cutout(s.image[r0:r1, c0:c1].copy(), kind))
    return cutouts, np.asarray(centres, np.float64).reshape(-1, 2)


def feathered_alpha(height: int, width: int, feather: int = FEATHER_PX) -> np.ndarray:
    """``(height, width, 1)`` weights of a pasted box: 1 inside, fading to about 0 over ``feather`` pixels at its
    edge, so that no sharp seam tells the network where the paste is."""
    alpha = np.zeros((height + 2 * feather, width + 2 * feather), np.float32)
    alpha[2 * feather: height, 2 * feather: width] = 1.0
    if feather:
        alpha = cv2.GaussianBlur(alpha, (2 * feather + 1, 2 * feather + 1), 0)
    return alpha[feather: feather + height, feather: feather + width, None]


class CopyPaste:
    """``paste(image, boxes, ignore)`` -> the frame with up to ``max_things`` things of other frames pasted in,
    with ``probability`` (seeded: the same run draws the same pastes)."""

    def __init__(self, samples: Sequence[LabelledFrame], *, probability: float, max_things: int, seed: int) -> None:
        self.cutouts, self.centres = cut_out(samples)
        self.probability, self.max_things = probability, max_things
        self.rng = np.random.default_rng(seed)

    def paste(self, image: np.ndarray, boxes: list[tuple[Box, int]],
              ignore: list[Box]) -> tuple[np.ndarray, list[tuple[Box, int]], list[Box]]:
        """The frame and its labels with things pasted in (unchanged when the draw says no, or nothing to paste)."""
        if not self.cutouts or self.rng.random() >= self.probability:
            return image, boxes, ignore
        image, boxes, ignore = image.copy(), list(boxes), list(ignore)
        for _ in range(int(self.rng.integers(1, self.max_things + 1))):
            cutout = self.cutouts[int(self.rng.integers(len(self.cutouts)))]
            pixels = cutout.pixels
            if self.rng.random() < 0.5:
                pixels = pixels[:, ::-1]
            if self.rng.random() < 0.5:
                pixels = pixels[::-1]
            h, w = pixels.shape[:2]
            x0, y0 = self._place(w, h, image.shape)
            region = image[y0: y0 + h, x0: x0 + w].astype(np.float32)
            alpha = feathered_alpha(h, w)
            image[y0: y0 + h, x0: x0 + w] = (alpha * pixels + (1 - alpha) * region).round().astype(np.uint8)
            box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
            ignore.extend(b for b, _ in boxes if _covers(box, b))
            boxes = [(b, k) for b, k in boxes if not _covers(box, b)] + [(box, cutout.kind)]
        return image, boxes, ignore

    def _place(self, w: int, h: int, shape: tuple[int, ...]) -> tuple[int, int]:
        """The top-left corner of a ``w`` x ``h`` box centred near a labelled centre, moved wholly into the frame
        (every frame has the model's input size, so a thing cut out of one fits in any other)."""
        height, width = shape[:2]
        cx, cy = self.centres[int(self.rng.integers(len(self.centres)))]
        cx += self.rng.uniform(-JITTER, JITTER) * w
        cy += self.rng.uniform(-JITTER, JITTER) * h
        x0 = int(np.clip(round(cx - w / 2), 0, width - w))
        y0 = int(np.clip(round(cy - h / 2), 0, height - h))
        return x0, y0


def _covers(pasted: Box, box: Box) -> bool:
    """Whether the pasted box covers ``box``'s centre (that thing's core is hidden)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return pasted[0] <= cx <= pasted[2] and pasted[1] <= cy <= pasted[3]
