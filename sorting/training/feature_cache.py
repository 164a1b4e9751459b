"""Frozen-backbone feature cache: train the heads on backbone features computed once.

When the backbone stays frozen for the whole run (``freeze_backbone_epochs >= optim.epochs``)
and augmentation is ``none`` or ``flip``, every epoch would recompute the same backbone features;
on a CPU that is most of the run time (EfficientNet-Lite0: ~60 ms/image). Instead the trainer
extracts them once per image (and once per horizontally flipped image for ``flip``) and trains
the heads on the cached tensors. The model object, and so the saved checkpoint, is still the
full network (backbone + heads): export, evaluate and serve are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sorting.models.multihead import EMBEDDING, MultiHeadClassifier
from sorting.training.config import TrainConfig

CACHEABLE_PRESETS = ("none", "flip")


def cache_applies(config: TrainConfig, world_size: int = 1) -> bool:
    """True when the run can train on cached features (frozen throughout, no image-changing augmentation)."""
    return (
        config.freeze_backbone_epochs >= config.optim.epochs
        and config.augment.preset in CACHEABLE_PRESETS
        and world_size == 1
    )


@dataclass
class CachedFeatures:
    """Backbone features of a dataset, in dataset order; ``flipped`` holds those of the mirrored images."""

    features: torch.Tensor
    targets: torch.Tensor
    flipped: torch.Tensor | None = None


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    flip: bool = False,
    num_workers: int = 0,
    desc: str = "features",
    progress: bool = True,
) -> CachedFeatures:
    """Run ``backbone`` (eval mode) once over ``dataset`` of ``(image, targets)`` (plus mirrored copies if ``flip``)."""
    backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, flipped, targets = [], [], []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        x = x.to(device)
        feats.append(backbone(x).float().cpu())
        if flip:
            flipped.append(backbone(torch.flip(x, dims=[3])).float().cpu())
        targets.append(y)
    return CachedFeatures(torch.cat(feats), torch.cat(targets), torch.cat(flipped) if flip else None)


class FeatureDataset(Dataset):
    """Cached ``(features, targets)`` rows; with ``flipped`` set, each draw picks either view (p = 0.5)."""

    def __init__(self, cached: CachedFeatures, *, seed: int = 0) -> None:
        self.cached = cached
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return int(self.cached.features.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        source = self.cached.features
        if self.cached.flipped is not None and torch.rand((), generator=self.generator) < 0.5:
            source = self.cached.flipped
        return source[index], self.cached.targets[index]


class HeadsOnly(nn.Module):
    """The heads of a :class:`MultiHeadClassifier` applied to cached features (shares its parameters)."""

    def __init__(self, model: MultiHeadClassifier) -> None:
        super().__init__()
        self.classifiers = model.classifiers
        self.heads = model.heads

    @property
    def head_sizes(self) -> dict[str, int]:
        return {h: self.classifiers[h][1].out_features for h in self.heads}

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {h: self.classifiers[h](features) for h in self.heads}
        out[EMBEDDING] = features
        return out
