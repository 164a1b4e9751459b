"""One Modbus TCP connection to a PLC with reconnect back-off, shared by the actuator and the encoder.

A worker thread owns the link: it calls :meth:`ModbusLink.ensure` before a request (connects when
the back-off allows it), :meth:`ModbusLink.ok` after a request succeeded (the back-off starts again
from ``retry_initial_s``) and :meth:`ModbusLink.drop` when one failed (close the socket, wait the
back-off, double it up to ``retry_max_s``). Requests never retry inside pymodbus (``retries=0``),
so a dead PLC costs one ``timeout_s`` per attempt, not a hang.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sorting.serving.backoff import Backoff

log = logging.getLogger(__name__)


class ModbusLink:
    """A pymodbus ``ModbusTcpClient`` plus connection state, reconnect count and back-off.

    ``on_connect()`` runs right after each (re)connect, before the link counts as up (the
    actuator clears every output there; the encoder forgets its counter baseline); if it raises,
    the attempt fails. ``on_change(up)`` is told when the link goes up or down; a failing
    callback is logged, never raised into the worker.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str,
        timeout_s: float,
        retry_initial_s: float,
        retry_max_s: float,
        on_connect: Callable[[], None] | None = None,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from pymodbus.client import ModbusTcpClient

        self.name = name
        self.client = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
        self.clock = clock
        self.on_connect = on_connect
        self.on_change = on_change
        self.connected = False
        self.reconnects = 0
        self.next_try = 0.0
        self._ever_connected = False
        self._backoff = Backoff(retry_initial_s, 2.0, retry_max_s)
        self._attempt = 0  # failed attempts since the last success

    def ensure(self) -> bool:
        """Whether the link is up; connects first when it is down and the back-off has passed."""
        if self.connected:
            return True
        now = self.clock()
        if now < self.next_try:
            return False
        try:
            ok = bool(self.client.connect())
            if ok and self.on_connect is not None:
                self.on_connect()
        except Exception as exc:  # pymodbus raises ModbusException/OSError subclasses
            log.debug("%s: connect failed: %s", self.name, exc)
            ok = False
        if ok:
            self._set_connected(True)
            return True
        self.client.close()
        if self._attempt == 0:
            log.warning("cannot reach %s; retrying with back-off", self.name)
        self._wait()
        return False

    def ok(self) -> None:
        """A request succeeded: the next failure starts the back-off from the beginning."""
        self._attempt = 0

    def drop(self, exc: BaseException) -> None:
        """A request failed: close the socket and reconnect after the back-off."""
        log.warning("%s: %s; reconnecting", self.name, exc)
        self.client.close()
        self._set_connected(False)
        self._wait()

    def close(self) -> None:
        """Close the socket (the link counts as down)."""
        self.client.close()
        self._set_connected(False)

    def _wait(self) -> None:
        self.next_try = self.clock() + self._backoff.delay(self._attempt)
        self._attempt += 1

    def _set_connected(self, value: bool) -> None:
        if value == self.connected:
            return
        self.connected = value
        if value:
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            log.info("connected to %s", self.name)
        if self.on_change is not None:
            try:
                self.on_change(value)
            except Exception:  # a faulty callback must not kill the worker
                log.exception("%s: connection callback failed", self.name)
