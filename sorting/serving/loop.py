"""The sorter loop: frames -> segment -> track -> classify -> decide -> log -> eject.

:class:`SorterLoop` is a generator over frames (:meth:`SorterLoop.run`) that yields one
:class:`FrameResult` per frame (detections, tracks, decisions, per-stage timings) for the
annotator, a benchmark or a test. Memory is bounded: it holds only the tracks in view, the
best crop of each, and the frame being processed.

Per frame, in order:

``read``        next frame from the source (live sources may return "no frame": the loop then
                yields a ``no_frame`` result, keeps the ejector ticking, and waits for the camera)
``segment``     belt model -> detections (with continuous white balance: re-measure the
                reference patch every few frames and segment the white-balanced frame)
``track``       association, lost items
``calibrate``   crop the items due for a view (neighbouring garments painted out as belt,
                :class:`~sorting.serving.segmentation.NeighbourMasker`) and apply the colour correction
                to the crops only
``classify``    ONE ``OnnxClassifier.predict`` call for all crops of the frame
``decide``      policy for items at the decision line (or lost)
``log_actuate`` decision log row (committed) BEFORE the ejector/actuator hears of it; ejector tick

Shutdown (:meth:`SorterLoop.stop`, e.g. on SIGTERM/Ctrl-C): the loop finishes the current
frame, then decides every item still on the belt upstream of the decision line as reject
``shutdown`` (their evidence is incomplete and the line is stopping; their predicted labels
and confidences are still logged for review), drops firings not yet handed to the actuator
(logged as missed ``shutdown``: those items ride to the end-of-belt reject) and closes the log.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sorting.datasets.preprocess import garment_crop_box
from sorting.errors import ConfigError
from sorting.models.onnx_model import OnnxClassifier
from sorting.serving.actuators import Actuator, bin_addresses, make_actuator
from sorting.serving.annotate import VideoWriter, annotate_frame
from sorting.serving.colour_calibration import ColourCorrector, ContinuousWhiteBalance
from sorting.serving.decision_log import DecisionLog
from sorting.serving.ejector import EjectorScheduler
from sorting.serving.encoder import EncoderReader, belt_speed, drop_held_firings
from sorting.serving.line_config import LineConfig
from sorting.serving.policy import Decision, ItemEvidence, Policy, load_policy_config
from sorting.serving.segmentation import BeltSegmenter, Detection, NeighbourMasker
from sorting.serving.sources import FrameSource, open_source
from sorting.serving.telemetry import Telemetry
from sorting.serving.tracking import ItemSummary, Track, Tracker

log = logging.getLogger(__name__)

STAGES = ("read", "segment", "track", "calibrate", "classify", "decide", "log_actuate")


@dataclass(frozen=True)
class TrackView:
    """A snapshot of one track for drawing and evaluation."""

    track_id: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    confirmed: bool
    decided: bool
    overlap: bool
    n_views: int
    label: str


@dataclass(frozen=True)
class ItemDecision:
    """One item's final decision (``trigger``: line, lost or shutdown)."""

    track_id: int
    uid: str | None
    frame: int
    t_decision: float
    trigger: str
    decision: Decision
    summary: ItemSummary
    latency_ms: float
    reject_bin: int

    @property
    def bin(self) -> int:
        return self.decision.bin

    @property
    def bin_name(self) -> str:
        return self.decision.bin_name


@dataclass
class FrameResult:
    """What happened in one loop iteration. ``image`` is the raw frame and ``tracks`` the live
    tracks' display views; both only when the loop keeps images for drawing."""

    index: int
    t: float
    image: np.ndarray | None
    detections: list[Detection] = field(default_factory=list)
    tracks: list[TrackView] = field(default_factory=list)
    decisions: list[ItemDecision] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    n_classified: int = 0
    fps: float = 0.0
    items_decided: int = 0
    no_frame: bool = False


def _apply_ood_quantile(classifier: OnnxClassifier, policy: Policy) -> None:
    """The bins file's ``ood_quantile``, if set, picks the model's OOD thresholds (ConfigError if it lacks them)."""
    if policy.config.ood_quantile is not None:
        classifier.use_ood_quantile(policy.config.ood_quantile)
        log.info("OOD thresholds at the validation quantile %g (bins file)", policy.config.ood_quantile)


