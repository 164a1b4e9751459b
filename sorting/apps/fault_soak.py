"""``bench-faults``: the whole line at its real pace, with faults injected on a schedule, and every garment
accounted for at the end.

The line is the one ``serve`` builds (:func:`~sorting.serving.builder.build_sorter`) from a line config: the
model hot-reloaded from its file, the Modbus actuator driving a PLC on loopback
(:class:`~sorting.apps.loopback_plc.LoopbackPlc`), the decision log and the metrics. The camera is a
synthetic conveyor clip played at its frame rate on the wall clock (:class:`ReplayCamera`); the belt moves on
while the camera is silent.

Faults, one of each kind per ``period_s``, in this order:

``camera``  the camera goes silent for ``camera_s`` (no frame; the belt moves on)
``plc``     the PLC goes away for ``plc_s`` (pulses due meanwhile are missed; the actuator reconnects)
``log``     a second connection holds the decision log's write lock for ``log_s``
``model``   the model file is overwritten with garbage (the hot reload is refused), then restored (reloaded)

Accounting: the faults add no garment lost, decided twice or phantom decision to what the same clip gives
sorted offline without faults (counting the garments the camera saw); every decision has its row; every product-bin row was fired (a coil pulse at its bin's address)
or is marked missed with a reason; the metrics count the same decisions, misses and reject rate as the log.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sorting.apps.loopback_plc import LoopbackPlc
from sorting.apps.scoring import DecisionPoint, SortScore, load_ground_truth, score_run
from sorting.datasets.synth.conveyor import WORLD_VERSION, ConveyorConfig, ConveyorWorld, render_conveyor_clip
from sorting.serving.actuators import SimulatedActuator, bin_addresses
from sorting.serving.builder import build_sorter
from sorting.serving.line_config import LineConfig, load_line_config
from sorting.serving.loop import SorterLoop
from sorting.serving.policy import load_policy_config
from sorting.serving.sources import Frame, FrameSource, VideoFileSource

log = logging.getLogger(__name__)

FAULT_KINDS = ("camera", "plc", "log", "model")


@dataclass
class SoakConfig:
    """What the soak runs (see the module docstring); the defaults are the README's 10-minute soak."""

    line: Path
    model: Path
    out_dir: Path
    bins: Path | None = None
    minutes: float = 10.0
    seed: int = 31
    belt_speed_px_s: float = 300.0
    period_s: float = 30.0
    camera_s: float = 1.0
    plc_s: float = 2.0
    log_s: float = 3.0
    plc_port: int = 15020
    progress: bool = True


class ReplayCamera(FrameSource):
    """A recorded clip as a camera: frames at their rate on the wall clock (a paced
    :class:`~sorting.serving.sources.VideoFileSource`), the newest only when the loop falls behind,
    and none while :meth:`stall` holds (the belt moves on: the frames of the silence are never shown)."""

    live = True

    def __init__(self, video: Path) -> None:
        super().__init__()
        self._inner = VideoFileSource(video, realtime=True)
        self._silent_until = 0.0
        self.delivered: set[int] = set()

    @property
    def fps(self) -> float:
        return self._inner.fps

    def stall(self, seconds: float) -> None:
        self._silent_until = time.monotonic() + seconds

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        while True:
            frame = self._inner.read(timeout_s)
            if frame is None:
                self.exhausted = self._inner.exhausted
                return None
            now = time.monotonic()
            if now < self._silent_until:
                return None
            if now - frame.t > 2.0 / self.fps:  # the loop is behind: a camera keeps only the newest frame
                self.stats.dropped += 1
                continue
            self.delivered.add(frame.index)
            self.stats.frames += 1
            return frame

    def close(self) -> None:
        self._inner.close()
        self.exhausted = True


class LockHolder(threading.Thread):
    """Holds the SQLite write lock of ``path`` for ``seconds`` (another process writing, a backup)."""

    def __init__(self, path: Path, seconds: float) -> None:
        super().__init__(name="log-lock", daemon=True)
        self.path, self.seconds = path, seconds

    def run(self) -> None:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            time.sleep(self.seconds)
            db.execute("COMMIT")
        finally:
            db.close()


