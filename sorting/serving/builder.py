"""The one wiring of a sorting line: :func:`build_sorter`.

``serve``, ``bench-sorter``, the demo and the tests all build their :class:`SorterLoop` here.
Each part can be handed in (a test's fake classifier, the benchmark's looping video and GT oracle,
a simulated actuator, a fixed speed); what is not handed in is made from the line config. The
decision log, the metrics and the ejector scheduler are always the line config's.

Parts are made in an order that fails early and leaves nothing running on failure: the model and
the bins file are checked first, the camera is opened last, and whatever was opened before a
start-up error is closed again before the error reaches the caller.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from functools import partial

from sorting.errors import ConfigError
from sorting.models.spectral_onnx import SpectralClassifier
from sorting.serving.actuators import Actuator, Firing, bin_addresses, make_actuator
from sorting.serving.classifier import Classifier, ModelClassifier, ModelWatcher
from sorting.serving.clock import LineClock
from sorting.serving.decision_log import DecisionLog
from sorting.serving.ejector import EjectorScheduler, FixedSpeed, SpeedSource
from sorting.serving.encoder import EncoderReader, EncoderStatusCallback
from sorting.serving.line_config import BeltConfig, LineConfig
from sorting.serving.loop import SorterLoop
from sorting.serving.nir_stage import NirStage
from sorting.serving.policy import Policy, load_policy_config
from sorting.serving.sources import FrameSource, open_source
from sorting.serving.spectrometer import Spectrometer, open_spectrometer
from sorting.serving.spectrometer_sim import clip_ground_truth_path, open_simulated
from sorting.serving.telemetry import Telemetry

log = logging.getLogger(__name__)


def build_sorter(
    cfg: LineConfig,
    *,
    source: FrameSource | None = None,
    classifier: Classifier | None = None,
    actuator: Actuator | None = None,
    speed: SpeedSource | None = None,
    keep_images: bool = True,
    max_frames: int | None = None,
    spectrometer: Spectrometer | None = None,
) -> SorterLoop:
    """Wire a :class:`SorterLoop` for ``cfg``; parts not given come from the config.

    ``source``: default ``camera.source``; ``classifier``: default the model at ``model.path``
    (hot-reloaded when ``model.hot_reload``); ``actuator``: default ``actuator``; ``speed``:
    default ``belt`` (its encoder when the source is live); ``spectrometer``: default ``spectrometer.source``
    (lines with a ``spectrometer`` section). ``max_frames`` caps a source opened here.
    The line's clock (:mod:`sorting.serving.clock`) follows the source: wall time when it is paced.
    A recording that drives a physical actuator is played at its frame rate.
    """
    with ExitStack() as undo:
        watcher = None
        if classifier is None:
            classifier, watcher = _load_model(cfg)
        policy_cfg = load_policy_config(cfg.policy.bins)
        policy = Policy(policy_cfg, classifier.labels)
        nir_model = _load_nir_model(cfg)
        telemetry = Telemetry(cfg.telemetry, bin_names=policy_cfg.bin_names(), reject_bin=policy_cfg.reject.id)
        telemetry.model_loaded(classifier)
        decision_log = DecisionLog(cfg.log, model_id=classifier.model_id, reject_bin=policy_cfg.reject.id)
        undo.callback(decision_log.close)
        clock = LineClock("wall")  # until the source is known: a physical actuator only knows wall time
        if actuator is None:
            actuator = make_actuator(cfg.actuator, bin_addresses(policy_cfg.bins), clock=clock.now,
                                     on_missed=partial(_count_miss, decision_log, telemetry),
                                     on_connection=telemetry.on_actuator_connection)
        undo.callback(actuator.close)
        if source is None:
            source = _open_camera(cfg, paced=actuator.real_time, max_frames=max_frames)
        undo.callback(source.close)
        if actuator.real_time and not source.paced:
            raise ConfigError("a physical actuator needs frames at the belt's pace: play the recording in real time "
                              "(camera.realtime: true) or use actuator.kind simulated/jsonl")
        clock.mode = "wall" if source.paced else "frame"
        nir = None
        if nir_model is not None:
            if spectrometer is None:
                spectrometer = _open_spectrometer(cfg, clock, source)
            undo.callback(spectrometer.close)
            nir = NirStage(spectrometer, nir_model, cfg.spot_geometry(), axis=0 if cfg.belt.direction[1] == "x" else 1,
                           camera_fibres=classifier.labels.get("fibre"), rule=policy_cfg.nir.fusion,
                           outline_scale=cfg.segmentation.scale,
                           future_tolerance_s=cfg.spectrometer.future_tolerance_s)  # type: ignore[union-attr]
        encoder = None
        if speed is None:
            speed, encoder = belt_speed(cfg.belt, live=source.live, clock=clock, on_status=telemetry.on_encoder)
        scheduler = EjectorScheduler(cfg.ejector, policy_cfg, actuator, speed, px_per_m=cfg.belt.px_per_m)
        telemetry.start()
        undo.callback(telemetry.close)
        loop = SorterLoop(cfg, source, classifier, policy, decision_log=decision_log, scheduler=scheduler,
                          telemetry=telemetry, clock=clock, watcher=watcher, encoder=encoder, keep_images=keep_images,
                          nir=nir)
        if encoder is not None:
            encoder.start()
        undo.pop_all()  # the loop owns every part now and closes them
    return loop


def _open_camera(cfg: LineConfig, *, paced: bool, max_frames: int | None) -> FrameSource:
    """The line's camera; a recording is played at its frame rate when ``paced`` (a physical actuator)."""
    cam = cfg.camera
    realtime = cam.realtime or paced
    if paced and not cam.realtime:
        log.warning("the actuator drives real outputs: playing recordings at their frame rate")
    return open_source(cam.source, realtime=realtime, fps=cam.fps, width=cam.width, height=cam.height,
                       backoff=cam.reconnect.backoff(), max_frames=max_frames)


