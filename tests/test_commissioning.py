"""Commissioning pulses: each chosen bin's output goes on then off at its address, through the line's actuator."""

from __future__ import annotations

import pytest
from _modbus_fixtures import LoopbackPlc, SlowPlc, free_port

from sorting.cli import main
from sorting.errors import ConfigError
from sorting.serving.commissioning import pulse_bins
from sorting.serving.line_config import load_line_config

LINE = "serving/line-fibre-colour.yaml"  # bins 1..9 at coils 0..8; bin 5 (wool) has an 80 ms pulse


def _line(repo_root, port: int, *extra: str):
    return load_line_config(repo_root / LINE, ["actuator.host=127.0.0.1", f"actuator.port={port}",
                                                "actuator.timeout_ms=200", *extra])


def test_each_chosen_bin_pulses_its_own_address(repo_root) -> None:
    port = free_port()
    plc = LoopbackPlc(port).start()
    line = _line(repo_root, port)
    try:
        checks = pulse_bins(line, [5, 2], interval_s=0.1)
    finally:
        plc.stop()
    assert [(c.bin, c.name, c.address, c.pulse_ms, c.sent) for c in checks] == [
        (5, "wool", 4, 80.0, True), (2, "cotton_dark", 1, line.ejector.pulse_ms, True)]
    pulses = [(a, v) for a, v, _ in plc.sets() if v]
    assert pulses == [(4, True), (1, True)]  # in the order asked, nothing else switched on
    times = {a: [t for b, v, t in plc.sets() if b == a] for a in (4, 1)}
    on, off = times[4][-2:]
    assert 0.06 <= off - on < 0.6  # wool's own 80 ms pulse (the bound above only catches a stuck output)
    assert plc.sets()[-1][1] is False  # closing clears the outputs


def test_the_first_pulse_waits_for_a_slow_link(repo_root) -> None:
    """Connecting clears 9 outputs (~0.3 s here): a pulse fired at once would be dropped as late."""
    port = free_port()
    plc = SlowPlc(port).start()
    try:
        checks = pulse_bins(_line(repo_root, port, "actuator.timeout_ms=1000"), [1], interval_s=0.0)
    finally:
        plc.stop()
    assert checks[0].sent, checks[0].reason
    assert (0, True) in {(a, v) for a, v, _ in plc.sets()}


def test_without_a_plc_every_pulse_is_reported_missed(repo_root) -> None:
    checks = pulse_bins(_line(repo_root, free_port(), "actuator.retry_initial_ms=50"), [1, 3], interval_s=0.0,
                        connect_timeout_s=0.2)
    assert [c.sent for c in checks] == [False, False]
    assert all(c.reason in ("disconnected", "shutdown") for c in checks)


def test_unknown_bin_is_a_config_error(repo_root) -> None:
    with pytest.raises(ConfigError, match=r"\[42\]"):
        pulse_bins(_line(repo_root, free_port()), [42])


def test_cli_refuses_to_fire_a_plc_unattended_without_yes(repo_root, monkeypatch, capsys) -> None:
    port = free_port()
    plc = LoopbackPlc(port).start()
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    try:
        base = ["pulse", "--line", str(repo_root / LINE), "--set", "actuator.host=127.0.0.1", "--set",
                f"actuator.port={port}", "--bin", "1", "--interval", "0"]
        assert main(base) == 2 and "without --yes" in capsys.readouterr().err
        assert plc.writes == []
        assert main([*base, "--yes"]) == 0
        assert "1/1 pulses sent" in capsys.readouterr().out
        assert (0, True) in {(a, v) for a, v, _ in plc.sets()}
    finally:
        plc.stop()
