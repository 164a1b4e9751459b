"""Boxes to correct instead of boxes to draw: the labelled photos a line's textile-check head is fitted on.

``fit-textile-check`` needs photos of the line's own belt with every garment, hand and object boxed. Drawing those
boxes from nothing is the slow part of setting a line up. ``textile-sorter propose-labels --line LINE PHOTOS --out
DIR`` runs the line's segmentation on each photo, as ``serve`` runs it, and writes what it found:

* ``DIR/boxes.csv``: one row per detection, ``image,x0,y0,x1,y1,kind`` (``garment``, ``hand`` or ``object``), the
  format ``fit-textile-check --boxes`` and ``evaluate-detection --boxes`` read. Image names are relative to ``DIR``.
  A photo where nothing was found keeps one row with an empty box, so it still counts as a photo with nothing on it.
* ``DIR/sheets/<photo>.png``: the photo with each box numbered (its row among the photo's rows) in its kind's colour.

The integrator then corrects the CSV, with the sheets beside it: a wrong kind changed, a row that is belt, a
shadow or a piece of a garment deleted, a loose box redrawn, a missed item added. Only the line's segmentation and
its current check decide the proposals, so a line set up by ``calibrate --belt`` (the check's class list) proposes
the first set, and the fitted head is fitted on the corrected one.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sorting.datasets.box_labels import read_subset, write_box_rows
from sorting.errors import DataError
from sorting.serving.colour_foreground import FrameError
from sorting.serving.line_config import load_line_config
from sorting.serving.line_segmentation import LineSegmentation
from sorting.serving.non_garment import GARMENT, HAND, OBJECT
from sorting.serving.sources import photos_of

log = logging.getLogger(__name__)

KIND_BGR = {GARMENT: (60, 200, 60), HAND: (200, 60, 200), OBJECT: (0, 140, 255)}


@dataclass
class Proposals:
    """What ``propose_labels`` wrote."""

    csv_path: Path
    sheets: Path
    photos: int = 0
    boxes: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)  # photos that could not be read or segmented, and why


def propose_labels(line_path: str | Path, photos_dir: str | Path, out_dir: str | Path, *,
                   subset: str | None = None, progress: bool = True) -> Proposals:
    """Run the line's segmentation on each photo of ``photos_dir`` (``subset``: FILE or FILE.json:KEY of names)
    and write its detections as a boxes CSV with kinds, and a numbered sheet per photo, under ``out_dir``."""
    line = load_line_config(line_path)
    paths = photos_of(Path(photos_dir), read_subset(subset) if subset is not None else None)
    out = Path(out_dir)
    if (out / "boxes.csv").exists():  # perhaps corrected already: never written over
        raise DataError(f"{out / 'boxes.csv'} exists (labels corrected already?): give another --out, or move it away")
    sheets = out / "sheets"
    sheets.mkdir(parents=True, exist_ok=True)
    seg = LineSegmentation(line)
    result = Proposals(out / "boxes.csv", sheets)
    photos: list[tuple[str, list[tuple[tuple[int, int, int, int], str]]]] = []
    for path in tqdm(paths, desc="propose-labels", unit="photo", disable=not progress):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            result.skipped.append(f"{path.name}: cannot read the image, skipped")
            continue
        try:
            detections = seg.segment(image)
        except FrameError as exc:
            result.skipped.append(f"{path.name}: {exc}")
            continue
        name = os.path.relpath(path.resolve(), out.resolve())
        boxes = [((d.bbox[0], d.bbox[1], d.bbox[0] + d.bbox[2], d.bbox[1] + d.bbox[3]), d.kind) for d in detections]
        photos.append((name, boxes))
        cv2.imwrite(str(sheets / f"{path.stem}.png"), draw_sheet(image, boxes))
        result.photos += 1
        result.boxes.update(kind for _, kind in boxes)
    for why in result.skipped:
        log.warning("%s", why)
    write_box_rows(result.csv_path, photos)
    return result


def draw_sheet(image: np.ndarray, boxes: list[tuple[tuple[int, int, int, int], str]]) -> np.ndarray:
    """``image`` with each ``((x0, y0, x1, y1), kind)`` box drawn in its kind's colour and tagged with its number
    (from 1, in row order) and its kind's initial, on a dark patch so it reads on any garment; a legend of the
    kinds in the bottom-left corner. Short tags keep the tags of boxes that share a corner apart."""
    sheet = image.copy()
    for number, ((x0, y0, x1, y1), kind) in enumerate(boxes, start=1):
        colour = KIND_BGR.get(kind, (255, 255, 255))
        cv2.rectangle(sheet, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
        _tag(sheet, f"{number} {kind[:1].upper()}", (x0, max(0, y0)), colour)
    legend = "  ".join(f"{kind[:1].upper()} {kind}" for kind in KIND_BGR)
    _tag(sheet, legend, (0, sheet.shape[0] - 22), (255, 255, 255))
    return sheet


def _tag(image: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """``text`` on a dark patch whose top-left corner is ``corner`` (kept inside the image)."""
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    x = min(max(0, corner[0]), max(0, image.shape[1] - tw - 4))
    y = min(max(0, corner[1]), max(0, image.shape[0] - th - 6))
    cv2.rectangle(image, (x, y), (x + tw + 4, y + th + 6), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (x + 2, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
