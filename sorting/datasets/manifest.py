"""The manifest: one CSV that every dataset (real or synthetic) is turned into.

Columns, in this order: ``path,fibre,colour,garment,composition,source,split,sha1,width,height``.
``path`` is relative to the manifest's own folder (or absolute), so a manifest written
under ``runs/`` can point at ``../shared/data`` without copying images. An empty cell is
a missing value: a dataset may label only one head.

Reading is strict: unknown columns, bad ``split`` values, non-integer sizes and repeated
paths are :class:`DataError` naming the file and line. Only ``path`` is required in the
header, so a hand-written ``path,colour`` manifest is valid.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import tempfile
from dataclasses import astuple, dataclass, replace
from pathlib import Path

from sorting.errors import ConfigError, DataError

COLUMNS: tuple[str, ...] = (
    "path",
    "fibre",
    "colour",
    "garment",
    "composition",
    "source",
    "split",
    "sha1",
    "width",
    "height",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Not a split: selects every row whatever its split (a recipe's ``data.train_split: all`` trains a final model
# on all the images it is given; its estimate then comes from cross-validation).
ALL_ROWS = "all"
_INT_COLUMNS = ("width", "height")


@dataclass
class ManifestRow:
    """One image and its labels; ``None`` means missing (written as an empty cell)."""

    path: str
    fibre: str | None = None
    colour: str | None = None
    garment: str | None = None
    composition: str | None = None
    source: str | None = None
    split: str | None = None
    sha1: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class Manifest:
    """Rows of a manifest plus the folder their relative paths start from."""

    rows: list[ManifestRow]
    root: Path

    def image_path(self, row: ManifestRow) -> Path:
        """Absolute-or-root-relative path of the row's image file."""
        return self.root / row.path

    def subset(self, split: str | None) -> list[ManifestRow]:
        """Rows of one split (``None``: rows without a split; :data:`ALL_ROWS`: every row)."""
        if split == ALL_ROWS:
            return list(self.rows)
        return [row for row in self.rows if row.split == split]

    def labelled(self, head: str) -> list[ManifestRow]:
        """Rows that carry a label for ``head`` (``fibre`` or ``colour``)."""
        return [row for row in self.rows if getattr(row, head) is not None]


def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes (identifies exact duplicates across datasets)."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def relative_path(target: str | Path, start: str | Path) -> str:
    """``target`` relative to folder ``start`` with '/' separators (absolute across drives)."""
    target = Path(target).absolute()
    try:
        rel = os.path.relpath(target, Path(start).absolute())
    except ValueError:  # different drives on Windows
        return target.as_posix()
    return Path(rel).as_posix()


def _parse_row(record: dict[str, str], where: str) -> ManifestRow:
    values: dict[str, object] = {}
    for name in COLUMNS:
        raw = (record.get(name) or "").strip()
        values[name] = raw or None
    if values["path"] is None:
        raise DataError(f"{where}: empty 'path'")
    if values["split"] is not None and values["split"] not in SPLITS:
        raise DataError(f"{where}: split '{values['split']}' is not one of {', '.join(SPLITS)} or empty")
    for name in _INT_COLUMNS:
        if values[name] is not None:
            try:
                number = int(str(values[name]))
            except ValueError:
                raise DataError(f"{where}: {name} '{values[name]}' is not an integer") from None
            if number <= 0:
                raise DataError(f"{where}: {name} must be positive, got {number}")
            values[name] = number
    return ManifestRow(**values)  # type: ignore[arg-type]


def read_csv_text(path: str | Path, encoding: str = "utf-8") -> io.StringIO:
    """A CSV file's text, ready for ``csv.reader``; text it cannot be is a :class:`DataError` naming the line.

    UTF-8 (with or without a byte-order mark) unless ``encoding`` says otherwise (a spreadsheet's
    ``latin-1`` or ``cp1252`` export).
    """
    path = Path(path)
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(f"unknown text encoding '{encoding}'") from None
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig" if name == "utf-8" else name)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not a {'UTF-8' if name == 'utf-8' else name} text CSV (byte "
                        f"0x{data[exc.start]:02x}); save it as UTF-8") from None
    if "\x00" in text:
        raise DataError(f"{path}:{text.count(chr(10), 0, text.index(chr(0))) + 1}: a NUL character: not a text CSV")
    return io.StringIO(text, newline="")


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest CSV; raises :class:`DataError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist" if not path.exists() else f"manifest {path} is not a file")
    try:
        with read_csv_text(path) as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            if not header:
                raise DataError(f"{path}: empty file (expected a header line: {','.join(COLUMNS)})")
            header = [h.strip() for h in header]
            reader.fieldnames = header
            unknown = [h for h in header if h not in COLUMNS]
            if unknown or "path" not in header:
                problem = f"unknown column(s) {unknown}" if unknown else "no 'path' column"
                raise DataError(f"{path}:1: {problem}; expected columns {','.join(COLUMNS)}")
            rows: list[ManifestRow] = []
            first_line: dict[str, int] = {}
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if None in record:
                    raise DataError(f"{where}: more cells than the {len(header)} header columns")
                if not any((v or "").strip() for v in record.values()):
                    continue  # blank line
                row = _parse_row(record, where)
                if row.path in first_line:
                    raise DataError(f"{where}: path '{row.path}' already listed on line {first_line[row.path]}")
                first_line[row.path] = reader.line_num
                rows.append(row)
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from None
    return Manifest(rows=rows, root=path.parent)


def rebase_rows(rows: list[ManifestRow], old_root: str | Path, new_root: str | Path) -> list[ManifestRow]:
    """Rewrite relative row paths so they stay valid for a manifest moved to ``new_root``."""
    old_root, new_root = Path(old_root).absolute(), Path(new_root).absolute()
    if old_root == new_root:
        return list(rows)
    return [
        row if Path(row.path).is_absolute() else replace(row, path=relative_path(old_root / row.path, new_root))
        for row in rows
    ]


def write_manifest(rows: list[ManifestRow], path: str | Path, *, root: str | Path | None = None) -> Path:
    """Write ``rows`` to ``path`` (atomically: a crash never leaves half a manifest).

    Row paths are written as given, i.e. relative to the manifest's folder. Pass
    ``root`` when they are relative to another folder (e.g. the manifest they were read
    from) and they are rebased onto the new manifest's folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if root is not None:
        rows = rebase_rows(rows, root, path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow(["" if v is None else v for v in astuple(row)])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
