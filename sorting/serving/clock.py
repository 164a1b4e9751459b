"""The one time base of a sorting line.

Every part that compares times (the ejector scheduler, the actuator's worker, the belt encoder
and the loop) reads ``now()`` from the same :class:`LineClock`, and frame times are on it:

* **wall** time (a live camera, or a recording played at its frame rate): ``time.monotonic()``.
  Such sources stamp their frames with ``time.monotonic()`` when they capture or release them,
  so a frame's time is a line time as it is.
* **frame** time (a recording or the synthetic belt sorted as fast as it decodes): the newest
  frame's own time. It moves only when frames arrive (and when the end of a clip is flushed),
  so an offline run decides and fires exactly as it would at the belt's real pace, however fast
  the machine is.

A physical actuator (a PLC) can only follow wall time: the builder plays a recording at its
frame rate when one drives a real actuator.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

ClockMode = Literal["wall", "frame"]


class LineClock:
    """``now()`` of the line in seconds (see the module docstring)."""

    def __init__(self, mode: ClockMode, *, wall: Callable[[], float] = time.monotonic) -> None:
        self.mode: ClockMode = mode
        self._wall = wall
        self._t = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        if self.mode == "wall":
            return self._wall()
        with self._lock:
            return self._t

    def advance(self, t: float) -> None:
        """Frame time only: the line has reached ``t`` (a new frame, or the flush at the end of a clip)."""
        if self.mode == "frame":
            with self._lock:
                self._t = max(self._t, t)