def model_id(classifier: OnnxClassifier) -> str:
    """Short id of a model for logs and metrics: name plus run id (or file name)."""
    meta = classifier.metadata
    return f"{meta.model_name}:{meta.run_id or Path(classifier.path).stem}"


class ModelWatcher:
    """Hot reload: watches the model file's mtime; loads and self-checks a new file in a thread.

    :meth:`poll` (called by the loop each frame, cheap) returns a new, checked classifier once,
    or None. A file that fails to load or to self-check is logged and ignored; the old model
    keeps serving.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, poll_s: float = 2.0,
                 loader: Callable[[Path], OnnxClassifier] | None = None) -> None:
        self.path = Path(path)
        self.poll_s = poll_s
        self._loader = loader or (lambda p: OnnxClassifier.load(p, threads=threads))
        self._mtime = self._stat()
        self._next_check = time.monotonic() + poll_s
        self._ready: OnnxClassifier | None = None
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def _load(self) -> None:
        try:
            candidate = self._loader(self.path)
            candidate.self_check()
        except Exception as exc:  # any failure keeps the old model serving
            log.error("hot reload of %s rejected: %s (old model keeps serving)", self.path, exc)
            return
        with self._lock:
            self._ready = candidate
        log.info("hot reload: %s loaded and self-checked", self.path)

    def poll(self) -> OnnxClassifier | None:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            return ready
        now = time.monotonic()
        if now < self._next_check or (self._worker is not None and self._worker.is_alive()):
            return None
        self._next_check = now + self.poll_s
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return None
        self._mtime = mtime
        self._worker = threading.Thread(target=self._load, name="model-reload", daemon=True)
        self._worker.start()
        return None

    def join(self, timeout: float = 30.0) -> None:
        """Wait for a running load (tests)."""
        if self._worker is not None:
            self._worker.join(timeout)


class SorterLoop:
    """One sorting line at work. Build it with :func:`build_sorter` or pass the parts (tests)."""

    def __init__(
        self,
        cfg: LineConfig,
        source: FrameSource,
        classifier: Any,
        policy: Policy,
        *,
        decision_log: DecisionLog | None = None,
        scheduler: EjectorScheduler | None = None,
        telemetry: Telemetry | None = None,
        watcher: ModelWatcher | None = None,
        encoder: EncoderReader | None = None,
        keep_images: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.classifier = classifier
        self.policy = policy
        self.decision_log = decision_log
        self.scheduler = scheduler
        self.telemetry = telemetry
        self.watcher = watcher
        self.encoder = encoder
        self.keep_images = keep_images
        self.clock = clock
        self.labels = {h: list(v) for h, v in classifier.metadata.labels.items()}
        _apply_ood_quantile(classifier, policy)
        cal = cfg.calibration
        self.corrector = ColourCorrector(cal.white_balance if cal.apply else (1, 1, 1),
                                         cal.exposure_gain if cal.apply else 1.0)
        self.white_balance = (
            ContinuousWhiteBalance(cal.reference_roi, cal.target_level, every=cal.continuous_every,
                                   smoothing=cal.continuous_smoothing)
            if cal.apply and cal.continuous and cal.reference_roi is not None else None
        )
        fps = source.fps or cfg.camera.fps or 30.0
        along = 0 if cfg.belt.direction[1] == "x" else 1
        patch = [cal.reference_roi] if cal.reference_roi is not None else []
        self.segmenter = BeltSegmenter(cfg.segmentation, fps=fps, along_axis=along, extra_ignore=patch)
        self.masker = NeighbourMasker(cfg.segmentation.scale)
        self.segmenter.check_colours = policy.uses_two_colours  # no work for evidence the policy ignores
        self.tracker = Tracker(cfg.tracking, speed_px_s=cfg.belt.pixels_per_second, direction=cfg.belt.direction)
        self._best_crop: dict[int, tuple[float, np.ndarray]] = {}
        self._stop = threading.Event()
        self._closed = False
        self.items_decided = 0
        self.frames_done = 0
        self.stage_totals_ms = {s: 0.0 for s in STAGES}
        self._last_stats = (0, 0)  # dropped, reconnects already reported
        self.log_summary: dict[str, object] = {}

    # -- control ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the current frame, drain and close (thread/signal safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the loop -----------------------------------------------------------------------
    def run(self, max_frames: int | None = None) -> Iterator[FrameResult]:
        """Process frames until the source ends, ``max_frames`` or :meth:`stop`; then drain."""
        fps_ema = 0.0
        last_wall: float | None = None
        try:
            while not self._stop.is_set() and (max_frames is None or self.frames_done < max_frames):
                t0 = time.perf_counter()
                frame = self.source.read(self.cfg.camera.read_timeout_s)
                t_read = time.perf_counter()
                self._source_stats()
                if frame is None:
                    if self.source.exhausted:
                        break
                    yield self._no_frame()
                    continue
                result = self._process(frame.index, frame.t, frame.image, t0, t_read)
                now = time.perf_counter()
                if last_wall is not None and now > last_wall:
                    inst = 1.0 / (now - last_wall)
                    fps_ema = inst if fps_ema == 0.0 else 0.9 * fps_ema + 0.1 * inst
                last_wall = now
                result.fps = fps_ema
                yield result
        finally:
            final = self.drain()
            self.close()
        if final.decisions:
            yield final

    def _source_stats(self) -> None:
        if self.telemetry is None:
            return
        dropped, reconnects = self.source.stats.dropped, self.source.stats.reconnects
        old_dropped, old_reconnects = self._last_stats
        if dropped > old_dropped:
            self.telemetry.on_dropped_frames(dropped - old_dropped)
        for _ in range(reconnects - old_reconnects):
            self.telemetry.on_camera_reconnect()
        self._last_stats = (dropped, reconnects)

    def _now(self, t_frame: float) -> float:
        """Ejector time: the source clock for files (offline runs), the wall clock for live cameras."""
        return self.clock() if self.source.live else t_frame

    def _crop(self, image: np.ndarray, track: Track, detections: list[Detection]) -> np.ndarray:
        """The classifier's view of ``track`` (seen in this frame): its garment crop, neighbours painted as belt."""
        assert track.detection is not None  # views_to_classify returns tracks detected in this frame
        return self.masker.crop(image, garment_crop_box(image.shape, track.bbox), track.detection, detections)

    def _no_frame(self) -> FrameResult:
        log.debug("no frame from %s", self.cfg.camera.source)
        if self.scheduler is not None and self.source.live:
            self._handle_tick(self.scheduler.tick(self.clock()))  # firings keep their time without frames
        return FrameResult(index=-1, t=self.clock(), image=None, no_frame=True, items_decided=self.items_decided)

    def _process(self, index: int, t: float, image: np.ndarray, t0: float, t_read: float) -> FrameResult:
        timings = {"read": (t_read - t0) * 1e3}
        self._maybe_reload()
        tic = time.perf_counter()
        if self.white_balance is not None:
            self.corrector = self.white_balance.update(image) or self.corrector
        detections = self.segmenter.segment(image, self.corrector.apply if self.white_balance is not None else None,
                                            shape_min_area=self.tracker.shape_evidence_min_area)
        tac = time.perf_counter()
        timings["segment"] = (tac - tic) * 1e3
        if self.encoder is not None and (speed := self.encoder.speed.speed(self.clock())) > 0:
            # new items start at the measured speed (an encoder line config always has px_per_m)
            self.tracker.speed_px_s = speed * (self.cfg.belt.px_per_m or 0.0)
        update = self.tracker.update(detections, index, t)
        tic = time.perf_counter()
        timings["track"] = (tic - tac) * 1e3
        todo = self.tracker.views_to_classify(index)
        crops = [self.corrector.apply(self._crop(image, tr, detections)) for tr in todo]
        tac = time.perf_counter()
        timings["calibrate"] = (tac - tic) * 1e3
        if crops:
            preds = self.classifier.predict(crops)
            for row, (tr, crop) in enumerate(zip(todo, crops)):
                probs = {h: preds.probs[h][row] for h in preds.probs}
                ood = any(bool(preds.ood[h][row]) for h in preds.ood if h in self.policy.ood_heads)
                whole = tr.detection is not None and not tr.detection.edges
                tr.add_view(probs, ood=ood, whole=whole, weight=self.tracker.view_weight(tr), frame=index)
                area = tr.detection.area if tr.detection is not None else 0.0
                if area >= self._best_crop.get(tr.id, (-1.0, None))[0]:
                    self._best_crop[tr.id] = (area, crop)
        tic = time.perf_counter()
        timings["classify"] = (tic - tac) * 1e3
        finished = [(tr, "lost") for tr in update.lost] + [(tr, "line") for tr in self.tracker.due()]
        decided = [self._decide(tr, trigger) for tr, trigger in finished]
        tac = time.perf_counter()
        timings["decide"] = (tac - tic) * 1e3
        items = [self._log_and_schedule(tr, trigger, dec, index, t, t0) for (tr, trigger), dec in zip(finished, decided)]
        if self.scheduler is not None:
            self._handle_tick(self.scheduler.tick(self._now(t)))
        active_ids = {tr.id for tr in self.tracker.tracks}
        for tid in [k for k in self._best_crop if k not in active_ids]:
            del self._best_crop[tid]
        timings["log_actuate"] = (time.perf_counter() - tac) * 1e3
        for stage, ms in timings.items():
            self.stage_totals_ms[stage] += ms
            if self.telemetry is not None:
                self.telemetry.observe_stage(stage, ms / 1e3)
        if self.telemetry is not None:
            self.telemetry.on_frame(time.monotonic())
        self.frames_done += 1
        return FrameResult(
            index=index, t=t, image=image if self.keep_images else None, detections=detections,
            tracks=[self._view(tr) for tr in self.tracker.tracks] if self.keep_images else [],
            decisions=items, timings_ms=timings,
            n_classified=len(crops), items_decided=self.items_decided,
        )

    def _view(self, tr: Track) -> TrackView:
        probs = tr.probs()
        parts = []
        for head in ("fibre", "colour"):
            if head in probs:
                k = int(np.argmax(probs[head]))
                parts.append(f"{self.labels[head][k]} {probs[head][k]:.2f}")
        return TrackView(tr.id, tr.bbox, tr.centroid, tr.confirmed, tr.decided, tr.overlap_frames > 0 or tr.merged,
                         tr.n_views, " ".join(parts))

    def _decide(self, tr: Track, trigger: str) -> tuple[ItemSummary, ItemEvidence, Decision]:
        summary = self.tracker.summary(tr)
        evidence = ItemEvidence(item_id=tr.id, probs=summary.probs, labels=self.labels, ood=summary.ood,
                                overlap=summary.overlap, two_colours=summary.two_colours, cut_off=summary.cut_off,
                                n_views=summary.n_views)
        decision = self.policy.decide(evidence)
        several = summary.overlap or summary.two_colours
        if summary.n_views == 0 and (several or summary.cut_off):
            # never classifiable because it was never seen alone and whole: say why
            decision = self.policy.reject("overlap" if several else "cut_off", decision)
        if trigger in ("lost", "shutdown"):
            decision = self.policy.reject(trigger, decision)
        return summary, evidence, decision

    def _log_and_schedule(self, tr: Track, trigger: str, decided: tuple[ItemSummary, ItemEvidence, Decision],
                          index: int, t: float, t0: float) -> ItemDecision:
        summary, evidence, decision = decided
        plan = None
        if self.scheduler is not None:
            plan = self.scheduler.plan(tr.id, decision, t, self._now(t))
            decision = plan.decision
        latency_ms = (time.perf_counter() - t0) * 1e3
        uid = None
        if self.decision_log is not None:
            crop = self._best_crop.pop(tr.id, (0.0, None))[1]
            uid = self.decision_log.record(evidence, decision, latency_ms=latency_ms, crop=crop, t_decision=t)
        if plan is not None and self.scheduler is not None:
            self.scheduler.commit(plan)  # only after the row is committed
        if self.telemetry is not None:
            self.telemetry.on_decision(decision)
            self.telemetry.observe_decision_latency(latency_ms / 1e3)
        self.items_decided += 1
        log.debug("item %d -> %s (%s)", tr.id, decision.bin_name, decision.reason)
        return ItemDecision(tr.id, uid, index, t, trigger, decision, summary, latency_ms, self.policy.reject_bin)

    def _handle_tick(self, result: Any) -> None:
        for firing in result.missed:
            if self.decision_log is not None and firing.item_id is not None:
                self.decision_log.mark_missed(firing.item_id, "late")
            if self.telemetry is not None:
                self.telemetry.on_missed(firing.bin, "late")

    def _maybe_reload(self) -> None:
        if self.watcher is None:
            return
        new = self.watcher.poll()
        if new is None:
            return
        try:
            policy = Policy(self.policy.config, new.metadata.labels)
            _apply_ood_quantile(new, policy)
        except Exception as exc:  # labels (or OOD table) no longer fit the bins file: keep the old model
            log.error("hot reload rejected: %s", exc)
            return
        self.classifier, self.policy = new, policy
        self.labels = {h: list(v) for h, v in new.metadata.labels.items()}
        self.segmenter.check_colours = policy.uses_two_colours
        mid = model_id(new)
        if self.decision_log is not None:
            self.decision_log.set_model(mid)
        if self.telemetry is not None:
            self.telemetry.set_model(mid)
        log.info("now serving %s", mid)

    # -- shutdown -----------------------------------------------------------------------
    def drain(self) -> FrameResult:
        """Decide every item still in flight (reject ``shutdown``) and drop unsent firings."""
        t0 = time.perf_counter()
        t = self.tracker.last_t if self.tracker.last_t is not None else 0.0
        finished = [(tr, "shutdown") for tr in self.tracker.drain()]
        items = [self._log_and_schedule(tr, trig, self._decide(tr, trig), -1, t, t0) for tr, trig in finished]
        if self.scheduler is not None:
            if self.source.exhausted and not self.source.live and not self._stop.is_set():
                self._flush_offline(t)
            for firing in self.scheduler.shutdown():
                if self.decision_log is not None and firing.item_id is not None:
                    self.decision_log.mark_missed(firing.item_id, "shutdown")
                if self.telemetry is not None:
                    self.telemetry.on_missed(firing.bin, "shutdown")
        if items:
            log.info("shutdown: %d item(s) in flight sent to reject", len(items))
        return FrameResult(index=-1, t=t, image=None, decisions=items, items_decided=self.items_decided)

    def _flush_offline(self, t: float) -> None:
        """End of a recorded clip: the belt runs on, so fire what is pending on the simulated clock."""
        assert self.scheduler is not None
        step = self.scheduler.config.dispatch_horizon_ms / 2000.0
        for _ in range(100_000):
            if not self.scheduler.pending:
                return
            t += step
            self._handle_tick(self.scheduler.tick(t))

    def stage_means_ms(self) -> dict[str, float]:
        """Mean milliseconds per frame of each stage so far."""
        n = max(1, self.frames_done)
        return {stage: total / n for stage, total in self.stage_totals_ms.items()}

    def close(self) -> None:
        """Release source, belt encoder, actuator, log and metrics endpoint (idempotent).

        The decision log's summary is kept in :attr:`log_summary` before the log is closed.
        """
        if self._closed:
            return
        self._closed = True
        self.source.close()
        if self.encoder is not None:
            self.encoder.close()
        if self.scheduler is not None:
            self.scheduler.actuator.close()
        if self.decision_log is not None:
            self.log_summary = self.decision_log.summary()
            self.decision_log.close()
        if self.telemetry is not None:
            self.telemetry.close()


