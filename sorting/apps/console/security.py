"""Who may use the console: the bind rule, the access token, CSRF-safe writes, browser hardening.

- Bound to a loopback address the console needs no token (only this machine reaches it) but
  checks the ``Host`` header, so a web page cannot reach it through DNS rebinding.
- Bound to any other address it refuses to start without an access token (``--console-token``
  or ``$TEXTILE_SORTER_CONSOLE_TOKEN``, at least 16 characters). The token is checked on every
  request, the stream included: ``Authorization: Bearer TOKEN``, an ``X-Console-Token`` header,
  or the cookie that ``/login?token=TOKEN`` sets (an HMAC of the token, never the token itself).
  Comparisons are constant-time.
- Writes (acknowledgements, labels) are POSTs that also carry the page's CSRF value (header
  ``X-CSRF-Token`` or form field ``csrf``), or the token in a header: the cookie alone never
  suffices, so another site cannot make the operator's browser write.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from flask import Flask, Request, Response, jsonify, render_template, request

from sorting.errors import ConfigError

TOKEN_ENV = "TEXTILE_SORTER_CONSOLE_TOKEN"
MIN_TOKEN_CHARS = 16
COOKIE = "textile_sorter_console"
# Reachable without the token: the login itself and a liveness probe for a reverse proxy.
# Static files are the console's own CSS/JS (open source, no data).
OPEN_ENDPOINTS = frozenset({"login", "healthz", "static"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _digest(key: str, what: str) -> str:
    return hmac.new(key.encode(), what.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Access:
    """The console's access rules for one bind address and token."""

    token: str | None
    loopback: bool
    csrf: str

    @classmethod
    def for_bind(cls, host: str, token: str | None) -> Access:
        """Rules for binding ``host``; :class:`ConfigError` when the bind needs a token it lacks."""
        token = token or None
        loopback = is_loopback(host)
        if token is None and not loopback:
            raise ConfigError(f"the console on {host} would be reachable from the network: give an access token "
                              f"(--console-token or ${TOKEN_ENV}), or bind 127.0.0.1")
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"console access token too short ({len(token)} characters, need {MIN_TOKEN_CHARS}+; "
                              "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')")
        csrf = _digest(token, "csrf") if token else secrets.token_hex(32)
        return cls(token=token, loopback=loopback, csrf=csrf)

    @property
    def cookie_value(self) -> str:
        return _digest(self.token, "cookie") if self.token else ""

    def token_matches(self, candidate: str | None) -> bool:
        return bool(self.token and candidate) and hmac.compare_digest(str(candidate).encode(), self.token.encode())

    def _header_token(self, req: Request) -> str | None:
        auth = req.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return req.headers.get("X-Console-Token")

    def authenticated(self, req: Request) -> bool:
        """The request carries the token (header) or the login cookie; always True without a token."""
        if self.token is None:
            return True
        if self.token_matches(self._header_token(req)):
            return True
        cookie = req.cookies.get(COOKIE)
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.cookie_value.encode())

    def write_allowed(self, req: Request) -> bool:
        """A POST carries the CSRF value (header or form field) or the token in a header."""
        if self.token_matches(self._header_token(req)):
            return True
        sent = req.headers.get("X-CSRF-Token") or req.form.get("csrf") or ""
        return hmac.compare_digest(sent.encode(), self.csrf.encode())

    def host_allowed(self, req: Request) -> bool:
        """Without a token (loopback bind) only loopback Host names are served (DNS rebinding)."""
        if self.token is not None:
            return True
        host = req.host.rsplit(":", 1)[0] if not req.host.endswith("]") else req.host
        return host.lower() in _LOOPBACK_NAMES or is_loopback(host)


def _refuse(status: int, message: str) -> Response:
    if request.accept_mimetypes.accept_html and not request.path.startswith("/api/"):
        resp = Response(render_template("login.html", message=message, status=status, next=request.full_path),
                        status=status, mimetype="text/html")
    else:
        resp = jsonify(error=message)
        resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="textile-sorter console"'
    return resp


def install(app: Flask, access: Access) -> None:
    """Check every request against ``access`` and add the browser hardening headers."""

    @app.before_request
    def _guard() -> Response | None:
        if not access.host_allowed(request):
            return _refuse(400, "unexpected Host header (the console answers to localhost only)")
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        if not access.authenticated(request):
            return _refuse(401, "this console needs its access token")
        if request.method not in ("GET", "HEAD") and not access.write_allowed(request):
            return _refuse(403, "missing or wrong CSRF value: reload the page")
        return None

    @app.after_request
    def _harden(resp: Response) -> Response:
        resp.headers.setdefault("Content-Security-Policy", _CSP)
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "static":
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp
