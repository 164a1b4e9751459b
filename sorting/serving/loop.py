"""The sorter loop: frames -> segment -> track -> classify -> decide -> log -> eject.

:class:`SorterLoop` is a generator over frames (:meth:`SorterLoop.run`) that yields one
:class:`~sorting.serving.records.FrameResult` per frame (detections, tracks, decisions, per-stage
timings) for the annotator, a benchmark or a test. Memory is bounded: it holds only the tracks in
view (each with its best crop) and the frame being processed. Build it with
:func:`sorting.serving.builder.build_sorter`.

Per frame, in order (the stage names of the timings and metrics):

``wait_frame``    the wait for the next frame from the source (live sources may return "no frame":
                  the loop then yields a ``no_frame`` result, keeps the ejector ticking, and waits)
``segment``       belt model -> detections (with continuous white balance: re-measure the reference
                  patch every few frames and segment the white-balanced frame)
``track``         association, lost items
``nir``           (a line with a spectrometer) its new scans given to the tracked garments
                  (:class:`~sorting.serving.nir_stage.NirStage`)
``crop``          crop the items due for a view (neighbouring garments painted out as belt,
                  :class:`~sorting.serving.segmentation.NeighbourMasker`) and colour-correct the crops
``classify``      ONE :meth:`Classifier.classify` call for all crops of the frame
``decide``        the policy decides the items at the decision line (or lost); with a spectrometer,
                  each item's scans are read once and fused with the camera's view
``log_and_fire``  decision log row (committed) BEFORE the ejector/actuator hears of it; ejector tick

Shutdown (:meth:`SorterLoop.stop`, e.g. on SIGTERM/Ctrl-C): the loop finishes the current frame,
then decides every item still on the belt upstream of the decision line as reject ``shutdown``
(their evidence is incomplete and the line is stopping; their predicted labels and confidences are
still logged for review), drops firings not yet handed to the actuator (logged as missed
``shutdown``: those items ride to the end-of-belt reject) and closes the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from sorting.datasets.preprocess import garment_crop_box
from sorting.logs import mask_credentials
from sorting.serving.classifier import Classifier, CropBatch, ModelWatcher, apply_ood_quantile
from sorting.serving.clock import LineClock
from sorting.serving.decision_log import DecisionLog, Stored
from sorting.serving.ejector import EjectorScheduler, EjectorTicker, Plan, TickResult
from sorting.serving.encoder import EncoderReader
from sorting.serving.line_config import LineConfig
from sorting.serving.nir_stage import NirStage, ScanOutcome
from sorting.serving.fusion import NirEvidence
from sorting.serving.policy import Decision, Ended, ItemEvidence, Policy, RejectReason
from sorting.serving.records import FrameResult, ItemDecision, TrackView
from sorting.serving.line_segmentation import LineSegmentation
from sorting.serving.non_garment import GARMENT
from sorting.serving.segmentation import Detection, FrameError
from sorting.serving.sources import Frame, FrameSource
from sorting.serving.telemetry import Telemetry
from sorting.serving.timing import StageTimer
from sorting.serving.view_watch import ViewWatch
from sorting.serving.tracking import ItemSummary, Track, make_tracker, union_box

log = logging.getLogger(__name__)

STAGES = ("wait_frame", "segment", "track", "crop", "classify", "decide", "log_and_fire")
NIR_STAGE = "nir"  # after "track", on lines with a spectrometer


class _Finished(NamedTuple):
    """An item whose track ended, with what the policy decided about it."""

    track: Track
    ended: Ended
    summary: ItemSummary
    evidence: ItemEvidence
    decision: Decision
    camera_decision: Decision | None = None  # what the camera alone decides (lines with a spectrometer)


class SorterLoop:
    """One sorting line at work (see the module docstring); built by :func:`~sorting.serving.builder.build_sorter`."""

    def __init__(
        self,
        cfg: LineConfig,
        source: FrameSource,
        classifier: Classifier,
        policy: Policy,
        *,
        decision_log: DecisionLog,
        scheduler: EjectorScheduler,
        telemetry: Telemetry,
        clock: LineClock,
        watcher: ModelWatcher | None = None,
        encoder: EncoderReader | None = None,
        keep_images: bool = True,
        nir: NirStage | None = None,
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
        self.labels = {h: list(v) for h, v in classifier.labels.items()}
        apply_ood_quantile(classifier, policy.config)
        self.stage = LineSegmentation(cfg, fps=source.fps)  # exactly what evaluate-detection measures
        self.segmenter = self.stage.segmenter
        self.segmenter.check_colours = policy.uses_two_colours  # no work for evidence the policy ignores
        non_garment = cfg.segmentation.non_garment
        self._ignore_non_garments = non_garment is not None and non_garment.route == "ignore"
        self.tracker = make_tracker(cfg.tracking, speed_px_s=cfg.belt.pixels_per_second, direction=cfg.belt.direction)
        self.nir = nir
        self._nir_alarm = False
        self._nir_since: float | None = None  # when the loop began listening to the spectrometer
        self.timer = StageTimer(STAGES if nir is None else (*STAGES[:3], NIR_STAGE, *STAGES[3:]))
        # on wall time a thread keeps the firings on time while the loop waits for frames
        self._ticker = EjectorTicker(scheduler, clock=clock.now, on_result=self._on_tick) \
            if clock.mode == "wall" else None
        self._speed_alarm = False
        self._log_alarm = False
        self._next_health_check = 0.0
        self._camera_alarm = False
        self._segmented_t: float | None = None  # time of the last frame the segmentation could use
        self._view_watch = ViewWatch(telemetry, cfg.camera.read_timeout_s)  # frames that come but show nothing usable
        self._refused_reloads = 0
        self._held: dict[str, Plan] = {}  # product decisions whose row waits in the log's backlog
        self._stop = threading.Event()
        self._closed = False
        self.items_decided = 0
        self._last_stats = (0, 0, 0)  # dropped, unreadable, reconnects already reported
        self.log_summary: dict[str, object] = {}

    # -- control ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the current frame, drain and close (thread/signal safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def frames_done(self) -> int:
        return self.timer.frames

    # -- the loop -----------------------------------------------------------------------
    def run(self, max_frames: int | None = None) -> Iterator[FrameResult]:
        """Process frames until the source ends, ``max_frames`` or :meth:`stop`; then drain."""
        fps_ema = 0.0
        last_wall: float | None = None
        if self._ticker is not None:
            self._ticker.start()
        try:
            while not self._stop.is_set() and (max_frames is None or self.frames_done < max_frames):
                t0 = time.perf_counter()
                frame = self.source.read(self.cfg.camera.read_timeout_s)
                waited_ms = (time.perf_counter() - t0) * 1e3
                self._source_stats()
                if frame is None:
                    if self.source.exhausted:
                        break
                    yield self._no_frame()
                    continue
                result = self._process(frame, t0, waited_ms)
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
        stats = self.source.stats
        now = (stats.dropped, stats.unreadable, stats.reconnects)
        if now == self._last_stats:
            return
        dropped, unreadable, reconnects = (new - old for new, old in zip(now, self._last_stats))
        if dropped:
            self.telemetry.on_dropped_frames(dropped)
        if unreadable:
            self.telemetry.unreadable_frames.inc(unreadable)
        for _ in range(reconnects):
            self.telemetry.on_camera_reconnect()
        self._last_stats = now

    def _no_frame(self) -> FrameResult:
        log.debug("no frame from %s", mask_credentials(self.cfg.camera.source))
        if not self._camera_alarm:
            self._camera_alarm = True
            self.telemetry.set_alarm("camera", True, f"no frame from the camera for {self.cfg.camera.read_timeout_s:g} s"
                                     + ("" if self.source.stats.connected else " (reconnecting)"))
        self._check_belt_speed()
        self._flush_log()
        self._check_health()
        return FrameResult(index=-1, t=self.clock.now(), image=None, no_frame=True, items_decided=self.items_decided)

    def _check_health(self) -> None:
        """Once a second: the PLC link and the decision log's disk, as alarms (the camera's is raised by a frame
        that does not come and cleared by the next that does)."""
        now = time.monotonic()
        if now < self._next_health_check:
            return
        self._next_health_check = now + 1.0
        connected = self.scheduler.actuator.connected
        self.telemetry.set_alarm("plc", not connected, "actuator link down: firings are missed" if not connected
                                 else "actuator link up")
        self.telemetry.check_disk(self.decision_log.path.parent)

    def _check_belt_speed(self) -> None:
        """Raise or clear the belt-speed alarm: nobody measures the belt, so every item goes to reject."""
        measured = self.scheduler.speed_source.measured(self.clock.now())
        if measured == (not self._speed_alarm):
            return
        self._speed_alarm = not measured
        self.telemetry.set_alarm("belt_speed", self._speed_alarm,
                                 "belt speed unknown (encoder silent): every item goes to reject" if not measured
                                 else "belt speed measured again")

    def _process(self, frame: Frame, t0: float, waited_ms: float) -> FrameResult:
        timer = self.timer
        timer.start_frame()
        timer.add("wait_frame", waited_ms)
        self.clock.advance(frame.t)
        if self._camera_alarm:
            self._camera_alarm = False
            self.telemetry.set_alarm("camera", False, "frames arrive again")
        self._check_belt_speed()
        self._flush_log()
        self._check_health()
        self._maybe_reload()
        with timer.stage("segment"):
            detections = self._segment(frame.image, frame.t)
        if detections is None:  # a frame the segmentation cannot use: skipped, the tracks wait for the next
            return FrameResult(index=frame.index, t=frame.t, image=frame.image if self.keep_images else None,
                               timings_ms=dict(timer.frame_ms), items_decided=self.items_decided)
        with timer.stage("track"):
            update = self.tracker.update(detections, frame.index, frame.t)
        scans = self._scans(frame) if self.nir is not None else []
        with timer.stage("crop"):
            todo = self.tracker.views_to_classify(frame.index)
            crops = [self.stage.corrector.apply(self._crop(frame.image, tr, detections)) for tr in todo]
        with timer.stage("classify"):
            self._classify(frame, todo, crops)
        with timer.stage("decide"):
            ended: list[tuple[Track, Ended]] = [(tr, "lost") for tr in update.lost]
            ended += [(tr, "line") for tr in self.tracker.due()]
            nir = self.nir.evidence([tr for tr, _ in ended]) if self.nir is not None and ended else {}
            finished = [self._decide(tr, end, nir.get(tr.id)) for tr, end in ended]
        with timer.stage("log_and_fire"):
            items = [self._log_and_schedule(item, frame.index, frame.t, t0) for item in finished]
            if self._ticker is None:
                self._on_tick(self.scheduler.tick(self.clock.now()))
        for stage, ms in timer.frame_ms.items():
            self.telemetry.observe_stage(stage, ms / 1e3)
        self.telemetry.on_frame(time.monotonic())
        return FrameResult(
            index=frame.index, t=frame.t, image=frame.image if self.keep_images else None, detections=detections,
            tracks=[self._view(tr) for tr in self.tracker.tracks] if self.keep_images else [],
            decisions=items, timings_ms=dict(timer.frame_ms), n_classified=len(crops),
            items_decided=self.items_decided, scans=scans,
        )

    def _scans(self, frame: Frame) -> list[ScanOutcome]:
        """The ``nir`` stage: the spectrometer's new scans given to the tracked garments, counted; its alarm
        when no scan came for ``spectrometer.silent_s`` (the items are then decided without a reading)."""
        assert self.nir is not None and self.cfg.spectrometer is not None
        with self.timer.stage(NIR_STAGE):
            now = self.clock.now()
            outcomes = self.nir.update(now, frame.t, self.tracker.tracks, frame.image.shape[:2],
                                       self.tracker.speed_px_s)
            if outcomes:
                self.telemetry.on_scans(Counter(o.outcome for o in outcomes))
            if self._nir_since is None:
                self._nir_since = now
            last = self.nir.last_scan_t if self.nir.last_scan_t is not None else self._nir_since
            silent = now - last > self.cfg.spectrometer.silent_s
            if silent != self._nir_alarm:
                self._nir_alarm = silent
                self.telemetry.set_alarm("spectrometer", silent, "no scan from the spectrometer: items are decided "
                                         "as the bins file's nir.missing says" if silent else "scans arrive again")
        return outcomes

    def _segment(self, image: np.ndarray, t: float) -> list[Detection] | None:
        """This frame's detections (None: a frame the segmentation cannot use, counted and skipped). The belt's
        travel since the last usable frame, at the speed the tracker has (measured, with an encoder), tells the
        textile check where last frame's things are now."""
        moved = self.tracker.speed_px_s * max(0.0, t - self._segmented_t) if self._segmented_t is not None else 0.0
        try:
            detections = self.stage.segment(image, shape_min_area=self.tracker.shape_evidence_min_area,
                                            moved_px=moved)
        except FrameError as exc:
            self.source.stats.unreadable += 1
            self._view_watch.unusable(self.clock.now(), str(exc))
            return None
        self._view_watch.usable(self.clock.now())
        self._segmented_t = t
        if self._ignore_non_garments:
            ignored = Counter(d.kind for d in detections if d.kind != GARMENT)
            for kind, n in ignored.items():
                self.telemetry.ignored_detections.labels(kind=kind).inc(n)
            if ignored:
                detections = [d for d in detections if d.kind == GARMENT]
        if self.encoder is not None and (speed := self.encoder.speed.speed(self.clock.now())) > 0:
            # new items start at the measured speed (an encoder line config always has px_per_m)
            self.tracker.set_belt_speed(speed * (self.cfg.belt.px_per_m or 0.0))
        return detections

    def _crop(self, image: np.ndarray, track: Track, detections: list[Detection]) -> np.ndarray:
        """The classifier's view of ``track`` (seen in this frame): its garment crop, neighbours painted as belt; the
        whole blob's box where the line trims garment boxes (with any pieces the track absorbed)."""
        assert track.detection is not None  # views_to_classify returns tracks detected in this frame
        whole = track.detection.whole_bbox
        box = track.bbox if whole is None else union_box(track.bbox, whole)
        return self.stage.masker.crop(image, garment_crop_box(image.shape, box), track.detection, detections)

    def _classify(self, frame: Frame, todo: list[Track], crops: list[np.ndarray]) -> None:
        """One classifier call for the frame's crops; each view is folded into its track's evidence."""
        if not crops:
            return
        dets = [tr.detection for tr in todo]
        scores = self.classifier.classify(CropBatch(frame.index, frame.t, crops, dets))  # type: ignore[arg-type]
        for row, (tr, crop) in enumerate(zip(todo, crops)):
            probs = {h: scores.probs[h][row] for h in scores.probs}
            ood_heads = [h for h in scores.ood if h in self.policy.ood_heads and bool(scores.ood[h][row])]
            det = tr.detection
            whole = det is not None and not det.edges
            tr.views.add(probs, ood=bool(ood_heads), whole=whole, weight=self.tracker.view_weight(tr),
                         frame=frame.index, crop=crop, area=det.area if det is not None else 0.0, ood_heads=ood_heads)

    def _view(self, tr: Track) -> TrackView:
        probs = tr.views.probs()
        parts = []
        for head in ("fibre", "colour"):
            if head in probs:
                k = int(np.argmax(probs[head]))
                parts.append(f"{self.labels[head][k]} {probs[head][k]:.2f}")
        return TrackView(tr.id, tr.bbox, tr.centroid, tr.confirmed, tr.decided, tr.shape.signs > 0 or tr.merged,
                         tr.views.n, " ".join(parts), self.nir.scans_of(tr.id) if self.nir is not None else 0)

    def _decide(self, tr: Track, ended: Ended, nir: NirEvidence | None = None) -> _Finished:
        """The policy's decision for ``tr``; on a line with a spectrometer also what the camera alone decides."""
        summary = self.tracker.summary(tr)
        if self.nir is not None and nir is None:
            nir = NirEvidence(scans=0)
        evidence = ItemEvidence(item_id=tr.id, probs=summary.probs, labels=self.labels, ood=summary.ood,
                                overlap=summary.overlap, two_colours=summary.two_colours, cut_off=summary.cut_off,
                                n_views=summary.n_views, ended=ended, not_garment=summary.not_garment, nir=nir,
                                ood_heads=summary.ood_heads)
        camera = self.policy.decide(replace(evidence, nir=None)) if nir is not None else None
        return _Finished(tr, ended, summary, evidence, self.policy.decide(evidence), camera)

    def _log_and_schedule(self, item: _Finished, index: int, t: float, t0: float) -> ItemDecision:
        """Plan the firing, persist the (final) decision, and only then hand the firing to the scheduler.

        A row the log holds in its backlog (database locked or full) keeps its firing back until the
        row is stored (:meth:`_flush_log`); with the backlog full the item goes to reject.
        """
        tr = item.track
        decision = item.decision
        if self.decision_log.full:
            decision = self.policy.reject(RejectReason.LOG_UNAVAILABLE, decision)
        plan = self.scheduler.plan(tr.id, decision, t, self.clock.now())
        latency_ms = (time.perf_counter() - t0) * 1e3
        uid, stored = self.decision_log.record(item.evidence, plan.decision, latency_ms=latency_ms,
                                               crop=tr.views.take_best_crop(), t_decision=t)
        if stored is Stored.STORED:
            self.scheduler.commit(plan)  # only after the row is committed
        elif stored is Stored.HELD:
            self._held[uid] = plan
            self._set_log_alarm()
        self.telemetry.on_decision(plan.decision)
        self.telemetry.observe_decision_latency(latency_ms / 1e3)
        self.items_decided += 1
        log.debug("item %d -> %s (%s)", tr.id, plan.decision.bin_name, plan.decision.reason)
        return ItemDecision(tr.id, uid, index, t, item.ended, plan.decision, item.summary, latency_ms,
                            self.policy.reject_bin, item.camera_decision, item.evidence.nir)

    def _flush_log(self, *, patience_s: float | None = None) -> None:
        """Write the log's backlog if it has one; fire the held items whose row is now stored."""
        if not self.decision_log.backlog:
            return
        stored = self.decision_log.settle(patience_s) if patience_s is not None else self.decision_log.flush()
        for uid in stored:
            plan = self._held.pop(uid, None)
            if plan is not None:
                self.scheduler.commit(plan)  # too late by now? the scheduler reports it missed 'late'
        self._set_log_alarm()

    def _set_log_alarm(self) -> None:
        held = self.decision_log.backlog > 0
        if held != self._log_alarm:
            self._log_alarm = held
            self.telemetry.set_alarm("decision_log", held, "decision log takes no writes: rows held in memory, "
                                     "items wait to be stored before they are fired" if held else "decision log "
                                     "takes writes again")

    def _on_tick(self, result: TickResult) -> None:
        """Mark the firings the scheduler could not make (the ticker thread calls this on wall time)."""
        for firing, reason in result.missed:
            if firing.item_id is not None:
                self.decision_log.mark_missed(firing.item_id, reason)
            self.telemetry.on_missed(firing.bin, reason)

    def _maybe_reload(self) -> None:
        if self.watcher is None:
            return
        new = self.watcher.poll()
        if self.watcher.rejected != self._refused_reloads:
            self._refused_reloads = self.watcher.rejected
            self.telemetry.model_rejected(str(self.watcher.path), self.watcher.last_error)
        if new is None:
            return
        try:
            policy = Policy(self.policy.config, new.labels)
            apply_ood_quantile(new, policy.config)
        except Exception as exc:  # labels (or OOD table) no longer fit the bins file: keep the old model
            log.error("hot reload rejected: %s", exc)
            self.telemetry.model_rejected(str(self.watcher.path), str(exc))
            return
        self.classifier, self.policy = new, policy
        self.labels = {h: list(v) for h, v in new.labels.items()}
        self.segmenter.check_colours = policy.uses_two_colours
        if self.nir is not None:
            self.nir.set_camera_fibres(self.labels.get("fibre"))
        self.decision_log.set_model(new.model_id)
        self.telemetry.model_loaded(new)
        log.info("now serving %s", new.model_id)

    # -- shutdown -----------------------------------------------------------------------
    def drain(self) -> FrameResult:
        """Decide every item still in flight (reject ``shutdown``) and drop unsent firings."""
        t0 = time.perf_counter()
        t = self.tracker.last_t if self.tracker.last_t is not None else 0.0
        in_flight = self.tracker.drain()
        nir = self.nir.evidence(in_flight) if self.nir is not None and in_flight else {}
        items = [self._log_and_schedule(self._decide(tr, "shutdown", nir.get(tr.id)), -1, t, t0) for tr in in_flight]
        self._flush_log(patience_s=5.0)
        if self._ticker is not None:
            self._ticker.stop()
        elif self.source.exhausted and not self._stop.is_set():
            self._flush_offline(t)
        for firing in self.scheduler.shutdown():
            if firing.item_id is not None:
                self.decision_log.mark_missed(firing.item_id, "shutdown")
            self.telemetry.on_missed(firing.bin, "shutdown")
        if items:
            log.info("shutdown: %d item(s) in flight sent to reject", len(items))
        return FrameResult(index=-1, t=t, image=None, decisions=items, items_decided=self.items_decided)

    def _flush_offline(self, t: float) -> None:
        """End of a clip sorted on frame time: the belt runs on, so fire what is pending as its time comes."""
        step = self.scheduler.config.dispatch_horizon_ms / 2000.0
        for _ in range(100_000):
            if not self.scheduler.pending:
                return
            t += step
            self.clock.advance(t)
            self._on_tick(self.scheduler.tick(self.clock.now()))

    def stage_means_ms(self) -> dict[str, float]:
        """Mean milliseconds per frame of each stage so far; on a line with a textile check, the segment stage's
        parts too (``segment: belt model``, ``segment: textile check``, ``segment: carve``), right after it."""
        means = self.timer.means_ms()
        if self.stage.textile_check is None:
            return means
        parts = {f"segment: {name}": ms for name, ms in self.stage.timer.means_ms().items()}
        out: dict[str, float] = {}
        for stage, ms in means.items():
            out[stage] = ms
            if stage == "segment":
                out.update(parts)
        return out

    def close(self) -> None:
        """Release source, belt encoder, actuator, log and metrics endpoint (idempotent).

        The decision log's summary is kept in :attr:`log_summary` before the log is closed.
        """
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.stop()
        self.source.close()
        if self.nir is not None:
            self.nir.close()
        if self.encoder is not None:
            self.encoder.close()
        self.scheduler.actuator.close()
        self.log_summary = self.decision_log.summary()
        self.decision_log.close()
        self.telemetry.close()
