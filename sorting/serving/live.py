"""Seams between a running line and the operator's console: what the loop hands over, cheaply.

The loop writes, the console (another thread) reads; nothing here does I/O on the loop's thread:

- :class:`FrameSlot`: the latest frame (a reference, drop-oldest, one deep). Rendering (boxes,
  labels) and JPEG encoding happen lazily on the *reader's* thread, at most ``max_fps`` times a
  second however many viewers there are, so the loop pays one lock and one assignment per frame.
- :class:`AlarmBoard`: alarms raised and cleared by key (``camera``, ``plc``, ``missed_firings``...).
  An alarm stays on the board until a person acknowledges it, even after its condition cleared
  (ISA-18.2 states: active/unacknowledged, active/acknowledged, cleared/unacknowledged).
- :class:`LineStatus`: line name, bins, the model in service and its hot reloads.
- :class:`RecentDecisions`: a ring buffer of the last minutes' decisions (items per minute,
  decision latency p50/p99 over a sliding window: the Prometheus histogram is cumulative since
  start and bucketed, so it cannot give "p99 over the last five minutes" exactly).
- :class:`LiveFeed`: the four together plus the line's Prometheus registry, the one object the
  loop and the console share.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from prometheus_client import CollectorRegistry

from sorting.serving.classifier import Classifier, ModelClassifier
from sorting.serving.line_config import LineConfig
from sorting.serving.policy import load_policy_config

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}
# Keys the line raises (others are allowed); titles shown on the console.
ALARM_TITLES: dict[str, str] = {
    "camera": "Camera",
    "camera_view": "Camera view unusable",
    "plc": "PLC / actuator link",
    "missed_firings": "Missed firings",
    "dropped_frames": "Dropped frames",
    "disk": "Disk space",
    "encoder": "Belt encoder",
    "belt_speed": "Belt speed",
    "decision_log": "Decision log",
    "model": "Model",
    "spectrometer": "Spectrometer",
}
# Conditions that stop the line from sorting (everything goes to reject, or nothing is stored/fired).
ALARM_SEVERITY: dict[str, Severity] = {"camera": "critical", "camera_view": "critical", "plc": "critical",
                                        "belt_speed": "critical", "decision_log": "critical", "encoder": "critical",
                                        "disk": "warning"}


class FrameSlot:
    """The newest frame for viewers: one deep, drop-oldest, encoded lazily and rate-capped.

    ``put(frame)`` (loop thread) stores a reference; the loop must not write into that frame
    afterwards (the loop's frames and results are new objects each iteration). ``render`` turns
    what was put into a BGR image on the viewer's thread (e.g. ``annotate_frame`` over a loop
    result); without it, ``put`` takes a BGR ``numpy`` image.
    """

    def __init__(
        self,
        *,
        max_fps: float = 5.0,
        jpeg_quality: int = 70,
        max_width: int = 1280,
        render: Callable[[Any], np.ndarray] | None = None,
    ) -> None:
        if max_fps <= 0:
            raise ValueError("max_fps must be > 0")
        self.interval_s = 1.0 / max_fps
        self.jpeg_quality = jpeg_quality
        self.max_width = max_width
        self.render = render
        self._cond = threading.Condition()
        self._encode_lock = threading.Lock()
        self._frame: Any = None
        self._seq = 0
        self._put_t: float | None = None
        self._cached: tuple[int, bytes] | None = None
        self._encoded_t = -float("inf")
        self.frames_encoded = 0

    def put(self, frame: Any) -> None:
        """Offer the newest frame (loop thread; O(1), never encodes)."""
        with self._cond:
            self._frame = frame
            self._seq += 1
            self._put_t = time.monotonic()
            self._cond.notify_all()

    @property
    def seq(self) -> int:
        """Frames put so far (0: none yet)."""
        return self._seq

    def age_s(self) -> float | None:
        """Seconds since the last frame was put (None: never)."""
        put_t = self._put_t
        return None if put_t is None else time.monotonic() - put_t

    def jpeg(self, after: int = 0, timeout_s: float = 2.0) -> tuple[int, bytes] | None:
        """``(seq, jpeg)`` of a frame newer than ``after``, waiting up to ``timeout_s`` for one.

        Encodes at most once per ``1 / max_fps`` seconds over all callers (others share the
        result). None when no newer frame came in time or it could not be rendered.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > after, timeout_s):
                return None
        with self._encode_lock:
            now = time.monotonic()
            cached = self._cached
            due_in = self._encoded_t + self.interval_s - now
            if cached is not None and cached[0] > after and due_in > 0:
                return cached
            if due_in > 0:
                time.sleep(min(due_in, max(0.0, deadline - now)))
            with self._cond:
                frame, seq = self._frame, self._seq
            data = self._encode(frame)
            self._encoded_t = time.monotonic()
            if data is None:
                return None
            self._cached = (seq, data)
            self.frames_encoded += 1
            return self._cached

    def _encode(self, frame: Any) -> bytes | None:
        try:
            image = self.render(frame) if self.render is not None else frame
            image = np.asarray(image)
            if image.shape[1] > self.max_width:
                scale = self.max_width / image.shape[1]
                image = cv2.resize(image, (self.max_width, int(round(image.shape[0] * scale))),
                                   interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        except Exception as exc:  # a bad frame must not take the console down
            log.warning("live view: cannot render/encode a frame: %s", exc)
            return None
        return buf.tobytes() if ok else None


@dataclass(frozen=True)
class Alarm:
    """One line of the alarm board (times are wall-clock seconds)."""

    key: str
    severity: Severity
    message: str
    first_s: float
    last_s: float
    count: int
    active: bool
    acknowledged: bool = False
    cleared_s: float | None = None
    acknowledged_s: float | None = None
    acknowledged_by: str = ""

    @property
    def title(self) -> str:
        return ALARM_TITLES.get(self.key, self.key.replace("_", " ").capitalize())

    @property
    def state(self) -> str:
        if self.active:
            return "active, acknowledged" if self.acknowledged else "active"
        return "cleared, not acknowledged"


class AlarmBoard:
    """Thread-safe alarm board (see the module docstring for the states).

    - :meth:`raise_` a condition that lasts (camera down, PLC unreachable): idempotent while
      active (message and last time updated); raising it again after it cleared counts one more
      occurrence and asks for a new acknowledgement.
    - :meth:`event` a one-off occurrence (a missed firing, dropped frames): counted, shown until
      acknowledged, nothing to clear.
    - :meth:`clear` the condition; :meth:`acknowledge` (a person). An alarm leaves the board
      when it is both cleared and acknowledged.
    """

    def __init__(self, *, max_alarms: int = 64) -> None:
        self.max_alarms = max_alarms
        self._lock = threading.Lock()
        self._alarms: dict[str, Alarm] = {}

    def raise_(self, key: str, message: str, *, severity: Severity = "warning") -> None:
        """The condition ``key`` is present (call on every check or only on the edge: both work)."""
        self._upsert(key, message, severity, n=1, active=True)

    def event(self, key: str, message: str, *, severity: Severity = "warning", n: int = 1) -> None:
        """``n`` one-off occurrences of ``key``: counted and kept until acknowledged."""
        self._upsert(key, message, severity, n=n, active=False)

    def _upsert(self, key: str, message: str, severity: Severity, *, n: int, active: bool) -> None:
        now = time.time()
        with self._lock:
            old = self._alarms.get(key)
            if old is None:
                if not self._make_room():
                    log.warning("alarm board full; dropped alarm %s: %s", key, message)
                    return
                new = Alarm(key, severity, message, now, now, n, active)
            elif active and old.active:  # the same condition, still present
                new = replace(old, message=message, last_s=now, severity=_worse(old.severity, severity))
            else:  # a new occurrence: counted, needs a (new) acknowledgement
                new = replace(old, message=message, last_s=now, count=old.count + n, active=active or old.active,
                              acknowledged=False, acknowledged_s=None, acknowledged_by="",
                              severity=_worse(old.severity, severity), cleared_s=None if active else old.cleared_s)
            self._alarms[key] = new

    def _make_room(self) -> bool:
        if len(self._alarms) < self.max_alarms:
            return True
        cleared = [a for a in self._alarms.values() if not a.active]
        if not cleared:
            return False
        del self._alarms[min(cleared, key=lambda a: a.last_s).key]
        return True

    def clear(self, key: str) -> None:
        """The condition ``key`` is gone (no-op when not raised). Stays until acknowledged."""
        with self._lock:
            old = self._alarms.get(key)
            if old is None or not old.active:
                return
            if old.acknowledged:
                del self._alarms[key]
            else:
                self._alarms[key] = replace(old, active=False, cleared_s=time.time())

    def acknowledge(self, key: str, by: str = "") -> bool:
        """A person saw ``key``; False when it is not on the board."""
        with self._lock:
            old = self._alarms.get(key)
            if old is None:
                return False
            if old.active:
                self._alarms[key] = replace(old, acknowledged=True, acknowledged_s=time.time(), acknowledged_by=by)
            else:
                del self._alarms[key]
        log.info("alarm %s acknowledged%s", key, f" by {by}" if by else "")
        return True

    def acknowledge_all(self, by: str = "") -> int:
        """Acknowledge every unacknowledged alarm; returns how many."""
        keys = [a.key for a in self.snapshot() if not a.acknowledged]
        return sum(self.acknowledge(k, by) for k in keys)

    def snapshot(self) -> list[Alarm]:
        """Alarms on the board: active first, then by severity, newest first."""
        with self._lock:
            alarms = list(self._alarms.values())
        return sorted(alarms, key=lambda a: (not a.active, SEVERITY_RANK[a.severity], -a.last_s))


def _worse(a: Severity, b: Severity) -> Severity:
    return a if SEVERITY_RANK[a] <= SEVERITY_RANK[b] else b


@dataclass(frozen=True)
class ModelInfo:
    """The model in service, as shown to the operator."""

    path: str
    model_id: str
    name: str
    run_id: str | None = None
    exported_at: str = ""
    taxonomy_version: str = ""
    quantized: bool = False
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    loaded_s: float = field(default_factory=time.time)

    @classmethod
    def from_classifier(cls, classifier: Classifier) -> ModelInfo:
        """From the line's classifier (an ONNX model's metadata when it is one)."""
        classes = {h: tuple(v) for h, v in classifier.labels.items()}
        if not isinstance(classifier, ModelClassifier):
            return cls(path="", model_id=classifier.model_id, name=classifier.model_id, classes=classes)
        meta = classifier.model.metadata
        return cls(
            path=str(classifier.model.path), model_id=classifier.model_id, name=meta.model_name, run_id=meta.run_id,
            exported_at=meta.exported_at, taxonomy_version=meta.taxonomy_version,
            quantized=meta.quantization is not None, classes=classes,
        )


@dataclass(frozen=True)
class ModelEvent:
    """A model load (start-up or hot reload) or a rejected hot reload."""

    wall_s: float
    path: str
    ok: bool
    model_id: str = ""
    message: str = ""


class LineStatus:
    """Line name, bins and the model in service with its history of (re)loads."""

    def __init__(self, *, line_name: str, bins: Mapping[int, str], reject_bin: int, max_events: int = 20) -> None:
        self.line_name = line_name
        self.bins = dict(sorted(bins.items()))
        self.reject_bin = reject_bin
        self.started_s = time.time()
        self.session: str | None = None
        self._lock = threading.Lock()
        self._model: ModelInfo | None = None
        self._events: deque[ModelEvent] = deque(maxlen=max_events)
        self.reloads = 0

    def model_loaded(self, info: ModelInfo) -> None:
        """``info`` serves from now on (start-up, or a hot reload that passed its checks)."""
        with self._lock:
            if self._model is not None:
                self.reloads += 1
            self._model = info
            self._events.append(ModelEvent(info.loaded_s, info.path, True, info.model_id,
                                           "hot reload" if self.reloads else "start-up"))

    def model_rejected(self, path: str | Path, reason: str) -> None:
        """A hot reload of ``path`` failed its checks; the old model keeps serving."""
        with self._lock:
            self._events.append(ModelEvent(time.time(), str(path), False, message=reason))

    @property
    def model(self) -> ModelInfo | None:
        return self._model

    def events(self) -> list[ModelEvent]:
        """Loads and rejected reloads, newest first."""
        with self._lock:
            return list(reversed(self._events))


@dataclass(frozen=True)
class RecentStats:
    """Sliding-window figures from :class:`RecentDecisions`."""

    window_s: float
    items: int
    items_per_min: float
    latency_ms_p50: float | None
    latency_ms_p99: float | None


class RecentDecisions:
    """Ring buffer of recent decisions: (monotonic time, latency ms). Bounded by ``maxlen``."""

    def __init__(self, *, window_s: float = 300.0, maxlen: int = 50_000) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, latency_ms: float | None, t: float | None = None) -> None:
        """One decided item (loop thread; O(1))."""
        with self._lock:
            self._items.append((time.monotonic() if t is None else t, np.nan if latency_ms is None else latency_ms))

    def stats(self, now: float | None = None) -> RecentStats:
        """Items per minute over the last minute, latency percentiles over ``window_s``."""
        now = time.monotonic() if now is None else now
        start = now - self.window_s
        with self._lock:
            while self._items and self._items[0][0] < start:
                self._items.popleft()
            items = [(t, ms) for t, ms in self._items if t >= start]
        last_min = sum(1 for t, _ in items if t >= now - 60.0)
        lat = np.array([ms for _, ms in items], dtype=np.float64)
        lat = lat[np.isfinite(lat)]
        p50, p99 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if lat.size else (None, None)
        return RecentStats(self.window_s, len(items), float(last_min), p50, p99)


