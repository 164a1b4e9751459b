"""The console's Flask application: pages, JSON endpoints, the camera view and the login.

Built by :func:`create_app` around a :class:`ConsoleContext`; served by
:mod:`sorting.apps.console.server` (werkzeug's threaded server, one thread per request, so a
long-polling viewer never holds up another page). The Live page is in this module, History and
Relabel in :mod:`sorting.apps.console.review`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify, redirect, render_template, request, url_for

from sorting.apps.console import review, security
from sorting.apps.console.context import ConsoleContext
from sorting.apps.console.livedata import live_snapshot
from sorting.apps.console.logview import LogBusy, LogMissing
from sorting.apps.console.security import COOKIE, Access

_LOCAL_PATH = re.compile(r"^/(?!/)[\w\-./?=&%]*$")


def wants_json() -> bool:
    """The caller is the page's script (fetch with ``Accept: application/json``), not a plain form."""
    return request.accept_mimetypes.best == "application/json"


def create_app(ctx: ConsoleContext) -> Flask:
    """The console's WSGI application over ``ctx``."""
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.jinja_env.filters.update(pct=_pct, num=_num)
    security.install(app, ctx.access)

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"csrf": ctx.access.csrf, "attached": ctx.feed is not None,
                "line_name": ctx.feed.status.line_name if ctx.feed is not None else ctx.view.path.name}

    @app.errorhandler(LogBusy)
    def _busy(exc: LogBusy) -> tuple[str, int, dict[str, str]]:
        return render_template("message.html", title="Decision log busy",
                               message=f"The decision log is being written and could not be read now ({exc}). "
                                       "This page reloads by itself."), 503, {"Retry-After": "2"}

    @app.errorhandler(LogMissing)
    def _missing(exc: LogMissing) -> tuple[str, int]:
        return render_template("message.html", title="No decision log yet", message=str(exc)), 404

    _register_live(app, ctx)
    _register_login(app, ctx.access)
    review.register(app, ctx)
    return app


def _register_live(app: Flask, ctx: ConsoleContext) -> None:
    @app.get("/")
    def index() -> Response:
        return redirect(url_for("live"))

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/live")
    def live() -> str:
        return render_template("live.html", snap=live_snapshot(ctx.feed, ctx.view), max_fps=_max_fps(ctx))

    @app.get("/api/live")
    def api_live() -> Response:
        return jsonify(live_snapshot(ctx.feed, ctx.view))

    @app.get("/frame.jpg")
    def frame() -> Response:
        """The next camera frame after ``?after=SEQ`` (long poll, up to 2 s); 204 when none came."""
        if ctx.feed is None:
            return Response(status=404)
        got = ctx.feed.slot.jpeg(after=request.args.get("after", 0, type=int), timeout_s=2.0)
        if got is None:
            return Response(status=204, headers={"X-Frame-Seq": str(ctx.feed.slot.seq)})
        seq, data = got
        return Response(data, mimetype="image/jpeg", headers={"X-Frame-Seq": str(seq)})

    @app.get("/stream.mjpg")
    def stream() -> Response:
        """The camera view as MJPEG (any viewer, e.g. a wall screen), capped like the page's."""
        if ctx.feed is None:
            return Response(status=404)
        if not ctx.streams.acquire(blocking=False):
            return Response("too many viewers\n", status=503, mimetype="text/plain")
        resp = Response(_mjpeg(ctx), mimetype="multipart/x-mixed-replace; boundary=frame")
        resp.call_on_close(ctx.streams.release)
        return resp

    @app.post("/api/alarms/<key>/ack")
    def ack(key: str) -> Response:
        if ctx.feed is None or not ctx.feed.alarms.acknowledge(key, by=request.remote_addr or ""):
            return _done({"error": f"no alarm {key!r}"}, 404)
        return _done({"acknowledged": [key]})

    @app.post("/api/alarms/ack-all")
    def ack_all() -> Response:
        n = 0 if ctx.feed is None else ctx.feed.alarms.acknowledge_all(by=request.remote_addr or "")
        return _done({"acknowledged": n})


def _done(payload: dict[str, Any], status: int = 200) -> Response:
    """JSON for the page's script; back to the Live page for a plain form POST."""
    if wants_json():
        resp = jsonify(payload)
        resp.status_code = status
        return resp
    return redirect(url_for("live"), code=303)


def _mjpeg(ctx: ConsoleContext) -> Iterator[bytes]:
    assert ctx.feed is not None
    seq = 0
    while not ctx.stopping.is_set():
        got = ctx.feed.slot.jpeg(after=seq, timeout_s=1.0)
        if got is None:
            continue
        seq, data = got
        yield b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%b\r\n" % (len(data), data)


def _register_login(app: Flask, access: Access) -> None:
    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response | tuple[str, int]:
        """``/login?token=T[&next=/live]`` (a bookmark) or the login form: sets the session cookie."""
        token = request.values.get("token")
        target = request.values.get("next") or url_for("live")
        if not _LOCAL_PATH.match(target):
            target = url_for("live")
        if access.token is None:
            return redirect(target)
        if not access.token_matches(token):
            status = 401 if token else 200
            return render_template("login.html", message="wrong token" if token else "", status=status,
                                   next=target), status
        resp = redirect(target, code=303)
        # behind a TLS proxy the console itself sees plain HTTP: the proxy's header asks for a Secure cookie too
        secure = request.is_secure or request.headers.get("X-Forwarded-Proto") == "https"
        resp.set_cookie(COOKIE, access.cookie_value, httponly=True, samesite="Strict", secure=secure,
                        max_age=12 * 3600)
        return resp


def _max_fps(ctx: ConsoleContext) -> float:
    return 0.0 if ctx.feed is None else round(1.0 / ctx.feed.slot.interval_s, 1)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
