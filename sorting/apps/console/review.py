"""History (the shift's decisions, chart, CSV) and Relabel (doubtful crops -> labels) pages."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from flask import (
    Flask,
    Response,
    abort,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)

from sorting.apps.console.charts import counts_chart
from sorting.apps.console.logview import HISTORY_COLUMNS, Filter, LogView
from sorting.errors import DataError
from sorting.serving.decision_log import record_label
from sorting.taxonomy import LAYOUT_LABELS

if TYPE_CHECKING:
    from sorting.apps.console.context import ConsoleContext

UID = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
CHART_BUCKETS = 48
ALL = "all"


def _filter(view: LogView) -> tuple[Filter, list[dict[str, Any]]]:
    """The filter in the query string; the session defaults to the latest, ``all`` means every one."""
    sessions = view.sessions()
    session = request.args.get("session") or (sessions[0]["session"] if sessions else None)
    flt = Filter(session=None if session == ALL else session, bin_name=request.args.get("bin") or None,
                 reason=request.args.get("reason") or None)
    return flt, sessions


def _reject_bin(ctx: ConsoleContext) -> int | None:
    return ctx.feed.status.reject_bin if ctx.feed is not None else ctx.view.reject_bin()


def register(app: Flask, ctx: ConsoleContext) -> None:
    """Add the History and Relabel routes."""
    view = ctx.view

    @app.get("/history")
    def history() -> str:
        flt, sessions = _filter(view)
        rows = view.rows(flt, before_id=request.args.get("before", type=int), limit=200)
        buckets = view.buckets(flt, _reject_bin(ctx), CHART_BUCKETS)
        bucket_s = buckets[1][0] - buckets[0][0] if len(buckets) > 1 else 60.0
        return render_template(
            "history.html", rows=rows, sessions=sessions, flt=flt, choices=view.choices(flt.session),
            chart=counts_chart(buckets, bucket_s=bucket_s), bucket_min=bucket_s / 60.0,
            total=sum(n for _, n, _ in buckets), rejected=sum(r for _, _, r in buckets),
            older=rows[-1]["id"] if len(rows) == 200 else None, query=_query(flt),
        )

    @app.get("/history.csv")
    def history_csv() -> Response:
        flt, _ = _filter(view)
        name = f"decisions-{flt.session or 'all'}.csv"
        return Response(_csv_lines(view.iter_rows(flt)), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/relabel")
    def relabel() -> str:
        flt, sessions = _filter(view)
        done = request.args.get("done") == "1"
        items = view.relabel_queue(flt.session, reason=flt.reason, include_done=done, limit=24)
        return render_template(
            "relabel.html", items=items, sessions=sessions, flt=flt, done=done,
            progress=view.label_progress(flt.session), choices=view.choices(flt.session),
            fibres=ctx.taxonomy.fibre, colours=ctx.taxonomy.colour, layouts=LAYOUT_LABELS,
        )

    @app.post("/api/relabel/<uid>")
    def save_label(uid: str) -> Response:
        return _save_label(ctx, uid)

    @app.get("/crop/<uid>")
    def crop(uid: str) -> Response:
        """The saved crop of item ``uid``: looked up in the log by id, never a path from the request."""
        path = view.crop_file(uid) if UID.match(uid) else None
        if path is None:
            abort(404)
        return send_file(path, mimetype="image/png" if path.suffix.lower() == ".png" else "image/jpeg",
                         max_age=3600)


def _save_label(ctx: ConsoleContext, uid: str) -> Response:
    """Store one answer from the Relabel page (form fields fibre, colour, layout, action=save|skip)."""
    if not UID.match(uid):
        abort(404)
    form = request.form
    skip = form.get("action") == "skip"
    values = {k: (form.get(k) or "").strip() for k in ("fibre", "colour", "layout")}
    allowed = {"fibre": ctx.taxonomy.fibre, "colour": ctx.taxonomy.colour, "layout": LAYOUT_LABELS}
    bad = [f"{k} '{v}'" for k, v in values.items() if v and v not in allowed[k]]
    if bad:
        return _answer({"error": f"unknown {', '.join(bad)}"}, 400)
    try:
        record_label(ctx.view.path, uid, skipped=skip, by=request.remote_addr or "",
                     **{k: v or None for k, v in values.items()})
    except DataError as exc:
        return _answer({"error": str(exc)}, 400)
    progress = ctx.view.label_progress(request.args.get("session") or None)
    return _answer({"uid": uid, "skipped": skip, **values, "progress": progress})


def _answer(payload: dict[str, Any], status: int = 200) -> Response:
    if request.accept_mimetypes.best == "application/json":
        resp = jsonify(payload)
        resp.status_code = status
        return resp
    if status != 200:
        return Response(str(payload.get("error")), status=status, mimetype="text/plain")
    return redirect(url_for("relabel", **request.args), code=303)


def _query(flt: Filter) -> str:
    parts = [("session", flt.session or ALL), ("bin", flt.bin_name), ("reason", flt.reason)]
    return urlencode([(k, v) for k, v in parts if v])


def _csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        writer.writerow([row[c] if row[c] is not None else "" for c in HISTORY_COLUMNS])
        if buf.tell() > 64 * 1024:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
