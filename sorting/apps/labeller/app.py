"""The labeller's web page: one photo at a time with its boxes, to correct them or draw the missing ones.

``textile-sorter label-boxes BOXES.csv`` serves it on the loopback interface only (it writes files on this machine).
The page (``templates/label.html``, ``static/label.js``) reads a photo's boxes as JSON and sends them back whole after
each change; :class:`~sorting.apps.labeller.box_file.BoxFile` checks them and writes the file. A change must carry the
page's token in a header: another site open in the same browser cannot send one, so it cannot write the file.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from typing import Any

from flask import Flask, Response, abort, jsonify, render_template, request, send_file

from sorting.apps.labeller.box_file import KINDS, BoxFile, FileChanged
from sorting.apps.wsgi_server import ServerThread, threaded_server
from sorting.errors import DataError

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Labeller-Token"
HOST = "127.0.0.1"
DEFAULT_PORT = 8090


def create_app(boxes: BoxFile, *, token: str | None = None) -> Flask:
    """The labeller's WSGI application over ``boxes``; ``token``: the one changes must carry (random if None)."""
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=256 * 1024, LABELLER_TOKEN=token or secrets.token_urlsafe(16))
    app.json.sort_keys = False  # type: ignore[attr-defined]

    def photo_or_404(index: int) -> Any:
        try:
            return boxes.photo(index)
        except IndexError:
            abort(404, description=f"no photo {index}: the file lists {len(boxes.photos)}")

    @app.get("/")
    def index() -> str:
        rows = [(k, p.name, Counter(kind for _, kind in p.boxes)) for k, p in enumerate(boxes.photos)]
        return render_template("index.html", rows=rows, file=boxes.path.name, kinds=KINDS)

    @app.get("/photo/<int:index>")
    def page(index: int) -> str:
        photo = photo_or_404(index)
        return render_template("label.html", index=index, count=len(boxes.photos), name=photo.name,
                               file=boxes.path.name, kinds=KINDS, token=app.config["LABELLER_TOKEN"])

    @app.get("/image/<int:index>")
    def image(index: int) -> Response:
        photo = photo_or_404(index)
        if not photo.path.is_file():
            abort(404, description=f"{photo.path} is missing")
        return send_file(photo.path.resolve(), max_age=3600)

    @app.get("/api/boxes/<int:index>")
    def read(index: int) -> Response | tuple[Response, int]:
        photo = photo_or_404(index)
        try:
            size = boxes.size(index)
        except DataError as exc:
            return jsonify(error=str(exc)), 422
        return jsonify(name=photo.name, size=size, boxes=_as_json(photo.boxes))

    @app.put("/api/boxes/<int:index>")
    def write(index: int) -> Response | tuple[Response, int]:
        photo_or_404(index)
        if request.headers.get(TOKEN_HEADER) != app.config["LABELLER_TOKEN"]:
            return jsonify(error="this page's token is missing: reload the page"), 403
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("boxes"), list):
            return jsonify(error='send {"boxes": [{"box": [x0, y0, x1, y1], "kind": ...}, ...]}'), 400
        try:
            saved = boxes.set_boxes(index, body["boxes"])
        except FileChanged as exc:
            return jsonify(error=str(exc)), 409
        except DataError as exc:
            return jsonify(error=str(exc)), 400
        except OSError as exc:
            log.error("cannot write %s: %s", boxes.path, exc)
            return jsonify(error=f"cannot write {boxes.path.name}: {exc}"), 500
        return jsonify(boxes=_as_json(saved))

    @app.errorhandler(404)
    def _not_found(exc: Any) -> tuple[Response, int]:
        return jsonify(error=getattr(exc, "description", "not found")), 404

    return app


def _as_json(boxes: list[Any]) -> list[dict[str, Any]]:
    return [{"box": list(box), "kind": kind} for box, kind in boxes]


def start_labeller(boxes: BoxFile, *, port: int = DEFAULT_PORT) -> ServerThread:
    """Serve the labeller on the loopback interface on its own thread; ConfigError when the port is taken."""
    return ServerThread(threaded_server("labeller", HOST, port, create_app(boxes)), HOST, "labeller-http")
