"""Training data of the belt detector (:mod:`sorting.models.belt_detector`): frames with boxes, augmented, and
their per-cell targets.

Two sources, both turned into :class:`DetectorSample` (the frame at the model's input size, boxes in its pixels):

* **photos** with a boxes CSV (``boxes.csv`` of the conveyor photos, plus non-garment labels with a ``kind``),
  limited to a ``subset`` (the development photos of ``benchmarks/belt_split.json``: held-out photos never enter
  training, nor any statistic of it; the input is scaled by the fixed (x - 127) / 128 of the backbone);
* the **synthetic conveyor** (:mod:`sorting.datasets.synth.conveyor`): frames of a clip with exact boxes from its
  ground truth (garments only; an item less than half in view is left out of the loss, not called background).

Targets per output cell (``(cells, 3)``: centre, width, height; :data:`IGNORE_INDEX` where a head has no label):
the core of each box (an ellipse of :data:`~sorting.models.belt_detector.CORE_SHARE` of its size, the smaller box
on top where cores meet) is its kind, with its width and height bins; the ring around a core and the area of an
ignored box are left out of the centre loss; every other cell is ``none``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sorting.datasets.box_labels import photo_group, read_box_rows, read_subset
from sorting.errors import DataError
from sorting.models.belt_detector import (
    CORE_MIN_CELLS,
    CORE_SHARE,
    KINDS,
    RING_SHARE,
    STRIDE,
    DetectorArch,
)
from sorting.models.multihead import IGNORE_INDEX
from sorting.training.copy_paste import CopyPaste

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # a sorting line is offline: albumentations never asks PyPI
import albumentations as A

Box = tuple[float, float, float, float]
PARTLY_IN_VIEW = 0.5  # a synthetic item with less of its box in view is left out of the loss
SUBPIXEL = 16  # cv2.ellipse fixed-point shift 4


@dataclass
class DetectorSample:
    """A frame at the model's input size and the labelled boxes on it (input pixels)."""

    name: str
    image: np.ndarray  # BGR uint8, (input_height, input_width, 3)
    boxes: list[tuple[Box, int]]  # (box, index into KINDS)
    ignore: list[Box] = field(default_factory=list)  # things neither labelled nor background (partly in view)


def kind_index(kind: str) -> int:
    if kind not in KINDS[1:]:
        raise DataError(f"box kind '{kind}' is not one of {', '.join(KINDS[1:])}")
    return KINDS.index(kind)


def _scaled(box: Box, sx: float, sy: float) -> Box:
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def photo_samples(images_dir: str | Path, boxes_csv: str | Path, arch: DetectorArch, *,
                  extra_labels: Sequence[str | Path] = (), subset: str | None = None) -> list[DetectorSample]:
    """The labelled photos (of ``subset``: FILE or FILE.json:KEY) at the model's input size."""
    rows = read_box_rows(boxes_csv)
    labels = {name: list(boxes) for name, boxes in rows.boxes.items()}
    for extra in extra_labels:
        for name, boxes in read_box_rows(extra).boxes.items():
            if name not in labels:
                raise DataError(f"{extra} names image {name}, which {boxes_csv} does not have")
            labels[name].extend(boxes)
    wanted = read_subset(subset) if subset else None
    root = Path(images_dir)
    samples = []
    for name in sorted(labels):
        if wanted is not None and name not in wanted and Path(name).name not in wanted:
            continue
        image = cv2.imread(str(root / Path(name).name), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"cannot read {root / Path(name).name} (listed in {boxes_csv})")
        sx, sy = arch.input_width / image.shape[1], arch.input_height / image.shape[0]
        small = cv2.resize(image, (arch.input_width, arch.input_height), interpolation=cv2.INTER_AREA)
        samples.append(DetectorSample(name, small, [(_scaled(b, sx, sy), kind_index(k)) for b, k in labels[name]]))
    if not samples:
        raise DataError(f"no labelled photo of {boxes_csv} found" + (f" in subset {subset}" if subset else ""))
    return samples


