"""Belt encoder over Modbus TCP against a real pymodbus server on loopback: speed, wrap, link loss."""

from __future__ import annotations

import re
import shutil
import statistics
import time
from pathlib import Path

import pytest
from _modbus_fixtures import LoopbackModbusServer, free_port, wait_for

from sorting.config import build_config
from sorting.errors import ConfigError
from sorting.serving.actuators import SimulatedActuator, bin_addresses
from sorting.serving.ejector import EjectorConfig, EjectorScheduler, FixedSpeed
from sorting.serving.builder import belt_speed
from sorting.serving.clock import LineClock
from sorting.serving.encoder import EncoderConfig, EncoderReader
from sorting.serving.line_config import LineConfig, load_line_config
from sorting.serving.policy import Decision, PolicyConfig
from sorting.serving.telemetry import Telemetry, TelemetryConfig

REPO = Path(__file__).resolve().parents[1]
READ_HOLDING, READ_INPUT = 3, 4
REGISTER = 10


class EncoderPlc(LoopbackModbusServer):
    """A Modbus TCP server on 127.0.0.1 whose counter at ``REGISTER`` runs at ``rate`` counts/s.

    The count is computed when a read arrives (like a PLC's live counter), wrapped at 16 or 32 bits.
    """

    def __init__(self, port: int, *, words: int = 1, fc: int = READ_HOLDING, low_first: bool = False,
                 rate: float = 0.0, start: int = 0) -> None:
        super().__init__(port)
        self.words, self.fc, self.low_first = words, fc, low_first
        self.rate, self._base, self._t_base = rate, float(start), time.monotonic()

    def count(self) -> int:
        return int(self._base + self.rate * (time.monotonic() - self._t_base)) % 2 ** (16 * self.words)

    def set_rate(self, rate: float) -> None:
        self._base, self._t_base, self.rate = float(self.count()), time.monotonic(), rate

    def shift(self, counts: int) -> None:
        """Move the counter by ``counts`` at once (a negative shift: the shaft rocked back)."""
        self._base += counts

    async def _action(self, fc, start, address, count, regs, set_values):  # noqa: ANN001 (pymodbus signature)
        if set_values is None and fc == self.fc and address == REGISTER:
            value = self.count()
            words = [(value >> 16 * i) & 0xFFFF for i in reversed(range(self.words))]
            if self.low_first:
                words.reverse()
            regs[REGISTER - start:REGISTER - start + self.words] = words


def encoder_config(port: int, **kw) -> EncoderConfig:
    values = dict(host="127.0.0.1", port=port, address=REGISTER, distance_per_count_m=0.0005, poll_s=0.01,
                  window_s=0.3, stale_s=0.15, timeout_ms=100, retry_initial_ms=50, retry_max_ms=200)
    return EncoderConfig(**{**values, **kw})