class FaultInjector(threading.Thread):
    """Injects the faults of the module docstring on their schedule until :meth:`finish`."""

    def __init__(self, cfg: SoakConfig, camera: ReplayCamera, plc: LoopbackPlc, log_path: Path, model: Path) -> None:
        super().__init__(name="fault-injector", daemon=True)
        self.cfg, self.camera, self.plc, self.log_path, self.model = cfg, camera, plc, log_path, model
        self._good_model = model.read_bytes()
        self._done = threading.Event()
        self.injected: list[tuple[float, str]] = []

    def finish(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(self.cfg.period_s)

    def _wait(self, seconds: float) -> bool:
        return not self._done.wait(seconds)

    def run(self) -> None:
        step = self.cfg.period_s / len(FAULT_KINDS)
        start = time.monotonic()
        while self._wait(step / 2):
            for kind in FAULT_KINDS:
                self.injected.append((round(time.monotonic() - start, 1), kind))
                log.info("injecting fault: %s", kind)
                if not getattr(self, f"_{kind}")(step) or not self._wait(step / 2):
                    return

    def _camera(self, step: float) -> bool:
        self.camera.stall(self.cfg.camera_s)
        return self._wait(step / 2)

    def _plc(self, step: float) -> bool:
        self.plc.stop()
        alive = self._wait(self.cfg.plc_s)
        self.plc.start()
        return alive and self._wait(step / 2)

    def _log(self, step: float) -> bool:
        LockHolder(self.log_path, self.cfg.log_s).start()
        return self._wait(step / 2)

    def _model(self, step: float) -> bool:
        self.model.write_bytes(b"not an onnx model")
        alive = self._wait(step / 4)
        self.model.write_bytes(self._good_model)
        return alive and self._wait(step / 4)


@dataclass
class SoakReport:
    """What the soak measured; ``checks`` are the accounting's pass/fail lines."""

    minutes: float
    garments: int
    garments_seen: int
    decisions: int
    rows: int
    faults: dict[str, int]
    lost: int
    duplicated: int
    phantom: int
    without_faults: dict[str, int]  # lost / duplicated / phantom of the same clip sorted offline, no fault
    fired: int
    missed_by_reason: dict[str, int]
    product_rows: int
    reject_rate_log: float
    reject_rate_metric: float
    metric_items: int
    metric_missed: int
    reloads: dict[str, int]
    alarms_seen: list[str]
    lost_garments: list[dict[str, int]] = field(default_factory=list)  # id, frames on the belt, frames the camera showed
    checks: dict[str, bool] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = ["# bench-faults", "", f"{self.minutes:.1f} min, {self.garments} garments on the belt, "
                 f"{self.garments_seen} seen by the camera; faults injected: "
                 + ", ".join(f"{k} x{n}" for k, n in self.faults.items()), "",
                 "| figure | value |", "|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in asdict(self).items() if k not in ("checks",
                                                                                                   "lost_garments")]
        lines += [f"| lost garment {g['id']} | on the belt in frames {g['entry_frame']}-{g['exit_frame']}, shown in "
                  f"{g['frames_shown']} |" for g in self.lost_garments]
        lines += ["", "| check | |", "|---|---|"] + [f"| {k} | {'ok' if ok else 'FAILED'} |"
                                                      for k, ok in self.checks.items()]
        return "\n".join(lines) + "\n"


def _clip(cfg: SoakConfig) -> tuple[Path, dict[str, Any]]:
    """A synthetic belt clip of about ``cfg.minutes`` (rendered once, kept under ``runs/clips``), and its truth."""
    probe = ConveyorWorld(ConveyorConfig(n_items=20, seed=cfg.seed, belt_speed_px_s=cfg.belt_speed_px_s))
    n_items = max(2, round(20 * cfg.minutes * 60 * probe.config.fps / probe.n_frames))
    folder = cfg.out_dir.parent / "clips" / f"clip-w{WORLD_VERSION}-n{n_items}-s{cfg.seed}-v{cfg.belt_speed_px_s:g}"
    video, gt = folder / "conveyor.mp4", folder / "conveyor_gt.json"
    if not (video.is_file() and gt.is_file()):
        clip = render_conveyor_clip(folder, n_items=n_items, seed=cfg.seed, belt_speed_px_s=cfg.belt_speed_px_s,
                                    progress=cfg.progress)
        video, gt = clip.video_path, clip.ground_truth_path
    return video, load_ground_truth(gt)


