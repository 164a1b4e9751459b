"""The shared PLC link: back-off on failed connects, reset after a good request, callbacks never raise."""

from __future__ import annotations

from _modbus_fixtures import LoopbackModbusServer, free_port

from sorting.serving.modbus_link import ModbusLink


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _link(port: int, clock: Clock, **kw) -> ModbusLink:
    return ModbusLink("127.0.0.1", port, name=f"test PLC :{port}", timeout_s=0.2, retry_initial_s=0.5,
                      retry_max_s=2.0, clock=clock, **kw)


def test_failed_connects_back_off_doubling_up_to_the_cap() -> None:
    clock = Clock()
    link = _link(free_port(), clock)  # nothing listens there: connection refused
    waits = []
    for _ in range(4):
        assert not link.ensure()
        waits.append(link.next_try - clock.t)
        assert not link.ensure()  # within the back-off: no new attempt
        clock.t = link.next_try
    assert waits == [0.5, 1.0, 2.0, 2.0]
    assert not link.connected and link.reconnects == 0


def test_reconnects_are_counted_and_a_good_request_resets_the_back_off() -> None:
    port = free_port()
    server = LoopbackModbusServer(port).start()
    clock, changes, connects = Clock(), [], []
    link = _link(port, clock, on_connect=lambda: connects.append(1), on_change=changes.append)
    try:
        assert link.ensure() and link.connected and len(connects) == 1
        link.drop(OSError("socket closed"))
        assert changes == [True, False] and link.next_try - clock.t == 0.5
        clock.t = link.next_try
        assert link.ensure() and link.reconnects == 1
        link.drop(OSError("again"))
        assert link.next_try - clock.t == 1.0  # no good request in between: the back-off grew
        clock.t = link.next_try
        assert link.ensure()
        assert not link.client.read_coils(0, count=1, device_id=1).isError()
        link.ok()
        link.drop(OSError("once more"))
        assert link.next_try - clock.t == 0.5
    finally:
        link.close()
        server.stop()


def test_failing_on_connect_fails_the_attempt_and_callbacks_never_raise() -> None:
    port = free_port()
    server = LoopbackModbusServer(port).start()
    clock = Clock()

    def refuse() -> None:
        raise OSError("PLC refused to clear outputs")

    def broken(_up: bool) -> None:
        raise RuntimeError("telemetry down")

    try:
        link = _link(port, clock, on_connect=refuse)
        assert not link.ensure() and not link.connected
        link = _link(port, clock, on_change=broken)
        assert link.ensure() and link.connected  # the callback's error is logged, not raised
        link.close()
        assert not link.connected
    finally:
        server.stop()


def test_an_unreachable_plc_is_named_in_the_log(caplog) -> None:
    link = _link(free_port(), Clock())
    with caplog.at_level("WARNING"):
        link.ensure()
    assert "cannot reach test PLC" in caplog.text