def build_sorter(
    cfg: LineConfig,
    *,
    source: str | None = None,
    model: str | Path | None = None,
    max_frames: int | None = None,
    keep_images: bool = True,
    actuator: Actuator | None = None,
) -> SorterLoop:
    """Wire a :class:`SorterLoop` from a line config (``source``/``model`` override the config)."""
    model_path = Path(model) if model is not None else cfg.model.path
    if model_path is None:
        raise ConfigError("no model: set model.path in the line config or pass --model")
    classifier = OnnxClassifier.load(model_path, threads=cfg.model.threads)
    classifier.self_check()
    policy_cfg = load_policy_config(cfg.policy.bins)
    policy = Policy(policy_cfg, classifier.metadata.labels)
    cam = cfg.camera
    frames = open_source(source or cam.source, realtime=cam.realtime, fps=cam.fps, width=cam.width,
                         height=cam.height, backoff=cam.reconnect.backoff(), max_frames=max_frames)
    telemetry = Telemetry(cfg.telemetry, bin_names=policy_cfg.bin_names(), reject_bin=policy_cfg.reject.id)
    mid = model_id(classifier)
    telemetry.set_model(mid)
    decision_log = DecisionLog(cfg.log, model_id=mid, reject_bin=policy_cfg.reject.id)
    if actuator is None:
        actuator = make_actuator(cfg.actuator, bin_addresses(policy_cfg.bins),
                                 on_missed=lambda f, why: decision_log.mark_missed(f.item_id, why)
                                 if f.item_id is not None else None,
                                 on_connection=telemetry.on_actuator_connection)
    speed, encoder = belt_speed(cfg.belt, live=frames.live, on_status=telemetry.on_encoder)
    scheduler = EjectorScheduler(cfg.ejector, policy_cfg, actuator, speed, px_per_m=cfg.belt.px_per_m)
    watcher = ModelWatcher(model_path, threads=cfg.model.threads, poll_s=cfg.model.reload_poll_s) \
        if cfg.model.hot_reload else None
    telemetry.start()
    loop = SorterLoop(cfg, frames, classifier, policy, decision_log=decision_log, scheduler=scheduler,
                      telemetry=telemetry, watcher=watcher, encoder=encoder, keep_images=keep_images)
    if encoder is not None:
        encoder.on_gap = partial(drop_held_firings, scheduler, decision_log, telemetry)
        encoder.start()
    return loop


