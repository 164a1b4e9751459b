"""Actuators: simulated, JSON lines, and Modbus TCP against a real pymodbus server on loopback."""

from __future__ import annotations

import json
import time

import pytest
from _modbus_fixtures import WRITE_REGISTER, LoopbackPlc, SlowPlc, free_port, wait_for

from sorting.errors import ConfigError
from sorting.serving.actuators import (
    ActuatorConfig,
    Firing,
    JsonLinesActuator,
    ModbusTcpActuator,
    SimulatedActuator,
    make_actuator,
)

def test_simulated_records_firings_with_addresses() -> None:
    act = SimulatedActuator({1: 10, 2: 11})
    act.fire(1, 5.0, 0.04, item_id=7)
    act.fire(2, 6.0, 0.05)
    act.close()
    assert list(act.firings) == [Firing(1, 10, 5.0, 0.04, 7), Firing(2, 11, 6.0, 0.05, None)]


def test_jsonl_writes_one_line_per_firing(tmp_path) -> None:
    out = tmp_path / "sub" / "firings.jsonl"
    act = make_actuator(ActuatorConfig(kind="jsonl", path=str(out)), {3: 2})
    assert isinstance(act, JsonLinesActuator)
    act.fire(3, 1.25, 0.04, item_id="a")
    act.close()
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert lines == [{"bin": 3, "address": 2, "at_time": 1.25, "pulse_ms": 40.0, "item_id": "a"}]


def test_jsonl_to_stdout(capsys) -> None:
    act = JsonLinesActuator("-")
    act.fire(1, 0.5, 0.01)
    act.close()
    assert json.loads(capsys.readouterr().out)["bin"] == 1


def test_make_actuator_rejects_unknown_bin_in_address_map() -> None:
    with pytest.raises(ConfigError, match="bin"):
        make_actuator(ActuatorConfig(addresses={9: 1}), {1: 0})


def _modbus(port: int, **kw) -> tuple[ModbusTcpActuator, list, list]:
    missed: list[tuple[Firing, str]] = []
    links: list[bool] = []
    cfg = ActuatorConfig(
        kind="modbus", host="127.0.0.1", port=port, timeout_ms=200, retry_initial_ms=50, retry_max_ms=200,
        heartbeat_ms=100, max_late_ms=30, **kw,
    )
    act = make_actuator(cfg, {1: 4, 2: 5}, on_missed=lambda f, r: missed.append((f, r)), on_connection=links.append)
    assert isinstance(act, ModbusTcpActuator)
    return act, missed, links


def test_modbus_pulses_arrive_and_link_loss_is_survived() -> None:
    port = free_port()
    plc = LoopbackPlc(port).start()
    act, missed, links = _modbus(port)
    try:
        assert wait_for(lambda: act.connected)
        # on connect every bin output is cleared first (fail safe)
        assert {(a, v) for a, v, _ in plc.sets()} == {(4, False), (5, False)}
        plc.writes.clear()

        t0 = time.monotonic() + 0.1
        act.fire(1, t0, 0.05, item_id=1)
        assert wait_for(lambda: len(plc.sets()) == 2)
        (a_on, v_on, t_on), (a_off, v_off, t_off) = plc.sets()
        assert (a_on, v_on, a_off, v_off) == (4, True, 4, False)
        assert t_on >= t0 - 0.005 and t_on - t0 < 0.1
        assert 0.04 <= t_off - t_on < 0.5  # at least the pulse; the bound above only catches a stuck output

        # a firing already past its time is not sent
        act.fire(2, time.monotonic() - 1.0, 0.02, item_id=2)
        assert wait_for(lambda: len(missed) == 1)
        assert missed[0][0].item_id == 2 and missed[0][1] == "late"

        plc.stop()
        assert wait_for(lambda: not act.connected), "idle heartbeat should notice the dead link"
        assert links[-1] is False
        # fired while the PLC is away: can't be sent in time -> missed, never sent later
        act.fire(2, time.monotonic() + 0.02, 0.02, item_id=3)
        assert wait_for(lambda: len(missed) == 2)
        assert missed[1][0].item_id == 3 and missed[1][1] == "disconnected"

        plc = LoopbackPlc(port).start()
        assert wait_for(lambda: act.connected), "reconnect with back-off after the PLC is back"
        assert act.link.reconnects == 1 and links[-1] is True
        time.sleep(0.1)
        assert all(a != 5 or v is False for a, v, _ in plc.sets()), "late firing must not be sent after reconnect"
        act.fire(2, time.monotonic() + 0.05, 0.02, item_id=4)
        assert wait_for(lambda: (5, True) in {(a, v) for a, v, _ in plc.sets()})
    finally:
        act.close()
        plc.stop()
    assert not act.connected
    assert act.sent == 2 and act.missed == 2


