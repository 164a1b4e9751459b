"""Commissioning a line: pulse bin outputs one at a time through the line's own actuator.

Before the first garment runs, an operator checks that each bin's valve or pusher is wired to the
address the bins file gives it and that the PLC answers: :func:`pulse_bins` fires every chosen bin
once, ``interval_s`` apart, with the bin's pulse length, through exactly the actuator ``serve``
would build (same addresses, same Modbus settings). Each pulse is reported as sent or missed with
the actuator's reason (PLC unreachable, no address, ...).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sorting.errors import ConfigError
from sorting.serving.actuators import Firing, bin_addresses, make_actuator
from sorting.serving.line_config import LineConfig
from sorting.serving.policy import load_policy_config

log = logging.getLogger(__name__)

LEAD_S = 0.05  # a pulse is scheduled this far ahead, so the actuator's worker has it in time


@dataclass(frozen=True)
class PulseCheck:
    """One bin's test pulse: where it went and whether the actuator sent it."""

    bin: int
    name: str
    address: int
    pulse_ms: float
    sent: bool
    reason: str | None = None  # why it was not sent


def pulse_bins(
    line: LineConfig,
    bins: Sequence[int] | None = None,
    *,
    pulse_ms: float | None = None,
    interval_s: float = 1.0,
    connect_timeout_s: float = 3.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[PulseCheck]:
    """Fire each of ``bins`` (default: every product bin of the line) once; returns one check per bin.

    ``pulse_ms`` overrides the bin's own pulse length (``pulse_ms`` of the bin, else ``ejector.pulse_ms``).
    The first pulse waits up to ``connect_timeout_s`` for the actuator's link (connecting and clearing every
    output can take longer than a pulse may be late). The actuator is closed at the end, which clears every
    output.
    """
    policy = load_policy_config(line.policy.bins)
    known = {b.id: b for b in policy.bins}
    chosen = list(known) if not bins else list(bins)
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ConfigError(f"bin(s) {unknown} are not in {line.policy.bins} (bins there: {sorted(known)})")
    if interval_s < 0:
        raise ConfigError(f"interval_s must be >= 0, got {interval_s}")
    missed: dict[int, str] = {}

    def on_missed(firing: Firing, why: str) -> None:
        missed.setdefault(firing.bin, why)

    actuator = make_actuator(line.actuator, bin_addresses(policy.bins), clock=clock, on_missed=on_missed)
    lengths = {b: pulse_ms or known[b].pulse_ms or line.ejector.pulse_ms for b in chosen}
    try:
        deadline = clock() + connect_timeout_s
        while not actuator.connected and clock() < deadline:
            sleep(0.02)
        if not actuator.connected:
            log.warning("the actuator is not connected after %.1f s: the pulses will be reported missed",
                        connect_timeout_s)
        for i, b in enumerate(chosen):
            if i:
                sleep(interval_s)
            log.info("pulse bin %d (%s) at address %d for %.0f ms", b, known[b].name, known[b].actuator_address,
                     lengths[b])
            actuator.fire(b, clock() + LEAD_S, lengths[b] / 1000.0, item_id=f"pulse-test-bin-{b}")
        sleep(LEAD_S + max(lengths.values(), default=0.0) / 1000.0)
    finally:
        actuator.close()
    return [PulseCheck(b, known[b].name, known[b].actuator_address, lengths[b], b not in missed, missed.get(b))
            for b in chosen]
