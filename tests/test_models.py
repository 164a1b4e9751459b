"""Backbone registry, EfficientNet-Lite0 ImageNet weights, multi-head model, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm

from sorting.datasets.preprocess import LITE_MEAN, LITE_STD, PreprocessConfig, preprocess
from sorting.errors import ConfigError, ModelFileError
from sorting.models.checkpoint import load_checkpoint, save_checkpoint
from sorting.models.efficientnet_lite import LITE0, VARIANTS, LiteVariant, efficientnet_lite
from sorting.models.multihead import MultiHeadClassifier, build_multihead
from sorting.models.registry import BackboneRegistry, create_backbone, list_backbones, register_backbone
from sorting.training.config import load_train_config

torch.set_num_threads(1)
LABELS = {"fibre": ["cotton", "polyester", "wool"], "colour": ["red", "blue"]}


def test_registry_lists_the_builtins_and_rejects_duplicates() -> None:
    assert {"mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "efficientnet_lite0", "tiny"} <= set(list_backbones())
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny")(lambda **kw: None)
    registry = BackboneRegistry()
    registry.register("x")(lambda **kw: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x")(lambda **kw: None)
    with pytest.raises(ConfigError, match="unknown backbone 'nope'.*tiny"):
        create_backbone("nope")


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "efficientnet_lite0"])
def test_every_backbone_returns_pooled_features_of_its_declared_size(name: str) -> None:
    backbone = create_backbone(name)
    with torch.no_grad():
        features = backbone.module.eval()(torch.zeros(2, 3, 64, 64))
    assert features.shape == (2, backbone.feature_dim)
    assert isinstance(backbone.preprocess, PreprocessConfig)


def test_torchvision_pretrained_without_a_local_file_fails_fast_with_the_file_name(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelFileError, match="resnet18-f37072fd.pth"):
        create_backbone("resnet18", pretrained=True)
    with pytest.raises(ModelFileError, match="not found"):
        create_backbone("resnet18", pretrained=True, weights_path=tmp_path / "missing.pth")
    with pytest.raises(ModelFileError):
        create_backbone("tiny", pretrained=True)


def test_torchvision_pretrained_loads_a_local_weights_file_and_the_hub_cache(tmp_path, monkeypatch) -> None:
    reference = tvm.mobilenet_v3_small(weights=None)
    path = tmp_path / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    path.parent.mkdir()
    torch.save(reference.state_dict(), path)
    expected = reference.features[0][0].weight
    loaded = create_backbone("mobilenet_v3_small", pretrained=True, weights_path=path)
    assert torch.equal(loaded.module.features[0][0].weight, expected)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = create_backbone("mobilenet_v3_small", pretrained=True)
    assert torch.equal(cached.module.features[0][0].weight, expected)
    torch.save({"bogus": torch.zeros(1)}, path)
    with pytest.raises(ModelFileError, match="cannot load"):
        create_backbone("mobilenet_v3_small", pretrained=True)


@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_pretrained_lite_recognises_real_photos(variant: LiteVariant) -> None:
    """Strict-loaded packaged ImageNet weights: chelsea is a cat (281-285), coffee an espresso/cup."""
    from skimage import data  # scikit-image's sample photos (a dev dependency)

    model = efficientnet_lite(variant, pretrained=True).eval()
    size = variant.input_size
    cfg = PreprocessConfig(input_size=size, resize="center_crop", mean=LITE_MEAN, std=LITE_STD)
    batch = torch.from_numpy(np.stack([preprocess(img, cfg, input_order="RGB") for img in (data.chelsea(), data.coffee())]))
    with torch.no_grad():
        top5 = model(batch).topk(5).indices.tolist()
    assert set(top5[0]) & {281, 282, 283, 284, 285}, top5[0]
    assert set(top5[1]) & {967, 968, 504}, top5[1]  # espresso, cup, coffee mug
    backbone = create_backbone(variant.name, pretrained=True)
    assert backbone.preprocess.mean == LITE_MEAN and backbone.preprocess.std == LITE_STD
    assert backbone.preprocess.input_size == size
    assert torch.equal(backbone.module._conv_stem.weight, model._conv_stem.weight)


def test_lite_weights_of_another_variant_are_refused_by_the_strict_key_match(tmp_path) -> None:
    """Lite1 and Lite2 share Lite0's key names but not its depth/widths: loading across variants must fail."""
    path = tmp_path / "lite0.pth"
    torch.save(efficientnet_lite(LITE0).state_dict(), path)
    with pytest.raises(ModelFileError, match="cannot load efficientnet_lite2"):
        create_backbone("efficientnet_lite2", pretrained=True, weights_path=path)
    assert create_backbone("efficientnet_lite0", pretrained=True, weights_path=path).feature_dim == 1280


def test_every_lite_variant_builds_the_colour_and_multistage_backbones() -> None:
    for name in VARIANTS:
        for suffix in ("", "_colour", "_multistage", "_multistage_colour"):
            backbone = create_backbone(name + suffix)
            with torch.no_grad():
                features = backbone.module.eval()(torch.zeros(2, 3, 64, 64))
            assert features.shape == (2, backbone.feature_dim), name + suffix
    assert create_backbone("efficientnet_lite2_multistage").feature_dim == 2 * (48 + 88 + 120 + 208 + 352) + 1280