def synthetic_samples(arch: DetectorArch, *, frames: int, seed: int = 0, width: int = 960, height: int = 540,
                      items: int = 40, every: int = 7) -> list[DetectorSample]:
    """``frames`` frames (every ``every``-th) of a synthetic conveyor clip with its exact garment boxes."""
    from sorting.datasets.synth.conveyor import ConveyorConfig, ConveyorWorld

    world = ConveyorWorld(ConveyorConfig(n_items=items, seed=seed, width=width, height=height,
                                         belt_speed_px_s=900.0, stains=2))
    gt = world.ground_truth()
    picks = set(range(every, min(world.n_frames, every * (frames + 1)), every))
    sx, sy = arch.input_width / width, arch.input_height / height
    samples = []
    for index, _, frame in world.frames(0, max(picks) + 1 if picks else 0, only=picks):
        boxes, ignore = [], []
        for item in gt["items"]:
            seen = [(cx, cy) for k, cx, cy in item["track"] if k == index]
            if not seen:
                continue
            w, h = item["size"]
            (cx, cy), = seen
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            clipped = (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3]))
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                continue
            visible = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) / (w * h)
            target = boxes if visible >= PARTLY_IN_VIEW else ignore
            target.append((_scaled(clipped, sx, sy), KINDS.index("garment")) if target is boxes
                          else _scaled(clipped, sx, sy))
        small = cv2.resize(frame, (arch.input_width, arch.input_height), interpolation=cv2.INTER_AREA)
        samples.append(DetectorSample(f"synthetic-{seed}-{index:05d}", small, boxes, ignore))
    return samples


def split_by_group(samples: Sequence[DetectorSample], *, val_share: float, group_size: int,
                   seed: int) -> tuple[list[DetectorSample], list[DetectorSample]]:
    """(train, validation) with whole scene groups on either side (a seeded draw of ``val_share`` of the groups);
    ``val_share`` 0: every sample trains, none validates."""
    if val_share == 0:
        return list(samples), []
    groups = sorted({photo_group(s.name, group_size) for s in samples})
    n_val = round(val_share * len(groups))
    if n_val == 0 or n_val == len(groups):
        raise DataError(f"{len(groups)} scene groups cannot be split {1 - val_share:.0%} / {val_share:.0%}")
    held = set(np.random.default_rng(seed).permutation(groups)[:n_val].tolist())
    train = [s for s in samples if photo_group(s.name, group_size) not in held]
    val = [s for s in samples if photo_group(s.name, group_size) in held]
    return train, val


def _ellipse(canvas: np.ndarray, box: Box, scale: float, value: int) -> None:
    """Fill the core ellipse of ``box`` (input px) grown by ``scale`` into ``canvas`` (output cells)."""
    cx, cy = (box[0] + box[2]) / 2 / STRIDE - 0.5, (box[1] + box[3]) / 2 / STRIDE - 0.5
    ax = max(CORE_MIN_CELLS, CORE_SHARE * (box[2] - box[0]) / 2 / STRIDE) * scale
    ay = max(CORE_MIN_CELLS, CORE_SHARE * (box[3] - box[1]) / 2 / STRIDE) * scale
    cv2.ellipse(canvas, (round(cx * SUBPIXEL), round(cy * SUBPIXEL)), (round(ax * SUBPIXEL), round(ay * SUBPIXEL)),
                0, 0, 360, value, -1, shift=4)
    if scale == 1.0 and not (canvas == value).any():  # a core always covers its centre cell
        gy = min(canvas.shape[0] - 1, max(0, round(cy)))
        gx = min(canvas.shape[1] - 1, max(0, round(cx)))
        canvas[gy, gx] = value


