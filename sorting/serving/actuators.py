"""Actuators that push an item into its bin: one small interface, three back-ends.

``fire(bin, at_time, pulse_s, item_id=...)`` asks for a pulse of ``pulse_s`` seconds starting at
``at_time`` (the loop's clock; for live serving ``time.monotonic``). ``fire`` never blocks the loop.

- :class:`SimulatedActuator` records firings (tests, demo).
- :class:`JsonLinesActuator` writes one JSON line per firing to stdout or a file (integration
  with another process, dry runs on a real line).
- :class:`ModbusTcpActuator` drives a PLC over Modbus TCP: a coil (or holding register) per bin
  is set for the pulse and cleared afterwards. A worker thread owns the connection; when it
  is lost the worker retries with exponential back-off, and firings whose start time has passed
  (by more than ``max_late_ms``) when the link is back are not sent: they are reported through
  ``on_missed(firing, reason)`` so the decision log can mark the item as missed. On every
  (re)connect and at close all bin outputs are cleared (fail safe: no valve left open).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import queue
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from pydantic import Field

from sorting.config import StrictModel
from sorting.errors import ConfigError
from sorting.serving.modbus_link import ModbusLink
from sorting.serving.policy import BinConfig

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class Firing:
    """One requested actuator pulse (``address`` is the coil/register of ``bin``)."""

    bin: int
    address: int
    at_time: float
    pulse_s: float
    item_id: int | str | None = None


MissedCallback = Callable[[Firing, str], None]
ConnectionCallback = Callable[[bool], None]


class ActuatorConfig(StrictModel):
    """``actuator`` section of the line config."""

    kind: Literal["simulated", "jsonl", "modbus"] = "simulated"
    path: str | None = Field(default=None, description="jsonl: output file; empty or '-' = stdout")
    host: str = "127.0.0.1"
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus device (unit/slave) id")
    output: Literal["coil", "holding_register"] = "coil"
    on_value: int = Field(default=1, ge=1, le=65535, description="holding_register: value while firing")
    addresses: dict[int, int] = Field(
        default_factory=dict, description="bin id -> coil/register address; overrides the bins file"
    )
    timeout_ms: float = Field(default=500, gt=0, description="Modbus connect/request timeout")
    retry_initial_ms: float = Field(default=100, gt=0)
    retry_max_ms: float = Field(default=5000, gt=0)
    heartbeat_ms: float = Field(default=1000, gt=0, description="idle link check (reads one output)")
    max_late_ms: float = Field(default=20, ge=0, description="a pulse starting later than this is dropped")
    queue_size: int = Field(default=1024, ge=1)


class Actuator(ABC):
    """Interface the ejector talks to. ``real_time``: it drives physical outputs, so firing times
    must be wall-clock times (see :mod:`sorting.serving.clock`)."""

    real_time: bool = False

    @abstractmethod
    def fire(self, bin: int, at_time: float, pulse_s: float, *, item_id: int | str | None = None) -> None:
        """Request a pulse on ``bin``'s output; returns at once."""

    @abstractmethod
    def close(self) -> None:
        """Finish (or drop as missed) pending pulses, clear outputs, release resources."""

    @property
    def connected(self) -> bool:
        """Whether the actuator can currently reach its hardware."""
        return True

    def __enter__(self) -> Actuator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _address(addresses: Mapping[int, int], bin: int) -> int:
    return addresses.get(bin, bin)


class SimulatedActuator(Actuator):
    """Records every firing in ``firings`` (bounded to the latest ``max_records``)."""

    def __init__(self, addresses: Mapping[int, int] | None = None, *, max_records: int = 100_000) -> None:
        self.addresses = dict(addresses or {})
        self.firings: deque[Firing] = deque(maxlen=max_records)
        self._lock = threading.Lock()

    def fire(self, bin: int, at_time: float, pulse_s: float, *, item_id: int | str | None = None) -> None:
        with self._lock:
            self.firings.append(Firing(bin, _address(self.addresses, bin), at_time, pulse_s, item_id))

    def close(self) -> None:
        """Nothing to release."""


class JsonLinesActuator(Actuator):
    """Writes ``{"bin","address","at_time","pulse_ms","item_id"}`` lines to a file or stdout."""

    def __init__(self, path: str | Path | None = None, addresses: Mapping[int, int] | None = None) -> None:
        self.addresses = dict(addresses or {})
        self._own = path not in (None, "", "-")
        if self._own:
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        self._out: IO[str] = (
            open(path, "a", encoding="utf-8") if self._own else sys.stdout  # type: ignore[arg-type]  # noqa: SIM115
        )
        self._lock = threading.Lock()

    def fire(self, bin: int, at_time: float, pulse_s: float, *, item_id: int | str | None = None) -> None:
        record = {
            "bin": bin,
            "address": _address(self.addresses, bin),
            "at_time": round(at_time, 6),
            "pulse_ms": round(pulse_s * 1000.0, 3),
            "item_id": item_id,
        }
        with self._lock:
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()

    def close(self) -> None:
        with self._lock:
            if self._own and not self._out.closed:
                self._out.close()


