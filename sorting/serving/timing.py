"""Per-stage timing of the sorter loop: ``with timer.stage("segment"): ...``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class StageTimer:
    """Milliseconds spent in each named stage: this frame's (``frame_ms``) and the run's totals."""

    def __init__(self, stages: Iterable[str]) -> None:
        self.totals_ms = dict.fromkeys(stages, 0.0)
        self.frame_ms: dict[str, float] = {}
        self.frames = 0

    def start_frame(self) -> None:
        """Begin a new frame's timings (the previous frame's are handed over by then)."""
        self.frame_ms = {}
        self.frames += 1

    def add(self, stage: str, ms: float) -> None:
        """Book ``ms`` to ``stage`` (for a stage timed elsewhere, e.g. the wait for a frame)."""
        self.frame_ms[stage] = self.frame_ms.get(stage, 0.0) + ms
        self.totals_ms[stage] = self.totals_ms.get(stage, 0.0) + ms

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` body as ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - start) * 1e3)

    def means_ms(self) -> dict[str, float]:
        """Mean milliseconds per frame of each stage so far."""
        n = max(1, self.frames)
        return {stage: total / n for stage, total in self.totals_ms.items()}
