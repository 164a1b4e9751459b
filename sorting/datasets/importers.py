"""Turn real-world layouts (ImageFolder, labelled CSV) into a manifest plus a rejects list.

Every input file/row ends up in exactly one of two places: the manifest (good rows) or
the rejects CSV (``path,reason,detail``). Nothing is silently dropped and one bad image
never stops the import. Images are fully decoded once (in a thread pool) so corrupt and
truncated files are caught here, not in the middle of training.

Exact duplicates (same file bytes, SHA-1) are removed *at import time*: the first
occurrence is kept and later ones are rejected as ``duplicate``. Splitting then cannot
leak one picture into two splits (``split.check_no_leak`` still guards hand-made
manifests).

Hostile folders cost a reject each: a file name that is not UTF-8 (a manifest is UTF-8 text)
is a ``bad file name``; FIFOs, devices and links to them are ``not a regular file``; a file
over ``max_bytes`` is ``too large`` before it is read (see :mod:`sorting.datasets.images`).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sorting.datasets.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, ImageInfo, inspect_image
from sorting.datasets.manifest import ManifestRow, read_csv_text, relative_path, write_manifest
from sorting.errors import ConfigError, DataError
from sorting.taxonomy import HEADS, AliasMap, Taxonomy, load_aliases, load_taxonomy, normalise_label

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
)
REJECT_COLUMNS: tuple[str, ...] = ("path", "reason", "detail")
# Alias-map target for source names that carry no label for the head (e.g. a colour named "other"): such a row
# keeps its other heads' labels and is left unlabelled for this head instead of being rejected.
UNLABELLED = "_unlabelled"


@dataclass(frozen=True)
class Reject:
    """An input that did not make it into the manifest. ``reason`` is short and countable."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class ImportReport:
    """Outcome of one import: where things were written and what was kept or rejected."""

    manifest_path: Path
    rejects_path: Path
    rows: list[ManifestRow]
    rejects: list[Reject]
    heads: tuple[str, ...]
    scanned: int = 0
    class_counts: dict[str, Counter[str]] = field(default_factory=dict)
    reject_counts: Counter[str] = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        """A few lines for the CLI: totals, per-class counts, reject reasons."""
        lines = [f"{self.kept} of {self.scanned} inputs kept -> {self.manifest_path}"]
        for head in self.heads:
            counts = ", ".join(f"{name} {n}" for name, n in sorted(self.class_counts[head].items()))
            lines.append(f"  {head}: {counts or 'no labels'}")
        if self.rejects:
            reasons = ", ".join(f"{reason} {n}" for reason, n in self.reject_counts.most_common())
            lines.append(f"{len(self.rejects)} rejected ({reasons}) -> {self.rejects_path}")
        else:
            lines.append(f"0 rejected -> {self.rejects_path}")
        return "\n".join(lines)


@dataclass(frozen=True)
class LabelMaps:
    """Taxonomy plus one alias map per head: how raw source labels become class names."""

    taxonomy: Taxonomy
    aliases: dict[str, AliasMap]

    @classmethod
    def load(
        cls, taxonomy: str | Path | None = None, aliases: dict[str, str | Path | None] | None = None
    ) -> LabelMaps:
        """Load a taxonomy (default ``datasets/taxonomy.yaml``) and alias files (defaults per head)."""
        aliases = aliases or {}
        return cls(
            taxonomy=load_taxonomy(taxonomy),
            aliases={head: load_aliases(head, aliases.get(head)) for head in HEADS},
        )

    def resolve(self, head: str, raw: str | None) -> str | None:
        return self.aliases[head].resolve(raw, self.taxonomy.classes(head))

    def means_unlabelled(self, head: str, raw: str) -> bool:
        """True when the alias map lists ``raw`` under :data:`UNLABELLED` and the taxonomy has no such class."""
        return self.resolve(head, raw) is None and self.aliases[head].table.get(normalise_label(raw)) == UNLABELLED


@dataclass
class _Candidate:
    """An input image with its resolved labels, waiting for validation."""

    image: Path
    origin: str  # the path as the user wrote it (folder-relative or the CSV cell)
    labels: dict[str, str | None]
    garment: str | None = None
    composition: str | None = None
    line: int | None = None  # CSV line number, for the rejects file

    def reject(self, reason: str, detail: str = "") -> Reject:
        return Reject(self.origin, reason, _with_line(self.line, detail))


def _with_line(line: int | None, detail: str) -> str:
    if line is None:
        return detail
    return f"line {line}: {detail}" if detail else f"line {line}"


