"""Read-only queries over the decision log for the console's pages.

Every call opens its own read-only connection (``mode=ro``; WAL: readers never block the loop's
writer and see committed rows at once) with a short busy timeout. A log that is locked (an old,
non-WAL log being written, or a checkpoint) raises :class:`LogBusy`, which the pages report
while showing the last figures they had; a log not yet created raises :class:`LogMissing`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sorting.errors import DataError
from sorting.serving.decision_log import connect_read_only, has_labels_table

T = TypeVar("T")
CROP_SUFFIXES = (".jpg", ".jpeg", ".png")
HISTORY_COLUMNS = ("time", "item", "bin", "reason", "fibre", "fibre_conf", "colour", "colour_conf", "missed",
                   "latency_ms", "model", "session")


class LogBusy(Exception):
    """The decision log is locked right now (try again shortly)."""


class LogMissing(Exception):
    """The decision log does not exist (yet)."""


@dataclass(frozen=True)
class Filter:
    """History filter: one session (None: all), one bin name, one reason (None: any)."""

    session: str | None = None
    bin_name: str | None = None
    reason: str | None = None

    def where(self, *, newest_first: bool = False) -> tuple[str, list[Any]]:
        """SQL ``WHERE`` over ``decisions d``. ``newest_first``: for ``ORDER BY d.id DESC LIMIT n``, keep
        SQLite off the session index (``+column``) so it walks the table from the newest row and stops
        after n matches, instead of sorting the whole session."""
        clauses, args = [], []
        plus = "+" if newest_first else ""
        for column, value in (("session", self.session), ("bin_name", self.bin_name), ("reason", self.reason)):
            if value:
                clauses.append(f"{plus}d.{column} = ?")
                args.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


@dataclass(frozen=True)
class SessionCounts:
    """Totals of one session from the log."""

    total: int
    rejected: int
    missed: int
    per_bin: dict[str, int]
    rejected_by_reason: dict[str, int]
    missed_by_reason: dict[str, int]


def reason_kind(reason: str) -> str:
    """``low_confidence:fibre`` -> ``low_confidence``; ``rule:white`` -> ``rule``."""
    return reason.split(":", 1)[0]


class LogView:
    """Read-only access to one decision log; remembers the last good answer of each query."""

    def __init__(self, db_path: str | Path, *, busy_timeout_ms: int = 250) -> None:
        self.path = Path(db_path).absolute()
        self.busy_timeout_ms = busy_timeout_ms
        self.state = "ok"
        self._last: dict[str, Any] = {}
        self._lock = threading.Lock()

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        if not self.path.is_file():
            raise LogMissing(f"decision log {self.path} does not exist yet")
        try:
            conn = connect_read_only(self.path)
        except DataError as exc:
            raise LogMissing(str(exc)) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            yield conn
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise LogBusy(str(exc)) from None
            raise DataError(f"{self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path} is not a decision log: {exc}") from None
        finally:
            conn.close()

    def remembered(self, key: str, query: Callable[[], T], default: T) -> T:
        """``query()``; while the log is busy or missing, the last good answer (``state`` says why)."""
        try:
            value = query()
        except LogBusy:
            self.state = "busy"
        except LogMissing:
            self.state = "missing"
        else:
            self.state = "ok"
            with self._lock:
                self._last[key] = value
            return value
        with self._lock:
            return self._last.get(key, default)

    # -- sessions and counts -----------------------------------------------------------------
    def sessions(self) -> list[dict[str, Any]]:
        """Sessions (one per ``serve`` run), newest first: name and items (read from the session index only)."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT session, COUNT(*) AS n, MAX(id) AS last_id FROM decisions"
                " GROUP BY session ORDER BY last_id DESC"
            ).fetchall()
        return [dict(r) for r in rows]

    def latest_session(self) -> str | None:
        with self._conn() as conn:
            row = conn.execute("SELECT session FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else str(row["session"])

    def reject_bin(self) -> int | None:
        """The reject bin's id, read from the log: where fail-safe (non-rule) decisions went."""
        with self._conn() as conn:
            row = conn.execute("SELECT bin FROM decisions WHERE reason NOT LIKE 'rule:%' LIMIT 1").fetchone()
        return None if row is None else int(row["bin"])

    def session_counts(self, session: str | None, reject_bin: int | None) -> SessionCounts:
        """Items per bin, rejected (reject bin or missed firing) by reason, of ``session`` (None: all)."""
        where, args = Filter(session=session).where()
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT bin, bin_name, reason, missed, missed_reason, COUNT(*) AS n FROM decisions d{where}"
                " GROUP BY bin, bin_name, reason, missed, missed_reason", args
            ).fetchall()
        per_bin: dict[str, int] = {}
        rejected: dict[str, int] = {}
        missed: dict[str, int] = {}
        for r in rows:
            n = int(r["n"])
            per_bin[r["bin_name"]] = per_bin.get(r["bin_name"], 0) + n
            if reject_bin is not None and r["bin"] == reject_bin:
                kind = reason_kind(r["reason"])
                rejected[kind] = rejected.get(kind, 0) + n
            elif r["missed"]:
                kind = f"missed:{r['missed_reason'] or 'late'}"
                missed[kind] = missed.get(kind, 0) + n
        return SessionCounts(total=sum(per_bin.values()), rejected=sum(rejected.values()) + sum(missed.values()),
                             missed=sum(missed.values()), per_bin=per_bin, rejected_by_reason=rejected,
                             missed_by_reason=missed)

    # -- history -----------------------------------------------------------------------------
    def choices(self, session: str | None) -> dict[str, list[tuple[str, int]]]:
        """Bin names and reasons present in ``session`` with their counts (filter menus)."""
        where, args = Filter(session=session).where()
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT bin_name, reason, COUNT(*) AS n FROM decisions d{where} GROUP BY bin_name, reason", args
            ).fetchall()
        counts: dict[str, dict[str, int]] = {"bin_name": {}, "reason": {}}
        for r in rows:
            for column in counts:
                counts[column][r[column]] = counts[column].get(r[column], 0) + int(r["n"])
        return {column: sorted(c.items()) for column, c in counts.items()}

    def rows(self, flt: Filter, *, before_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Newest decisions matching ``flt`` (older than ``before_id`` for the next page)."""
        where, args = flt.where(newest_first=True)
        if before_id is not None:
            where += (" AND" if where else " WHERE") + " d.id < ?"
            args.append(before_id)
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT d.* FROM decisions d{where} ORDER BY d.id DESC LIMIT ?", [*args, limit]
            ).fetchall()
        return [_history_row(r) for r in rows]

    def iter_rows(self, flt: Filter, chunk: int = 2000) -> Iterator[dict[str, Any]]:
        """Every decision matching ``flt``, oldest first, read in chunks (CSV download)."""
        where, args = flt.where()
        after = 0
        while True:
            page_where = where + (" AND" if where else " WHERE") + " d.id > ?"
            with self._conn() as conn:
                rows = conn.execute(f"SELECT d.* FROM decisions d{page_where} ORDER BY d.id LIMIT ?",
                                    [*args, after, chunk]).fetchall()
            if not rows:
                return
            after = int(rows[-1]["id"])
            for r in rows:
                yield _history_row(r)

    def buckets(self, flt: Filter, reject_bin: int | None, n: int = 48) -> list[tuple[float, int, int]]:
        """``(bucket start, items, rejected)`` over the time span of ``flt``'s rows, ``n`` buckets."""
        where, args = flt.where()
        with self._conn() as conn:
            scan = flt.where(newest_first=True)[0]  # one table walk beats the index + a row fetch per match
            span = conn.execute(f"SELECT MIN(wall_time), MAX(wall_time) FROM decisions d{scan}", args).fetchone()
            if span[0] is None:
                return []
            t0, t1 = float(span[0]), float(span[1])
            width = max((t1 - t0) / n, 1.0)
            rows = conn.execute(
                f"SELECT CAST((wall_time - ?) / ? AS INTEGER) AS b, COUNT(*) AS n,"
                f" SUM(CASE WHEN bin = ? OR missed = 1 THEN 1 ELSE 0 END) AS r"
                f" FROM decisions d{where} GROUP BY b ORDER BY b",
                [t0, width, -1 if reject_bin is None else reject_bin, *args],
            ).fetchall()
        items, rejected = [0] * n, [0] * n
        for r in rows:  # the newest row falls on the end of the last bucket (b == n)
            b = min(int(r["b"]), n - 1)
            items[b] += int(r["n"])
            rejected[b] += int(r["r"] or 0)
        return [(t0 + i * width, items[i], rejected[i]) for i in range(n)]

    # -- relabelling -------------------------------------------------------------------------
    def label_progress(self, session: str | None) -> dict[str, int]:
        """Crops saved, labelled, skipped and left in ``session`` (None: all)."""
        where, args = Filter(session=session).where()
        where += (" AND" if where else " WHERE") + " d.crop_path IS NOT NULL"
        with self._conn() as conn:
            if has_labels_table(conn):
                row = conn.execute(
                    "SELECT COUNT(*) AS crops, SUM(l.uid IS NOT NULL AND l.skipped = 0) AS labelled,"
                    f" SUM(l.skipped = 1) AS skipped FROM decisions d LEFT JOIN labels l ON l.uid = d.uid{where}",
                    args).fetchone()
                crops, labelled, skipped = int(row["crops"]), int(row["labelled"] or 0), int(row["skipped"] or 0)
            else:
                crops = conn.execute(f"SELECT COUNT(*) FROM decisions d{where}", args).fetchone()[0]
                labelled = skipped = 0
        return {"crops": crops, "labelled": labelled, "skipped": skipped, "left": crops - labelled - skipped}

    def relabel_queue(self, session: str | None, *, reason: str | None = None, include_done: bool = False,
                      limit: int = 24) -> list[dict[str, Any]]:
        """Items with a saved crop still to label (or all, ``include_done``), newest first."""
        where, args = Filter(session=session, reason=reason).where(newest_first=True)
        where += (" AND" if where else " WHERE") + " d.crop_path IS NOT NULL"
        with self._conn() as conn:
            if has_labels_table(conn):
                if not include_done:
                    where += " AND l.uid IS NULL"
                sql = ("SELECT d.*, l.fibre AS l_fibre, l.colour AS l_colour, l.layout AS l_layout,"
                       f" l.skipped AS l_skipped FROM decisions d LEFT JOIN labels l ON l.uid = d.uid{where}")
            else:
                sql = ("SELECT d.*, NULL AS l_fibre, NULL AS l_colour, NULL AS l_layout, NULL AS l_skipped"
                       f" FROM decisions d{where}")
            rows = conn.execute(sql + " ORDER BY d.id DESC LIMIT ?", [*args, limit]).fetchall()
        return [{**_history_row(r), "uid": r["uid"], "label": {"fibre": r["l_fibre"], "colour": r["l_colour"],
                                                             "layout": r["l_layout"], "skipped": r["l_skipped"]}}
                for r in rows]

    def crop_file(self, uid: str) -> Path | None:
        """The saved crop of item ``uid`` (looked up in the log, never built from the request)."""
        with self._conn() as conn:
            row = conn.execute("SELECT crop_path FROM decisions WHERE uid = ?", (uid,)).fetchone()
        if row is None or not row["crop_path"]:
            return None
        path = self.path.parent / row["crop_path"]
        return path if path.suffix.lower() in CROP_SUFFIXES and path.is_file() else None

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last decisions (live page's ticker)."""
        return self.rows(Filter(), limit=limit)


def _history_row(r: sqlite3.Row) -> dict[str, Any]:
    conf = json.loads(r["confidence"] or "{}")
    return {
        "id": int(r["id"]),
        "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["wall_time"])),
        "item": r["uid"],
        "bin": r["bin_name"],
        "bin_id": int(r["bin"]),
        "reason": r["reason"],
        "fibre": r["fibre"] or "",
        "fibre_conf": conf.get("fibre"),
        "colour": r["colour"] or "",
        "colour_conf": conf.get("colour"),
        "missed": r["missed_reason"] if r["missed"] else "",
        "latency_ms": None if r["latency_ms"] is None else round(float(r["latency_ms"]), 1),
        "model": r["model_id"] or "",
        "session": r["session"],
    }
