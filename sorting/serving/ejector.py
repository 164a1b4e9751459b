"""Ejector scheduling: when to fire which bin's actuator for a decided item.

Each bin sits ``distance`` downstream of the decision line. The scheduler keeps a belt odometer
(integrated belt speed, fixed or from an encoder), so an item decided at ``t_decision`` reaches
its bin at ``t_decision + distance / speed`` at constant speed, and later or earlier when the
belt slows down, stops or speeds up. Firings are handed to the actuator once they are within
``dispatch_horizon_ms`` of their time, with the exact start time.

An item that can no longer be reached (its time is less than ``latency_budget_ms`` away: the
valve and link need that long) is not fired: it rides to the end-of-belt reject. At planning
time this turns the decision into ``late`` (before it is logged); at dispatch time (loop
stalled) it is returned in ``TickResult.missed`` so the loop can mark the logged row as missed.

Nobody measures the belt (an encoder that stopped answering: :meth:`SpeedSource.measured` is
False): no firing can be timed, so new decisions become ``no_belt_speed`` rejects and every
firing still pending is returned as missed ``encoder`` at once; none is sent at a guessed time.

Library code never sleeps: :meth:`EjectorScheduler.tick` takes ``now`` on the line's clock
(:mod:`sorting.serving.clock`). On wall time an :class:`EjectorTicker` thread ticks it every few
milliseconds, so firings keep their time while the loop waits for a camera; on frame time (an
offline clip) the loop ticks it once per frame.

Call order per decided item (the decision is persisted before the actuator is told)::

    decision = policy.decide(evidence)
    plan = scheduler.plan(evidence.item_id, decision, t_decision, now)   # may become a reject
    decision_log.record(evidence, plan.decision, latency_ms=..., crop=...)
    scheduler.commit(plan)
    result = scheduler.tick(now)          # the ticker thread, or every frame
    for firing, reason in result.missed: decision_log.mark_missed(firing.item_id, reason)
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import Field

from sorting.config import StrictModel
from sorting.errors import ConfigError
from sorting.serving.actuators import Actuator, Firing
from sorting.serving.policy import Decision, PolicyConfig, RejectReason, as_reject

log = logging.getLogger(__name__)

Unit = Literal["m", "px"]


class EjectorConfig(StrictModel):
    """``ejector`` timing (belt speed itself comes from the line's ``belt`` section)."""

    pulse_ms: float = Field(default=40, gt=0, description="default air-jet/pusher pulse (bins may override)")
    latency_budget_ms: float = Field(
        default=30, ge=0, description="command-to-effect time of the actuator incl. link; less time left = late"
    )
    dispatch_horizon_ms: float = Field(
        default=250, gt=0, description="hand a firing to the actuator this long before it is due"
    )
    max_pending: int = Field(default=10_000, ge=1, description="items on the belt between line and bins")


class SpeedSource(Protocol):
    """Current belt speed in ``unit`` per second (0 = stopped), and whether anybody measures it."""

    unit: Unit

    def speed(self, now: float) -> float: ...

    def measured(self, now: float) -> bool: ...


class FixedSpeed:
    """A belt running at a configured constant speed."""

    def __init__(self, speed: float, unit: Unit = "m") -> None:
        if speed <= 0:
            raise ConfigError(f"belt speed must be > 0 (got {speed})")
        self.unit: Unit = unit
        self._speed = float(speed)

    def speed(self, now: float) -> float:
        return self._speed

    def measured(self, now: float) -> bool:
        return True


class EncoderSpeed:
    """Belt speed from a shaft encoder: feed cumulative counts with their time.

    Speed is the count rate over the last ``window_s`` times ``distance_per_count``. A belt that
    stands still keeps sending the same count (speed 0, measured). With no reading for ``stale_s``
    nobody measures the belt (:meth:`measured` is False, speed 0): the scheduler then times
    nothing and sends the items to reject. ``wrap`` is the counter modulus (e.g. 2**32) when it rolls over;
    a step of more than half of it counts as a step back (ignored), not as a leap forward.
    Until the readings span a quarter of the window (after start or :meth:`reset`) the speed reads 0: a rate
    over a few polls is mostly timing jitter (5 ms of it on a 10 ms baseline is half the speed), and a
    belt taken as stopped for a moment holds its items, where a burst of speed would fire them early.
    """

    def __init__(
        self,
        distance_per_count: float,
        unit: Unit = "m",
        *,
        window_s: float = 0.5,
        stale_s: float = 1.0,
        wrap: int | None = None,
    ) -> None:
        if distance_per_count <= 0:
            raise ConfigError(f"encoder distance per count must be > 0 (got {distance_per_count})")
        self.unit: Unit = unit
        self.distance_per_count = float(distance_per_count)
        self.window_s = window_s
        self.stale_s = stale_s
        self.wrap = wrap
        self._samples: deque[tuple[float, int]] = deque()
        self._total = 0
        self._last_raw: int | None = None
        self._lock = threading.Lock()

    def update(self, counts: int, t: float) -> None:
        """Record the encoder counter reading ``counts`` taken at time ``t``."""
        with self._lock:
            if self._last_raw is not None:
                delta = counts - self._last_raw
                if self.wrap is not None:
                    delta %= self.wrap
                    if delta >= self.wrap // 2:  # a small step back (jitter), not most of a turn forward
                        delta -= self.wrap
                if delta < 0:
                    log.warning("encoder counter went backwards (%d -> %d); belt reversing?", self._last_raw, counts)
                    delta = 0
                self._total += delta
            self._last_raw = counts
            self._samples.append((t, self._total))
            while len(self._samples) > 2 and t - self._samples[1][0] >= self.window_s:
                self._samples.popleft()

    def reset(self) -> None:
        """Forget the last reading: the next one starts a new baseline (speed 0 until a second one).

        Call after a lost link: the PLC may have restarted its counter meanwhile, and a jump
        measured across the outage (or a wrap of it) must not turn into a burst of speed.
        """
        with self._lock:
            self._samples.clear()
            self._last_raw = None

    def measured(self, now: float) -> bool:
        with self._lock:
            return bool(self._samples) and now - self._samples[-1][0] <= self.stale_s

    def speed(self, now: float) -> float:
        with self._lock:
            if len(self._samples) < 2 or now - self._samples[-1][0] > self.stale_s:
                return 0.0
            (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
            if t1 - t0 < self.window_s / 4:
                return 0.0
            return (c1 - c0) * self.distance_per_count / (t1 - t0)


@dataclass(frozen=True)
class Plan:
    """What :meth:`EjectorScheduler.plan` decided; ``decision`` is final (log this one)."""

    item_id: int | str
    decision: Decision
    t_decision: float
    eta: float | None  # expected fire time at current speed; None for reject / stopped belt
    _target: float | None = field(default=None, repr=False)  # odometer reading at the bin


@dataclass
class TickResult:
    """Firings handed to the actuator, and firings missed with the reason (``late``: the loop or
    the belt left no time; ``encoder``: nobody measures the belt): those items go to the end-of-belt reject."""

    dispatched: list[Firing] = field(default_factory=list)
    missed: list[tuple[Firing, str]] = field(default_factory=list)


class EjectorScheduler:
    """Turns decisions into timed actuator firings (thread-safe; see module docstring)."""

    def __init__(
        self,
        config: EjectorConfig,
        policy: PolicyConfig,
        actuator: Actuator,
        speed: SpeedSource,
        *,
        px_per_m: float | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.actuator = actuator
        self.speed_source = speed
        self._distance = {b.id: self._convert(b.distance_m or b.distance_px or 0.0, policy.distance_unit, px_per_m)
                          for b in policy.bins}
        self._address = {b.id: b.actuator_address for b in policy.bins}
        self._pulse_s = {b.id: (b.pulse_ms or config.pulse_ms) / 1000.0 for b in policy.bins}
        self._latency_s = config.latency_budget_ms / 1000.0
        self._horizon_s = config.dispatch_horizon_ms / 1000.0
        self._odo = 0.0
        self._t: float | None = None
        self._pending: list[tuple[float, int, Plan]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def _convert(self, distance: float, unit: Unit, px_per_m: float | None) -> float:
        target = self.speed_source.unit
        if unit == target:
            return distance
        if not px_per_m or px_per_m <= 0:
            raise ConfigError(
                f"bins are in '{unit}' but belt speed is in '{target}'/s: set the belt's px_per_m to convert"
            )
        return distance * px_per_m if target == "px" else distance / px_per_m

    @property
    def pending(self) -> int:
        """Items scheduled and not yet handed to the actuator."""
        return len(self._pending)

    def _advance(self, now: float) -> None:
        if self._t is None:
            self._t = now
        elif now > self._t:
            self._odo += self.speed_source.speed(now) * (now - self._t)
            self._t = now

    def _odo_at(self, t: float) -> float:
        assert self._t is not None
        if t >= self._t:
            return self._odo
        return self._odo - self.speed_source.speed(self._t) * (self._t - t)

    def plan(self, item_id: int | str, decision: Decision, t_decision: float, now: float | None = None) -> Plan:
        """Plan the firing for ``decision``; returns a 'late' reject if the bin cannot be reached.

        Nothing is sent until :meth:`commit` (log the plan's decision first).
        """
        now = t_decision if now is None else now
        with self._lock:
            self._advance(max(now, t_decision))
            if decision.bin not in self._distance:
                return Plan(item_id, decision, t_decision, None)
            if not self.speed_source.measured(now):
                return Plan(item_id, as_reject(decision, self.policy.reject, RejectReason.NO_BELT_SPEED), t_decision,
                            None)
            target = self._odo_at(t_decision) + self._distance[decision.bin]
            v = self.speed_source.speed(now)
            eta = now + (target - self._odo) / v if v > 0 else None
            too_many = len(self._pending) >= self.config.max_pending
            if (eta is not None and eta - now < self._latency_s) or too_many:
                if too_many:
                    log.error("ejector queue full (%d items): item %s goes to reject", len(self._pending), item_id)
                return Plan(item_id, as_reject(decision, self.policy.reject, RejectReason.LATE), t_decision, None)
            return Plan(item_id, decision, t_decision, eta, target)

    def commit(self, plan: Plan) -> None:
        """Queue a planned firing (no-op for reject decisions)."""
        if plan._target is None:
            return
        with self._lock:
            heapq.heappush(self._pending, (plan._target, next(self._seq), plan))

    def tick(self, now: float) -> TickResult:
        """Hand due firings to the actuator; report those that can no longer be made."""
        result = TickResult()
        with self._lock:
            if not self.speed_source.measured(now):
                result.missed = [(self._firing(plan, plan.eta or now), "encoder") for _, _, plan in sorted(self._pending)]
                self._pending.clear()
                self._t = None  # the odometer restarts when the belt is measured again
                return result
            self._advance(now)
            v = self.speed_source.speed(now)
            while self._pending:
                target, _, plan = self._pending[0]
                remaining = target - self._odo
                if v <= 0 and remaining > 0:
                    break
                time_left = remaining / v if v > 0 else -1.0
                if time_left > self._horizon_s:
                    break
                heapq.heappop(self._pending)
                firing = self._firing(plan, now + time_left)
                if time_left < self._latency_s:
                    log.warning("item %s missed bin %d (%.1f ms left)", plan.item_id, firing.bin, time_left * 1e3)
                    result.missed.append((firing, "late"))
                else:
                    result.dispatched.append(firing)
        for firing in result.dispatched:
            self.actuator.fire(firing.bin, firing.at_time, firing.pulse_s, item_id=firing.item_id)
        return result

    def _firing(self, plan: Plan, at_time: float) -> Firing:
        b = plan.decision.bin
        return Firing(b, self._address[b], at_time, self._pulse_s[b], plan.item_id)

    def shutdown(self) -> list[Firing]:
        """Drop every pending firing (returned, for the log's 'shutdown' marks)."""
        with self._lock:
            dropped = [self._firing(p, p.eta or 0.0) for _, _, p in sorted(self._pending)]
            self._pending.clear()
        return dropped


class EjectorTicker:
    """A small thread ticking a scheduler on real time (live serving).

    ``on_result`` receives every non-empty :class:`TickResult` (from the ticker thread).
    """

    def __init__(
        self,
        scheduler: EjectorScheduler,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = 0.005,
        on_result: Callable[[TickResult], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.interval_s = interval_s
        self.on_result = on_result
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ejector-ticker", daemon=True)

    def start(self) -> EjectorTicker:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                result = self.scheduler.tick(self.clock())
                if self.on_result is not None and (result.dispatched or result.missed):
                    self.on_result(result)
            except Exception:  # keep ticking: a dead ticker would silently stop all ejection
                log.exception("ejector tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