def render_targets(boxes: Sequence[tuple[Box, int]], arch: DetectorArch, ignore: Sequence[Box] = ()) -> np.ndarray:
    """Per-cell targets ``(cells, 3)`` (centre, width bin, height bin), row-major over the output grid."""
    gw, gh = arch.grid()
    centre = np.zeros((gh, gw), np.int64)
    width = np.full((gh, gw), IGNORE_INDEX, np.int64)
    height = np.full((gh, gw), IGNORE_INDEX, np.int64)
    left_out = np.zeros((gh, gw), np.uint8)
    for box, _ in boxes:
        _ellipse(left_out, box, RING_SHARE, 1)
    for box in ignore:  # the ellipse inscribed in the box
        _ellipse(left_out, box, 1.0 / CORE_SHARE, 1)
    edges = arch.size_edges()
    core = np.zeros((gh, gw), np.uint8)
    for box, kind in sorted(boxes, key=lambda bk: -(bk[0][2] - bk[0][0]) * (bk[0][3] - bk[0][1])):
        core[:] = 0
        _ellipse(core, box, 1.0, 1)
        inside = core > 0
        centre[inside] = kind
        for out, size in ((width, box[2] - box[0]), (height, box[3] - box[1])):
            out[inside] = int(np.clip(np.searchsorted(edges, np.log(max(size, 1e-3))) - 1, 0, arch.size_bins - 1))
    centre[(left_out > 0) & (centre == 0)] = IGNORE_INDEX
    return np.stack([centre.ravel(), width.ravel(), height.ravel()], axis=1)


def build_augment(scale: tuple[float, float], translate: float, rotate: float, photometric: float, *,
                  seed: int) -> A.Compose:
    """Flips (a garment lies either way up, the belt runs either way), scale, shift and a little rotation,
    light and camera changes; boxes follow (kept if at least 30% stays in view). Seeded: albumentations draws
    from its own generator, which the run's seed does not reach otherwise."""
    p = photometric
    return A.Compose(
        [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5),
         A.Affine(scale=scale, translate_percent=(-translate, translate), rotate=(-rotate, rotate),
                  border_mode=cv2.BORDER_REFLECT_101, p=0.9),
         A.RandomBrightnessContrast(0.25 * p, 0.25 * p, p=0.8 * min(1.0, p)),
         A.HueSaturationValue(round(5 * p), round(20 * p), round(15 * p), p=0.5 * min(1.0, p)),
         A.GaussianBlur(blur_limit=(3, 5), p=0.15), A.GaussNoise(std_range=(0.01, 0.04), p=0.2)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["kinds"], min_visibility=0.3, clip=True),
        seed=seed,
    )


def to_input(image_bgr: np.ndarray) -> torch.Tensor:
    """BGR uint8 -> RGB float (x - 127) / 128, (3, H, W): the backbone's fixed scaling (no dataset statistics)."""
    rgb = image_bgr[..., ::-1].astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(((rgb - 127.0) / 128.0).transpose(2, 0, 1)))


class DetectorDataset(Dataset):
    """``(input tensor, targets (cells, 3))`` per sample, augmented when ``augment`` is given (after things of
    other frames are pasted in, when ``paste`` is)."""

    def __init__(self, samples: Sequence[DetectorSample], arch: DetectorArch, augment: A.Compose | None = None,
                 paste: CopyPaste | None = None) -> None:
        self.samples, self.arch, self.augment, self.paste = list(samples), arch, augment, paste

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples[index]
        image, boxes, ignore = s.image, s.boxes, s.ignore
        if self.paste is not None:
            image, boxes, ignore = self.paste.paste(image, boxes, ignore)
        if self.augment is not None:
            out = self.augment(image=image, bboxes=[b for b, _ in boxes] + list(ignore),
                               kinds=[k for _, k in boxes] + [0] * len(ignore))
            image = out["image"]
            kept = [(tuple(float(v) for v in b), int(k)) for b, k in zip(out["bboxes"], out["kinds"])]
            boxes, ignore = [bk for bk in kept if bk[1] > 0], [b for b, k in kept if k == 0]
        return to_input(image), torch.from_numpy(render_targets(boxes, self.arch, ignore))


def cell_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images stacked, targets of all cells concatenated: rows match :class:`PerCellLogits`' output order."""
    return torch.stack([x for x, _ in batch]), torch.cat([y for _, y in batch])
