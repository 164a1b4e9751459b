"""Labelled frames for the detection benchmark: photos with a boxes CSV, or a video with its ground truth.

``boxes.csv`` (the real conveyor photos' format, read by :mod:`sorting.datasets.box_labels`):
``image,x0,y0,x1,y1[,kind]``, one row per item; bad rows are skipped, each with one line in ``problems``.

A synthetic clip's ``conveyor_gt.json`` gives each item's track point (the centre of its mask box)
per frame and its size: the box of a frame is centre +- size / 2, clipped to the frame; an item cut
by the frame edge (less than ``PARTIAL_SHARE`` of its box in view, or cut along the belt's travel)
is a *partial* label. Distractors (stains) are labels of their own kind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sorting.datasets.box_labels import read_box_rows
from sorting.errors import DataError
from sorting.serving.detection_eval import GARMENT, LabelBox

PARTIAL_SHARE = 0.999


@dataclass
class BoxFile:
    """Labels per image name (as written in the CSV) and the rows that could not be used."""

    labels: dict[str, list[LabelBox]]
    problems: list[str] = field(default_factory=list)


def read_boxes_csv(path: str | Path, *, default_kind: str = GARMENT) -> BoxFile:
    """Read a boxes CSV (:func:`sorting.datasets.box_labels.read_box_rows`); DataError only if the file itself is
    unusable (missing, no header)."""
    rows = read_box_rows(path, default_kind=default_kind)
    return BoxFile({name: [LabelBox(box, kind) for box, kind in boxes] for name, boxes in rows.boxes.items()},
                   rows.problems)


def fit_to_frame(name: str, labels: Sequence[LabelBox], size: tuple[int, int]) -> tuple[list[LabelBox], list[str]]:
    """Labels clipped to a ``(width, height)`` frame; a box wholly outside it is dropped with a problem line."""
    width, height = size
    kept, problems = [], []
    for lb in labels:
        x0, y0, x1, y1 = lb.box
        cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
        if cx1 <= cx0 or cy1 <= cy0:
            problems.append(f"{name}: box {[x0, y0, x1, y1]} lies outside the {width}x{height} image, dropped")
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            problems.append(f"{name}: box {[x0, y0, x1, y1]} reaches outside the {width}x{height} image, clipped")
        kept.append(LabelBox((cx0, cy0, cx1, cy1), lb.kind, lb.partial))
    return kept, problems


def merge_box_files(main: BoxFile, extra: BoxFile) -> BoxFile:
    """``main``'s labels plus ``extra``'s (non-garment labels of the same images)."""
    labels = {name: list(boxes) for name, boxes in main.labels.items()}
    for name, boxes in extra.labels.items():
        if name not in labels:
            raise DataError(f"extra labels name image {name}, which the boxes file does not have")
        labels[name].extend(boxes)
    return BoxFile(labels, main.problems + extra.problems)


@dataclass(frozen=True)
class LabelledFrame:
    name: str
    index: int
    image: np.ndarray
    labels: list[LabelBox]


def photo_frames(images_dir: str | Path, boxes: BoxFile, boxes_path: str | Path, *,
                 subset: set[str] | None = None) -> tuple[list[tuple[str, Path]], list[str]]:
    """(image name, path) of the labelled photos under ``images_dir``, in sorted name order (as the
    folder source reads them), and a problem line for names the CSV lists but the folder lacks. Two names for one
    photo (``a.jpg`` and ``images/a.jpg``) are one frame: the second name's boxes join the first's in ``boxes``."""
    root = Path(images_dir).resolve()
    if not root.is_dir():
        raise DataError(f"{images_dir} is not a folder of images")
    base = Path(boxes_path).resolve().parent
    found, problems = [], []
    named: dict[Path, str] = {}
    for name in sorted(boxes.labels):
        if subset is not None and name not in subset and Path(name).name not in subset:
            continue
        path = (base / name).resolve()
        if not path.is_file() or root not in path.parents:
            path = root / Path(name).name
        if path in named:
            boxes.labels[named[path]] = [*boxes.labels[named[path]], *boxes.labels[name]]
            problems.append(f"{name}: the same photo as {named[path]}, its boxes scored with that name's")
        elif path.is_file():
            named[path] = name
            found.append((name, path))
        else:
            problems.append(f"{name}: listed in the boxes file but not in {images_dir}, skipped")
    if not found:
        raise DataError(f"no image of the boxes file found in {images_dir}")
    return sorted(found, key=lambda item: item[1].name), problems


def iter_photos(found: Sequence[tuple[str, Path]], boxes: BoxFile) -> Iterator[tuple[LabelledFrame | None, str]]:
    """Read each photo: (frame, "") or (None, why) for an unreadable one."""
    for index, (name, path) in enumerate(found):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            yield None, f"{name}: cannot read the image, skipped"
            continue
        yield LabelledFrame(name, index, image, boxes.labels[name]), ""


def ground_truth_boxes(gt: Mapping[str, Any]) -> dict[int, list[LabelBox]]:
    """Per frame index, the labels of a synthetic clip's ground truth (see the module docstring)."""
    width, height = int(gt["width"]), int(gt["height"])
    frames: dict[int, list[LabelBox]] = {}
    things = [(it, GARMENT) for it in gt["items"]] + [(d, str(d.get("kind", "stain"))) for d in gt.get("distractors", [])]
    for item, kind in things:
        w, h = (float(v) for v in item["size"])
        for frame, cx, cy in item["track"]:
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            visible = (cx1 - cx0) * (cy1 - cy0) / (w * h)
            frames.setdefault(int(frame), []).append(
                LabelBox((cx0, cy0, cx1, cy1), kind, partial=visible < PARTIAL_SHARE))
    return frames
