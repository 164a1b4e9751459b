"""Belt colour mask and the multi-stage + colour conveyor backbone: mask, statistics, ONNX export, INT8 scope."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from sorting.datasets.preprocess import LITE_MEAN, LITE_STD, PreprocessConfig, preprocess
from sorting.models.belt_colour import BeltColourFeatures, MultiStageColourBackbone
from sorting.models.colour_features import ColourFeatures
from sorting.models.efficientnet_lite import EfficientNetLite
from sorting.models.export import export_model
from sorting.models.multihead import MultiHeadClassifier
from sorting.models.multistage import MultiStagePoolBackbone
from sorting.models.onnx_model import ModelMetadata
from sorting.models.quantize import float_nodes
from sorting.models.registry import create_backbone, list_backbones

torch.set_num_threads(1)
PRE = PreprocessConfig(input_size=128, resize="letterbox", mean=LITE_MEAN, std=LITE_STD)


def _belt_crop(garment_bgr: tuple[int, int, int], *, width: int = 160, height: int = 90, seed: int = 0) -> np.ndarray:
    """A wide BGR crop: noisy dark-grey belt (like the synthetic conveyor) with a garment rectangle in the middle."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal((66, 70, 72), 3.0, (height, width, 3)), 0, 255)
    img[15:65, 40:120] = np.clip(rng.normal(garment_bgr, 3.0, (50, 80, 3)), 0, 255)
    return img.astype(np.uint8)


def _input(crops: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess(c, PRE, input_order="BGR") for c in crops]))


@pytest.mark.parametrize("garment", [(20, 20, 20), (200, 60, 30), (235, 235, 235)])
def test_mask_drops_belt_and_letterbox_padding_but_keeps_dark_and_light_garments(garment: tuple[int, int, int]) -> None:
    cf = BeltColourFeatures(PRE.mean, PRE.std, pad_value=PRE.pad_value)
    fg = cf.foreground(cf.to_rgb(_input([_belt_crop(garment)])))
    # the garment is 50 x 80 of the 90 x 160 crop, which fills 128 x 72 of the 128 x 128 input; the letterbox
    # edges (28 padding rows) fall halfway into 8-px grid cells, which therefore mix belt and padding; the
    # garment edges fall on cell edges
    expected = (50 * 80) / (90 * 160) * (72 / 128)
    assert fg.mean().item() == pytest.approx(expected, abs=0.03)


def test_descriptor_barely_depends_on_how_much_belt_surrounds_the_garment() -> None:
    tight = _belt_crop((30, 40, 200))[9:71, 32:128]  # sorter-like crop: small margin around the garment
    x = _input([_belt_crop((30, 40, 200)), tight, _belt_crop((200, 60, 30))])

    def margin_effect(cf: ColourFeatures) -> float:
        """Descriptor change from the crop margin, relative to the change from blue to red."""
        with torch.no_grad():
            wide, small, other = cf(x)
        histograms = slice(0, cf.out_dim - 11)
        return float((wide - small)[histograms].abs().sum() / (wide - other)[histograms].abs().sum())

    belt = margin_effect(BeltColourFeatures(PRE.mean, PRE.std, pad_value=PRE.pad_value))
    white = margin_effect(ColourFeatures(PRE.mean, PRE.std, grid=16, iters=8))  # the catalogue mask: belt kept
    assert belt < 0.3 and belt < 0.5 * white


def test_backbone_fits_both_standardisations_exports_and_keeps_colour_branch_float(tmp_path) -> None:
    assert "efficientnet_lite0_multistage_colour" in list_backbones()
    assert create_backbone("efficientnet_lite0_multistage_colour").preprocess.pad_value == 127
    torch.manual_seed(0)
    pre = PRE.model_copy(update={"input_size": 64})
    backbone = MultiStageColourBackbone(MultiStagePoolBackbone(EfficientNetLite(num_classes=0)),
                                        BeltColourFeatures(pre.mean, pre.std, pad_value=pre.pad_value))
    assert backbone.feature_dim == 2768 + 774
    crops = [_belt_crop(tuple(int(v) for v in np.random.default_rng(i).integers(0, 255, 3)), seed=i) for i in range(6)]
    batches = [torch.from_numpy(np.stack([preprocess(c, pre, input_order="BGR") for c in crops[i : i + 3]])) for i in (0, 3)]
    assert backbone.fit_statistics(iter(batches)) == 6
    backbone.eval()
    with torch.no_grad():
        out = torch.cat([backbone(b) for b in batches])
    assert out.shape == (6, 3542)
    assert out.mean(0).abs().max() < 1e-3  # texture and colour parts both centred on the training batches
    model = MultiHeadClassifier(backbone, backbone.feature_dim, {"fibre": 10, "colour": 12}).eval()
    meta = ModelMetadata(model_name="efficientnet_lite0_multistage_colour", heads=("fibre", "colour"),
                         labels={"fibre": [f"f{i}" for i in range(10)], "colour": [f"c{i}" for i in range(12)]},
                         preprocess=pre, taxonomy_version="test")
    result = export_model(model, tmp_path / "m.onnx", meta, check_batch=torch.cat(batches).numpy())
    assert result.check.passed and max(result.check.max_abs_diff.values()) < 1e-3
    kept = float_nodes(onnx.load(str(result.path)), first_convs=0, heads=False)
    assert len(kept) > 20 and all("/backbone/colour/" in name for name in kept)


def test_statistics_from_cached_outputs_equal_a_fitting_pass() -> None:
    """The trainer fits a frozen backbone's standardisation from its cached raw outputs instead of a
    separate pass over the training images: both must give the same buffers and features."""
    pre = PRE.model_copy(update={"input_size": 64})

    def build() -> MultiStageColourBackbone:
        torch.manual_seed(0)
        return MultiStageColourBackbone(MultiStagePoolBackbone(EfficientNetLite(num_classes=0)),
                                        BeltColourFeatures(pre.mean, pre.std, pad_value=pre.pad_value)).eval()

    crops = [_belt_crop(tuple(int(v) for v in np.random.default_rng(i).integers(0, 255, 3)), seed=i) for i in range(6)]
    x = torch.from_numpy(np.stack([preprocess(c, pre, input_order="BGR") for c in crops]))
    by_pass, by_cache = build(), build()
    by_pass.fit_statistics([x[:3], x[3:]])
    with torch.no_grad():
        raw = by_cache(x)  # unfitted: the raw features
        mean, std = by_cache.statistics_from_features(raw)
        expected = by_pass(x)
        torch.testing.assert_close((raw - mean) / std, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(by_cache(x), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(mean, torch.zeros_like(mean))