@dataclass
class ServeSummary:
    """What a serve run did: frames, items, bins, reject rate, speed and latency."""

    frames: int
    items: int
    wall_s: float
    fps: float
    stage_ms: dict[str, float]
    log: dict[str, object]
    no_frame_events: int
    dropped_frames: int
    camera_reconnects: int
    video: Path | None = None


def serve_line(
    cfg: LineConfig,
    *,
    source: str | None = None,
    model: str | Path | None = None,
    max_frames: int | None = None,
    video_out: str | Path | None = None,
    progress: bool = True,
    on_decision: Callable[[ItemDecision], None] | None = None,
) -> ServeSummary:
    """Run a line until the source ends, ``max_frames``, or SIGINT/SIGTERM (graceful drain).

    ``on_decision`` sees every item decision (the demo scores them against ground truth).
    """
    loop = build_sorter(cfg, source=source, model=model, max_frames=max_frames, keep_images=video_out is not None)
    writer = VideoWriter(video_out, loop.source.fps or cfg.camera.fps or 30.0) if video_out else None
    restore = install_stop_handlers(loop)
    axis = 0 if cfg.belt.direction[1] == "x" else 1
    no_frames = 0
    start = time.perf_counter()
    bar = tqdm(desc=f"sorting {cfg.name}", unit="frame", disable=not progress, total=max_frames)
    try:
        for result in loop.run(max_frames):
            if on_decision is not None:
                for item in result.decisions:
                    on_decision(item)
            if result.no_frame:
                no_frames += 1
                bar.set_postfix_str("NO CAMERA FRAMES", refresh=True)
                continue
            if result.index < 0:
                continue  # the shutdown drain: decisions only
            bar.update(1)
            if result.index % 30 == 0:
                bar.set_postfix(items=result.items_decided, fps=f"{result.fps:.0f}")
            if writer is not None:
                writer.write(annotate_frame(result, decision_line_px=cfg.tracking.decision_line_px, axis=axis))
    finally:
        bar.close()
        restore()
        loop.close()
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - start
    return ServeSummary(
        frames=loop.frames_done, items=loop.items_decided, wall_s=wall,
        fps=loop.frames_done / wall if wall > 0 else 0.0, stage_ms=loop.stage_means_ms(), log=loop.log_summary,
        no_frame_events=no_frames, dropped_frames=loop.source.stats.dropped,
        camera_reconnects=loop.source.stats.reconnects, video=Path(video_out) if video_out else None,
    )


def install_stop_handlers(loop: SorterLoop) -> Callable[[], None]:
    """SIGINT/SIGTERM -> graceful :meth:`SorterLoop.stop` (a second Ctrl-C aborts); returns an undo."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: object) -> None:
        if loop.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("signal %d: stopping after this frame, draining items in flight", signum)
        loop.stop()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
