"""The decision log: one SQLite row per item, written before the actuator is told.

The database runs in WAL mode (readers such as a dashboard or ``data import-log`` never block
the loop) with one writer connection guarded by a lock: the loop writes rows, the actuator's
worker thread may mark them missed.

A busy or failing log never stops the line. A write waits at most ``busy_timeout_ms`` for the
lock (another process writing, a backup); when it cannot be made (still locked, disk full, I/O
error) the row is held in a bounded in-memory backlog, in order, and written by :meth:`DecisionLog.flush`
once the database takes writes again (retried every ``retry_s``). :meth:`DecisionLog.record` says
which happened (:class:`Stored`): the loop fires an item's ejector only once its row is stored, and
while the backlog is full it sends new items to reject (``log_unavailable``), writing their rows
to the text log instead. Nothing is ever actuated without being stored. Crops of rejected or low-confidence items are saved as
JPEG next to the database for relabelling; :func:`export_todo` lists them in a CSV to label
and :func:`labels_to_manifest` turns the labelled CSV into a training manifest (the
active-learning loop back into training).
"""

from __future__ import annotations

import csv
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from sorting.config import StrictModel
from sorting.datasets.images import ImageError, ImageInfo, inspect_image
from sorting.datasets.manifest import ManifestRow, read_csv_text, relative_path, write_manifest
from sorting.errors import DataError
from sorting.serving.policy import Decision, ItemEvidence
from sorting.taxonomy import HEADS, LAYOUT_CROP_COLUMNS, LAYOUT_LABELS, AliasMap, Taxonomy, load_aliases, load_taxonomy

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    session TEXT NOT NULL,
    item_id TEXT NOT NULL,
    wall_time REAL NOT NULL,
    t_decision REAL,
    model_id TEXT,
    fibre TEXT,
    colour TEXT,
    confidence TEXT NOT NULL,
    probs TEXT NOT NULL,
    ood INTEGER NOT NULL,
    overlap INTEGER NOT NULL,
    cut_off INTEGER NOT NULL,
    n_views INTEGER NOT NULL,
    bin INTEGER NOT NULL,
    bin_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    latency_ms REAL,
    crop_path TEXT,
    crop_width INTEGER,
    crop_height INTEGER,
    missed INTEGER NOT NULL DEFAULT 0,
    missed_reason TEXT,
    nir_scans INTEGER,
    nir_fibre TEXT,
    nir_confidence REAL,
    nir_ood INTEGER,
    nir_cotton_share REAL
);
CREATE INDEX IF NOT EXISTS decisions_session_item ON decisions (session, item_id);
"""
# Answers given in the operator's console (Relabel page), one row per item, read by ``data import-log``.
# Added after schema 1 without a version bump: readers treat a log without the table as unlabelled.
_LABELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    uid TEXT PRIMARY KEY,
    fibre TEXT,
    colour TEXT,
    layout TEXT,
    skipped INTEGER NOT NULL DEFAULT 0,
    labelled_at REAL NOT NULL,
    labelled_by TEXT NOT NULL DEFAULT ''
);
"""
_SCHEMA += _LABELS_SCHEMA
# The spectrometer's evidence per item (lines with one; NULL otherwise), added after schema 1 without a version
# bump: a log written before has no such columns until a writer opens it (:func:`_add_nir_columns`), and readers
# select ``d.*``.
NIR_COLUMNS = {"nir_scans": "INTEGER", "nir_fibre": "TEXT", "nir_confidence": "REAL", "nir_ood": "INTEGER",
               "nir_cotton_share": "REAL"}
# Rejections that say nothing about the garment's class: their crops are not worth relabelling.
_NOT_CLASS_REASONS = ("late", "shutdown")


