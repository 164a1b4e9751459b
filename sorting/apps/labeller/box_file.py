"""A boxes CSV corrected by hand in the labeller: read whole once, written whole after each photo's change.

The file is the ``boxes.csv`` format (:mod:`sorting.datasets.box_labels`): image names relative to the file's folder,
one row per box with its kind, a photo without items as one row with an empty box. Every write goes to a temporary
file first and replaces the old one, so an interrupted write leaves the last saved file whole; the first write keeps
the file as it was opened beside it (``.bak``); a file changed on disk meanwhile (another labeller, an editor) is not
written over. A file with rows that cannot be read, or kinds other than garment, hand and object, is refused when
opened: rewriting it would drop those rows.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from sorting.datasets.box_labels import Box, read_box_rows, write_box_rows
from sorting.errors import DataError
from sorting.serving.non_garment import GARMENT, HAND, OBJECT
from sorting.serving.sources import photos_of

log = logging.getLogger(__name__)

KINDS = (GARMENT, HAND, OBJECT)
MIN_SIDE_PX = 2.0  # a box narrower than this (after clipping to the photo) is a stray click, not a thing


@dataclass
class Photo:
    """One photo of the file: its name as written, where it is, and its boxes ``((x0, y0, x1, y1), kind)``."""

    name: str
    path: Path
    boxes: list[tuple[Box, str]]


class FileChanged(DataError):
    """The file changed on disk since it was read or last written here (another labeller, an editor)."""


def _stamp(path: Path) -> tuple[int, int] | None:
    """What tells one version of the file from another: its modification time and size; None when it is absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class BoxFile:
    """The photos and boxes of ``path``; with ``photos_dir``, that folder's photos not in the file yet are added
    (without boxes) after the file's own, so a file can be started from nothing. A write is refused
    (:class:`FileChanged`) when the file changed on disk since it was read or last written here: the other writer's
    rows are kept rather than overwritten."""

    def __init__(self, path: str | Path, *, photos_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = _stamp(self.path)
        self._backed_up = not self.path.exists()  # a new file has nothing to keep
        self._sizes: dict[int, tuple[int, int]] = {}
        self.photos: list[Photo] = []
        if self.path.exists():
            rows = read_box_rows(self.path)
            if rows.problems:
                raise DataError(f"{self.path} has rows that cannot be read; correct them first (saving would drop "
                                "them):\n" + "\n".join(rows.problems))
            strange = sorted({kind for boxes in rows.boxes.values() for _, kind in boxes} - set(KINDS))
            if strange:
                raise DataError(f"{self.path}: kinds {strange} are none of {list(KINDS)}; correct them first")
            self.photos = [Photo(name, self._resolve(name), list(boxes)) for name, boxes in rows.boxes.items()]
        elif photos_dir is None:
            raise DataError(f"{self.path} does not exist: give the folder of photos to start it from")
        if photos_dir is not None:
            known = {p.path.resolve() for p in self.photos}
            self.photos += [Photo(self._name_of(p), p, []) for p in photos_of(Path(photos_dir))
                            if p.resolve() not in known]
        if not self.photos:
            raise DataError(f"{self.path} lists no photo")

    def _resolve(self, name: str) -> Path:
        return (self.path.parent / name) if not Path(name).is_absolute() else Path(name)

    def _name_of(self, photo: Path) -> str:
        return Path(os.path.relpath(photo.resolve(), self.path.parent.resolve())).as_posix()

    def photo(self, index: int) -> Photo:
        """The ``index``-th photo; IndexError past the end."""
        if not 0 <= index < len(self.photos):
            raise IndexError(f"photo {index}: the file lists {len(self.photos)}")
        return self.photos[index]

    def size(self, index: int) -> tuple[int, int]:
        """(width, height) of the ``index``-th photo; DataError when it cannot be read."""
        if index not in self._sizes:
            photo = self.photo(index)
            image = cv2.imread(str(photo.path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise DataError(f"cannot read {photo.path}")
            self._sizes[index] = (int(image.shape[1]), int(image.shape[0]))
        return self._sizes[index]

    def set_boxes(self, index: int, boxes: list[Any]) -> list[tuple[Box, str]]:
        """Replace the ``index``-th photo's boxes by ``boxes`` (``{"box": [x0, y0, x1, y1], "kind": k}`` each, in
        photo pixels, clipped to the photo) and write the file; DataError, and nothing changed, for a bad box."""
        width, height = self.size(index)
        checked = [_checked_box(item, width, height, n) for n, item in enumerate(boxes, start=1)]
        with self._lock:
            photo = self.photo(index)
            previous, photo.boxes = photo.boxes, checked
            try:
                self._write()
            except (OSError, DataError):
                photo.boxes = previous  # what the file holds
                raise
        return checked

    def _write(self) -> None:
        if _stamp(self.path) != self._stamp:
            raise FileChanged(f"{self.path} changed on disk since it was read (another labeller, or an editor?): "
                              "nothing written; start label-boxes again to load it")
        if not self._backed_up:
            shutil.copy2(self.path, self.path.with_name(self.path.name + ".bak"))
            self._backed_up = True
        write_box_rows(self.path, ((p.name, p.boxes) for p in self.photos))
        self._stamp = _stamp(self.path)
        log.debug("wrote %s", self.path)


def _checked_box(item: Any, width: int, height: int, n: int) -> tuple[Box, str]:
    """One box from the page: four finite numbers and a known kind, clipped to the photo."""
    if not isinstance(item, dict) or item.get("kind") not in KINDS:
        raise DataError(f"box {n}: needs a kind, one of {list(KINDS)}")
    values = item.get("box")
    if (not isinstance(values, list) or len(values) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        raise DataError(f"box {n}: needs four numbers x0, y0, x1, y1")
    x0, x1 = sorted((min(max(float(values[0]), 0.0), width), min(max(float(values[2]), 0.0), width)))
    y0, y1 = sorted((min(max(float(values[1]), 0.0), height), min(max(float(values[3]), 0.0), height)))
    if x1 - x0 < MIN_SIDE_PX or y1 - y0 < MIN_SIDE_PX:
        raise DataError(f"box {n}: {values} covers less than {MIN_SIDE_PX:g} px of the {width}x{height} photo")
    return (round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)), item["kind"]
