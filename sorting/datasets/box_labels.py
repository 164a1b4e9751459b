"""Boxes drawn around things in photos: the ``boxes.csv`` format of the real conveyor photos, and subsets of them.

``boxes.csv``: ``image,x0,y0,x1,y1`` with image paths relative to the CSV's folder, one row per item, an image
without items as one row with an empty box; an optional ``kind`` column marks non-garments (hand, object),
without it every box is of ``default_kind``. Bad rows are skipped, each with one line in ``problems``, so one typo
does not lose the other labels. The detection benchmark (:mod:`sorting.apps.detection_data`) and the belt
detector's training (:mod:`sorting.training.belt_detector_data`) read them alike.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sorting.errors import DataError

BOX_COLUMNS = ("image", "x0", "y0", "x1", "y1")
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass
class BoxRows:
    """(box, kind) per image name (as written in the CSV) and the rows that could not be used."""

    boxes: dict[str, list[tuple[Box, str]]]
    problems: list[str] = field(default_factory=list)


def _parse_row(row: list[str], has_kind: bool, default_kind: str) -> tuple[Box, str] | str | None:
    """A row's (box, kind), None for an image without items, or why the row is skipped."""
    values = [c.strip() for c in row[1:5]]
    if len(row) < 5 or all(v == "" for v in values):
        return None if len(row) >= 5 else f"{len(row)} columns instead of 5, row skipped"
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except ValueError:
        return f"box {values} is not four numbers, row skipped"
    if not (x1 > x0 and y1 > y0):
        return f"box {values} has no area (need x1 > x0, y1 > y0), row skipped"
    kind = row[5].strip() if has_kind and len(row) > 5 and row[5].strip() else default_kind
    return (x0, y0, x1, y1), kind


def read_box_rows(path: str | Path, *, default_kind: str = "garment") -> BoxRows:
    """Read a boxes CSV; DataError only if the file itself is unusable (missing, no header)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read boxes file {path}: {exc}") from None
    if not rows or [c.strip() for c in rows[0][:5]] != list(BOX_COLUMNS):
        raise DataError(f"{path}: the first line must be the header {','.join(BOX_COLUMNS)}[,kind]")
    has_kind = len(rows[0]) > 5 and rows[0][5].strip() == "kind"
    out = BoxRows(boxes={})
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        name = row[0].strip()
        if not name:
            out.problems.append(f"{path.name} line {line}: no image name, row skipped")
            continue
        labels = out.boxes.setdefault(name, [])
        parsed = _parse_row(row, has_kind, default_kind)
        if isinstance(parsed, str):
            out.problems.append(f"{path.name} line {line}: {parsed}")
        elif parsed is not None:
            labels.append(parsed)
    return out


def write_box_rows(path: str | Path, photos: Iterable[tuple[str, Sequence[tuple[Box, str]]]]) -> None:
    """Write ``(image name, [(box, kind), ...])`` per photo as a boxes CSV with a ``kind`` column, a photo without
    boxes as one row with an empty box. The rows go to a temporary file that then replaces ``path``, so an
    interrupted write leaves the previous file whole."""
    path = Path(path)
    rows: list[list[str]] = []
    for name, boxes in photos:
        rows += [[name, *(_number(v) for v in box), kind] for box, kind in boxes] or [[name, "", "", "", "", ""]]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*BOX_COLUMNS, "kind"])
        writer.writerows(rows)
    os.replace(tmp, path)


def _number(value: float) -> str:
    """A coordinate as written: whole pixels without a decimal point."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def read_subset(spec: str) -> set[str]:
    """Image names from ``FILE`` (one per line) or ``FILE.json:KEY`` (a list under KEY)."""
    path_text, key = spec, ""
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".json"):
        path_text, key = head, tail
    path = Path(path_text)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read subset {path}: {exc}") from None
    if key:
        try:
            names = json.loads(text)[key]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path} has no list '{key}'") from None
        return {str(n) for n in names}
    return {line.strip() for line in text.splitlines() if line.strip()}


def photo_group(name: str, group_size: int) -> int:
    """The scene group of a photo: its number // ``group_size`` (consecutive photos show the same scene; a name
    without a number is group 0). Splits keep whole groups on one side."""
    numbers = re.findall(r"\d+", Path(name).stem)
    return int(numbers[-1]) // group_size if numbers else 0