def default_rejects_path(manifest_path: str | Path) -> Path:
    """``foo.csv`` -> ``foo.rejects.csv`` next to it."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(f"{manifest_path.stem}.rejects.csv")


def _is_empty_label(raw: str | None) -> bool:
    return raw is None or raw.strip().lower() in ("", "na", "n/a", "nan", "none", "null")


def _resolve_labels(
    maps: LabelMaps, raw_labels: dict[str, str | None], origin: str, line: int | None = None
) -> Reject | dict[str, str | None]:
    """Resolve raw labels per head; a reject when one is unknown or none is present."""
    labels: dict[str, str | None] = {}
    for head, raw in raw_labels.items():
        if _is_empty_label(raw) or maps.means_unlabelled(head, str(raw)):
            labels[head] = None
            continue
        resolved = maps.resolve(head, raw)
        if resolved is None:
            detail = f"{head}: not a class of taxonomy {maps.taxonomy.version} nor in its alias map"
            return Reject(origin, f"unknown label '{str(raw).strip()}'", _with_line(line, detail))
        labels[head] = resolved
    if all(v is None for v in labels.values()):
        shown = ", ".join(f"{h}={raw_labels[h]!r}" for h in raw_labels)
        return Reject(origin, "no label", _with_line(line, shown))
    return labels


def _show(labels: dict[str, str | None]) -> str:
    return ", ".join(f"{head}={label}" for head, label in labels.items())


def _validate(
    candidates: list[_Candidate], *, max_pixels: int, max_bytes: int, workers: int, progress: bool
) -> list[ImageInfo | ImageError]:
    """Decode every candidate image (thread pool); results in input order."""

    def check(candidate: _Candidate) -> ImageInfo | ImageError:
        try:
            return inspect_image(candidate.image, max_pixels=max_pixels, max_bytes=max_bytes)
        except ImageError as exc:
            return exc

    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, candidates)
        return list(tqdm(results, total=len(candidates), desc="checking images", unit="img",
                         disable=None if progress else True))


def _finish(
    candidates: list[_Candidate],
    early_rejects: list[Reject],
    *,
    scanned: int,
    manifest_path: Path,
    rejects_path: Path | None,
    heads: tuple[str, ...],
    source: str,
    max_pixels: int,
    max_bytes: int,
    workers: int,
    deduplicate: bool,
    progress: bool,
) -> ImportReport:
    """Validate images, drop duplicates, write manifest + rejects, build the report."""
    rejects_path = Path(rejects_path) if rejects_path else default_rejects_path(manifest_path)
    rejects = list(early_rejects)
    rows: list[ManifestRow] = []
    first_by_sha1: dict[str, _Candidate] = {}
    results = _validate(candidates, max_pixels=max_pixels, max_bytes=max_bytes, workers=workers, progress=progress)
    for candidate, result in zip(candidates, results):
        if isinstance(result, ImageError):
            rejects.append(candidate.reject(result.reason, result.detail))
            continue
        if deduplicate and result.sha1 in first_by_sha1:
            kept = first_by_sha1[result.sha1]
            differ = "" if kept.labels == candidate.labels else f" (labels differ: kept {_show(kept.labels)})"
            rejects.append(candidate.reject("duplicate", f"same bytes as {kept.origin}{differ}"))
            continue
        first_by_sha1[result.sha1] = candidate
        rows.append(
            ManifestRow(
                path=relative_path(candidate.image, manifest_path.parent),
                fibre=candidate.labels.get("fibre"),
                colour=candidate.labels.get("colour"),
                garment=candidate.garment,
                composition=candidate.composition,
                source=source,
                sha1=result.sha1,
                width=result.width,
                height=result.height,
            )
        )
    write_manifest(rows, manifest_path)
    write_rejects(rejects, rejects_path)
    report = ImportReport(
        manifest_path=manifest_path,
        rejects_path=rejects_path,
        rows=rows,
        rejects=rejects,
        heads=heads,
        scanned=scanned,
        class_counts={head: Counter(getattr(r, head) for r in rows if getattr(r, head)) for head in heads},
        reject_counts=Counter(r.reason for r in rejects),
    )
    log.debug("imported %d of %d inputs into %s (%d rejected)", report.kept, scanned, manifest_path, len(rejects))
    return report


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> Path:
    """Write the rejects CSV (``path,reason,detail``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(REJECT_COLUMNS)
        for reject in rejects:
            writer.writerow([reject.path, reject.reason, reject.detail])
    return path


def import_image_folder(
    root: str | Path,
    manifest_path: str | Path,
    *,
    task: str,
    labels: LabelMaps | None = None,
    rejects_path: str | Path | None = None,
    source: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int = 2,
    deduplicate: bool = True,
    progress: bool = True,
) -> ImportReport:
    """Import ``root/<label>/**/<image>`` for one head (``task``: fibre or colour).

    Folder names resolve through the label maps (a folder named like a class is that
    class; otherwise the alias map decides; unknown names are rejected per file).
    Hidden files (``.DS_Store``) are ignored; files directly in ``root`` and files
    without an image suffix are rejected with a reason.
    """
    if task not in HEADS:
        raise ConfigError(f"unknown task '{task}' (expected one of {', '.join(HEADS)})")
    root, manifest_path = Path(root), Path(manifest_path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    labels = labels or LabelMaps.load()
    candidates: list[_Candidate] = []
    rejects: list[Reject] = []
    scanned = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            scanned += 1
            image = Path(dirpath) / name
            origin = image.relative_to(root).as_posix()
            parts = image.relative_to(root).parts
            if not _is_utf8(origin):
                shown = os.fsencode(origin).decode("utf-8", "backslashreplace")
                rejects.append(Reject(shown, "bad file name", "not UTF-8: rename it"))
                continue
            if len(parts) < 2:
                rejects.append(Reject(origin, "not in a class folder"))
                continue
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                rejects.append(Reject(origin, "not an image file", f"suffix '{image.suffix}'"))
                continue
            resolved = _resolve_labels(labels, {task: parts[0]}, origin)
            if isinstance(resolved, Reject):
                rejects.append(resolved)
                continue
            candidates.append(_Candidate(image=image, origin=origin, labels=resolved))
    if scanned == 0:
        raise DataError(f"image folder {root} holds no files (expected one sub-folder per class)")
    return _finish(
        candidates, rejects, scanned=scanned, manifest_path=manifest_path, rejects_path=rejects_path,
        heads=(task,), source=source or root.name, max_pixels=max_pixels, max_bytes=max_bytes, workers=workers,
        deduplicate=deduplicate, progress=progress,
    )


def _is_utf8(name: str) -> bool:
    """Whether a file name from the OS is valid UTF-8 (undecodable bytes arrive as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cell(record: dict[str | None, object], column: str | None) -> str | None:
    if column is None:
        return None
    value = record.get(column)
    return (value.strip() or None) if isinstance(value, str) else None


def import_csv(
    csv_path: str | Path,
    manifest_path: str | Path,
    *,
    image_col: str = "image",
    label_cols: dict[str, str],
    garment_col: str | None = None,
    composition_col: str | None = None,
    image_root: str | Path | None = None,
    labels: LabelMaps | None = None,
    rejects_path: str | Path | None = None,
    source: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int = 2,
    deduplicate: bool = True,
    progress: bool = True,
    encoding: str = "utf-8",
) -> ImportReport:
    """Import a CSV with one row per image; ``label_cols`` maps head -> column name.

    Image paths are relative to ``image_root`` (default: the CSV's folder) or absolute.
    A row is rejected when its image is missing/bad, a label is unknown, or it has no
    label at all (``NA``/empty); a row may label only some of the heads. The CSV is UTF-8
    unless ``encoding`` says otherwise.
    """
    csv_path, manifest_path = Path(csv_path), Path(manifest_path)
    unknown_heads = set(label_cols) - set(HEADS)
    if not label_cols or unknown_heads:
        raise ConfigError(f"label columns must be given for at least one of {', '.join(HEADS)}"
                          + (f" (unknown: {sorted(unknown_heads)})" if unknown_heads else ""))
    if not csv_path.is_file():
        raise DataError(f"label CSV {csv_path} does not exist")
    image_root = Path(image_root) if image_root else csv_path.parent
    labels = labels or LabelMaps.load()
    heads = tuple(h for h in HEADS if h in label_cols)
    wanted = {"image": image_col, **{f"{h} label": c for h, c in label_cols.items()},
              "garment": garment_col, "composition": composition_col}
    candidates: list[_Candidate] = []
    rejects: list[Reject] = []
    scanned = 0
    try:
        with read_csv_text(csv_path, encoding) as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [f"{what} '{col}'" for what, col in wanted.items() if col and col not in header]
            if missing:
                raise DataError(f"{csv_path}:1: no column {', '.join(missing)}; columns are {', '.join(header)}")
            for record in reader:
                line = reader.line_num
                if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
                    continue  # blank line
                scanned += 1
                image_cell = _cell(record, image_col)
                origin = image_cell or f"{csv_path.name}:{line}"
                if None in record or any(v is None for v in record.values()):
                    rejects.append(Reject(origin, "malformed row", _with_line(line, f"expected {len(header)} cells")))
                    continue
                if image_cell is None:
                    rejects.append(Reject(origin, "no image path", _with_line(line, "")))
                    continue
                raw = {h: _cell(record, label_cols[h]) for h in heads}
                resolved = _resolve_labels(labels, raw, origin, line)
                if isinstance(resolved, Reject):
                    rejects.append(resolved)
                    continue
                candidates.append(_Candidate(
                    image=image_root / image_cell, origin=origin, labels=resolved, line=line,
                    garment=_cell(record, garment_col), composition=_cell(record, composition_col),
                ))
    except csv.Error as exc:
        raise DataError(f"{csv_path}: malformed CSV: {exc}") from None
    return _finish(
        candidates, rejects, scanned=scanned, manifest_path=manifest_path, rejects_path=rejects_path,
        heads=heads, source=source or csv_path.parent.name, max_pixels=max_pixels, max_bytes=max_bytes,
        workers=workers, deduplicate=deduplicate, progress=progress,
    )
