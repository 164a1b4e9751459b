"""A real pymodbus TCP server on loopback for the actuator and encoder tests, plus small helpers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator.simdata import DataType, SimData
from pymodbus.simulator.simdevice import SimDevice


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


class LoopbackModbusServer:
    """Device 1 with 32 coils/inputs/registers on 127.0.0.1:``port``, served from its own event-loop
    thread. Subclasses see every request in :meth:`_action` (pymodbus' simulator hook)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _action(self, fc, start, address, count, regs, set_values):  # noqa: ANN001 (pymodbus signature)
        """Called for every request; the default serves the stored values."""

    def start(self):  # noqa: ANN201 (returns the subclass instance)
        bits = [SimData(0, count=32, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=32, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(1, simdata=(bits, list(bits), regs, list(regs)), action=self._action)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def listen() -> None:
            self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            await self._server.listen()

        asyncio.run_coroutine_threadsafe(listen(), self._loop).result(5)
        return self

    def stop(self) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


WRITE_COIL, WRITE_REGISTER = 5, 6


class LoopbackPlc(LoopbackModbusServer):
    """A real Modbus TCP server on 127.0.0.1 that records every write (fc, address, values, t)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.writes: list[tuple[int, int, list, float]] = []

    async def _action(self, fc, start, address, count, regs, set_values):  # noqa: ANN001 (pymodbus signature)
        if set_values is not None:
            self.writes.append((fc, address, list(set_values), time.monotonic()))

    def sets(self, fc: int = WRITE_COIL) -> list[tuple[int, object, float]]:
        return [(a, v[0], t) for f, a, v, t in self.writes if f == fc]


class SlowPlc(LoopbackPlc):
    """Answers each write after 30 ms: clearing many outputs on connect outlasts a pulse's allowed lateness."""

    async def _action(self, fc, start, address, count, regs, set_values):  # noqa: ANN001 (pymodbus signature)
        await asyncio.sleep(0.03)
        await super()._action(fc, start, address, count, regs, set_values)
