"""Multi-stage pooled Lite0 texture backbone: shape, registry entry and fitted standardisation."""

from __future__ import annotations

import numpy as np
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


def test_mirror_averaged_model_exports_to_onnx_and_serving_sees_the_same_logits(tmp_path) -> None:
    """The view average is part of the graph: the exported model gives torch's logits, for an image and its mirror."""
    from sorting.models.export import export_model
    from sorting.models.multihead import build_multihead
    from sorting.models.onnx_model import ModelMetadata, OnnxClassifier

    torch.manual_seed(0)
    model, pre = build_multihead("efficientnet_lite0_multistage_mirror", {"fibre": 4}, pretrained=False)
    pre = pre.model_copy(update={"input_size": 64})
    model.backbone.fit_statistics([torch.randn(4, 3, 64, 64)])
    meta = ModelMetadata(model_name="efficientnet_lite0_multistage_mirror", heads=("fibre",),
                         labels={"fibre": ["cotton", "denim", "linen", "polyester"]}, preprocess=pre, taxonomy_version="t")
    result = export_model(model, tmp_path / "m.onnx", meta)
    assert result.check.passed
    x = torch.randn(2, 3, 64, 64).numpy()
    onnx_logits = OnnxClassifier.load(tmp_path / "m.onnx", threads=1).predict_logits(x)["fibre"]
    np.testing.assert_allclose(onnx_logits, OnnxClassifier.load(tmp_path / "m.onnx", threads=1).predict_logits(
        np.ascontiguousarray(x[:, :, :, ::-1]))["fibre"], atol=1e-4)
