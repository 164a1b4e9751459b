"""ColourFeatures / ColourAwareBackbone: garment mask, colour separation, standardisation, ONNX parity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from sorting.models.colour_features import ColourAwareBackbone, ColourFeatures, rgb_to_lab
from sorting.models.multihead import MultiHeadClassifier
from sorting.models.registry import create_backbone, list_backbones

torch.set_num_threads(1)


def _norm(img_uint8: np.ndarray) -> torch.Tensor:
    """HxWx3 RGB uint8 -> (1,3,H,W) with the Lite0 normalisation (x - 127) / 128."""
    x = torch.from_numpy(img_uint8.astype(np.float32)).permute(2, 0, 1)[None]
    return (x - 127.0) / 128.0


def _garment(colour: tuple[int, int, int], size: int = 224, box: tuple[int, int, int, int] = (56, 168, 64, 160)) -> np.ndarray:
    img = np.full((size, size, 3), 255, np.uint8)
    top, bottom, left, right = box
    img[top:bottom, left:right] = colour
    return img


def test_lab_of_known_colours() -> None:
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    lab = rgb_to_lab(rgb).view(3, 3)
    assert lab[0, 0] == pytest.approx(100.0, abs=0.5)
    assert lab[1, 0] == pytest.approx(0.0, abs=0.5)
    assert lab[2].tolist() == pytest.approx([53.2, 80.1, 67.2], abs=1.0)


def test_mask_removes_white_background_only() -> None:
    cf = ColourFeatures()
    fg = cf.foreground(cf.to_rgb(_norm(_garment((200, 30, 30)))))
    assert fg.mean().item() == pytest.approx((112 * 96) / (224 * 224), abs=0.02)


def test_all_white_image_falls_back_to_every_pixel_and_differs_from_black() -> None:
    cf = ColourFeatures()
    white = cf(_norm(np.full((224, 224, 3), 250, np.uint8)))
    black = cf(_norm(_garment((10, 10, 10))))
    assert torch.isfinite(white).all() and torch.isfinite(black).all()
    assert white.shape == (1, cf.out_dim) and cf.out_dim == 774
    assert white[0, -1].item() == pytest.approx(1.0)  # foreground fraction: every pixel counted
    assert (white - black).abs().sum() > 1.0


def test_descriptor_depends_on_garment_colour_not_on_its_size() -> None:
    cf = ColourFeatures()
    red = cf(_norm(_garment((200, 30, 30))))
    red_big = cf(_norm(_garment((200, 30, 30), box=(32, 192, 32, 192))))
    blue = cf(_norm(_garment((30, 30, 200))))
    histograms = slice(0, cf.out_dim - 11)  # proportions of the garment, independent of its area
    assert torch.allclose(red[:, histograms], red_big[:, histograms], atol=0.05)
    assert (red - blue).abs().sum() > 10 * (red - red_big)[:, histograms].abs().sum()


def test_registered_backbone_pads_white_and_standardises_from_training_batches() -> None:
    assert "efficientnet_lite0_colour" in list_backbones()
    bb = create_backbone("efficientnet_lite0_colour")
    assert bb.feature_dim == 1280 + 774 and bb.preprocess.pad_value == 255 and bb.preprocess.resize == "letterbox"
    module = ColourAwareBackbone(torch.nn.Flatten(), 0, ColourFeatures())
    module.forward = lambda x: (module.colour(x) - module.colour_mean) / module.colour_std  # colour branch only
    rng = np.random.default_rng(0)
    batches = [torch.cat([_norm(_garment(tuple(int(v) for v in rng.integers(0, 255, 3)))) for _ in range(4)]) for _ in range(3)]
    assert module.fit_statistics(iter(batches)) == 12
    out = torch.cat([module(b) for b in batches])
    varying = module.colour_std > 1e-3
    assert out.mean(0).abs().max() < 1e-3 and torch.allclose(out.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-3)
    assert {"colour_mean", "colour_std"} <= set(module.state_dict())


def test_colour_aware_model_exports_to_onnx_with_matching_outputs() -> None:
    import onnxruntime as ort

    tiny = create_backbone("tiny")
    backbone = ColourAwareBackbone(tiny.module, tiny.feature_dim, ColourFeatures(tiny.preprocess.mean, tiny.preprocess.std))
    rng = np.random.default_rng(0)
    imgs = np.stack([_garment(tuple(int(v) for v in rng.integers(0, 255, 3)), size=64, box=(16, 48, 20, 44)) for _ in range(3)])
    mean, std = np.array(tiny.preprocess.mean, np.float32), np.array(tiny.preprocess.std, np.float32)
    x = torch.from_numpy(((imgs - mean) / std).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    backbone.fit_statistics([x])
    model = MultiHeadClassifier(backbone, backbone.feature_dim, {"colour": 12}).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(image)
            return out["colour"], out["embedding"]

    buf = io.BytesIO()
    torch.onnx.export(Logits().eval(), (x,), buf, input_names=["image"], output_names=["colour_logits", "embedding"],
                      dynamic_axes={"image": {0: "batch"}}, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(got[0], ref["colour"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], ref["embedding"].numpy(), atol=1e-3)
    np.testing.assert_allclose(sess.run(None, {"image": x[:1].numpy()})[0], got[0][:1], atol=1e-4)  # dynamic batch
