"""The typed training config: one :class:`TrainConfig` per run, from a recipe YAML plus overrides.

Paths (manifests, weights, output folder) are relative to the current directory.
``batch_size`` is per process: under ``torchrun --nproc_per_node=N`` the global batch is N x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from sorting.config import StrictModel, load_config
from sorting.taxonomy import HEADS

HeadName = Literal["fibre", "colour"]


class SyntheticDataConfig(StrictModel):
    """Generate the synthetic crop dataset (``make_crop_dataset``) instead of reading manifests."""

    n: int = Field(2000, ge=20)
    size: int = Field(96, ge=16)
    seed: int = 0
    cache_dir: str | None = None  # default: <runs>/datasets; the set lands in synth-crops-n<n>-s<size>-seed<seed>/


class DataConfig(StrictModel):
    train: list[str] = Field(default_factory=list)  # manifest CSVs; fibre-only and colour-only ones combine
    val: list[str] | None = None  # default: the train manifests' `val_split` rows
    # rows of this split are trained on (null: rows without a split; `all`: every row, for a final model on all
    # the images, whose estimate comes from cross-validate and whose calibration from cross-validate --calibrate)
    train_split: str | None = "train"
    val_split: str | None = "val"  # `all` with train_split `all`: validation on the training rows (reporting only)
    taxonomy: str | None = None  # default: datasets/taxonomy.yaml
    unknown_labels: Literal["error", "ignore"] = "error"  # a label the taxonomy/aliases do not know
    cache_images: bool = False  # keep decoded images in RAM (small datasets, slow disks)
    synthetic: SyntheticDataConfig | None = None

    @model_validator(mode="after")
    def _has_source(self) -> "DataConfig":
        if not self.train and self.synthetic is None:
            raise ValueError("set data.train (manifest paths) or data.synthetic")
        return self


class ModelConfig(StrictModel):
    backbone: str = "tiny"
    pretrained: bool = False
    weights_path: str | None = None
    heads: list[HeadName] = Field(default_factory=lambda: list(HEADS))
    input_size: int | None = Field(None, ge=16)  # default: the backbone's
    resize: Literal["letterbox", "stretch", "center_crop"] | None = None
    pad_value: int | None = Field(None, ge=0, le=255)  # letterbox fill; default: the backbone's
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # hidden units of a head's MLP, e.g. {fibre: 256}; a head not named here is linear
    head_hidden: dict[HeadName, int] = Field(default_factory=dict)
    # partial fine-tuning: backbone blocks before this index stay frozen and their output is cached once
    # (sorting.training.feature_cache); blocks from it on (EfficientNet-Lite0: 0..16) train with the heads
    trainable_from: int | None = Field(None, ge=0)
    # with trainable_from: keep the BatchNorm running statistics of the trained blocks (small data; without it
    # the standardised efficientnet_lite0_multistage features drift and the loss blew up in research runs)
    freeze_bn: bool = False

    @model_validator(mode="after")
    def _heads(self) -> "ModelConfig":
        if not self.heads or len(set(self.heads)) != len(self.heads):
            raise ValueError("model.heads must list fibre and/or colour, each once")
        if set(self.head_hidden) - set(self.heads) or any(n < 1 for n in self.head_hidden.values()):
            raise ValueError(f"model.head_hidden must give >= 1 unit to heads of {self.heads}, got {self.head_hidden}")
        return self


class OptimConfig(StrictModel):
    lr: float = Field(1e-3, gt=0)
    backbone_lr_scale: float = Field(1.0, gt=0)  # < 1 fine-tunes pretrained features more gently
    weight_decay: float = Field(0.05, ge=0)
    epochs: int = Field(10, ge=1)
    warmup_epochs: float = Field(1.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    grad_clip: float | None = Field(None, gt=0)


# presets whose cached views are fixed: the image alone, or the image and its mirror
FIXED_VIEWS = {"none": 1, "flip": 2}


class AugmentConfig(StrictModel):
    preset: str = "light"  # a sorting.datasets.augment preset: none, flip, light, medium, heavy, texture
    colour_safe: bool | None = None  # null: true when the colour head is trained (no hue/colour jitter)
    # cached runs (frozen backbone or model.trainable_from) with a preset other than none/flip: how many views
    # per training image to cache (the unaugmented image + views-1 random draws of the preset, made once)
    views: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _views(self) -> "AugmentConfig":
        fixed = FIXED_VIEWS.get(self.preset)
        if fixed is not None and self.views not in (None, fixed):
            raise ValueError(f"augment.preset={self.preset} caches {fixed} view(s) per image; leave augment.views unset")
        return self


class EarlyStoppingConfig(StrictModel):
    patience: int | None = Field(5, ge=1)  # epochs without val macro-F1 gain; null disables
    min_delta: float = Field(0.0, ge=0)
    # which epoch's weights become best.pt: the best validation macro-F1, or the last epoch. A validation split
    # of a few dozen images picks epochs by noise; with a fixed schedule the last epoch is the steadier choice
    select: Literal["best", "last"] = "best"

    @model_validator(mode="after")
    def _last_has_no_patience(self) -> "EarlyStoppingConfig":
        if self.select == "last" and self.patience is not None:
            raise ValueError("early_stopping.select=last keeps the final epoch: set early_stopping.patience to null")
        return self


class TrackingConfig(StrictModel):
    enabled: bool = True  # every run is tracked; false for throwaway runs (tests, quick experiments)
    experiment: str = "textile-sorter"
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else a local store under the runs folder
    registered_model_name: str | None = None


class CalibrationConfig(StrictModel):
    temperature: bool = True  # fit a temperature per head on validation logits
    ood_quantile: float = Field(0.99, gt=0, le=1)  # energy threshold = this quantile of validation energies


class LayoutConfig(StrictModel):
    """The layout head: one garment or several touching, fitted after training on synthetic conveyor crops
    and/or a line's own labelled crops (``sorting.training.layout``); the sorter rejects items it calls
    "several" as overlapping."""

    worlds: int = Field(16, ge=0)  # synthetic conveyor worlds rendered for it (the last quarter validates); 0: none
    items_per_world: int = Field(200, ge=20)
    seed: int = 0
    l2: float = Field(0.02, ge=0)  # L2 penalty on the standardised weights (logistic regression)
    # the line's own crops: CSV files ``path,layout`` (single / several) from ``data import-log --layout-output``
    crops: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_crops(self) -> "LayoutConfig":
        if self.worlds == 1:
            raise ValueError("layout.worlds must be 0 (no synthetic crops) or at least 2")
        if self.worlds == 0 and not self.crops:
            raise ValueError("layout needs synthetic worlds or crop lists (layout.crops)")
        return self


class TrainConfig(StrictModel):
    name: str = "train"
    output_dir: str | None = None  # default: <runs>/train
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms (slower; exact re-runs)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch CPU threads per process
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    layout: LayoutConfig | None = None  # add the layout head (synthetic belt models); null: no such head
    batch_size: int = Field(32, ge=1)  # per process
    eval_batch_size: int | None = Field(None, ge=1)
    num_workers: int = Field(2, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # loss_weights: inverse class frequency; sqrt_loss_weights: its square root (milder)
    balance: Literal["none", "sampler", "loss_weights", "sqrt_loss_weights"] = "none"
    # train heads only first, then fine-tune everything; >= optim.epochs with augment none/flip trains the
    # heads on cached backbone features (sorting.training.feature_cache)
    freeze_backbone_epochs: int = Field(0, ge=0)
    amp: bool = True  # mixed precision, only used on CUDA
    channels_last: bool = True  # only used on CUDA
    progress: bool = True
    resume: str | None = None  # a last.pt to continue from (same run folder)

    @model_validator(mode="after")
    def _partial(self) -> "TrainConfig":
        if self.model.trainable_from is not None and self.freeze_backbone_epochs >= self.optim.epochs:
            raise ValueError(
                "model.trainable_from fine-tunes the backbone from that block on, but freeze_backbone_epochs >= "
                "optim.epochs keeps it frozen the whole run: lower freeze_backbone_epochs (heads-only warm-up epochs)"
            )
        cached = self.model.trainable_from is not None or self.freeze_backbone_epochs >= self.optim.epochs
        if self.augment.views is not None and not cached:
            raise ValueError(
                "augment.views (cached augmented views) needs a cached run: model.trainable_from, or a backbone "
                "frozen for all epochs (freeze_backbone_epochs >= optim.epochs)"
            )
        if self.model.freeze_bn and self.model.trainable_from is None:
            raise ValueError("model.freeze_bn applies to partial fine-tuning only: set model.trainable_from")
        return self


class Recipe(Protocol):
    """The sections of a recipe that the training engine (:mod:`sorting.training.engine`) reads: a
    :class:`TrainConfig`, or the recipe of another kind of model that has the same shared sections."""

    name: str
    output_dir: str | None
    resume: str | None
    progress: bool
    freeze_backbone_epochs: int
    optim: OptimConfig
    early_stopping: EarlyStoppingConfig
    calibration: CalibrationConfig
    tracking: TrackingConfig

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]: ...


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Recipe YAML plus ``key=value`` overrides -> :class:`TrainConfig` (ConfigError on bad keys)."""
    return load_config(TrainConfig, path, overrides)
