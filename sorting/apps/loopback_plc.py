"""A Modbus TCP PLC on loopback (pymodbus' simulator): for the fault soak, commissioning dry runs and tests.

Device 1 with 32 coils, inputs and registers on ``127.0.0.1:port``, served from its own event-loop
thread. :class:`LoopbackPlc` records every write (function code, address, values, monotonic time);
subclasses see every request in :meth:`LoopbackModbusServer._action`. ``stop()`` and a later
``start()`` on the same port are a PLC that goes away and comes back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator.simdata import DataType, SimData
from pymodbus.simulator.simdevice import SimDevice

WRITE_COIL, WRITE_REGISTER = 5, 6


class LoopbackModbusServer:
    """The server; :meth:`_action` is called for every request (pymodbus' simulator hook)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None

    async def _action(self, fc, start, address, count, regs, set_values):  # noqa: ANN001 (pymodbus signature)
        """Called for every request; the default serves the stored values."""

    def start(self):  # noqa: ANN201 (returns the subclass instance)
        bits = [SimData(0, count=32, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=32, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(1, simdata=(bits, list(bits), regs, list(regs)), action=self._action)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"plc-{self.port}", daemon=True)
        self._thread.start()

        async def listen() -> None:
            self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            await self._server.listen()

        asyncio.run_coroutine_threadsafe(listen(), self._loop).result(5)
        return self

    def stop(self) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class LoopbackPlc(LoopbackModbusServer):
    """Records every write as (fc, address, values, t) in ``writes``."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.writes: list[tuple[int, int, list, float]] = []

    async def _action(self, fc, start, address, count, regs, set_values):  # noqa: ANN001 (pymodbus signature)
        if set_values is not None:
            self.writes.append((fc, address, list(set_values), time.monotonic()))

    def sets(self, fc: int = WRITE_COIL) -> list[tuple[int, object, float]]:
        """(address, value, t) of the writes with function code ``fc``."""
        return [(a, v[0], t) for f, a, v, t in self.writes if f == fc]