class DecisionLogConfig(StrictModel):
    """``log`` section of the line config."""

    path: Path = Field(default=Path("runs/serve/decisions.sqlite"), description="SQLite file (created)")
    crops_dir: Path | None = Field(default=None, description="default: '<db name>-crops' next to the DB")
    save_crops: Literal["none", "uncertain", "all"] = Field(
        default="uncertain", description="uncertain = rejected (not late) or below crop_confidence_below"
    )
    crop_confidence_below: float = Field(default=0.8, ge=0, le=1)
    jpeg_quality: int = Field(default=90, ge=10, le=100)
    max_crops: int = Field(default=50_000, ge=0, description="stop saving crops beyond this many per session")
    synchronous: Literal["normal", "full"] = Field(
        default="normal", description="normal: safe against a crash of the program; full: also power loss"
    )
    busy_timeout_ms: float = Field(default=100, ge=0, le=10_000, description="longest wait for the write lock")
    backlog_max: int = Field(default=2000, ge=1, description="rows held in memory while the log takes no writes")
    retry_s: float = Field(default=0.5, gt=0, description="how often a held backlog tries the database again")

    def crops_folder(self) -> Path:
        return self.crops_dir if self.crops_dir is not None else self.path.with_name(f"{self.path.stem}-crops")


def _connect(path: Path, *, read_only: bool = False, timeout_s: float = 5.0) -> sqlite3.Connection:
    if read_only:
        if not path.is_file():
            raise DataError(f"decision log {path} does not exist")
        conn = sqlite3.connect(f"file:{path.absolute()}?mode=ro", uri=True, check_same_thread=False,
                               timeout=timeout_s)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    conn.row_factory = sqlite3.Row
    return conn


def connect_read_only(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to a decision log (readers such as the console; WAL: never blocks the writer)."""
    return _connect(Path(path), read_only=True)


def _probs_json(evidence: ItemEvidence) -> str:
    out: dict[str, dict[str, float]] = {}
    for head, probs in evidence.probs.items():
        names = list(evidence.labels.get(head, ()))
        values = np.asarray(probs, dtype=np.float64).ravel()
        if len(names) != values.size:
            names = [str(i) for i in range(values.size)]
        out[head] = {n: round(float(p), 5) for n, p in zip(names, values)}
    return json.dumps(out)


def _nir_values(evidence: ItemEvidence) -> tuple[object, ...]:
    """The NIR columns of one item (all NULL on a line without a spectrometer)."""
    nir = evidence.nir
    if nir is None:
        return (None,) * len(NIR_COLUMNS)
    return (nir.scans, nir.fibre, nir.confidence, None if nir.fibre is None else int(nir.ood), nir.cotton_share)


def _add_nir_columns(conn: sqlite3.Connection) -> None:
    """A log written before the spectrometer columns existed gets them (empty for its old rows)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}
    for name, kind in NIR_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE decisions ADD COLUMN {name} {kind}")


class Stored(Enum):
    """What :meth:`DecisionLog.record` did with a row."""

    STORED = "stored"  # committed: the item may be actuated
    HELD = "held"  # in the backlog: actuate once :meth:`DecisionLog.flush` reports it stored
    DROPPED = "dropped"  # backlog full: written to the text log only (the item must go to reject)


_INSERT = (
    "INSERT INTO decisions (uid, session, item_id, wall_time, t_decision, model_id, fibre, colour,"
    " confidence, probs, ood, overlap, cut_off, n_views, bin, bin_name, reason, latency_ms,"
    " crop_path, crop_width, crop_height, " + ", ".join(NIR_COLUMNS) + ") VALUES ("
    + ",".join("?" * (21 + len(NIR_COLUMNS))) + ")"
)
_MARK_MISSED = "UPDATE decisions SET missed = 1, missed_reason = ? WHERE uid = ?"


