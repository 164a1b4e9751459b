"""The line config: one YAML per sorting line (camera, calibration, belt, segmentation,
tracking, model, policy, ejector, actuator, decision log, telemetry, and an optional NIR spectrometer).

Relative paths in it (model, bins file, the belt detector, log folder) are resolved against the YAML file's own
folder, so a line folder can be moved as a whole. Every field is documented in
``serving/README.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, model_validator

from sorting.config import StrictModel, load_config
from sorting.errors import ConfigError
from sorting.paths import check_output_path
from sorting.serving.actuators import ActuatorConfig, bin_addresses
from sorting.serving.decision_log import DecisionLogConfig
from sorting.serving.ejector import EjectorConfig
from sorting.serving.encoder import EncoderConfig
from sorting.serving.policy import PolicyConfig, load_policy_config, shared_output
from sorting.serving.segmentation import Roi, SegmentationConfig
from sorting.serving.spectrometer_config import SpectrometerConfig, SpotGeometry
from sorting.serving.backoff import Backoff
from sorting.serving.telemetry import TelemetryConfig
from sorting.serving.tracking import TrackingConfig


class ReconnectConfig(StrictModel):
    """Back-off for reopening a live camera: initial_s, initial_s*factor, ... up to max_s."""

    initial_s: float = Field(default=0.5, gt=0)
    factor: float = Field(default=2.0, ge=1)
    max_s: float = Field(default=10.0, gt=0)

    def backoff(self) -> Backoff:
        return Backoff(self.initial_s, self.factor, self.max_s)


class CameraConfig(StrictModel):
    source: str = "synthetic:0"
    fps: float | None = Field(default=None, gt=0)
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)
    realtime: bool = False
    read_timeout_s: float = Field(default=0.5, gt=0)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)


class CalibrationConfig(StrictModel):
    reference_roi: Roi | None = None
    target_level: float = Field(default=200.0, gt=0, le=255)
    white_balance: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (1.0, 1.0, 1.0)
    exposure_gain: float = Field(default=1.0, gt=0)
    calibrated_at: str | None = None
    apply: bool = True
    continuous: bool = False
    continuous_every: int = Field(default=2, ge=1)
    continuous_smoothing: float = Field(default=0.6, gt=0, le=1)

    @model_validator(mode="after")
    def _roi_for_continuous(self) -> "CalibrationConfig":
        if self.continuous and self.reference_roi is None:
            raise ValueError("calibration.continuous needs calibration.reference_roi")
        return self


class BeltConfig(StrictModel):
    """Belt speed: fixed (``speed_px_s`` or ``speed_m_s``), or measured by ``encoder``.

    With an encoder the fixed speed stays required as the nominal speed: the tracker's first
    guess for a new item, and the speed used for recorded clips (they run on their own clock).
    """

    speed_px_s: float | None = Field(default=None, gt=0)
    speed_m_s: float | None = Field(default=None, gt=0)
    px_per_m: float | None = Field(default=None, gt=0)
    direction: Literal["+x", "-x", "+y", "-y"] = "+x"
    encoder: EncoderConfig | None = None

    @model_validator(mode="after")
    def _speed(self) -> "BeltConfig":
        if self.speed_px_s is None and (self.speed_m_s is None or self.px_per_m is None):
            raise ValueError("give belt.speed_px_s, or belt.speed_m_s together with belt.px_per_m")
        if self.encoder is not None and self.px_per_m is None:
            raise ValueError("belt.encoder measures the belt in metres: set belt.px_per_m (image pixels per metre) "
                             "to convert it to pixels")
        return self

    @property
    def pixels_per_second(self) -> float:
        if self.speed_px_s is not None:
            return self.speed_px_s
        assert self.speed_m_s is not None and self.px_per_m is not None
        return self.speed_m_s * self.px_per_m


class ModelConfig(StrictModel):
    path: Path | None = None
    threads: int | None = Field(default=None, ge=1)
    hot_reload: bool = True
    reload_poll_s: float = Field(default=2.0, gt=0)


class PolicySection(StrictModel):
    bins: Path


class LineConfig(StrictModel):
    """A whole sorting line."""

    name: str = "line"
    camera: CameraConfig = Field(default_factory=CameraConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    belt: BeltConfig
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    policy: PolicySection
    ejector: EjectorConfig = Field(default_factory=EjectorConfig)
    actuator: ActuatorConfig = Field(default_factory=ActuatorConfig)
    log: DecisionLogConfig = Field(default_factory=DecisionLogConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    spectrometer: SpectrometerConfig | None = None

    @model_validator(mode="after")
    def _inside_the_frame(self) -> LineConfig:
        """With the frame size known: the decision line and the regions lie in the frame.

        A decision line beyond the frame is never crossed (every item ends ``lost``).
        """
        axis = self.belt.direction[1]
        extent = self.camera.width if axis == "x" else self.camera.height
        line = self.tracking.decision_line_px
        if extent is not None and not 0 < line < extent:
            size = f"{extent}-px-wide" if axis == "x" else f"{extent}-px-high"
            raise ValueError(f"tracking.decision_line_px {line:g} is outside the {size} frame (the belt runs "
                             f"along {axis}): no item can cross it")
        if self.spectrometer is not None:
            across = self.camera.height if axis == "x" else self.camera.width
            problems = self.spot_geometry().problems(along_extent=extent, across_extent=across)
            if problems:
                raise ValueError(problems[0])
        width, height = self.camera.width, self.camera.height
        if width is None or height is None:
            return self
        named = [("segmentation.ignore_rois", roi) for roi in self.segmentation.ignore_rois]
        named += [("calibration.reference_roi", self.calibration.reference_roi)]
        for name, roi in named:
            if roi is not None and (roi[0] + roi[2] > width or roi[1] + roi[3] > height):
                raise ValueError(f"{name} {list(roi)} (x, y, width, height) reaches outside the "
                                 f"{width}x{height} frame")
        return self

    def spot_geometry(self) -> SpotGeometry:
        """Where the spectrometer's spots read, in image pixels (the line must have a spectrometer)."""
        assert self.spectrometer is not None
        sign = 1.0 if self.belt.direction[0] == "+" else -1.0
        try:
            return self.spectrometer.geometry(decision_line_px=self.tracking.decision_line_px, sign=sign,
                                              px_per_m=self.belt.px_per_m, speed_px_s=self.belt.pixels_per_second)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def ignore_rois(self) -> list[Roi]:
        """Regions segmentation must ignore: configured ones plus the reference patch."""
        rois = list(self.segmentation.ignore_rois)
        if self.calibration.reference_roi is not None:
            rois.append(self.calibration.reference_roi)
        return rois


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None or value.is_absolute():
        return value
    return (base / value).resolve()


