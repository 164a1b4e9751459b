"""Runs of frames the segmentation cannot use: one log line each, and an alarm while one lasts.

A camera that delivers frames can still show nothing: a capped lens, the lights off, a blown exposure, something
over the belt. Every such frame raises :class:`~sorting.serving.segmentation.FrameError` and is skipped; garments
passing meanwhile are not seen. :class:`ViewWatch` logs the first frame of each run (not thousands of them), and
raises the ``camera_view`` alarm once the run has lasted ``alarm_after_s`` of the line's time, so the console's
camera light goes red; the next usable frame clears it and logs how many frames the run lost.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)

ALARM = "camera_view"


class AlarmSink(Protocol):
    def set_alarm(self, key: str, active: bool, message: str) -> None: ...


class ViewWatch:
    """``unusable(t, why)`` for each skipped frame, ``usable(t)`` for each frame segmented."""

    def __init__(self, alarms: AlarmSink, alarm_after_s: float) -> None:
        self.alarms = alarms
        self.alarm_after_s = alarm_after_s
        self._since: float | None = None  # the line's time of the run's first frame
        self._frames = 0
        self._alarm = False

    def unusable(self, t: float, why: str) -> None:
        if self._since is None:
            self._since, self._frames = t, 0
            log.warning("%s", why)
        else:
            log.debug("%s", why)
        self._frames += 1
        if not self._alarm and t - self._since >= self.alarm_after_s:
            self._alarm = True
            self.alarms.set_alarm(ALARM, True, f"{why}; {self._frames} frames in a row over {t - self._since:.1f} s: "
                                  "garments passing now are not seen")

    def usable(self, t: float) -> None:
        if self._since is None:
            return
        log.info("the camera's view is usable again after %d unusable frame(s) over %.1f s", self._frames,
                 t - self._since)
        self._since = None
        if self._alarm:
            self._alarm = False
            self.alarms.set_alarm(ALARM, False, "the camera's view is usable again")
