"""The spectral model as one torch module: raw absorbance on the grid in, logits + OOD score (+ cotton share) out.

:class:`SpectralModel` chains :class:`SpectralPreprocessModule` (the preprocessing of
:mod:`sorting.datasets.spectral_preprocess` as tensor ops: SNV, the Savitzky-Golay matrix, the centre), a
classifier (:class:`LinearClassifier`, the fitted linear model folded into one affine map, or the 1D CNN
:class:`SpectralCNN`), an OOD score (:class:`MahalanobisScore` on the preprocessed spectrum or :class:`EnergyScore`
on the logits) and optionally a composition head (:class:`CompositionHead`: its own preprocessing + an affine map
to the cotton share in %, clipped to 0..100). Everything is a buffer or a parameter, so a model is rebuilt from
its :meth:`SpectralModel.arch` dict and a state_dict, and exports to ONNX as one graph (:mod:`sorting.models.spectral_export`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from sorting.datasets.spectral_preprocess import SNV_EPS, SpectralPreprocessor

LOGITS, OOD_SCORE, COTTON_SHARE, FEATURES = "logits", "ood_score", "cotton_share", "features"


def _tensor(values: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


class SpectralPreprocessModule(nn.Module):
    """Torch twin of :class:`~sorting.datasets.spectral_preprocess.SpectralPreprocessor` (same maths, float32)."""

    def __init__(self, points: int, *, snv: bool = True) -> None:
        super().__init__()
        self.snv = snv
        self.register_buffer("matrix", torch.eye(points))
        self.register_buffer("centre", torch.zeros(points))

    @classmethod
    def from_preprocessor(cls, pre: SpectralPreprocessor) -> "SpectralPreprocessModule":
        module = cls(pre.points, snv=pre.config.snv)
        module.matrix.copy_(_tensor(pre.matrix))
        module.centre.copy_(_tensor(pre.centre))
        return module

    def forward(self, absorbance: torch.Tensor) -> torch.Tensor:
        x = absorbance
        if self.snv:
            centred = x - x.mean(dim=1, keepdim=True)
            var = (centred * centred).sum(dim=1, keepdim=True) / (x.shape[1] - 1)
            x = centred / torch.sqrt(var + SNV_EPS)
        return x @ self.matrix - self.centre


class LinearClassifier(nn.Module):
    """Logits = features @ weight.T + bias (a fitted linear model, e.g. logistic regression, folded in)."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class SpectralCNN(nn.Module):
    """A small 1D CNN over the preprocessed spectrum: three conv blocks, global average pool, dropout, linear.

    ``scale`` (a buffer set from the training features' standard deviation) brings derivative spectra to unit
    scale before the first convolution.
    """

    def __init__(self, points: int, classes: int, *, channels: tuple[int, ...] = (16, 32, 64), kernel: int = 7,
                 dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(channels):
            k = kernel if i == 0 else max(3, kernel - 2 * i)
            layers += [nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.BatchNorm1d(c_out), nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool1d(2))
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, classes)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.body((features / self.scale).unsqueeze(1))
        return self.head(self.dropout(x.mean(dim=2)))


class MahalanobisScore(nn.Module):
    """Smallest squared Mahalanobis distance to a class mean in a PCA subspace of the preprocessed spectrum,
    plus the squared residual outside that subspace over its training mean (chemometrics' Q statistic):
    ``min_c |(z - m_c) L|^2 + Q / Q_mean`` with ``z = (f - mu) P`` and ``L L^T`` the inverse shared covariance."""

    def __init__(self, features: int, classes: int, components: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("projection", torch.zeros(features, components))
        self.register_buffer("class_means", torch.zeros(classes, components))
        self.register_buffer("whiten", torch.eye(components))
        self.register_buffer("residual_scale", torch.ones(()))

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        centred = features - self.mean
        z = centred @ self.projection
        residual = centred - z @ self.projection.T
        q = (residual * residual).sum(dim=1) / self.residual_scale
        diff = (z.unsqueeze(1) - self.class_means.unsqueeze(0)) @ self.whiten
        return (diff * diff).sum(dim=2).min(dim=1).values + q


class EnergyScore(nn.Module):
    """``-T logsumexp(logits / T)`` with the model's fitted temperature (higher = less familiar)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -self.temperature * torch.logsumexp(logits / self.temperature, dim=1)


class CompositionHead(nn.Module):
    """Cotton share (%) of a cotton/polyester item: its own preprocessing, an affine map, clipped to 0..100."""

    def __init__(self, points: int, *, snv: bool = True) -> None:
        super().__init__()
        self.preprocess = SpectralPreprocessModule(points, snv=snv)
        self.linear = nn.Linear(points, 1)

    def forward(self, absorbance: torch.Tensor) -> torch.Tensor:
        return self.linear(self.preprocess(absorbance)).squeeze(1).clamp(0.0, 100.0)


class SpectralModel(nn.Module):
    """Raw absorbance (N, points) -> ``{"logits", "ood_score", "features"[, "cotton_share"]}``."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        self._arch = dict(arch)
        points, classes = int(arch["points"]), int(arch["classes"])
        self.preprocess = SpectralPreprocessModule(points, snv=bool(arch.get("snv", True)))
        if arch["family"] == "cnn":
            cnn = arch.get("cnn", {})
            self.classifier: nn.Module = SpectralCNN(points, classes, channels=tuple(cnn.get("channels", (16, 32, 64))),
                                                     kernel=int(cnn.get("kernel", 7)), dropout=float(cnn.get("dropout", 0.2)))
        else:
            self.classifier = LinearClassifier(points, classes)
        ood = arch.get("ood", {"method": "energy"})
        self.ood: nn.Module = (MahalanobisScore(points, classes, int(ood["components"])) if ood["method"] == "mahalanobis"
                               else EnergyScore())
        composition = arch.get("composition")
        self.composition = CompositionHead(points, snv=bool(composition["snv"])) if composition else None

    def arch(self) -> dict[str, Any]:
        """Everything needed to rebuild this module before loading its state_dict (plain values)."""
        return dict(self._arch)

    def forward(self, absorbance: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.preprocess(absorbance)
        logits = self.classifier(features)
        out = {LOGITS: logits, OOD_SCORE: self.ood(features, logits), FEATURES: features}
        if self.composition is not None:
            out[COTTON_SHARE] = self.composition(absorbance)
        return out
