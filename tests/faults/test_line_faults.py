"""Faults of a running line (issue 18): clocks, a stalled camera, a silent encoder, misses in the metrics,
model identity, a damaged video, credentials in logs, a locked or full decision log, SIGTERM during a pulse.

Each test failed on the code before its fix. They use a real loopback Modbus PLC, the synthetic belt clip of
the loop tests and a second SQLite connection holding the write lock.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml
from _modbus_fixtures import LoopbackPlc, free_port, wait_for
from _onnx_fixtures import make_checkpoint
from test_loop import (
    REPO,
    ColourFakeClassifier,
    CommitCheckingActuator,
    ListSource,
    line_config,
)
from test_segmentation import FPS, SPEED, make_belt_clip

from sorting.logs import MaskCredentials, mask_credentials
from sorting.models.export import export_checkpoint
from sorting.serving.actuators import SimulatedActuator
from sorting.serving.builder import build_sorter
from sorting.serving.classifier import ModelClassifier
from sorting.serving.decision_log import DecisionLog, DecisionLogConfig, Stored
from sorting.serving.ejector import FixedSpeed
from sorting.serving.policy import Decision, ItemEvidence
from sorting.serving.sources import (
    Frame,
    FrameSource,
    LiveCaptureSource,
    VideoFileSource,
)

pytestmark = pytest.mark.faults


def near_bins(tmp_path: Path, distance_m: float = 0.12) -> Path:
    """The 6-colour bins with every bin ``distance_m`` past the decision line (60 px: 0.4 s at the clip's speed)."""
    bins = yaml.safe_load((REPO / "serving" / "bins-colour-6.yaml").read_text())
    for b in bins["bins"]:
        b["distance_m"] = distance_m
    (tmp_path / "near-bins.yaml").write_text(yaml.safe_dump(bins))
    return tmp_path / "near-bins.yaml"


def write_clip(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def decisions_in(db_path: Path) -> dict[str, tuple[int, int, str | None]]:
    """item_id -> (bin, missed, missed_reason) of every logged decision."""
    with sqlite3.connect(db_path) as db:
        return {r[0]: (r[1], r[2], r[3]) for r in db.execute("SELECT item_id, bin, missed, missed_reason FROM decisions")}


class PacedCamera(FrameSource):
    """A camera on loopback: frames of a list at their rate, stamped on the monotonic clock; it goes silent
    for ``stall_s`` (no frame, as a camera whose stream stopped) once ``stall_when()`` says so."""

    live = True

    def __init__(self, frames: list[np.ndarray], *, stall_s: float = 0.0, stall_when=lambda: False) -> None:
        super().__init__()
        self._frames, self._i = frames, 0
        self._stall_s, self._stall_when = stall_s, stall_when
        self._stall_until: float | None = None
        self._next = time.monotonic()

    @property
    def fps(self) -> float:
        return FPS

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._i >= len(self._frames):
            self.exhausted = True
            return None
        if self._stall_until is None and self._stall_s and self._stall_when():
            self._stall_until = time.monotonic() + self._stall_s
        if self._stall_until is not None and time.monotonic() < self._stall_until:
            time.sleep(min(timeout_s, self._stall_until - time.monotonic()))
            self._next = time.monotonic()
            return None
        time.sleep(max(0.0, self._next - time.monotonic()))
        self._next += 1.0 / FPS
        frame = Frame(self._i, time.monotonic(), self._frames[self._i])
        self._i += 1
        return frame


class TimedActuator(SimulatedActuator):
    """Records when each firing reached it, on the monotonic clock."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[float, float]] = []  # (time told, at_time)

    def fire(self, bin: int, at_time: float, pulse_s: float, *, item_id: int | str | None = None) -> None:
        self.received.append((time.monotonic(), at_time))
        super().fire(bin, at_time, pulse_s, item_id=item_id)


# -- ejection and clocks -----------------------------------------------------------------------------


def test_a_recording_drives_a_modbus_plc_on_wall_time(tmp_path):
    """Firing times followed the video's clock while the PLC worker compared them with time.monotonic(): every
    pulse was dropped as late. A recording that drives a PLC is now played at its rate on the line's clock."""
    frames, _ = make_belt_clip(hard=False, n_frames=150)
    port = free_port()
    plc = LoopbackPlc(port).start()
    try:
        cfg = line_config(tmp_path)
        cfg.camera.source = str(write_clip(tmp_path / "clip.mp4", frames))
        cfg.policy.bins = near_bins(tmp_path)
        cfg.actuator = cfg.actuator.model_copy(update={"kind": "modbus", "port": port, "retry_initial_ms": 50})
        loop = build_sorter(cfg, classifier=ColourFakeClassifier(), keep_images=False)
        assert loop.clock.mode == "wall" and loop.source.paced
        product = [d.track_id for r in loop.run() for d in r.decisions if d.bin != d.reject_bin]
    finally:
        plc.stop()
    rows = decisions_in(tmp_path / "decisions.sqlite")
    assert len(product) >= 3 and all(rows[str(i)][1] == 0 for i in product), rows
    ons = [a for a, value, _ in plc.sets() if value]
    assert len(ons) == len(product)


def test_firings_keep_their_time_while_the_camera_stalls(tmp_path):
    """The ejector used to be ticked only from the frame loop, which blocks in read() while the camera is
    silent: decided items missed their jets. A ticker thread now fires them on time without frames."""
    frames, _ = make_belt_clip(hard=False, n_frames=150)
    cfg = line_config(tmp_path)
    cfg.policy.bins = near_bins(tmp_path, distance_m=0.3)  # 150 px: 1 s after the decision
    cfg.camera.read_timeout_s = 1.0
    actuator = TimedActuator()
    decided: list[int] = []
    camera = PacedCamera(frames, stall_s=2.0, stall_when=lambda: bool(decided))
    loop = build_sorter(cfg, source=camera, classifier=ColourFakeClassifier(), actuator=actuator,
                        speed=FixedSpeed(SPEED, "px"), keep_images=False)
    transitions: list[tuple[str, bool]] = []
    loop.telemetry.listeners.append(SimpleNamespace(alarm=lambda key, on, msg: transitions.append((key, on)),
                                                    event=lambda *a: None))
    for result in loop.run():
        decided += [d.track_id for d in result.decisions if d.bin != d.reject_bin and result.index >= 0]
    assert [t for t in transitions if t[0] == "camera"] == [("camera", True), ("camera", False)]
    rows = decisions_in(tmp_path / "decisions.sqlite")
    first = str(decided[0])
    assert rows[first][1] == 0, f"the first item, decided before the camera stalled, was missed: {rows[first]}"
    assert actuator.received and all(told <= at for told, at in actuator.received)


class SilentAfter:
    """A belt speed source that stops being measured when ``silent`` is set (an encoder that stops answering)."""

    unit = "px"

    def __init__(self, speed: float) -> None:
        self._speed, self.silent = speed, False

    def speed(self, now: float) -> float:
        return 0.0 if self.silent else self._speed

    def measured(self, now: float) -> bool:
        return not self.silent


def test_a_silent_encoder_is_an_alarm_and_every_item_goes_to_reject(tmp_path):
    """The speed read 0 with nobody measuring it: no firing for the whole outage, the rows stayed 'product bin,
    not missed' and the reject-rate metric said 0.18 when it was 1.0."""
    frames, _ = make_belt_clip(hard=False, n_frames=150)
    cfg = line_config(tmp_path)
    speed = SilentAfter(SPEED)
    decided: list[object] = []
    loop = build_sorter(cfg, source=ListSource(frames), classifier=ColourFakeClassifier(),
                        actuator=SimulatedActuator(), speed=speed, keep_images=False)
    alarms = []
    for result in loop.run():
        if speed.silent and result.index >= 0:
            alarms.append(loop.telemetry.active_alarms())
        decided += result.decisions
        if decided and not speed.silent:
            speed.silent = True  # right after the first decision: its firing is pending
    assert alarms and all(a == ["belt_speed"] for a in alarms)
    rows = decisions_in(tmp_path / "decisions.sqlite")
    first, later = decided[0], decided[1:]
    assert first.bin != first.reject_bin and rows[str(first.track_id)][1:] == (1, "encoder")
    assert later and all(d.decision.reason == "no_belt_speed" for d in later)
    summary = loop.log_summary
    assert summary["reject_rate"] == 1.0
    assert loop.telemetry.reject_rate._value.get() == pytest.approx(1.0)


def test_a_camera_that_shows_nothing_is_an_alarm_logged_once_and_cleared(tmp_path, caplog):
    """A capped lens for a second and a half: each black frame was skipped with its own warning (thousands an hour
    on a live camera), and the camera light stayed green while garments passed unseen."""
    frames, _ = make_belt_clip(hard=False, n_frames=150)
    black = range(60, 105)  # 1.5 s at the clip's rate
    for i in black:
        frames[i] = np.zeros_like(frames[i])
    cfg = line_config(tmp_path)
    loop = build_sorter(cfg, source=ListSource(frames), classifier=ColourFakeClassifier(),
                        actuator=SimulatedActuator(), speed=FixedSpeed(SPEED, "px"), keep_images=False)
    alarm_at: dict[int, bool] = {}
    with caplog.at_level(logging.INFO):
        for result in loop.run():
            if result.index >= 0:
                alarm_at[result.index] = "camera_view" in loop.telemetry.active_alarms()
    after_s = cfg.camera.read_timeout_s
    assert not any(alarm_at[i] for i in range(60) if i in alarm_at)
    assert all(alarm_at[i] == (i - black[0] >= after_s * FPS) for i in black)
    assert not any(alarm_at[i] for i in range(black[-1] + 1, 150))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("frame unusable (black" in m for m in messages if "alarm" not in m) == 1
    assert any(f"after {len(black)} unusable frame(s)" in m for m in messages)
    assert sum("alarm camera_view raised" in m for m in messages) == 1
    assert sum("alarm camera_view cleared" in m for m in messages) == 1
    assert loop.source.stats.unreadable == len(black)


def test_misses_reported_by_the_actuator_reach_the_metrics(tmp_path):
    """A PLC that is not there: the actuator reports each pulse missed; the log marked them but Prometheus
    had no missed_firings series and a reject rate far below the truth."""
    frames, _ = make_belt_clip(hard=False, n_frames=120)
    cfg = line_config(tmp_path)
    cfg.policy.bins = near_bins(tmp_path)
    cfg.actuator = cfg.actuator.model_copy(update={"kind": "modbus", "port": free_port(), "timeout_ms": 50,
                                                   "retry_initial_ms": 50, "retry_max_ms": 100})
    loop = build_sorter(cfg, source=PacedCamera(frames), classifier=ColourFakeClassifier(),
                        speed=FixedSpeed(SPEED, "px"), keep_images=False)
    decisions = [d for r in loop.run() for d in r.decisions]
    metrics = loop.telemetry.render().decode()
    summary = loop.log_summary
    product = [d for d in decisions if d.bin != d.reject_bin]
    assert product and summary["missed"] >= len(product) - 1  # the last may be dropped at shutdown
    missed_series = [line for line in metrics.splitlines() if line.startswith("textile_sorter_missed_firings_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in missed_series) == summary["missed"]
    assert loop.telemetry.reject_rate._value.get() == pytest.approx(summary["reject_rate"])


def test_a_model_is_known_by_its_bytes_not_only_its_metadata(tmp_path):
    """A different file with copied metadata was logged under the same model_id."""
    a = export_checkpoint(make_checkpoint(tmp_path / "a.pt", seed=0), tmp_path / "a.onnx").path
    b = export_checkpoint(make_checkpoint(tmp_path / "b.pt", seed=1), tmp_path / "b.onnx").path
    id_a, id_b = ModelClassifier.load(a).model_id, ModelClassifier.load(b).model_id
    assert id_a.rsplit(":", 1)[0] == id_b.rsplit(":", 1)[0] and id_a != id_b


# -- telling the truth -------------------------------------------------------------------------------


def test_a_damaged_video_is_skipped_past_counted_and_reported(tmp_path, caplog):
    """Garbage in the middle of an MP4 ended the run there, with rc 0 and no word from the sorter."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(120)]
    path = write_clip(tmp_path / "clip.mp4", frames)
    data = bytearray(path.read_bytes())
    n = len(data)
    data[n // 2: n // 2 + n // 10] = rng.integers(0, 255, n // 10, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING), VideoFileSource(path) as src:
        indices = [f.index for f in src]
    assert src.stats.unreadable > 0 and len(indices) + src.stats.unreadable == 120
    assert indices == sorted(indices) and indices[-1] == 119, "sorting goes on after the damage"
    assert any("damaged" in r.getMessage() for r in caplog.records)


def test_stream_passwords_never_reach_a_log_line(caplog):
    """An RTSP URL's password was printed in every reconnect warning."""
    url = "rtsp://admin:s3cret@127.0.0.1:9/stream"
    assert mask_credentials(f"cannot open {url}") == "cannot open rtsp://admin:***@127.0.0.1:9/stream"

    def no_camera():
        raise OSError(f"connection refused: {url}")  # a back-end quoting the URL it was given

    handler = logging.StreamHandler()
    handler.addFilter(MaskCredentials())
    caplog.handler.addFilter(MaskCredentials())
    with caplog.at_level(logging.WARNING):
        src = LiveCaptureSource(url, capture_factory=no_camera)
        wait_for(lambda: len(caplog.records) >= 2, 2.0)
        src.close()
    assert caplog.records and not any("s3cret" in r.getMessage() for r in caplog.records)
    assert "s3cret" not in src.name and not any("s3cret" in t.name for t in threading.enumerate())


# -- the decision log --------------------------------------------------------------------------------


class LockHolder:
    """A second process-like connection that holds the log's write lock for ``seconds`` once started."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path, self.seconds = path, seconds
        self.thread = threading.Thread(target=self._hold, daemon=True)
        self.held = threading.Event()

    def _hold(self) -> None:
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        self.held.set()
        time.sleep(self.seconds)
        db.execute("COMMIT")
        db.close()

    def start(self) -> None:
        self.thread.start()
        self.held.wait(5)


def test_a_locked_log_holds_rows_and_nothing_fires_before_its_row_is_stored(tmp_path):
    """Another process held the SQLite write lock for 8 s: the line crashed with 'database is locked'."""
    frames, _ = make_belt_clip(hard=False, n_frames=150)
    cfg = line_config(tmp_path)
    cfg.policy.bins = near_bins(tmp_path)
    cfg.log.retry_s = 0.05
    actuator = CommitCheckingActuator(tmp_path / "decisions.sqlite")
    camera = PacedCamera(frames)
    loop = build_sorter(cfg, source=camera, classifier=ColourFakeClassifier(), actuator=actuator,
                        speed=FixedSpeed(SPEED, "px"), keep_images=False)
    lock = LockHolder(tmp_path / "decisions.sqlite", seconds=1.5)
    alarms: set[str] = set()
    decisions = []
    for result in loop.run():
        decisions += result.decisions
        if decisions and not lock.thread.is_alive() and not lock.held.is_set():
            lock.start()
        alarms |= set(loop.telemetry.active_alarms())
    rows = decisions_in(tmp_path / "decisions.sqlite")
    assert "decision_log" in alarms, "the held backlog must raise the decision_log alarm"
    assert sorted(rows) == sorted(str(d.track_id) for d in decisions), "every decision is stored in the end"
    assert actuator.unlogged == [], "an item was fired before its row was stored"
    fired = {str(f.item_id) for f in actuator.firings}
    for d in decisions:
        if d.bin != d.reject_bin:  # fired once stored, or marked missed: never silent
            assert str(d.track_id) in fired or rows[str(d.track_id)][1] == 1, (d.track_id, rows[str(d.track_id)])


def evidence(i: int) -> ItemEvidence:
    return ItemEvidence(item_id=i, probs={"colour": np.array([0.9, 0.1])}, labels={"colour": ["white", "black"]})


def test_a_full_disk_holds_rows_then_rejects_once_the_backlog_is_full(tmp_path, caplog):
    """SQLITE_FULL (a full disk) goes the same way as a lock: held in memory while there is room, each row
    stored once the database takes writes again; with the backlog full a row is only in the text log."""
    cfg = DecisionLogConfig(path=tmp_path / "d.sqlite", backlog_max=3, retry_s=0.01, save_crops="none")
    white = Decision(1, "white", "rule:white", colour="white", confidence={"colour": 0.9})
    with DecisionLog(cfg, session="s") as dlog:
        assert dlog.record(evidence(1), white)[1] is Stored.STORED
        pages = dlog._conn.execute("PRAGMA page_count").fetchone()[0]
        dlog._conn.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow: as on a full disk
        filler = [evidence(i) for i in range(2, 200)]
        states = []
        with caplog.at_level(logging.ERROR):
            for ev in filler:
                states.append(dlog.record(ev, white)[1])
                if states[-1] is not Stored.STORED:
                    break
            states += [dlog.record(evidence(1000 + i), white)[1] for i in range(4)]
        assert states[-5:] == [Stored.HELD] * 3 + [Stored.DROPPED] * 2 and dlog.full
        assert any("row not stored" in r.getMessage() for r in caplog.records)
        dlog._conn.execute("PRAGMA max_page_count = 1000000")
        time.sleep(0.02)
        assert len(dlog.flush()) == 3 and dlog.backlog == 0
        assert dlog.summary()["items"] == len([s for s in states if s is not Stored.DROPPED]) + 1


# -- commissioning ------------------------------------------------------------------------------------


def test_pulse_clears_its_coil_when_terminated_mid_pulse(tmp_path):
    """``pulse`` left a coil ON when it got SIGTERM during a long pulse (SIGINT cleared it)."""
    port = free_port()
    plc = LoopbackPlc(port).start()
    line = yaml.safe_load((REPO / "serving" / "line-colour-6bin.yaml").read_text())
    line["policy"] = {"bins": str(REPO / "serving" / "bins-colour-6.yaml")}
    line["actuator"] = {"kind": "modbus", "host": "127.0.0.1", "port": port}
    (tmp_path / "line.yaml").write_text(yaml.safe_dump(line))
    proc = subprocess.Popen([sys.executable, "-m", "sorting", "pulse", "--line", str(tmp_path / "line.yaml"),
                             "--bin", "1", "--pulse-ms", "20000", "--yes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert wait_for(lambda: any(value for _, value, _ in plc.sets()), 30.0), "the pulse never started"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        address = next(a for a, value, _ in plc.sets() if value)
        assert [value for a, value, _ in plc.sets() if a == address][-1] is False, plc.sets()
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        proc.kill()
        plc.stop()
