"""The console's and the labeller's web servers: a threaded werkzeug server on its own thread.

``werkzeug.serving.make_server`` prints and calls ``sys.exit(1)`` when it cannot bind, which would end the sorter's
process from inside ``serve --console``. :func:`threaded_server` binds the socket first and hands it over (``fd``),
so the caller gets one ConfigError it can report and clean up after. werkzeug's threaded server answers each request
on its own thread: a long-polling page never holds up another request.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from sorting.errors import ConfigError

log = logging.getLogger(__name__)


class QuietHandler(WSGIRequestHandler):
    """Request lines at debug level: the console's page polls every second, its camera view several times."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug('%s "%s" %s %s', self.address_string(), self.requestline, code, size)


def threaded_server(what: str, host: str, port: int, app: Any) -> BaseWSGIServer:
    """A threaded WSGI server for ``app`` listening on ``host:port`` (0: any free port); ConfigError, naming
    ``what`` and the address, when it cannot listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        return make_server(host, port, app, threaded=True, request_handler=QuietHandler, fd=sock.fileno())
    except OSError as exc:
        raise ConfigError(f"{what}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        sock.close()  # the server holds its own duplicate of the socket


class ServerThread:
    """``server`` serving on a daemon thread: its :attr:`url` and :attr:`port`; :meth:`close` stops it
    (idempotent)."""

    def __init__(self, server: BaseWSGIServer, host: str, name: str) -> None:
        self._server = server
        shown = f"[{host}]" if ":" in host else host
        self.port = int(server.port)
        self.url = f"http://{shown}:{self.port}/"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name,
                                        daemon=True)
        self._thread.start()
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)

    def serve_until_interrupted(self) -> None:
        """Block until Ctrl-C, then :meth:`close`."""
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()
