"""Serving the console: in the sorter's process (:func:`start_console`) or on its own over a
decision log after a shift (:func:`run_console`).

werkzeug's threaded WSGI server runs in one daemon thread and answers each request on its own
thread: the sorter process has no asyncio loop to share, the pages are synchronous SQLite reads,
and a long-polling camera viewer must not hold up other requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from werkzeug.serving import BaseWSGIServer

from sorting.apps.console.app import create_app
from sorting.apps.console.context import ConsoleContext
from sorting.apps.console.logview import LogView
from sorting.apps.console.security import Access
from sorting.apps.wsgi_server import ServerThread, threaded_server
from sorting.errors import DataError
from sorting.serving.live import LiveFeed
from sorting.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088


class ConsoleHandle(ServerThread):
    """A running console: its :attr:`url`; :meth:`close` stops it (idempotent)."""

    def __init__(self, server: BaseWSGIServer, ctx: ConsoleContext, host: str) -> None:
        self._ctx = ctx
        super().__init__(server, host, "console-http")

    def close(self) -> None:
        if self._closed:
            return
        self._ctx.stopping.set()  # long-polling requests return
        super().close()
        log.info("console stopped")


def start_console(
    feed: LiveFeed | None,
    db_path: str | Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    taxonomy: Taxonomy | None = None,
) -> ConsoleHandle:
    """Serve the console on its own thread; returns at once. ``feed`` None: no line attached.

    Raises :class:`ConfigError` when ``host`` is beyond loopback without a ``token`` or the port
    is taken. The decision log may not exist yet (a line just starting): the pages say so.
    """
    access = Access.for_bind(host, token)
    ctx = ConsoleContext(view=LogView(db_path), feed=feed, access=access, taxonomy=taxonomy or load_taxonomy())
    server = threaded_server("console", host, port, create_app(ctx))
    handle = ConsoleHandle(server, ctx, host)
    log.debug("operator's console on %s%s", handle.url, " (access token required)" if access.token else "")
    return handle


def run_console(
    db_path: str | Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    taxonomy: Taxonomy | None = None,
    on_ready: Callable[[ConsoleHandle], None] | None = None,
) -> None:
    """Serve the console over a decision log (review and relabelling) until Ctrl-C."""
    if not Path(db_path).is_file():
        raise DataError(f"decision log {db_path} does not exist")
    handle = start_console(None, db_path, host=host, port=port, token=token, taxonomy=taxonomy)
    if on_ready is not None:
        on_ready(handle)
    handle.serve_until_interrupted()