def load_line_config(path: str | Path, overrides: list[str] | None = None) -> LineConfig:
    """Load a line YAML (+ ``key=value`` overrides), resolving relative paths against its folder."""
    path = Path(path)
    cfg = load_config(LineConfig, path, overrides)
    base = path.resolve().parent
    cfg.model.path = _resolve(base, cfg.model.path)
    cfg.policy.bins = _resolve(base, cfg.policy.bins)  # type: ignore[assignment]
    if cfg.segmentation.detector is not None:
        cfg.segmentation.detector.model = _resolve(base, cfg.segmentation.detector.model)  # type: ignore[assignment]
    if cfg.segmentation.textile_check is not None:
        cfg.segmentation.textile_check.model = _resolve(base, cfg.segmentation.textile_check.model)
        cfg.segmentation.textile_check.head = _resolve(base, cfg.segmentation.textile_check.head)
    if cfg.spectrometer is not None:
        _resolve_spectrometer(cfg.spectrometer, base)
    if cfg.model.path is not None and cfg.model.path.suffix.lower() != ".onnx":
        raise ConfigError(f"{path}: model.path must be an .onnx file, got {cfg.model.path}")
    check_against_bins(cfg, load_policy_config(cfg.policy.bins), str(path))
    return cfg


def _resolve_spectrometer(spec: SpectrometerConfig, base: Path) -> None:
    """The spectrometer's files (model, folder, reference, dark, simulated spectra) relative to the line's folder."""
    spec.model = _resolve(base, spec.model)  # type: ignore[assignment]
    spec.reference = _resolve(base, spec.reference)
    spec.dark = _resolve(base, spec.dark)
    if spec.kind == "folder":
        spec.source = f"folder:{_resolve(base, Path(spec.argument))}"
    if spec.sim is not None:
        spec.sim.spectra = _resolve(base, spec.sim.spectra)  # type: ignore[assignment]


def check_against_bins(cfg: LineConfig, bins: PolicyConfig, source: str) -> None:
    """What the line config says about its bins fits the bins file: every ``actuator.addresses`` entry
    names one of its bins, no two bins share an output once those overrides apply, and distances in
    metres can be converted to the image's pixels. Raises :class:`ConfigError` naming the field."""
    addresses = bin_addresses(bins.bins)
    unknown = sorted(set(cfg.actuator.addresses) - set(addresses))
    if unknown:
        raise ConfigError(f"{source}: actuator.addresses names bin(s) {unknown} that the bins file "
                          f"{cfg.policy.bins} does not define (product bins: {sorted(addresses)})")
    clash = shared_output({**addresses, **cfg.actuator.addresses}, bins.bin_names())
    if clash:
        raise ConfigError(f"{source}: actuator.addresses: {clash} (with the bins file {cfg.policy.bins})")
    if bins.distance_unit == "m" and cfg.belt.px_per_m is None:
        raise ConfigError(f"{source}: the bins file {cfg.policy.bins} gives distances in metres: set belt.px_per_m "
                          "(image pixels per metre) to convert them")


def check_outputs(cfg: LineConfig) -> None:
    """The files the line writes (decision log, its crops, JSONL firings) can be written: else one
    :class:`ConfigError` at start-up, not a traceback once the camera and the model are open."""
    check_output_path(cfg.log.path, "log.path")
    if cfg.log.save_crops != "none":
        what = "log.crops_dir" if cfg.log.crops_dir is not None else "the crops folder of log.path"
        check_output_path(cfg.log.crops_folder(), what, folder=True)
    if cfg.actuator.kind == "jsonl" and cfg.actuator.path not in (None, "", "-"):
        check_output_path(cfg.actuator.path, "actuator.path")