def run_fault_soak(cfg: SoakConfig) -> SoakReport:
    """Run the soak (see the module docstring) and return its accounting."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    model = (cfg.out_dir / "model.onnx").resolve()
    shutil.copyfile(cfg.model, model)
    db = (cfg.out_dir / "decisions.sqlite").resolve()
    for stale in cfg.out_dir.glob("decisions.sqlite*"):
        stale.unlink()
    overrides = [f"model.path={model}", "model.hot_reload=true", "model.reload_poll_s=0.5", f"log.path={db}",
                 "telemetry.port=0", f"belt.speed_px_s={cfg.belt_speed_px_s}", "belt.speed_m_s=null",
                 "actuator.kind=modbus", "actuator.host=127.0.0.1", f"actuator.port={cfg.plc_port}",
                 "actuator.retry_max_ms=1000", "log.retry_s=0.25",
                 *([f"policy.bins={cfg.bins.resolve()}"] if cfg.bins else [])]
    line = load_line_config(cfg.line, overrides)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the actuator reports every miss itself
    video, gt = _clip(cfg)
    baseline = _without_faults(line, video, gt, cfg.out_dir)
    camera = ReplayCamera(video)
    plc = LoopbackPlc(cfg.plc_port).start()
    injector = FaultInjector(cfg, camera, plc, db, model)
    try:
        loop = build_sorter(line, source=camera, keep_images=False)
        decisions, alarms = _run(loop, injector, int(gt["n_frames"]), cfg.progress)
    finally:
        injector.finish()
        plc.stop()
    return _account(cfg, loop, gt, camera, plc, injector, decisions, alarms, baseline)


def _without_faults(line: LineConfig, video: Path, gt: dict[str, Any], out_dir: Path) -> SortScore:
    """The same clip sorted offline (frame time, simulated actuator, no fault): what the faults are compared with."""
    offline = line.model_copy(deep=True)
    offline.log.path = (out_dir / "without-faults.sqlite").resolve()
    offline.model.hot_reload = False
    for stale in out_dir.glob("without-faults.sqlite*"):
        stale.unlink()
    loop = build_sorter(offline, source=VideoFileSource(video), actuator=SimulatedActuator(), keep_images=False)
    decisions = [DecisionPoint.from_item_decision(d) for r in loop.run() for d in r.decisions]
    return score_run(decisions, gt, loop.policy)


def _run(loop: SorterLoop, injector: FaultInjector, n_frames: int, progress: bool) -> tuple[list, set[str]]:
    decisions, alarms = [], set()
    injector.start()
    with tqdm(total=n_frames, desc="bench-faults", unit="frame", disable=not progress) as bar:
        for result in loop.run():
            decisions += result.decisions
            alarms |= set(loop.telemetry.active_alarms())
            if result.index >= bar.n:
                bar.update(result.index + 1 - bar.n)
    return decisions, alarms


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _account(cfg: SoakConfig, loop: SorterLoop, gt: dict[str, Any], camera: ReplayCamera, plc: LoopbackPlc,
             injector: FaultInjector, decisions: list, alarms: set[str], baseline: SortScore) -> SoakReport:
    seen = {it["id"] for it in gt["items"] if any(f in camera.delivered for f, _, _ in it["track"])}
    gt_seen = dict(gt, items=[it for it in gt["items"] if it["id"] in seen])
    score = score_run([DecisionPoint.from_item_decision(d) for d in decisions], gt_seen, loop.policy)
    with sqlite3.connect(cfg.out_dir / "decisions.sqlite") as conn:
        rows = conn.execute("SELECT bin, missed, missed_reason FROM decisions").fetchall()
    policy = load_policy_config(loop.cfg.policy.bins)
    reject = policy.reject.id
    addresses = {**bin_addresses(policy.bins), **loop.cfg.actuator.addresses}
    product = [(b, missed, why) for b, missed, why in rows if b != reject]
    fired_per_address = Counter(a for a, value, _ in plc.sets() if value)
    expected_per_address = Counter(addresses[b] for b, missed, _ in product if not missed)
    metrics = loop.telemetry.render().decode()
    summary = loop.log_summary
    report = SoakReport(
        minutes=cfg.minutes, garments=len(gt["items"]), garments_seen=len(seen), decisions=len(decisions),
        rows=len(rows), faults=dict(Counter(kind for _, kind in injector.injected)), lost=score.lost,
        duplicated=score.duplicated, phantom=score.phantom,
        without_faults={"lost": baseline.lost, "duplicated": baseline.duplicated, "phantom": baseline.phantom},
        fired=sum(fired_per_address.values()),
        missed_by_reason=dict(Counter(why for _, missed, why in rows if missed)), product_rows=len(product),
        reject_rate_log=float(summary.get("reject_rate", 0.0)),
        reject_rate_metric=float(loop.telemetry.reject_rate._value.get()),
        metric_items=int(_metric(metrics, "textile_sorter_items_total{")),
        metric_missed=int(_metric(metrics, "textile_sorter_missed_firings_total{")),
        reloads={"refused": loop.watcher.rejected if loop.watcher else 0,
                 "loaded": loop.watcher.loaded if loop.watcher else 0}, alarms_seen=sorted(alarms),
        lost_garments=[{"id": it["id"], "entry_frame": it["entry_frame"], "exit_frame": it["exit_frame"],
                        "frames_shown": sum(f in camera.delivered for f, _, _ in it["track"])}
                       for it in gt_seen["items"] if score.assignment.get(it["id"]) is None],
    )
    report.checks = {
        "faults add no lost, duplicated or phantom garment (vs the clip sorted without faults)":
        score.lost <= baseline.lost and score.duplicated <= baseline.duplicated and score.phantom <= baseline.phantom,
        "every decision logged": report.rows == report.decisions,
        "every product row fired or marked missed with a reason": fired_per_address == expected_per_address
        and all(why for _, missed, why in rows if missed),
        "metrics agree with the log": report.metric_items == report.rows
        and report.metric_missed == sum(report.missed_by_reason.values())
        and abs(report.reject_rate_metric - report.reject_rate_log) < 1e-9,
    }
    (cfg.out_dir / "faults.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    (cfg.out_dir / "faults.md").write_text(report.markdown())
    return report