class _Decided(Protocol):
    """What :meth:`LiveFeed.on_item_decision` reads of the loop's ``ItemDecision``."""

    latency_ms: float


class LiveFeed:
    """Everything the console reads from a running line; the loop writes into its parts.

    ``registry`` is the line's ``Telemetry.registry`` (set it once the telemetry exists; until
    then the console counts from the decision log).
    """

    def __init__(
        self,
        *,
        line_name: str,
        bins: Mapping[int, str],
        reject_bin: int,
        registry: CollectorRegistry | None = None,
        namespace: str = "textile_sorter",
        max_fps: float = 5.0,
        render: Callable[[Any], np.ndarray] | None = None,
    ) -> None:
        self.slot = FrameSlot(max_fps=max_fps, render=render)
        self.alarms = AlarmBoard()
        self.status = LineStatus(line_name=line_name, bins=bins, reject_bin=reject_bin)
        self.recent = RecentDecisions()
        self.registry = registry
        self.namespace = namespace

    def on_item_decision(self, item: _Decided) -> None:
        """One decided item (its latency)."""
        self.recent.add(item.latency_ms)

    # -- the line's telemetry listener (:class:`~sorting.serving.telemetry.LineListener`) --
    def alarm(self, key: str, active: bool, message: str) -> None:
        if active:
            self.alarms.raise_(key, message, severity=ALARM_SEVERITY.get(key, "warning"))
        else:
            self.alarms.clear(key)

    def event(self, key: str, n: int, message: str) -> None:
        self.alarms.event(key, message, n=n)

    def model_loaded(self, classifier: Classifier) -> None:
        self.status.model_loaded(ModelInfo.from_classifier(classifier))

    def model_rejected(self, path: str, reason: str) -> None:
        self.status.model_rejected(path, reason)


def live_feed_for_line(cfg: LineConfig, *, max_fps: float = 5.0,
                       render: Callable[[Any], np.ndarray] | None = None) -> LiveFeed:
    """A :class:`LiveFeed` named and binned after a line config (its bins file)."""
    policy = load_policy_config(cfg.policy.bins)
    return LiveFeed(line_name=cfg.name, bins=policy.bin_names(), reject_bin=policy.reject.id,
                    namespace=cfg.telemetry.namespace, max_fps=max_fps, render=render)
