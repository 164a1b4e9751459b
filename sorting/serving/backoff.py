"""Exponential back-off for reconnecting to a camera or a PLC."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial_s``, ``initial_s * factor``, ... capped at ``max_s`` (attempt 0, 1, ...)."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.factor ** max(0, attempt))
