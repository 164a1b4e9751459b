"""Ejector scheduling on a fake clock: fire times, late items, belt stops, encoder speed."""

from __future__ import annotations

import time

import pytest

from sorting.config import build_config
from sorting.errors import ConfigError
from sorting.serving.actuators import SimulatedActuator, bin_addresses
from sorting.serving.ejector import (
    EjectorConfig,
    EjectorScheduler,
    EjectorTicker,
    EncoderSpeed,
    FixedSpeed,
)
from sorting.serving.policy import Decision, PolicyConfig

POLICY = build_config(
    PolicyConfig,
    {
        "bins": [
            {"id": 1, "name": "near", "distance_m": 0.5, "address": 10},
            {"id": 2, "name": "far", "distance_m": 2.0, "address": 11, "pulse_ms": 80},
        ],
        "rules": [{"name": "a", "bin": 1, "colour": ["white"]}],
    },
)
CONFIG = EjectorConfig(pulse_ms=40, latency_budget_ms=30, dispatch_horizon_ms=200)


def to(bin_id: int) -> Decision:
    return Decision(bin=bin_id, bin_name={0: "reject", 1: "near", 2: "far"}[bin_id], reason="rule:a")


def make(speed=None, **kw) -> tuple[EjectorScheduler, SimulatedActuator]:
    act = SimulatedActuator(bin_addresses(POLICY.bins))
    return EjectorScheduler(CONFIG, POLICY, act, speed or FixedSpeed(1.0, "m"), **kw), act


def run(sched: EjectorScheduler, start: float, end: float, step: float = 0.01) -> list:
    missed = []
    t = start
    while t <= end + 1e-9:
        missed += sched.tick(t).missed
        t += step
    return missed


def test_fires_at_decision_time_plus_distance_over_speed() -> None:
    sched, act = make()
    for item, bin_id, t in [(1, 1, 10.0), (2, 2, 10.1)]:
        plan = sched.plan(item, to(bin_id), t)
        assert plan.decision.reason == "rule:a"
        sched.commit(plan)
    assert sched.pending == 2
    assert run(sched, 10.0, 12.5) == []
    got = {f.item_id: f for f in act.firings}
    assert got[1].at_time == pytest.approx(10.5) and got[1].address == 10 and got[1].pulse_s == pytest.approx(0.04)
    assert got[2].at_time == pytest.approx(12.1) and got[2].pulse_s == pytest.approx(0.08)
    assert sched.pending == 0


def test_firing_is_handed_over_within_the_horizon_not_earlier() -> None:
    sched, act = make()
    sched.commit(sched.plan(1, to(1), 0.0))
    sched.tick(0.25)
    assert not act.firings  # 0.25 s left > 0.2 s horizon
    sched.tick(0.31)
    assert len(act.firings) == 1


def test_reject_decisions_fire_nothing() -> None:
    sched, act = make()
    plan = sched.plan(1, Decision(0, "reject", "ood"), 0.0)
    sched.commit(plan)
    assert plan.eta is None and sched.pending == 0
    run(sched, 0.0, 3.0, 0.1)
    assert not act.firings


def test_unreachable_item_becomes_late_reject_before_logging() -> None:
    sched, act = make(FixedSpeed(20.0, "m"))  # 0.5 m at 20 m/s = 25 ms < 30 ms budget
    plan = sched.plan(7, to(1), 5.0)
    assert (plan.decision.bin, plan.decision.bin_name, plan.decision.reason) == (0, "reject", "late")
    sched.commit(plan)
    assert sched.pending == 0 and not run(sched, 5.0, 6.0)
    # a decision processed long after the item crossed the line is late too
    sched2, _ = make()
    assert sched2.plan(8, to(1), t_decision=1.0, now=1.49).decision.reason == "late"
    assert sched2.plan(9, to(2), t_decision=1.0, now=1.49).decision.reason == "rule:a"


def test_stalled_loop_reports_missed_firing() -> None:
    sched, act = make()
    sched.commit(sched.plan(3, to(1), 0.0))
    result = sched.tick(0.49)  # the loop froze: 10 ms left, budget is 30 ms
    assert [(f.item_id, why) for f, why in result.missed] == [(3, "late")] and not result.dispatched
    assert not act.firings and sched.pending == 0


