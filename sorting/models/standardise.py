"""Fixed feature standardisation fitted on training images (the buffers of the frozen-feature backbones)."""

from __future__ import annotations

import torch

MIN_STD = 1e-3  # a constant feature must not blow up when divided by its spread


@torch.no_grad()
def column_statistics(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and (clamped) standard deviation of ``feats`` (N, D), N >= 2."""
    if feats.shape[0] < 2:
        raise ValueError("fitting a standardisation needs at least 2 images")
    feats = feats.float()
    return feats.mean(0), feats.std(0).clamp(min=MIN_STD)