def test_multihead_outputs_one_logit_tensor_per_head_plus_embedding() -> None:
    model, pre = build_multihead("tiny", {"colour": 2, "fibre": 3})
    assert model.heads == ("fibre", "colour")  # taxonomy order, whatever the dict order
    out = model(torch.zeros(4, 3, pre.input_size, pre.input_size))
    assert out["fibre"].shape == (4, 3) and out["colour"].shape == (4, 2) and out["embedding"].shape == (4, 128)
    colour_only, _ = build_multihead("tiny", {"colour": 12})
    assert colour_only.heads == ("colour",) and set(colour_only(torch.zeros(1, 3, 64, 64))) == {"colour", "embedding"}
    with pytest.raises(ConfigError):
        MultiHeadClassifier(nn.Identity(), 8, {"size": 3})


def test_a_head_with_hidden_units_is_an_mlp_and_the_others_stay_linear() -> None:
    model, pre = build_multihead("tiny", {"fibre": 3, "colour": 2}, hidden={"fibre": 32})
    assert model.head_hidden == {"fibre": 32, "colour": 0} and model.head_sizes == {"fibre": 3, "colour": 2}
    assert [type(m) for m in model.classifiers["fibre"]] == [nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert model(torch.zeros(2, 3, pre.input_size, pre.input_size))["fibre"].shape == (2, 3)
    with pytest.raises(ConfigError, match="hidden"):
        build_multihead("tiny", {"colour": 2}, hidden={"fibre": 32})  # no such head


def test_frozen_backbone_has_no_trainable_parameters_and_keeps_batchnorm_statistics() -> None:
    model, _ = build_multihead("tiny", {"fibre": 3})
    model.set_backbone_trainable(False)
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.classifiers.parameters())
    assert not model.backbone.training and model.classifiers.training
    model.set_backbone_trainable(True)
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())


def _save(tmp_path, model, pre, **kw):
    return save_checkpoint(
        tmp_path / "model.pt", model, model_name="tiny", labels=LABELS, preprocess=pre, taxonomy_version="1.0",
        config={"model": {"backbone": "tiny"}}, metrics={"val/fibre/accuracy": np.float32(0.5)},
        temperature={"fibre": 1.5, "colour": 0.9}, ood={"method": "energy", "threshold": {"fibre": -2.0, "colour": -1.0}},
        run_id="run-1", dataset_hash="abc", epoch=4, **kw,
    )


def test_checkpoint_round_trip_restores_weights_and_metadata(tmp_path) -> None:
    torch.manual_seed(0)
    model, pre = build_multihead("tiny", {"fibre": 3, "colour": 2})
    pre = pre.model_copy(update={"input_size": 48})
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 48, 48))["fibre"].sum().backward()
    optimizer.step()
    path = _save(tmp_path, model.eval(), pre, optimizer_state=optimizer.state_dict())
    raw = torch.load(path, weights_only=True)  # only plain data and tensors inside
    assert raw["optimizer"]["state"]
    loaded = load_checkpoint(path)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        expected, got = model(x), loaded.model(x)
    assert all(torch.allclose(expected[k], got[k]) for k in expected)
    assert not loaded.model.training
    assert loaded.labels == LABELS and loaded.heads == ("fibre", "colour")
    assert loaded.preprocess == pre and loaded.taxonomy_version == "1.0"
    assert loaded.temperature == {"fibre": 1.5, "colour": 0.9} and loaded.ood["threshold"]["colour"] == -1.0
    assert loaded.metrics["val/fibre/accuracy"] == pytest.approx(0.5)
    assert (loaded.run_id, loaded.dataset_hash, loaded.epoch, loaded.model_name) == ("run-1", "abc", 4, "tiny")


def test_bad_checkpoint_files_raise_model_file_error(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not a textile-sorter checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    model, pre = build_multihead("tiny", {"fibre": 3, "colour": 2})
    path = _save(tmp_path, model, pre)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"].pop("classifiers.fibre.1.weight")
    torch.save(raw, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="cannot be rebuilt"):
        load_checkpoint(tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="label names"):
        save_checkpoint(tmp_path / "x.pt", model, model_name="tiny", labels={"fibre": ["a"], "colour": ["r", "b"]},
                        preprocess=pre, taxonomy_version="1", config={})


def test_head_hidden_in_a_recipe_must_name_a_trained_head(repo_root) -> None:
    recipe = repo_root / "training" / "synthetic-quick.yaml"
    assert load_train_config(recipe, ["model.head_hidden={fibre: 64}"]).model.head_hidden == {"fibre": 64}
    with pytest.raises(ConfigError, match="head_hidden"):
        load_train_config(recipe, ["model.heads=[colour]", "model.head_hidden={fibre: 64}"])
    with pytest.raises(ConfigError, match="head_hidden"):
        load_train_config(recipe, ["model.head_hidden={fibre: 0}"])