def _load_model(cfg: LineConfig) -> tuple[ModelClassifier, ModelWatcher | None]:
    path = cfg.model.path
    if path is None:
        raise ConfigError("no model: set model.path in the line config or pass --model")
    classifier = ModelClassifier.load(path, threads=cfg.model.threads)
    watcher = ModelWatcher(path, threads=cfg.model.threads, poll_s=cfg.model.reload_poll_s) \
        if cfg.model.hot_reload else None
    return classifier, watcher


def _load_nir_model(cfg: LineConfig) -> SpectralClassifier | None:
    """The spectrometer's spectral model (None: the line has no spectrometer); ModelFileError when it is not one."""
    if cfg.spectrometer is None:
        return None
    return SpectralClassifier.load(cfg.spectrometer.model, threads=cfg.spectrometer.threads)


def _open_spectrometer(cfg: LineConfig, clock: LineClock, source: FrameSource) -> Spectrometer:
    """The spectrometer of ``cfg``: the simulated one needs the clip's world and its time, the others wall time."""
    spec = cfg.spectrometer
    assert spec is not None
    if spec.kind == "sim":
        if clock.mode != "frame":
            raise ConfigError("spectrometer.source sim runs on the clip's own time: sort the clip offline "
                              "(camera.realtime: false, a simulated actuator)")
        gt_path = clip_ground_truth_path(cfg.camera.source)
        if not gt_path.is_file():
            raise ConfigError(f"spectrometer.source sim needs the synthetic world: {gt_path} (the clip's ground "
                              "truth beside its video) does not exist")
        assert spec.sim is not None
        return open_simulated(spec.sim, cfg.spot_geometry(), axis=0 if cfg.belt.direction[1] == "x" else 1,
                              rate_hz=spec.rate_hz, ground_truth=gt_path)
    if clock.mode != "wall":
        raise ConfigError(f"spectrometer.source {spec.kind} stamps scans on the wall clock: the line must run at the "
                          "belt's pace (a live camera, or camera.realtime: true)")
    return open_spectrometer(spec, clock=clock.now)


def _count_miss(decision_log: DecisionLog, telemetry: Telemetry, firing: Firing, reason: str) -> None:
    """A firing the actuator could not make: marked in the log and counted in the metrics."""
    if firing.item_id is not None:
        decision_log.mark_missed(firing.item_id, reason)
    telemetry.on_missed(firing.bin, reason)


def belt_speed(
    belt: BeltConfig, *, live: bool, clock: LineClock, on_status: EncoderStatusCallback | None = None
) -> tuple[SpeedSource, EncoderReader | None]:
    """The ejector's speed source for ``belt``, plus the encoder reader to start and close (if any).

    A source that is not live (file, folder, synthetic) runs on its own clock, which a live
    encoder cannot follow: it uses the nominal speed (``speed_px_s`` or ``speed_m_s``) even
    when ``belt.encoder`` is set.
    """
    if belt.encoder is None:
        return FixedSpeed(belt.pixels_per_second, "px"), None
    if not live:
        log.warning("belt.encoder ignored: the source is not live (file, folder or synthetic); "
                    "using the nominal belt speed")
        return FixedSpeed(belt.pixels_per_second, "px"), None
    reader = EncoderReader(belt.encoder, on_status=on_status, clock=clock.now)
    return reader.speed, reader