class DecisionLog:
    """Append-only decision log for one serving session.

    ``reject_bin`` (the bins file's reject id) lets :meth:`summary` report a reject rate that
    includes missed firings. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        config: DecisionLogConfig,
        *,
        model_id: str = "",
        reject_bin: int | None = None,
        session: str | None = None,
    ) -> None:
        self.config = config
        self.model_id = model_id
        self.reject_bin = reject_bin
        self.session = session or time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
        self.path = Path(config.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.crops_dir = config.crops_folder()
        self._crops_saved = 0
        self._lock = threading.Lock()
        self._backlog: deque[tuple[str, tuple[object, ...]]] = deque()  # (sql, params) not yet written
        self._next_retry = 0.0
        self.dropped = 0  # rows that found the backlog full (text log only)
        try:
            self._conn: sqlite3.Connection | None = _connect(self.path, timeout_s=config.busy_timeout_ms / 1000.0)
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._conn.execute(f"PRAGMA synchronous={config.synchronous.upper()}")
            self._conn.executescript(_SCHEMA)
            _add_nir_columns(self._conn)
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as exc:
            raise DataError(f"cannot open decision log {self.path}: {exc}") from None
        if mode.lower() != "wal":
            log.warning("decision log %s is not in WAL mode (%s)", self.path, mode)
        log.info("decision log %s, session %s", self.path, self.session)

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_model(self, model_id: str) -> None:
        """Model id written into following rows (after a hot reload)."""
        self.model_id = model_id

    def uid(self, item_id: int | str) -> str:
        """The log-wide key of an item of this session (the ``item_id`` of relabelling CSVs)."""
        return f"{self.session}-{item_id}"

    def _wants_crop(self, decision: Decision) -> bool:
        if self.config.save_crops == "none" or self._crops_saved >= self.config.max_crops:
            return False
        if self.config.save_crops == "all":
            return True
        if not decision.reason.startswith("rule:"):
            return decision.reason not in _NOT_CLASS_REASONS
        conf = decision.confidence or {}
        return bool(conf) and min(conf.values()) < self.config.crop_confidence_below

    def _save_crop(self, uid: str, crop: np.ndarray) -> tuple[str, int, int] | None:
        self.crops_dir.mkdir(parents=True, exist_ok=True)
        target = self.crops_dir / f"{uid}.jpg"
        try:
            ok = cv2.imwrite(str(target), crop, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        except cv2.error as exc:
            log.warning("cannot save crop %s: %s", target, exc)
            return None
        if not ok:
            log.warning("cannot save crop %s", target)
            return None
        self._crops_saved += 1
        return relative_path(target, self.path.parent), int(crop.shape[1]), int(crop.shape[0])

    @property
    def backlog(self) -> int:
        """Writes held in memory because the database took none (0 when healthy)."""
        return len(self._backlog)

    @property
    def full(self) -> bool:
        """The backlog cannot take another row: new items must go to reject."""
        return len(self._backlog) >= self.config.backlog_max

    def record(
        self,
        evidence: ItemEvidence,
        decision: Decision,
        *,
        latency_ms: float | None = None,
        crop: np.ndarray | None = None,
        t_decision: float | None = None,
        wall_time: float | None = None,
    ) -> tuple[str, Stored]:
        """Persist one decision and maybe its crop; returns the item's uid and what became of the row.

        ``crop`` is the item's best BGR view; it is saved only for rejected (not 'late') or
        low-confidence items, per the config.
        """
        uid = self.uid(evidence.item_id)
        saved = self._save_crop(uid, crop) if crop is not None and crop.size and self._wants_crop(decision) else None
        row = (
            uid, self.session, str(evidence.item_id), time.time() if wall_time is None else wall_time, t_decision,
            self.model_id, decision.fibre, decision.colour, json.dumps(decision.confidence or {}),
            _probs_json(evidence), int(evidence.ood), int(evidence.overlap or evidence.two_colours),
            int(evidence.cut_off), int(evidence.n_views), int(decision.bin), decision.bin_name, decision.reason, latency_ms,
            *(saved or (None, None, None)), *_nir_values(evidence),
        )
        with self._lock:
            self._require_open()
            written = None if self._backlog else self._write(_INSERT, row)
            if written is None:
                if len(self._backlog) >= self.config.backlog_max:
                    self.dropped += 1
                    log.error("decision log backlog full (%d rows): row not stored: %s", len(self._backlog),
                              json.dumps(row[:20], default=str))
                    return uid, Stored.DROPPED
                self._backlog.append((_INSERT, row))
                return uid, Stored.HELD
        return written, Stored.STORED

    def mark_missed(self, item_id: int | str, reason: str = "late") -> None:
        """The actuator could not fire for this item: it went to the end-of-belt reject."""
        params = (reason, self.uid(item_id))
        with self._lock:
            self._require_open()
            if self._backlog or self._write(_MARK_MISSED, params) is None:
                self._backlog.append((_MARK_MISSED, params))  # after its row, which may still be held

    def _write(self, sql: str, params: tuple[object, ...]) -> str | None:
        """One statement; the uid it wrote, or None when the database takes no writes now (locked, full,
        I/O error)."""
        conn = self._require_open()
        uid = str(params[0] if sql is _INSERT else params[1])
        try:
            try:
                cur = conn.execute(sql, params)
            except sqlite3.IntegrityError:
                if sql is not _INSERT:
                    raise
                # A second decision for one item is a tracking bug; keep it visible, never drop it.
                log.error("item %s decided twice in session %s; logging it as a duplicate", params[2], self.session)
                uid = f"{uid}-dup{secrets.token_hex(3)}"
                cur = conn.execute(sql, (uid, *params[1:]))
        except sqlite3.OperationalError as exc:
            if not self._backlog:
                log.error("decision log %s takes no writes (%s): holding rows in memory", self.path, exc)
            self._next_retry = time.monotonic() + self.config.retry_s
            return None
        if sql is _MARK_MISSED and cur.rowcount == 0:
            log.warning("mark_missed: item %s not in the log (session %s)", uid, self.session)
        return uid

    def flush(self, *, force: bool = False) -> list[str]:
        """Write the backlog, oldest first, as far as the database takes it (at most every ``retry_s``
        unless ``force``); returns the uids of the decisions stored now."""
        stored: list[str] = []
        with self._lock:
            if not self._backlog or (not force and time.monotonic() < self._next_retry):
                return stored
            while self._backlog:
                sql, params = self._backlog[0]
                if self._write(sql, params) is None:
                    break
                self._backlog.popleft()
                if sql is _INSERT:
                    stored.append(str(params[0]))  # the uid record() returned
            if not self._backlog:
                log.warning("decision log %s takes writes again: backlog written", self.path)
        return stored

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("decision log is closed")
        return self._conn

    def counts(self, by: Literal["bin", "bin_name", "reason", "missed_reason"] = "bin_name") -> dict[str, int]:
        """Row counts of this session grouped by one column."""
        if by not in ("bin", "bin_name", "reason", "missed_reason"):
            raise ValueError(f"cannot group by {by!r}")
        with self._lock:
            rows = self._require_open().execute(
                f"SELECT {by} AS k, COUNT(*) AS n FROM decisions WHERE session = ? GROUP BY {by} ORDER BY {by}",
                (self.session,),
            ).fetchall()
        return {str(r["k"]): int(r["n"]) for r in rows if r["k"] is not None}

    def summary(self) -> dict[str, object]:
        """Totals for the report: items, per bin, per reason, missed, reject rate, latency p50/p99."""
        with self._lock:
            conn = self._require_open()
            total, missed = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(missed), 0) FROM decisions WHERE session = ?", (self.session,)
            ).fetchone()
            rejected = 0
            if self.reject_bin is not None:
                rejected = conn.execute(
                    "SELECT COUNT(*) FROM decisions WHERE session = ? AND (bin = ? OR missed = 1)",
                    (self.session, self.reject_bin),
                ).fetchone()[0]
            lat = [r[0] for r in conn.execute(
                "SELECT latency_ms FROM decisions WHERE session = ? AND latency_ms IS NOT NULL", (self.session,))]
        out: dict[str, object] = {
            "items": int(total),
            "per_bin": self.counts("bin_name"),
            "per_reason": self.counts("reason"),
            "missed": int(missed),
            "crops_saved": self._crops_saved,
        }
        if self.reject_bin is not None:
            out["reject_rate"] = rejected / total if total else 0.0
        if lat:
            out["latency_ms_p50"] = float(np.percentile(lat, 50))
            out["latency_ms_p99"] = float(np.percentile(lat, 99))
        return out

    def settle(self, patience_s: float = 5.0) -> list[str]:
        """Try for up to ``patience_s`` to write the backlog (shutdown); the uids of the decisions stored."""
        stored: list[str] = []
        deadline = time.monotonic() + patience_s
        while self._conn is not None and self._backlog:
            stored += self.flush(force=True)
            if not self._backlog or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return stored

    def close(self) -> None:
        """Write what it can of the backlog (:meth:`settle`), fold the WAL back into the database file
        and close (idempotent). Writes the database still refuses go to the text log."""
        self.settle()
        with self._lock:
            if self._conn is None:
                return
            for sql, params in self._backlog:
                log.error("decision log %s: closing with a write it never took: %s %s", self.path, sql.split()[0],
                          json.dumps(params[:20], default=str))
            self._backlog.clear()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as exc:  # another process holds the database: the WAL stays
                log.warning("decision log %s: WAL not folded back at close (%s)", self.path, exc)
            finally:
                self._conn.close()
                self._conn = None
        log.info("decision log %s closed", self.path)


# -- active learning: crops to label, labelled crops to a manifest -------------------------------

TODO_COLUMNS = ("item_id", "crop", "reason", "pred_fibre", "pred_colour", "confidence", "fibre", "colour", "layout")


def export_todo(db_path: str | Path, out_csv: str | Path, *, crops_dir: str | Path | None = None) -> int:
    """Write a CSV of logged items with a saved crop, to be labelled (fill ``fibre``/``colour``, and
    ``layout`` = ``single`` / ``several`` for crops that show one garment or several touching).

    ``crop`` paths are relative to the CSV's folder; rows whose crop lies outside the log's crops
    folder (``crops_dir``, default ``<db name>-crops``) are left out. Returns the number of rows.
    """
    db_path, out_csv = Path(db_path), Path(out_csv)
    folder = _crops_folder(db_path, crops_dir)
    conn = _connect(db_path, read_only=True)
    try:
        rows = conn.execute(
            "SELECT uid, crop_path, reason, fibre, colour, confidence FROM decisions"
            " WHERE crop_path IS NOT NULL ORDER BY id"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{db_path} is not a decision log: {exc}") from None
    finally:
        conn.close()
    inside = [(r, crop) for r in rows if (crop := _crop_in_folder(db_path, r["crop_path"], folder)) is not None]
    if len(inside) < len(rows):
        log.warning("%d logged crop path(s) outside %s left out", len(rows) - len(inside), folder)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(TODO_COLUMNS)
        for r, crop in inside:
            writer.writerow([r["uid"], relative_path(crop, out_csv.parent), r["reason"], r["fibre"] or "",
                             r["colour"] or "", r["confidence"], "", "", ""])
    return len(inside)


def record_label(
    db_path: str | Path,
    uid: str,
    *,
    fibre: str | None = None,
    colour: str | None = None,
    layout: str | None = None,
    skipped: bool = False,
    by: str = "",
) -> None:
    """Store a person's answer for the crop of item ``uid`` (replacing an earlier one).

    ``skipped``: looked at, no answer (the crop is unclear); it leaves the to-do list and is not
    imported. Uses its own short write transaction (WAL: the loop's writer waits at most a few ms).
    Raises :class:`DataError` when the log cannot be written or ``uid`` has no saved crop.
    """
    values = (fibre or None, colour or None, layout or None)
    if not skipped and not any(values):
        raise DataError(f"label for {uid}: give a fibre, colour or layout, or skip it")
    try:
        conn = sqlite3.connect(Path(db_path), timeout=2.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise DataError(f"cannot open decision log {db_path}: {exc}") from None
    try:
        if conn.execute("SELECT 1 FROM decisions WHERE uid = ? AND crop_path IS NOT NULL", (uid,)).fetchone() is None:
            raise DataError(f"item {uid} has no saved crop in {Path(db_path).name}")
        conn.executescript(_LABELS_SCHEMA)
        conn.execute(
            "INSERT OR REPLACE INTO labels (uid, fibre, colour, layout, skipped, labelled_at, labelled_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (uid, *((None, None, None) if skipped else values), int(skipped), time.time(), by),
        )
    except sqlite3.Error as exc:
        raise DataError(f"cannot store the label of {uid} in {db_path}: {exc}") from None
    finally:
        conn.close()


def has_labels_table(conn: sqlite3.Connection) -> bool:
    """Logs written before the console existed have no ``labels`` table."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'labels'").fetchone() is not None


