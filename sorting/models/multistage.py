"""Texture backbone: mean + std pooling of several EfficientNet-Lite stages plus the 1280-d head.

Fibre is a texture question: yarn and weave live in the mid-level feature maps that global average
pooling of the last layer mostly throws away. Pooling the outputs of stages 2-6 by mean *and* standard
deviation (a cheap texture statistic, as in style/texture descriptors) plus the usual pooled head gives
(40 + 80 + 112 + 192 + 320) x 2 + 1280 = 2768 features for Lite0 and Lite1, 2912 for Lite2. On fibre-photos with a frozen backbone the
research notes measured ~+5 points over the 1280-d embedding alone.

The features are standardised with fixed buffers (``feat_mean``/``feat_std``, saved in the state_dict)
fitted once on training images by :meth:`MultiStagePoolBackbone.fit_statistics` (the trainer calls it),
because the heads are plain Linear layers and the stages live on very different scales.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sorting.errors import ConfigError
from sorting.models.efficientnet_lite import FEATURE_DIM, EfficientNetLite
from sorting.models.standardise import column_statistics

POOLED_STAGES = (2, 3, 4, 5, 6)  # indices of the stages whose outputs are pooled
# Views of a square input a texture looks the same in: the image, mirrored (h), upside down (v), both (hv), and
# the same four transposed (rotations by 90 / 270 degrees and the diagonal mirrors).
VIEWS = ("id", "h", "v", "hv", "t", "th", "tv", "thv")


def view(x: torch.Tensor, name: str) -> torch.Tensor:
    """One of :data:`VIEWS` of an NCHW batch (square images for the transposed ones)."""
    if name not in VIEWS:
        raise ValueError(f"unknown view '{name}' (expected one of {', '.join(VIEWS)})")
    if name.startswith("t"):
        x = x.transpose(2, 3).contiguous()
        name = name[1:]
    dims = [d for d, flag in ((3, "h" in name), (2, "v" in name)) if flag]
    return torch.flip(x, dims=dims) if dims else x


class MultiStagePoolBackbone(nn.Module):
    """EfficientNet-Lite -> [mean(stage 2..6), mean(head), std(stage 2..6)(, std(head))], standardised.

    ``views`` (in-graph test-time augmentation): the pooled features are averaged over these views of the
    input, in training and in serving alike; ``("id", "h")`` averages the image and its mirror (two backbone
    passes per image). ``head_std`` appends the standard deviation of the head map (1280 more features).
    """

    def __init__(self, net: EfficientNetLite, *, views: tuple[str, ...] = ("id",), head_std: bool = False) -> None:
        super().__init__()
        if not views or any(v not in VIEWS for v in views):
            raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {views}")
        self.net = net
        self.views = tuple(views)
        self.head_std = head_std
        ends = net.stage_ends()
        self.stage_ends = tuple(ends[i] for i in POOLED_STAGES)  # block index closing each pooled stage
        widths = [net.variant.stages[i][3] for i in POOLED_STAGES]
        self.feature_dim = 2 * sum(widths) + FEATURE_DIM * (2 if head_std else 1)
        self.register_buffer("feat_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feat_std", torch.ones(self.feature_dim))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Unstandardised pooled features (N, feature_dim), averaged over the views (one batched pass)."""
        if self.views == ("id",):
            return self._raw_suffix(self._prefix(x, 0), 0)
        stacked = torch.cat([view(x, v) for v in self.views])
        feats = self._raw_suffix(self._prefix(stacked, 0), 0)
        return feats.reshape(len(self.views), x.shape[0], -1).mean(dim=0)

    def _pooled_blocks(self, x: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run blocks ``start .. stop-1``; mean and std of the pooled stage outputs met on the way."""
        means, stds = [], []
        for i in range(start, stop):
            x = self.net._blocks[i](x)
            if i in self.stage_ends:
                means.append(x.mean(dim=(2, 3)))
                stds.append(x.std(dim=(2, 3)))
        return x, means, stds

    # Split for partial fine-tuning (sorting.training.feature_cache): the prefix also returns the pooled
    # statistics of the stages it covers, so ``suffix(prefix(x, s), s) == forward(x)``.
    def prefix(self, x: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Stem and blocks ``0 .. start-1``: ``[feature map, pooled means so far, pooled stds so far]``."""
        if self.views != ("id",):
            raise ConfigError("partial fine-tuning (model.trainable_from) needs a backbone without view averaging")
        return self._prefix(x, start)

    def _prefix(self, x: torch.Tensor, start: int) -> list[torch.Tensor]:
        x = self.net.prefix(x, 0)[0]
        x, means, stds = self._pooled_blocks(x, 0, start)
        empty = x.new_zeros(x.shape[0], 0)
        return [x, torch.cat(means, dim=1) if means else empty, torch.cat(stds, dim=1) if stds else empty]

    def _raw_suffix(self, parts: list[torch.Tensor], start: int) -> torch.Tensor:
        x, early_means, early_stds = parts
        x, means, stds = self._pooled_blocks(x, start, self.net.num_blocks)
        head = self.net.head_map(x)
        tail = [head.std(dim=(2, 3))] if self.head_std else []
        return torch.cat([early_means, *means, head.mean(dim=(2, 3)), early_stds, *stds, *tail], dim=1)

    def suffix(self, parts: list[torch.Tensor], start: int) -> torch.Tensor:
        """Standardised features from the output of :meth:`prefix` (blocks ``start ..`` run here)."""
        return (self._raw_suffix(parts, start) - self.feat_mean) / self.feat_std

    def suffix_modules(self, start: int) -> list[nn.Module]:
        return self.net.suffix_modules(start)

    @property
    def num_blocks(self) -> int:
        return self.net.num_blocks

    @torch.no_grad()
    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> int:
        """Set the standardisation from preprocessed, unaugmented training batches; returns the image count."""
        was_training = self.training
        self.eval()
        feats = torch.cat([self.raw(x) for x in batches])
        self.train(was_training)
        self.statistics_from_features(feats)
        return int(feats.shape[0])

    @torch.no_grad()
    def statistics_from_features(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit the standardisation from this module's *unstandardised* outputs (its forward before any
        fit: mean 0, std 1). Returns the per-column (mean, std) now applied, so cached outputs can be
        standardised without a second pass of the network."""
        mean, std = column_statistics(feats)
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std)
        return mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.feat_mean) / self.feat_std
