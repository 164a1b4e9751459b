"""Prometheus metrics of the sorter, served on ``/metrics`` (localhost by default).

Every :class:`Telemetry` owns its own ``CollectorRegistry`` (no process-global state), so tests
and several lines in one process do not collide. The loop calls the ``on_*`` / ``observe_*``
methods; they are cheap (no I/O) and thread-safe (prometheus-client locks internally).
"""

from __future__ import annotations

import logging
import threading
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from pydantic import Field

from sorting.config import StrictModel
from sorting.errors import ConfigError
from sorting.serving.classifier import Classifier
from sorting.serving.policy import Decision

log = logging.getLogger(__name__)

# Milliseconds-scale buckets (in seconds, Prometheus convention) for per-stage and decision latency.
DEFAULT_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)


class LineListener(Protocol):
    """What an observer in the sorter's process (the operator's console) hears from the line.

    Called from the line's threads (loop, ticker, actuator, encoder): keep each call short.
    """

    def alarm(self, key: str, active: bool, message: str) -> None: ...

    def event(self, key: str, n: int, message: str) -> None: ...

    def model_loaded(self, classifier: Classifier) -> None: ...

    def model_rejected(self, path: str, reason: str) -> None: ...


class TelemetryConfig(StrictModel):
    """``telemetry`` section of the line config."""

    port: int = Field(default=0, ge=0, le=65535, description="/metrics port; 0 = no HTTP endpoint")
    host: str = Field(default="127.0.0.1", description="bind address; 0.0.0.0 exposes it to the network")
    namespace: str = Field(default="textile_sorter", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    buckets_s: tuple[float, ...] = DEFAULT_BUCKETS_S
    fps_smoothing: float = Field(default=0.1, gt=0, le=1, description="EMA weight of the newest frame interval")
    disk_min_free_gb: float = Field(default=2.0, ge=0, description="disk alarm below this much free space (log disk)")


class Telemetry:
    """Sorter metrics on a private registry; :meth:`start` opens the HTTP endpoint if configured.

    ``bin_names`` (bin id -> name, reject included) labels the per-bin counters; ``reject_bin``
    makes the reject-rate gauge count items sent to it and missed firings.
    """

    def __init__(self, config: TelemetryConfig, *, bin_names: Mapping[int, str], reject_bin: int) -> None:
        self.config = config
        self.registry = CollectorRegistry(auto_describe=True)
        self.bin_names = dict(bin_names)
        self.reject_bin = reject_bin
        ns, reg, buckets = config.namespace, self.registry, config.buckets_s
        self.items = Counter("items", "Items decided, by bin and reason kind", ["bin", "bin_name", "reason"],
                             namespace=ns, registry=reg)
        self.reject_rate = Gauge("reject_rate", "Share of decided items ending in the reject bin (incl. missed)",
                                 namespace=ns, registry=reg)
        self.frames = Counter("frames", "Frames processed", namespace=ns, registry=reg)
        self.fps = Gauge("fps", "Frames per second (smoothed)", namespace=ns, registry=reg)
        self.stage_latency = Histogram("stage_latency_seconds", "Time per loop stage", ["stage"],
                                       namespace=ns, registry=reg, buckets=buckets)
        self.decision_latency = Histogram("decision_latency_seconds", "Frame capture to decision",
                                          namespace=ns, registry=reg, buckets=buckets)
        self.dropped_frames = Counter("dropped_frames", "Frames dropped (live source kept only the newest)",
                                      namespace=ns, registry=reg)
        self.unreadable_frames = Counter("unreadable_frames", "Frames that could not be decoded or segmented "
                                         "(a damaged file, a black or saturated frame), skipped", namespace=ns,
                                         registry=reg)
        self.ignored_detections = Counter("ignored_detections", "Detections of hands and objects dropped before "
                                          "tracking (segmentation.non_garment.route: ignore), per frame", ["kind"],
                                          namespace=ns, registry=reg)
        self.camera_reconnects = Counter("camera_reconnects", "Camera reopen attempts after a loss",
                                         namespace=ns, registry=reg)
        self.missed_firings = Counter("missed_firings", "Firings not made (item went to end-of-belt reject)",
                                      ["bin", "reason"], namespace=ns, registry=reg)
        self.actuator_connected = Gauge("actuator_connected", "1 when the actuator link is up",
                                        namespace=ns, registry=reg)
        self.belt_speed = Gauge("belt_speed_m_s", "Belt speed measured by the encoder (lines with one)",
                                ["encoder"], namespace=ns, registry=reg)
        self.encoder_connected = Gauge("encoder_connected", "1 when the belt encoder link is up", ["encoder"],
                                       namespace=ns, registry=reg)
        self.model_info = Gauge("model_info", "1 for the model currently serving", ["model_id"],
                                namespace=ns, registry=reg)
        self.spectrometer_scans = Counter("spectrometer_scans", "Spectrometer scans by what became of them (used, "
                                          "no_garment, edge, two_garments, background, decided, past, future, bad, "
                                          "grid)", ["outcome"], namespace=ns, registry=reg)
        self.alarm = Gauge("alarm", "1 while an alarm condition holds (belt_speed, decision_log, ...)", ["alarm"],
                           namespace=ns, registry=reg)
        self.actuator_connected.set(1)
        self._lock = threading.Lock()
        self._decided = 0
        self._rejected = 0
        self._last_frame_t: float | None = None
        self._fps = 0.0
        self._alarms: dict[str, bool] = {}
        self.listeners: list[LineListener] = []
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- loop hooks ------------------------------------------------------------------------
    def on_decision(self, decision: Decision) -> None:
        """Count one decided item (call once per item, with the logged decision)."""
        name = self.bin_names.get(decision.bin, decision.bin_name)
        self.items.labels(bin=str(decision.bin), bin_name=name, reason=decision.kind).inc()
        with self._lock:
            self._decided += 1
            self._rejected += int(decision.bin == self.reject_bin)
            self.reject_rate.set(self._rejected / self._decided)

    def on_missed(self, bin: int, reason: str = "late") -> None:
        """A firing for an item already counted in ``bin`` was not made: it ends in reject."""
        self.missed_firings.labels(bin=str(bin), reason=reason).inc()
        for listener in self.listeners:
            listener.event("missed_firings", 1, f"{self.bin_names.get(bin, bin)}: {reason}")
        with self._lock:
            if bin != self.reject_bin and self._decided:
                self._rejected += 1
                self.reject_rate.set(self._rejected / self._decided)

    def on_frame(self, t: float) -> None:
        """One frame processed at loop time ``t`` (seconds); updates frames and smoothed fps."""
        self.frames.inc()
        with self._lock:
            if self._last_frame_t is not None and t > self._last_frame_t:
                inst = 1.0 / (t - self._last_frame_t)
                a = self.config.fps_smoothing
                self._fps = inst if self._fps == 0.0 else a * inst + (1 - a) * self._fps
                self.fps.set(self._fps)
            self._last_frame_t = t

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Time spent in one loop stage (e.g. decode, segment, track, infer, decide, log)."""
        self.stage_latency.labels(stage=stage).observe(seconds)

    def observe_decision_latency(self, seconds: float) -> None:
        self.decision_latency.observe(seconds)

    def on_scans(self, outcomes: Mapping[str, int]) -> None:
        """Spectrometer scans resolved in one frame, counted by outcome."""
        for outcome, n in outcomes.items():
            self.spectrometer_scans.labels(outcome=outcome).inc(n)

    def on_dropped_frames(self, n: int = 1) -> None:
        self.dropped_frames.inc(n)
        for listener in self.listeners:
            listener.event("dropped_frames", n, f"{n} frame(s) dropped: the loop was behind the camera")

    def on_camera_reconnect(self) -> None:
        self.camera_reconnects.inc()

    def on_actuator_connection(self, connected: bool) -> None:
        """Hook for ``ModbusTcpActuator(on_connection=...)``."""
        self.actuator_connected.set(1 if connected else 0)

    def on_encoder(self, encoder: str, connected: bool, speed_m_s: float) -> None:
        """Hook for ``EncoderReader(on_status=...)``: link state and measured speed of ``encoder``."""
        self.encoder_connected.labels(encoder=encoder).set(1 if connected else 0)
        self.belt_speed.labels(encoder=encoder).set(speed_m_s)
        self.set_alarm("encoder", not connected, f"belt encoder {encoder} unreachable" if not connected
                       else f"belt encoder {encoder} answers")

    def check_disk(self, path: Path) -> None:
        """Raise or clear the disk alarm for the file system holding ``path`` (the decision log)."""
        try:
            free_gb = shutil.disk_usage(path).free / 2**30
        except OSError:
            return
        low = free_gb < self.config.disk_min_free_gb
        self.set_alarm("disk", low, f"{free_gb:.1f} GB free on the decision log's disk ({path})" if low
                       else f"{free_gb:.1f} GB free again")

    def set_alarm(self, key: str, active: bool, message: str) -> None:
        """Raise or clear the alarm ``key``; a change is logged (error when raised) with ``message``."""
        with self._lock:
            changed = self._alarms.get(key, False) != active
            self._alarms[key] = active
        self.alarm.labels(alarm=key).set(1 if active else 0)
        if changed:
            log.log(logging.ERROR if active else logging.INFO, "alarm %s %s: %s", key,
                    "raised" if active else "cleared", message)
            for listener in self.listeners:
                listener.alarm(key, active, message)

    def active_alarms(self) -> list[str]:
        """Keys of the alarms that hold now."""
        with self._lock:
            return sorted(k for k, on in self._alarms.items() if on)

    def model_loaded(self, classifier: Classifier) -> None:
        """``classifier`` serves from now on (start-up or a hot reload)."""
        self.model_info.clear()
        self.model_info.labels(model_id=classifier.model_id).set(1)
        for listener in self.listeners:
            listener.model_loaded(classifier)

    def model_rejected(self, path: str, reason: str) -> None:
        """A hot reload of ``path`` was refused; the old model keeps serving."""
        for listener in self.listeners:
            listener.model_rejected(path, reason)

    # -- exposition ------------------------------------------------------------------------
    def render(self) -> bytes:
        """The metrics in Prometheus text format (what ``/metrics`` returns)."""
        return generate_latest(self.registry)

    def start(self, port: int | None = None) -> int | None:
        """Serve ``/metrics`` on ``config.host``; returns the bound port (None when disabled).

        ``port`` overrides the config (tests pass a free port).
        """
        port = self.config.port if port is None else port
        if port == 0:
            return None
        try:
            self._server, self._thread = start_http_server(port, addr=self.config.host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"telemetry: cannot listen on {self.config.host}:{port}: {exc}") from None
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", self.config.host, self.port)
        return self.port

    def close(self) -> None:
        """Stop the HTTP endpoint (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(2.0)
            self._server = self._thread = None