def test_belt_stop_holds_items_and_resumes_with_encoder() -> None:
    enc = EncoderSpeed(0.001, "m", window_s=0.2, stale_s=0.1)  # 1 mm per count
    sched, act = make(enc)
    counts = 0
    t = 0.0
    enc.update(counts, t)

    def belt(until: float, rate: int) -> None:  # rate in counts per 10 ms tick
        nonlocal counts, t
        while t < until - 1e-9:
            t = round(t + 0.01, 6)
            counts += rate
            enc.update(counts, t)
            assert not sched.tick(t).missed

    belt(0.3, 10)  # 1 m/s
    sched.commit(sched.plan(1, to(2), t))  # 2 m away: 2 s at 1 m/s
    belt(1.3, 10)  # 1 m done
    belt(3.3, 0)  # belt stopped for 2 s: nothing may fire
    assert not act.firings and sched.pending == 1
    belt(4.5, 10)  # restart (speed estimate recovers within the encoder window)
    assert len(act.firings) == 1
    # arrival: 1 m before the stop plus ~1 m after restart at 3.3 s -> about 4.3 s
    assert act.firings[0].at_time == pytest.approx(4.3, abs=0.05)


def test_encoder_speed_window_wrap_and_stale() -> None:
    enc = EncoderSpeed(0.5, "px", window_s=1.0, stale_s=0.5, wrap=2**16)
    assert enc.speed(0.0) == 0.0
    enc.update(65_500, 0.0)
    enc.update(100, 0.5)  # wrapped: +136 counts
    assert enc.speed(0.5) == pytest.approx(136 * 0.5 / 0.5)
    assert enc.speed(1.2) == 0.0  # no counts for 0.7 s: treated as stopped


def test_encoder_speed_needs_a_quarter_window_of_readings_after_a_reset() -> None:
    enc = EncoderSpeed(0.001, "m", window_s=0.2, stale_s=0.1)
    enc.update(0, 0.0)
    enc.update(25, 0.01)  # 10 ms apart, the count 15 counts ahead of 1 m/s by jitter: would read 2.5 m/s
    assert enc.measured(0.01) and enc.speed(0.01) == 0.0
    enc.update(50, 0.05)  # 50 ms: a quarter of the window
    assert enc.speed(0.05) == pytest.approx(1.0)
    enc.reset()
    enc.update(5000, 0.06)
    enc.update(5025, 0.07)
    assert enc.speed(0.07) == 0.0  # a new baseline after a lost link: no burst


def test_units_are_converted_or_refused() -> None:
    sched, act = make(FixedSpeed(100.0, "px"), px_per_m=200.0)  # 0.5 m = 100 px -> 1 s
    sched.commit(sched.plan(1, to(1), 0.0))
    run(sched, 0.0, 1.2)
    assert act.firings[0].at_time == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="px_per_m"):
        make(FixedSpeed(100.0, "px"))
    with pytest.raises(ConfigError, match="speed"):
        FixedSpeed(0.0)


def test_queue_limit_and_shutdown() -> None:
    act = SimulatedActuator()
    sched = EjectorScheduler(EjectorConfig(max_pending=2), POLICY, act, FixedSpeed(1.0))
    plans = [sched.plan(i, to(2), 0.0) for i in range(2)]
    for p in plans:
        sched.commit(p)
    assert sched.plan(9, to(2), 0.0).decision.reason == "late"  # queue full: fail safe
    dropped = sched.shutdown()
    assert [f.item_id for f in dropped] == [0, 1] and sched.pending == 0


def test_ticker_thread_dispatches_on_real_time() -> None:
    sched, act = make(FixedSpeed(10.0))  # 0.5 m -> 50 ms
    results = []
    ticker = EjectorTicker(sched, interval_s=0.002, on_result=results.append).start()
    try:
        sched.commit(sched.plan(1, to(1), time.monotonic()))
        deadline = time.monotonic() + 2.0
        while not act.firings and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        ticker.stop()
    assert len(act.firings) == 1 and results and results[0].dispatched
