"""One backbone, one head per task (fibre, colour), plus the embedding.

A head is dropout + linear, or, with ``hidden`` units for it, dropout + linear + GELU + dropout + linear: on
the frozen multi-stage features of the synthetic recipe a 256-unit fibre head is what lifts fibre past 98%
(models/README.md). The layout head added after training is always linear.

A head exists for every task in ``head_sizes`` (the training config's ``heads:`` list), whether
or not a given batch labels it; missing labels are masked out of the loss by the trainer
(ignore_index ``IGNORE_INDEX``), so fibre-only and colour-only datasets train one model together.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sorting.datasets.preprocess import PreprocessConfig
from sorting.errors import ConfigError
from sorting.models.registry import create_backbone
from sorting.taxonomy import MODEL_HEADS

IGNORE_INDEX = -100
EMBEDDING = "embedding"


class MultiHeadClassifier(nn.Module):
    """``forward(x) -> {"fibre": logits, "colour": logits, "embedding": features}`` (heads as configured)."""

    def __init__(self, backbone_module: nn.Module, feature_dim: int, head_sizes: dict[str, int], *, dropout: float = 0.2,
                 hidden: Mapping[str, int] | None = None) -> None:
        super().__init__()
        unknown = set(head_sizes) - set(MODEL_HEADS)
        if unknown or not head_sizes:
            raise ConfigError(f"heads must be a non-empty subset of {list(MODEL_HEADS)}, got {sorted(head_sizes)}")
        if any(n < 2 for n in head_sizes.values()):
            raise ConfigError(f"every head needs at least 2 classes, got {head_sizes}")
        self.heads: tuple[str, ...] = tuple(h for h in MODEL_HEADS if h in head_sizes)
        self.feature_dim = feature_dim
        self.backbone = backbone_module
        self.backbone_frozen = False
        widths = dict(hidden or {})
        if set(widths) - set(self.heads) or any(w < 0 for w in widths.values()):
            raise ConfigError(f"hidden units must be >= 0 and name heads of {list(self.heads)}, got {widths}")
        self.classifiers = nn.ModuleDict(
            {h: _head(feature_dim, head_sizes[h], dropout, widths.get(h, 0)) for h in self.heads}
        )

    @property
    def head_sizes(self) -> dict[str, int]:
        return {h: self.classifiers[h][-1].out_features for h in self.heads}

    @property
    def head_hidden(self) -> dict[str, int]:
        """Hidden units of each head (0: linear)."""
        return {h: self.classifiers[h][1].out_features if len(self.classifiers[h]) > 2 else 0 for h in self.heads}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.backbone(x)
        out = {h: self.classifiers[h](embedding) for h in self.heads}
        out[EMBEDDING] = embedding
        return out

    def add_head(self, name: str, linear: nn.Linear) -> None:
        """Attach a head fitted after training (the layout head) on the same embedding."""
        if name not in MODEL_HEADS or name in self.heads:
            raise ConfigError(f"cannot add head '{name}' to a model with heads {list(self.heads)}")
        if linear.in_features != self.feature_dim or linear.out_features < 2:
            raise ConfigError(f"head '{name}' must map {self.feature_dim} features to >= 2 classes")
        self.classifiers[name] = nn.Sequential(nn.Dropout(0.0), linear)
        self.heads = tuple(h for h in MODEL_HEADS if h in self.classifiers)

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze (False) or unfreeze the backbone; a frozen backbone also keeps its BatchNorm statistics."""
        self.backbone_frozen = not trainable
        for p in self.backbone.parameters():
            p.requires_grad_(trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "MultiHeadClassifier":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


def _head(feature_dim: int, classes: int, dropout: float, hidden: int) -> nn.Sequential:
    if hidden == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, classes))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, classes))


def build_multihead(
    backbone: str,
    head_sizes: dict[str, int],
    *,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    dropout: float = 0.2,
    hidden: Mapping[str, int] | None = None,
) -> tuple[MultiHeadClassifier, PreprocessConfig]:
    """Create backbone ``backbone`` from the registry and put heads on it; returns (model, default preprocess)."""
    bb = create_backbone(backbone, pretrained=pretrained, weights_path=weights_path)
    model = MultiHeadClassifier(bb.module, bb.feature_dim, head_sizes, dropout=dropout, hidden=hidden)
    return model, bb.preprocess

