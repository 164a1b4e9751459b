"""Multi-stage pooled Lite0 texture backbone: shape, registry entry and fitted standardisation."""

from __future__ import annotations

import torch

from sorting.models.efficientnet_lite import EfficientNetLite
from sorting.models.multistage import MultiStagePoolBackbone
from sorting.models.registry import list_backbones

torch.set_num_threads(1)


def test_multistage_features_are_standardised_on_training_batches() -> None:
    assert "efficientnet_lite0_multistage" in list_backbones()
    torch.manual_seed(0)
    module = MultiStagePoolBackbone(EfficientNetLite(num_classes=0)).eval()
    assert module.feature_dim == 2768
    batches = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    assert module.fit_statistics(batches) == 8
    with torch.no_grad():
        out = torch.cat([module(b) for b in batches])
    assert out.shape == (8, 2768)
    varying = module.feat_std > 1e-3
    assert out.mean(0).abs().max() < 1e-3 and torch.allclose(out.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-3)
    assert {"feat_mean", "feat_std"} <= set(module.state_dict())
