"""Multi-stage pooled Lite0 texture backbone: shape, registry entry and fitted standardisation."""

from __future__ import annotations

import pytest
import torch

from sorting.errors import ConfigError
from sorting.models.efficientnet_lite import EfficientNetLite
from sorting.models.multistage import MultiStagePoolBackbone
from sorting.models.registry import create_backbone, list_backbones

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


def test_view_averaged_features_are_the_mean_over_views_and_mirror_invariant() -> None:
    """`_multistage_mirror`: one batched pass over the image and its mirror, averaged before the standardisation,
    so the model itself gives a garment and its mirror image the same features (test-time augmentation in-graph)."""
    torch.manual_seed(0)
    net = EfficientNetLite(num_classes=0).eval()
    plain = MultiStagePoolBackbone(net).eval()
    mirrored = MultiStagePoolBackbone(net, views=("id", "h")).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = (plain.raw(x) + plain.raw(torch.flip(x, dims=[3]))) / 2
        torch.testing.assert_close(mirrored.raw(x), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mirrored(torch.flip(x, dims=[3])), mirrored(x), atol=1e-4, rtol=1e-4)
    backbone = create_backbone("efficientnet_lite1_multistage_mirror")
    assert backbone.module.views == ("id", "h") and backbone.preprocess.input_size == 240
    with pytest.raises(ConfigError, match="view averaging"):
        mirrored.prefix(x, 3)