def speeds(reader: EncoderReader, seconds: float) -> list[float]:
    """Speed samples (m/s) every 10 ms for ``seconds``."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(reader.speed.speed(time.monotonic()))
        time.sleep(0.01)
    return out


def test_reader_measures_speed_and_sees_the_belt_stop() -> None:
    port = free_port()
    plc = EncoderPlc(port, rate=1000.0).start()  # 1000 counts/s x 0.5 mm = 0.5 m/s
    status: list[tuple[str, bool, float]] = []
    try:
        with EncoderReader(encoder_config(port), on_status=lambda *s: status.append(s)) as reader:
            assert wait_for(lambda: reader.speed.speed(time.monotonic()) > 0)
            time.sleep(0.3)  # a full window
            assert statistics.median(speeds(reader, 0.3)) == pytest.approx(0.5, rel=0.1)
            running = [speed for _, _, speed in status[-20:]]  # what telemetry was told meanwhile
            plc.set_rate(0.0)
            assert wait_for(lambda: reader.speed.speed(time.monotonic()) == 0.0), "stopped belt reads 0"
            assert reader.link.connected  # stopped, not disconnected
            plc.shift(-3)  # the stopped shaft rocks back: 3 counts back, not 65533 forward
            assert max(speeds(reader, 0.1)) == 0.0
        assert not reader.link.connected
        assert status[-1][0] == f"127.0.0.1:{port}" and status[-1][1] is True
        assert statistics.median(running) == pytest.approx(0.5, rel=0.1)
    finally:
        plc.stop()


def test_32bit_input_register_low_word_first_across_the_wrap() -> None:
    port = free_port()
    plc = EncoderPlc(port, words=2, fc=READ_INPUT, low_first=True, rate=2000.0, start=2**32 - 600).start()
    cfg = encoder_config(port, words=2, register_type="input", word_order="low_first", distance_per_count_m=0.00025)
    try:
        with EncoderReader(cfg) as reader:
            assert wait_for(lambda: reader.speed.speed(time.monotonic()) > 0)
            samples = speeds(reader, 0.6)  # the counter wraps 2**32 -> 0 after 0.3 s
            assert plc.count() < 2**31, "the counter should have wrapped"
        assert statistics.median(samples) == pytest.approx(0.5, rel=0.1)
        assert max(samples) < 1.5, "no burst of speed at the wrap"  # a missed wrap reads ~2**32 counts
    finally:
        plc.stop()


def test_dropped_link_reads_zero_and_reconnects_without_a_burst() -> None:
    port = free_port()
    plc = EncoderPlc(port, rate=1000.0, start=20_000).start()
    reader = EncoderReader(encoder_config(port)).start()
    try:
        assert wait_for(lambda: reader.speed.speed(time.monotonic()) > 0.4)
        plc.stop()
        assert wait_for(lambda: not reader.link.connected)
        assert wait_for(lambda: reader.speed.speed(time.monotonic()) == 0.0), "stale speed must read 0"
        time.sleep(0.3)  # several failed reconnects with back-off, no crash
        assert reader._thread.is_alive() and reader.speed.speed(time.monotonic()) == 0.0
        # the PLC comes back with its counter restarted at 0: 20000 counts back, ~45000 forward mod 2**16
        plc = EncoderPlc(port, rate=1000.0, start=0).start()
        assert wait_for(lambda: reader.link.connected), "reconnect once the server is back"
        assert reader.link.reconnects == 1
        assert wait_for(lambda: reader.speed.speed(time.monotonic()) > 0)
        samples = speeds(reader, 0.4)
        assert max(samples) < 1.5, "a counter restart must not show up as a burst of speed"
        assert samples[-1] == pytest.approx(0.5, rel=0.1)
    finally:
        reader.close()
        plc.stop()
    assert not reader._thread.is_alive()


def test_telemetry_shows_encoder_link_and_speed_only_when_there_is_one() -> None:
    telemetry = Telemetry(TelemetryConfig(), bin_names={0: "reject"}, reject_bin=0)
    assert b"belt_speed_m_s{" not in telemetry.render()
    telemetry.on_encoder("10.0.0.5:502", True, 0.5)
    text = telemetry.render().decode()
    assert 'textile_sorter_belt_speed_m_s{encoder="10.0.0.5:502"} 0.5' in text
    assert 'textile_sorter_encoder_connected{encoder="10.0.0.5:502"} 1.0' in text


def test_reader_without_plc_keeps_trying_and_closes_quickly() -> None:
    reader = EncoderReader(encoder_config(free_port())).start()
    time.sleep(0.2)
    t = time.monotonic()
    reader.close()
    assert time.monotonic() - t < 1.5  # not the 2 x timeout + 1 s the join allows a stuck reader
    assert reader.readings == 0 and reader.speed.speed(time.monotonic()) == 0.0


def line(belt: dict) -> LineConfig:
    return build_config(LineConfig, {"belt": belt, "policy": {"bins": "bins.yaml"}}, "test line")


ENCODER = {"host": "10.0.0.5", "address": 100, "distance_per_count_m": 0.001}


@pytest.mark.parametrize(("belt", "message"), [
    ({"speed_px_s": 400, "encoder": ENCODER}, "belt.encoder measures the belt in metres: set belt.px_per_m"),
    ({"speed_m_s": 0.5, "px_per_m": 900, "encoder": {**ENCODER, "distance_per_count_m": 0}},
     "'belt.encoder.distance_per_count_m': Input should be greater than 0"),
    ({"speed_m_s": 0.5, "px_per_m": 900, "encoder": {**ENCODER, "words": 4}}, "'belt.encoder.words'"),
    ({"speed_m_s": 0.5, "px_per_m": 900, "encoder": {**ENCODER, "poll_s": 1.0}}, "must be longer than poll_s"),
    ({"speed_m_s": 0.5, "px_per_m": 900, "encoder": {"host": "10.0.0.5", "distance_per_count_m": 0.001}},
     "'belt.encoder.address': Field required"),
    ({"px_per_m": 900, "encoder": ENCODER}, "give belt.speed_px_s, or belt.speed_m_s"),
])
def test_bad_encoder_config_is_a_clear_config_error(belt: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        line(belt)


def test_sample_line_is_valid_with_and_without_its_commented_encoder(tmp_path) -> None:
    sample = REPO / "serving" / "line-fibre-colour.yaml"
    assert load_line_config(sample).belt.encoder is None
    text = sample.read_text(encoding="utf-8")
    enabled = re.sub(r"^(\s+)# (encoder:.*|  .*)$", r"\1\2", text, flags=re.M)
    assert enabled != text
    (tmp_path / "line.yaml").write_text(enabled, encoding="utf-8")
    shutil.copy(REPO / "serving" / "bins-fibre-colour.yaml", tmp_path)  # the line is checked against its bins
    enc = load_line_config(tmp_path / "line.yaml").belt.encoder
    assert enc is not None and enc.kind == "modbus" and enc.distance_per_count_m > 0


POLICY = build_config(PolicyConfig, {
    "bins": [{"id": 1, "name": "white", "distance_m": 0.25, "address": 3}],
    "rules": [{"name": "w", "bin": 1, "colour": ["white"]}],
})
WHITE = Decision(bin=1, bin_name="white", reason="rule:w")


def test_encoder_speed_times_the_ejector() -> None:
    port = free_port()
    plc = EncoderPlc(port, rate=1000.0).start()  # 0.5 m/s
    belt = line({"speed_m_s": 2.0, "px_per_m": 900, "encoder": encoder_config(port).model_dump()}).belt
    clock = LineClock("wall")
    assert isinstance(belt_speed(belt, live=False, clock=clock)[0], FixedSpeed)  # a recorded clip: nominal speed
    speed, reader = belt_speed(belt, live=True, clock=clock)
    assert reader is not None and speed is reader.speed and speed.unit == "m"
    act = SimulatedActuator(bin_addresses(POLICY.bins))
    sched = EjectorScheduler(EjectorConfig(dispatch_horizon_ms=50), POLICY, act, speed, px_per_m=belt.px_per_m)
    try:
        with reader:
            assert wait_for(lambda: speed.speed(time.monotonic()) > 0)
            time.sleep(0.3)
            t_decision = time.monotonic()
            plan = sched.plan(1, WHITE, t_decision)
            sched.commit(plan)
            assert wait_for(lambda: bool(sched.tick(time.monotonic()).dispatched) or bool(act.firings), 2.0)
    finally:
        plc.stop()
    # 0.25 m at the measured 0.5 m/s (not the nominal 2 m/s): due 0.5 s after the decision
    assert act.firings[0].at_time - t_decision == pytest.approx(0.5, rel=0.1)


def tick_for(sched: EjectorScheduler, seconds: float) -> list[tuple[object, str]]:
    """Tick every 10 ms for ``seconds``; the missed firings (firing, reason) seen."""
    missed = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        missed += sched.tick(time.monotonic()).missed
        time.sleep(0.01)
    return missed


def test_a_silent_encoder_drops_pending_firings_at_once_and_rejects_new_items() -> None:
    """Nobody measures the belt: nothing is fired at a guessed time, the pending item is reported missed
    ``encoder`` at once (not held until readings resume or the line stops), a new item is decided
    ``no_belt_speed``; once readings resume, items are timed again."""
    port = free_port()
    plc = EncoderPlc(port, rate=1000.0).start()  # 0.5 m/s: the bin is 0.5 s away
    act = SimulatedActuator(bin_addresses(POLICY.bins))
    reader = EncoderReader(encoder_config(port))
    sched = EjectorScheduler(EjectorConfig(dispatch_horizon_ms=50), POLICY, act, reader.speed, px_per_m=900)
    try:
        with reader:
            assert wait_for(lambda: reader.speed.measured(time.monotonic()) and reader.speed.speed(time.monotonic()) > 0.4)
            sched.commit(sched.plan(7, WHITE, time.monotonic()))
            plc.stop()
            missed = tick_for(sched, 0.4)  # stale after 0.15 s, well before the item's time
            assert [(f.item_id, why) for f, why in missed] == [(7, "encoder")] and sched.pending == 0
            late = sched.plan(8, WHITE, time.monotonic())
            assert late.decision.reason == "no_belt_speed" and late.decision.bin == POLICY.reject.id
            plc = EncoderPlc(port, rate=1000.0).start()
            assert wait_for(lambda: reader.link.connected and reader.speed.measured(time.monotonic())
                            and reader.speed.speed(time.monotonic()) > 0.4, 3.0)
            again = sched.plan(9, WHITE, time.monotonic())
            assert again.decision.bin == 1 and again.eta is not None
    finally:
        plc.stop()
    assert not act.firings