def test_modbus_holding_register_mode_and_close_drops_far_firings() -> None:
    port = free_port()
    plc = LoopbackPlc(port).start()
    act, missed, _ = _modbus(port, output="holding_register", on_value=7)
    try:
        assert wait_for(lambda: act.connected)
        act.fire(1, time.monotonic() + 0.03, 0.02, item_id="near")
        assert wait_for(lambda: (4, 7) in {(a, v) for a, v, _ in plc.sets(WRITE_REGISTER)})
        act.fire(2, time.monotonic() + 60.0, 0.02, item_id="far")
        act.close()
        assert [(f.item_id, r) for f, r in missed] == [("far", "shutdown")]
        # after close all outputs read back cleared
        last = {a: v for a, v, _ in plc.sets(WRITE_REGISTER)}
        assert last == {4: 0, 5: 0}
    finally:
        act.close()
        plc.stop()


def test_modbus_without_plc_reports_missed_and_does_not_block() -> None:
    act, missed, _ = _modbus(free_port())
    t = time.monotonic()
    act.fire(1, t + 0.02, 0.01, item_id=1)
    assert time.monotonic() - t < 0.25  # fire() never blocks the loop (a timeout would take 0.5 s+)
    assert wait_for(lambda: len(missed) == 1)
    act.close()
    assert not act.connected and missed[0][1] == "disconnected"


def test_close_returns_when_the_link_dies_mid_pulse() -> None:
    port = free_port()
    plc = LoopbackPlc(port).start()
    act, missed, _ = _modbus(port)
    try:
        assert wait_for(lambda: act.connected)
        act.fire(1, time.monotonic() + 0.02, 0.5, item_id=1)
        assert wait_for(lambda: (4, True) in {(a, v) for a, v, _ in plc.sets()})
    finally:
        plc.stop()
    t = time.monotonic()
    act.close(timeout_s=0.2)  # the 'off' can't be sent any more: must not hang
    assert time.monotonic() - t < 2.0 and not act.connected
    act.fire(1, time.monotonic() + 1.0, 0.1, item_id=2)
    assert missed[-1][1] == "closed"


def test_a_pulse_due_during_a_slow_connect_is_missed_not_sent_late() -> None:
    port = free_port()
    plc = SlowPlc(port).start()
    missed = []
    addresses = {b: b - 1 for b in range(1, 10)}  # 9 outputs to clear on connect: ~0.3 s
    act = ModbusTcpActuator(ActuatorConfig(kind="modbus", host="127.0.0.1", port=port, timeout_ms=1000), addresses,
                            on_missed=lambda f, why: missed.append((f.item_id, why)))
    try:
        act.fire(1, time.monotonic() + 0.05, 0.02, item_id=7)
        assert wait_for(lambda: missed == [(7, "late")], timeout=3.0), missed
        time.sleep(0.1)
        assert (0, True) not in {(a, v) for a, v, _ in plc.sets()}
    finally:
        act.close()
        plc.stop()
