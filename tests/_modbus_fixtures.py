"""A real pymodbus TCP server on loopback for the actuator and encoder tests, plus small helpers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from sorting.apps.loopback_plc import WRITE_COIL, WRITE_REGISTER, LoopbackModbusServer, LoopbackPlc

__all__ = ["WRITE_COIL", "WRITE_REGISTER", "LoopbackModbusServer", "LoopbackPlc", "SlowPlc", "free_port", "wait_for"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


class SlowPlc(LoopbackPlc):
    """Answers each write after 30 ms: clearing many outputs on connect outlasts a pulse's allowed lateness."""

    async def _action(self, fc, start, address, count, regs, set_values):  # noqa: ANN001 (pymodbus signature)
        await asyncio.sleep(0.03)
        await super()._action(fc, start, address, count, regs, set_values)