@dataclass(order=True)
class _Event:
    t: float
    seq: int
    on: bool = field(compare=False)
    pulse: _Pulse = field(compare=False)


@dataclass
class _Pulse:
    firing: Firing
    sent_on: bool = False
    dropped: bool = False


_STOP = object()


class ModbusTcpActuator(Actuator):
    """Modbus TCP PLC outputs driven by a worker thread (see module docstring).

    ``clock`` must be the clock the ``at_time`` values come from (real time: the worker waits on
    it). ``on_missed`` and ``on_connection`` are called from the worker thread.
    """

    real_time = True

    def __init__(
        self,
        config: ActuatorConfig,
        addresses: Mapping[int, int],
        *,
        clock: Clock = time.monotonic,
        on_missed: MissedCallback | None = None,
        on_connection: ConnectionCallback | None = None,
    ) -> None:
        self.config = config
        self.addresses = dict(addresses)
        self.clock = clock
        self.on_missed = on_missed
        self.sent = 0
        self.missed = 0
        self.link = ModbusLink(
            config.host, config.port, name=f"PLC at {config.host}:{config.port}", timeout_s=config.timeout_ms / 1000.0,
            retry_initial_s=config.retry_initial_ms / 1000.0, retry_max_s=config.retry_max_ms / 1000.0,
            on_connect=self._clear_outputs, on_change=on_connection, clock=clock,
        )
        self._close_timeout_s = 2.0
        self._last_io = 0.0
        self._inbox: queue.Queue[object] = queue.Queue(maxsize=config.queue_size)
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        if on_connection is not None:
            on_connection(False)  # until the first connect succeeds
        self._thread = threading.Thread(target=self._run, name="modbus-actuator", daemon=True)
        self._thread.start()

    # -- loop side -------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.link.connected

    def fire(self, bin: int, at_time: float, pulse_s: float, *, item_id: int | str | None = None) -> None:
        firing = Firing(bin, _address(self.addresses, bin), at_time, pulse_s, item_id)
        if bin not in self.addresses:
            self._report_missed(firing, "no_address")
            return
        if not self._thread.is_alive():
            self._report_missed(firing, "closed")
            return
        try:
            self._inbox.put_nowait(firing)
        except queue.Full:
            self._report_missed(firing, "queue_full")

    def close(self, timeout_s: float = 2.0) -> None:
        """Send pulses due within ``timeout_s``, drop the rest as missed, clear outputs."""
        if not self._thread.is_alive():
            return
        self._close_timeout_s = timeout_s
        self._inbox.put(_STOP)
        self._thread.join(timeout_s + self.config.timeout_ms / 1000.0 * 4 + 1.0)
        if self._thread.is_alive():
            log.error("modbus actuator worker did not stop in time")

    # -- worker side -----------------------------------------------------------------------
    def _report_missed(self, firing: Firing, reason: str) -> None:
        self.missed += 1
        log.warning("missed firing bin %d item %s: %s", firing.bin, firing.item_id, reason)
        if self.on_missed is not None:
            try:
                self.on_missed(firing, reason)
            except Exception:  # a faulty callback must not kill the worker
                log.exception("on_missed callback failed")

    def _write(self, address: int, on: bool) -> None:
        unit = self.config.unit_id
        client = self.link.client
        if self.config.output == "coil":
            resp = client.write_coil(address, on, device_id=unit)
        else:
            resp = client.write_register(address, self.config.on_value if on else 0, device_id=unit)
        if resp.isError():
            raise OSError(f"PLC refused write to {self.config.output} {address}: {resp}")
        self._last_io = self.clock()
        self.link.ok()

    def _clear_outputs(self) -> None:
        """Fail safe: every bin output off (on each connect and at close)."""
        for address in sorted(set(self.addresses.values())):
            self._write(address, False)

    def _heartbeat(self) -> None:
        """Notice a dead link while idle (reads one output)."""
        if not self.addresses or self.clock() - self._last_io < self.config.heartbeat_ms / 1000.0:
            return
        if not self.link.ensure():
            return
        address = min(self.addresses.values())
        client = self.link.client
        try:
            if self.config.output == "coil":
                resp = client.read_coils(address, count=1, device_id=self.config.unit_id)
            else:
                resp = client.read_holding_registers(address, count=1, device_id=self.config.unit_id)
            if resp.isError():
                raise OSError(f"PLC refused read: {resp}")
            self._last_io = self.clock()
            self.link.ok()
        except Exception as exc:
            self.link.drop(exc)

    def _push(self, firing: Firing) -> None:
        pulse = _Pulse(firing)
        heapq.heappush(self._heap, _Event(firing.at_time, next(self._seq), True, pulse))
        heapq.heappush(self._heap, _Event(firing.at_time + firing.pulse_s, next(self._seq), False, pulse))

    def _drop_late(self, now: float) -> bool:
        """Report pulses that can no longer start in time, even behind an event waiting for the link;
        whether there were any."""
        max_late = self.config.max_late_ms / 1000.0
        late = [e for e in self._heap if e.on and now > e.t + max_late]
        if not late:
            return False
        for event in sorted(late):
            event.pulse.dropped = True
            self._report_missed(event.pulse.firing, "late" if self.link.connected else "disconnected")
        self._heap = [e for e in self._heap if not e.pulse.dropped]
        heapq.heapify(self._heap)
        return True

    def _process_due(self) -> None:
        self._drop_late(self.clock())
        while self._heap and self._heap[0].t <= self.clock():
            event = self._heap[0]
            pulse = event.pulse
            if not event.on and not pulse.sent_on:
                heapq.heappop(self._heap)
                continue
            if not self.link.ensure():
                return
            if self._drop_late(self.clock()):  # (re)connecting took long: never start a pulse late
                continue
            try:
                self._write(pulse.firing.address, event.on)
            except Exception as exc:
                self.link.drop(exc)
                return
            heapq.heappop(self._heap)
            if event.on:
                pulse.sent_on = True
                self.sent += 1

    def _wait_s(self) -> float:
        """How long the worker may wait for new firings before it has something to do."""
        now = self.clock()
        wait = self.config.heartbeat_ms / 1000.0
        if self._heap:
            due = self._heap[0].t - now
            if due > 0:
                wait = min(wait, due)
            elif not self.link.connected:  # due but no link: wake at the next retry or when pulses turn late
                first_late = min((e.t for e in self._heap if e.on), default=now) + self.config.max_late_ms / 1000.0
                wait = min(wait, self.link.next_try - now, first_late - now + 0.001)
            else:
                wait = 0.0
        return min(max(wait, 0.0), 0.5)

    def _run(self) -> None:
        stopping = False
        deadline = 0.0
        while True:
            try:
                item = self._inbox.get(timeout=self._wait_s()) if not stopping else self._inbox.get_nowait()
            except queue.Empty:
                item = None
            if item is _STOP:
                stopping = True
                deadline = self.clock() + self._close_timeout_s
            elif isinstance(item, Firing):
                self._push(item)
            self._process_due()
            if stopping:
                if not self._heap or self._heap[0].t > deadline or self.clock() > deadline:
                    break
                time.sleep(min(0.005, max(self._heap[0].t - self.clock(), 0.0)))
            elif not self._heap:
                self._heartbeat()
        self._shutdown()

    def _shutdown(self) -> None:
        for event in sorted(self._heap):
            if event.on:
                self._report_missed(event.pulse.firing, "shutdown")
        self._heap.clear()
        if self.link.connected:
            try:
                self._clear_outputs()
            except Exception as exc:
                log.warning("could not clear outputs at close: %s", exc)
        self.link.close()


def make_actuator(
    config: ActuatorConfig,
    bin_addresses: Mapping[int, int],
    *,
    clock: Clock = time.monotonic,
    on_missed: MissedCallback | None = None,
    on_connection: ConnectionCallback | None = None,
) -> Actuator:
    """Build the configured actuator.

    ``bin_addresses`` comes from the bins file (``PolicyConfig.bins``: id -> address); entries of
    ``config.addresses`` override it. Every product bin must end up with an address.
    """
    addresses = {**dict(bin_addresses), **config.addresses}
    unknown = sorted(set(config.addresses) - set(bin_addresses))
    if unknown:
        raise ConfigError(f"actuator.addresses names bin(s) {unknown} that the bins file does not define")
    if config.kind == "simulated":
        return SimulatedActuator(addresses)
    if config.kind == "jsonl":
        return JsonLinesActuator(config.path, addresses)
    return ModbusTcpActuator(config, addresses, clock=clock, on_missed=on_missed, on_connection=on_connection)


def bin_addresses(bins: list[BinConfig]) -> dict[int, int]:
    """Bin id -> actuator address from a bins file's ``bins`` list."""
    return {b.id: b.actuator_address for b in bins}

