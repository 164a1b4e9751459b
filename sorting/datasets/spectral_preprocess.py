"""The one spectral preprocessing: standard normal variate, Savitzky-Golay smoothing / derivative, mean-centring.

Defined once here (numpy + scipy, used to fit models and by the torch-free serving code) and mirrored by
:class:`sorting.models.spectral_net.SpectralPreprocessModule` inside every exported model, so the ONNX model
takes raw absorbance on its grid and serving cannot preprocess differently. The order is fixed:

1. SNV (``snv``): each spectrum minus its mean, over its standard deviation (ddof 1) - removes the baseline
   offset and the multiplicative scatter of a fabric's thickness, weave and colour;
2. Savitzky-Golay (``savgol_window`` > 1 or ``derivative`` > 0): a local polynomial fit of ``savgol_polyorder``
   over ``savgol_window`` grid points, its value (smoothing) or 1st / 2nd derivative (per grid step), with scipy's
   ``mode="interp"`` at the ends. It is linear, so it is the matrix :func:`savgol_matrix` (scipy applied to the
   identity), which the exported graph multiplies by;
3. mean-centring (``mean_centre``): minus the mean preprocessed training spectrum (stored with the model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, model_validator
from scipy.signal import savgol_filter

from sorting.config import StrictModel

SNV_EPS = 1e-12  # added to the variance: a flat spectrum gives zeros, not NaN


class SpectralPreprocessConfig(StrictModel):
    """Which steps run (see module docstring); the recipe's ``preprocess`` section."""

    snv: bool = True
    savgol_window: int = Field(11, ge=0)  # grid points, odd; 0 or 1: no smoothing
    savgol_polyorder: int = Field(2, ge=0, le=5)
    derivative: int = Field(1, ge=0, le=2)
    mean_centre: bool = False

    @model_validator(mode="after")
    def _savgol(self) -> "SpectralPreprocessConfig":
        if self.uses_savgol:
            if self.savgol_window % 2 == 0 or self.savgol_window <= self.savgol_polyorder:
                raise ValueError(f"savgol_window must be odd and above savgol_polyorder ({self.savgol_polyorder}), "
                                 f"got {self.savgol_window}")
            if self.derivative > self.savgol_polyorder:
                raise ValueError(f"derivative {self.derivative} needs savgol_polyorder >= {self.derivative}")
        return self

    @property
    def uses_savgol(self) -> bool:
        return self.savgol_window > 1 or self.derivative > 0

    def describe(self) -> str:
        steps = ["SNV"] if self.snv else []
        if self.uses_savgol:
            what = ("smoothing", "1st derivative", "2nd derivative")[self.derivative]
            steps.append(f"Savitzky-Golay {what} (window {self.savgol_window}, order {self.savgol_polyorder})")
        if self.mean_centre:
            steps.append("mean-centred")
        return " + ".join(steps) or "raw absorbance"


def snv(spectra: np.ndarray) -> np.ndarray:
    """Standard normal variate of each row (ddof 1)."""
    x = np.asarray(spectra, dtype=np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    var = (centred**2).sum(axis=-1, keepdims=True) / (x.shape[-1] - 1)
    return centred / np.sqrt(var + SNV_EPS)


def savgol_matrix(points: int, config: SpectralPreprocessConfig) -> np.ndarray:
    """K (points x points) with ``savgol(x) == x @ K`` for a row spectrum ``x`` (the identity without smoothing)."""
    if not config.uses_savgol:
        return np.eye(points)
    if config.savgol_window > points:
        raise ValueError(f"savgol_window {config.savgol_window} is longer than the {points}-point grid")
    return savgol_filter(np.eye(points), config.savgol_window, config.savgol_polyorder, deriv=config.derivative,
                         mode="interp", axis=-1)


class SpectralPreprocessor:
    """A fitted preprocessing: the config plus (with ``mean_centre``) the training mean. numpy only."""

    def __init__(self, config: SpectralPreprocessConfig, points: int, centre: np.ndarray | None = None) -> None:
        self.config = config
        self.points = points
        self.matrix = savgol_matrix(points, config)
        self.centre = np.zeros(points) if centre is None else np.asarray(centre, dtype=np.float64)

    def _shape(self, spectra: np.ndarray) -> np.ndarray:
        x = np.asarray(spectra, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.points:
            raise ValueError(f"expected spectra of shape (N, {self.points}), got {x.shape}")
        return x

    def _before_centring(self, spectra: np.ndarray) -> np.ndarray:
        x = self._shape(spectra)
        if self.config.snv:
            x = snv(x)
        if self.config.uses_savgol:
            x = savgol_filter(x, self.config.savgol_window, self.config.savgol_polyorder, deriv=self.config.derivative,
                              mode="interp", axis=-1)
        return x

    def fit(self, spectra: np.ndarray) -> "SpectralPreprocessor":
        """Fit the centre (mean-centring) on training spectra; a no-op otherwise."""
        if self.config.mean_centre:
            self.centre = self._before_centring(spectra).mean(axis=0)
        return self

    def transform(self, spectra: np.ndarray) -> np.ndarray:
        """Raw absorbance (N, points) -> features (N, points), float64."""
        return self._before_centring(spectra) - self.centre

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(mode="json"), "points": self.points,
                "centre": self.centre.tolist() if self.config.mean_centre else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpectralPreprocessor":
        config = SpectralPreprocessConfig.model_validate(data["config"])
        centre = np.asarray(data["centre"]) if data.get("centre") is not None else None
        return cls(config, int(data["points"]), centre)
