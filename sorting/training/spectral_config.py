"""The typed recipe of a spectral model (``task: spectral`` in a ``training/nir-*.yaml``).

``textile-sorter train`` / ``cross-validate`` read the recipe's ``task`` key (:func:`recipe_task`): ``spectral``
goes to :mod:`sorting.training.spectral`, anything else (no key) to the image trainer. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from sorting.config import StrictModel, deep_merge, load_config, parse_overrides, read_yaml
from sorting.datasets.spectral_preprocess import SpectralPreprocessConfig
from sorting.training.config import TrackingConfig

SPECTRAL_TASK = "spectral"


class SpectralDataConfig(StrictModel):
    train: list[str] = Field(min_length=1)  # spectral manifests (data import-spectra), one grid
    split: str | None = None  # train on this split only; null: every row
    taxonomy: str | None = None  # default datasets/taxonomy.yaml (its version goes into the model)


class LinearConfig(StrictModel):
    """Multinomial logistic regression on the preprocessed spectrum (scaled by its overall standard deviation)."""

    C: float = Field(10.0, gt=0)  # inverse L2 strength
    max_iter: int = Field(5000, ge=100)


class CNNConfig(StrictModel):
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    kernel: int = Field(7, ge=3)
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(150, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    batch_size: int = Field(32, ge=2)
    label_smoothing: float = Field(0.05, ge=0, lt=1)


class SpectralModelConfig(StrictModel):
    family: Literal["linear", "cnn"] = "linear"
    linear: LinearConfig = Field(default_factory=LinearConfig)
    cnn: CNNConfig = Field(default_factory=CNNConfig)


class SpectralAugmentConfig(StrictModel):
    """Random changes of the raw absorbance a swatch or instrument may bring (training only)."""

    copies: int = Field(0, ge=0)  # augmented copies per training spectrum for the linear family (cnn: every epoch)
    offset: float = Field(0.05, ge=0)  # baseline offset, +- AU
    scale: float = Field(0.2, ge=0)  # multiplicative, 1 +- this
    slope: float = Field(0.05, ge=0)  # baseline tilt, +- AU over the grid
    noise: float = Field(0.002, ge=0)  # gaussian, AU
    shift: float = Field(1.0, ge=0)  # wavelength shift, +- grid points


class OodConfig(StrictModel):
    method: Literal["mahalanobis", "energy"] = "mahalanobis"
    components: int = Field(10, ge=1)  # PCA components of the Mahalanobis score
    quantile: float = Field(0.99, gt=0, le=1)  # threshold = this quantile of out-of-fold in-distribution scores


class SpectralCalibrationConfig(StrictModel):
    temperature: bool = True
    folds: int = Field(5, ge=2)  # grouped folds of the training set whose out-of-fold outputs fit T and OOD


class CompositionConfig(StrictModel):
    """Cotton share of cotton/polyester items: PLS regression on its own data (e.g. FT-NIR blends)."""

    train: list[str] = Field(min_length=1)  # spectral manifests with compositions, on the model's grid
    preprocess: SpectralPreprocessConfig = Field(default_factory=SpectralPreprocessConfig)
    components: int | None = Field(None, ge=1)  # null: chosen by grouped CV on the training data
    max_components: int = Field(12, ge=1)
    # with components null: the fewest components within this many points (MAE) of the best CV error
    within_best: float = Field(0.5, ge=0)
    folds: int = Field(5, ge=2)


class SpectralTrainConfig(StrictModel):
    task: Literal["spectral"] = SPECTRAL_TASK
    name: str = "nir"
    output_dir: str | None = None  # default: <runs>/train
    seed: int = 0
    threads: int | None = Field(1, ge=1)  # torch CPU threads: these models are small, more threads only contend
    progress: bool = True
    data: SpectralDataConfig
    preprocess: SpectralPreprocessConfig = Field(default_factory=SpectralPreprocessConfig)
    model: SpectralModelConfig = Field(default_factory=SpectralModelConfig)
    augment: SpectralAugmentConfig = Field(default_factory=SpectralAugmentConfig)
    ood: OodConfig = Field(default_factory=OodConfig)
    calibration: SpectralCalibrationConfig = Field(default_factory=SpectralCalibrationConfig)
    composition: CompositionConfig | None = None
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def recipe_task(path: str | Path | None, overrides: list[str] | None = None) -> str:
    """The recipe's ``task`` (``spectral``) or ``image`` when it has none: where train / cross-validate go."""
    data = read_yaml(path) if path is not None else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    return str(data.get("task") or "image")


def load_spectral_config(path: str | Path | None, overrides: list[str] | None = None) -> SpectralTrainConfig:
    return load_config(SpectralTrainConfig, path, overrides)