def stored_labels(db_path: str | Path) -> list[dict[str, str]]:
    """Labels stored by the console (not skipped), oldest first, as ``item_id,fibre,colour,layout``
    records (empty string = no answer), the shape of a labelled CSV's rows."""
    conn = _connect(Path(db_path), read_only=True)
    try:
        if not has_labels_table(conn):
            return []
        rows = conn.execute(
            "SELECT uid, fibre, colour, layout FROM labels WHERE skipped = 0 ORDER BY labelled_at, uid"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{db_path} is not a decision log: {exc}") from None
    finally:
        conn.close()
    return [{"item_id": r["uid"], "fibre": r["fibre"] or "", "colour": r["colour"] or "", "layout": r["layout"] or ""}
            for r in rows]


@dataclass
class ImportResult:
    """Outcome of :func:`labels_to_manifest`: rows written and why others were skipped."""

    manifest: Path
    written: int
    skipped: list[str] = field(default_factory=list)


def _resolver(taxonomy: Taxonomy) -> dict[str, tuple[AliasMap, tuple[str, ...]]]:
    out = {}
    for head in HEADS:
        try:
            aliases = load_aliases(head)
        except Exception as exc:  # no alias file: exact class names only
            log.debug("no %s aliases: %s", head, exc)
            aliases = AliasMap(head)
        out[head] = (aliases, taxonomy.classes(head))
    return out


def labels_to_manifest(
    db_path: str | Path,
    labels_csv: str | Path | None,
    out_manifest: str | Path,
    *,
    taxonomy: Taxonomy | None = None,
    split: str | None = None,
    crops_dir: str | Path | None = None,
    encoding: str = "utf-8",
) -> ImportResult:
    """Turn labelled crops into a manifest: a labelled CSV (``item_id,fibre,colour``; other columns
    ignored) or, with ``labels_csv=None``, the labels stored in the log's ``labels`` table (console).

    Labels go through the taxonomy's alias maps; an empty cell is a missing label for that
    head. Rows with an unknown item, a missing crop, an unknown label or no label at all are
    skipped with the reason (returned and logged), not fatal; so are crops outside the log's
    crops folder (``crops_dir``, default ``<db name>-crops``) and crops that do not decode.
    Raises :class:`DataError` when the files cannot be read or no row is usable.
    """
    db_path, out_manifest = Path(db_path), Path(out_manifest)
    resolve = _resolver(taxonomy or load_taxonomy())
    source, records = _label_records(db_path, labels_csv, encoding, needs=("item_id", "fibre and/or colour"),
                                     has_columns=lambda cols: "item_id" in cols and bool({"fibre", "colour"} & cols))
    crops, folder = _saved_crops(db_path), _crops_folder(db_path, crops_dir)
    rows: list[ManifestRow] = []
    skipped: list[str] = []
    for where, record in records:
        found = _crop_of(record, crops, db_path, folder, where, skipped)
        if found is None:
            continue
        crop, info = found
        labels: dict[str, str | None] = {}
        bad = []
        for head in HEADS:
            raw = (record.get(head) or "").strip()
            aliases, classes = resolve[head]
            labels[head] = aliases.resolve(raw, classes) if raw else None
            if raw and labels[head] is None:
                bad.append(f"{head} '{raw}'")
        if bad:
            skipped.append(f"{where}: unknown label {', '.join(bad)}")
            continue
        if not any(labels.values()):
            skipped.append(f"{where}: no label")
            continue
        rows.append(ManifestRow(path=relative_path(crop, out_manifest.parent), fibre=labels["fibre"],
                                colour=labels["colour"], source=f"decision-log:{db_path.name}", split=split,
                                sha1=info.sha1, width=info.width, height=info.height))
    for reason in skipped:
        log.warning("skipped %s", reason)
    if not rows:
        raise DataError(f"{source}: no usable labelled rows ({len(skipped)} skipped)")
    write_manifest(rows, out_manifest)
    return ImportResult(manifest=out_manifest, written=len(rows), skipped=skipped)


def layout_labels_to_csv(db_path: str | Path, labels_csv: str | Path | None, out_csv: str | Path, *,
                         crops_dir: str | Path | None = None, encoding: str = "utf-8") -> ImportResult:
    """The ``layout`` labels (``single`` / ``several``; empty: not labelled) of a labelled CSV or, with
    ``labels_csv=None``, of the log's ``labels`` table, as a layout crop list (``path,layout``) for the
    layout head (recipe ``layout.crops``): the line's own touching pairs.

    Rows with an unknown item, a missing or unusable crop (as :func:`labels_to_manifest`) or another
    value are skipped with the reason; raises :class:`DataError` when the files cannot be read or no
    row carries a layout label.
    """
    db_path, out_csv = Path(db_path), Path(out_csv)
    source, records = _label_records(db_path, labels_csv, encoding, needs=("item_id", "layout"),
                                     has_columns=lambda cols: {"item_id", "layout"} <= cols)
    crops, folder = _saved_crops(db_path), _crops_folder(db_path, crops_dir)
    rows: list[tuple[str, str]] = []
    skipped: list[str] = []
    for where, record in records:
        value = (record.get("layout") or "").strip().lower()
        if not value:
            continue
        if value not in LAYOUT_LABELS:
            skipped.append(f"{where}: layout '{value}' is not one of {list(LAYOUT_LABELS)}")
            continue
        found = _crop_of(record, crops, db_path, folder, where, skipped)
        if found is not None:
            rows.append((relative_path(found[0], out_csv.parent), value))
    for reason in skipped:
        log.warning("skipped %s", reason)
    if not rows:
        raise DataError(f"{source}: no usable layout labels ({len(skipped)} skipped)")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(LAYOUT_CROP_COLUMNS)
        writer.writerows(rows)
    return ImportResult(manifest=out_csv, written=len(rows), skipped=skipped)


def _label_records(db_path: Path, labels_csv: str | Path | None, encoding: str, *, needs: tuple[str, str],
                   has_columns: Callable[[set[str]], bool]) -> tuple[str, list[tuple[str, dict[str, str]]]]:
    """``(source name, [(where, record)])`` of labelled rows: a CSV's, or the stored labels (``None``)."""
    if labels_csv is None:
        return f"{db_path.name} (labels stored by the console)", [
            (f"labels:{r['item_id']}", r) for r in stored_labels(db_path)
        ]
    labels_csv = Path(labels_csv)
    with read_csv_text(labels_csv, encoding) as fh:
        reader = csv.DictReader(fh)
        if not has_columns(set(reader.fieldnames or ())):
            raise DataError(f"{labels_csv}: needs columns {' and '.join(needs)} (got {reader.fieldnames})")
        return str(labels_csv), [(f"{labels_csv.name}:{line}", rec) for line, rec in enumerate(reader, start=2)]


def _saved_crops(db_path: Path) -> dict[str, sqlite3.Row]:
    """Logged items with a saved crop, by item id."""
    conn = _connect(db_path, read_only=True)
    try:
        return {
            r["uid"]: r for r in conn.execute("SELECT uid, crop_path FROM decisions WHERE crop_path IS NOT NULL")
        }
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{db_path} is not a decision log: {exc}") from None
    finally:
        conn.close()


def _crops_folder(db_path: Path, crops_dir: str | Path | None) -> Path:
    """The log's crops folder (the writer's default ``<db name>-crops`` next to it), resolved."""
    return DecisionLogConfig(path=db_path, crops_dir=crops_dir).crops_folder().resolve()


def _crop_in_folder(db_path: Path, crop_path: str, folder: Path) -> Path | None:
    """The file a row's ``crop_path`` names (relative to the log's folder, links resolved), or None when it
    lies outside ``folder``: a crafted or edited log must not pull other files into a training set."""
    crop = (db_path.parent / crop_path).resolve()
    return crop if crop.is_relative_to(folder) else None


def _crop_of(record: dict[str, str], crops: dict[str, sqlite3.Row], db_path: Path, folder: Path, where: str,
             skipped: list[str]) -> tuple[Path, ImageInfo] | None:
    """The crop file a labelled row names, decoded, or None with the reason in ``skipped``."""
    uid = (record.get("item_id") or "").strip()
    hit = crops.get(uid)
    if hit is None:
        skipped.append(f"{where}: item '{uid}' has no saved crop in {db_path.name}")
        return None
    crop = _crop_in_folder(db_path, hit["crop_path"], folder)
    if crop is None:
        skipped.append(f"{where}: crop {hit['crop_path'][:200]!r} lies outside the crops folder {folder}")
        return None
    try:
        return crop, inspect_image(crop)
    except ImageError as exc:
        skipped.append(f"{where}: crop {crop}: {exc.reason}")
        return None
