"""Measured belt speed: a shaft encoder's counter read from a PLC over Modbus TCP.

:class:`EncoderReader` polls the counter register every ``poll_s`` in its own thread and feeds
an :class:`~sorting.serving.ejector.EncoderSpeed` (``reader.speed``, in m/s), which is the
ejector scheduler's speed source. The counter is read as unsigned (a signed PLC counter works
the same) and may wrap at 2**16 (``words: 1``) or 2**32 (``words: 2``, both words in one request;
``word_order: high_first`` means the register at ``address`` holds the high 16 bits).

Link loss: the reader logs it, closes the socket and reconnects with exponential back-off; it
never raises into the loop. With no reading for ``stale_s`` nobody measures the belt
(``speed.measured()`` is False): the ejector scheduler then fires nothing at a guessed time, the
items pending go to the end-of-belt reject as missed ``encoder`` and new ones are decided
``no_belt_speed`` (see :mod:`sorting.serving.ejector`); the loop raises the ``belt_speed`` alarm.
After a reconnect the counter baseline starts afresh (the PLC may have restarted its counter), so
a jump across the outage never shows up as a burst of speed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator

from sorting.config import StrictModel
from sorting.serving.ejector import EncoderSpeed
from sorting.serving.modbus_link import ModbusLink

log = logging.getLogger(__name__)

# (encoder name "host:port", link up, speed in m/s): called from the reader thread after every poll
EncoderStatusCallback = Callable[[str, bool, float], None]


class EncoderConfig(StrictModel):
    """``belt.encoder`` section of the line config (see serving/README.md)."""

    kind: Literal["modbus"] = "modbus"
    host: str = "127.0.0.1"
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus device (unit/slave) id")
    address: int = Field(ge=0, le=65535, description="register address of the counter (its first word)")
    register_type: Literal["input", "holding"] = "holding"
    words: Literal[1, 2] = Field(default=1, description="1: 16-bit counter, 2: 32-bit counter")
    word_order: Literal["high_first", "low_first"] = "high_first"
    distance_per_count_m: float = Field(gt=0, description="belt travel per counter step, metres")
    poll_s: float = Field(default=0.02, gt=0)
    window_s: float = Field(default=0.3, gt=0, description="speed = counts over this window")
    stale_s: float = Field(default=0.5, gt=0, description="no reading this long: belt speed unknown, items to reject")
    timeout_ms: float = Field(default=200, gt=0, description="Modbus connect/request timeout")
    retry_initial_ms: float = Field(default=100, gt=0)
    retry_max_ms: float = Field(default=5000, gt=0)

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        if self.address + self.words - 1 > 65535:
            raise ValueError(f"belt.encoder: a {16 * self.words}-bit counter at address {self.address} "
                             "runs past register 65535")
        if self.window_s <= self.poll_s or self.stale_s <= self.poll_s:
            raise ValueError(
                f"belt.encoder: window_s ({self.window_s}) and stale_s ({self.stale_s}) must be longer than "
                f"poll_s ({self.poll_s}), or the speed drops to 0 between two readings"
            )
        return self

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


class EncoderReader:
    """Polls the encoder counter in a thread; ``speed`` is the measured belt speed in m/s.

    Call :meth:`start` (or use it as a context manager) and :meth:`close` at the end.
    ``on_status`` (see :data:`EncoderStatusCallback`) is called from the reader thread.
    """

    def __init__(
        self,
        config: EncoderConfig,
        *,
        on_status: EncoderStatusCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.on_status = on_status
        self.speed = EncoderSpeed(config.distance_per_count_m, "m", window_s=config.window_s,
                                  stale_s=config.stale_s, wrap=2 ** (16 * config.words))
        self.readings = 0
        # after a reconnect the counter baseline starts afresh: the PLC may have restarted its counter
        self.link = ModbusLink(
            config.host, config.port, name=f"belt encoder at {config.name}", timeout_s=config.timeout_ms / 1000.0,
            retry_initial_s=config.retry_initial_ms / 1000.0, retry_max_s=config.retry_max_ms / 1000.0,
            on_connect=self.speed.reset, clock=clock,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="belt-encoder", daemon=True)

    def start(self) -> EncoderReader:
        """Start polling (idempotent)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop polling and close the connection (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.config.timeout_ms / 1000.0 * 2 + 1.0)
            if self._thread.is_alive():
                log.error("belt encoder reader did not stop in time")

    def __enter__(self) -> EncoderReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reader thread ---------------------------------------------------------------------
    def _read(self) -> int:
        cfg = self.config
        client = self.link.client
        read = client.read_input_registers if cfg.register_type == "input" else client.read_holding_registers
        resp = read(cfg.address, count=cfg.words, device_id=cfg.unit_id)
        if resp.isError():
            raise OSError(f"PLC refused to read {cfg.register_type} register {cfg.address} (x{cfg.words}): {resp}")
        words = list(resp.registers)
        if cfg.word_order == "low_first":
            words.reverse()
        value = 0
        for word in words:
            value = (value << 16) | (word & 0xFFFF)
        return value

    def _report(self) -> None:
        if self.on_status is None:
            return
        try:
            self.on_status(self.config.name, self.link.connected, self.speed.speed(self.clock()))
        except Exception:  # a faulty callback must not stop the speed measurement
            log.exception("encoder on_status callback failed")

    def _run(self) -> None:
        cfg = self.config
        next_poll = self.clock()
        while not self._stop.is_set():
            if self.link.ensure():
                t0 = self.clock()
                try:
                    counts = self._read()
                except Exception as exc:  # link lost or register refused: reconnect with back-off
                    self.link.drop(exc)
                else:
                    # the PLC sampled the counter between request and response: take the middle
                    t = (t0 + self.clock()) / 2.0
                    self.link.ok()
                    self.speed.update(counts, t)
                    self.readings += 1
                    self._report()
                    next_poll = max(next_poll + cfg.poll_s, self.clock())  # behind: no burst of catch-up polls
                    self._stop.wait(next_poll - self.clock())
                    continue
            self._report()  # speed reads 0 once stale
            self._stop.wait(max(0.0, self.link.next_try - self.clock()))
        self.link.close()
