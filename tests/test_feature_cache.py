"""Frozen-backbone runs train the heads on cached features and still save a full, working checkpoint."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch
from _swatches import red_blue_manifest

from sorting.datasets.preprocess import preprocess
from sorting.models.checkpoint import load_checkpoint
from sorting.training import feature_cache, image_setup, trainer
from sorting.training.config import load_train_config
from sorting.training.feature_cache import cache_applies

torch.set_num_threads(1)


def test_cached_heads_training_gives_a_full_checkpoint(tmp_path, monkeypatch) -> None:
    config = load_train_config(None, [
        f"data.train=[{red_blue_manifest(tmp_path / 'data', 48)}]", f"output_dir={tmp_path / 'runs'}", "model.heads=[colour]",
        "model.input_size=32", "batch_size=8", "num_workers=0", "progress=false", "threads=1", "optim.epochs=4",
        "tracking.enabled=false", "optim.lr=0.05", "optim.warmup_epochs=0", "freeze_backbone_epochs=4", "augment.preset=flip",
        "balance=sqrt_loss_weights", "model.pad_value=255",
    ])
    assert cache_applies(config) and not cache_applies(config.model_copy(update={"freeze_backbone_epochs": 3}))
    passes = []
    real_extract = feature_cache.extract_features
    monkeypatch.setattr(feature_cache, "extract_features", lambda *a, **kw: passes.append(kw.get("flip", False)) or real_extract(*a, **kw))
    result = trainer.fit(config)
    assert passes == [True, False]  # train (+ mirrored) and val features: one backbone pass each, not one per epoch

    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt.preprocess.pad_value == 255
    val = json.loads((result.run_dir / "metrics.json").read_text())["val"]["colour"]
    assert val["accuracy"] == 1.0  # red vs blue is trivially separable from frozen random-init features
    # the saved full model (backbone + heads) reproduces the cached-feature validation
    rows = [r for r in range(48) if r % 4 == 0]
    imgs = [cv2.imread(str(tmp_path / "data" / "img" / f"{i}.png")) for i in rows]
    x = torch.from_numpy(np.stack([preprocess(img, ckpt.preprocess, input_order="BGR") for img in imgs]))
    with torch.no_grad():
        pred = ckpt.model(x)["colour"].argmax(1).tolist()
    labels = ckpt.labels["colour"]
    assert [labels[p] for p in pred] == ["red" if i % 2 else "blue" for i in rows]


def test_frozen_backbone_standardisation_is_fitted_from_the_cache(tmp_path, monkeypatch) -> None:
    """No separate statistics pass: the standardisation comes from the cached unaugmented view and the
    saved backbone's buffers are the statistics of the training images' colour descriptors."""
    manifest = red_blue_manifest(tmp_path / "data", 48)
    config = load_train_config(None, [
        f"data.train=[{manifest}]", f"output_dir={tmp_path / 'runs'}", "model.heads=[colour]",
        "model.backbone=efficientnet_lite0_colour", "model.pretrained=false", "model.input_size=32",
        "batch_size=8", "num_workers=0", "progress=false", "threads=1", "optim.epochs=2", "optim.warmup_epochs=0",
        "freeze_backbone_epochs=2", "augment.preset=flip", "tracking.enabled=false",
    ])
    monkeypatch.setattr(image_setup, "fit_backbone_statistics", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("extra pass")))
    ckpt = load_checkpoint(trainer.fit(config).best_checkpoint)
    train_rows = [r for r in range(48) if r % 4 != 0]
    imgs = [cv2.imread(str(tmp_path / "data" / "img" / f"{i}.png")) for i in train_rows]
    x = torch.from_numpy(np.stack([preprocess(img, ckpt.preprocess, input_order="BGR") for img in imgs]))
    backbone = ckpt.model.backbone.eval()
    with torch.no_grad():
        raw = backbone.colour(x)
    assert raw.std(0).max() > 0.1  # the swatches do vary
    torch.testing.assert_close(backbone.colour_mean, raw.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(backbone.colour_std, raw.std(0).clamp(min=1e-3), atol=1e-4, rtol=1e-4)


def _swatch_dataset(tmp_path, n: int = 12):
    from sorting.datasets.preprocess import PreprocessConfig
    from sorting.taxonomy import load_taxonomy
    from sorting.training.data import LabelSpace, ManifestDataset, collect_samples, load_head_aliases

    space = LabelSpace.from_taxonomy(load_taxonomy(), ["colour"])
    samples = collect_samples([red_blue_manifest(tmp_path / "data", n)], "train", space, load_head_aliases(["colour"]))
    return ManifestDataset(samples, PreprocessConfig(input_size=16))


def test_feature_store_reuses_rows_of_the_same_encoder_and_only_of_it(tmp_path, monkeypatch) -> None:
    """With $TEXTILE_SORTER_FEATURE_CACHE a second run reads every row back (no image goes through the encoder);
    an encoder with other weights gets rows of its own; augmented datasets are never stored."""
    from torch import nn

    from sorting.training.feature_cache import FeatureStore, extract_features

    monkeypatch.setenv(FeatureStore.ENV, str(tmp_path / "store"))
    dataset = _swatch_dataset(tmp_path)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    seen = []

    def encoder(x):
        seen.append(len(x))
        return [net(x)]

    kw = {"batch_size": 4, "device": torch.device("cpu"), "flip": True, "progress": False}
    first = extract_features(encoder, [dataset], **kw)
    images_first = sum(seen[1:])  # seen[0]: the fingerprint's probe batch
    seen.clear()
    second = extract_features(encoder, [dataset], **kw)
    assert images_first == 2 * len(dataset) and seen == [2]  # plain + mirrored; then only the probe
    torch.testing.assert_close(second.views, first.views)
    assert torch.equal(second.targets, first.targets) and second.views.shape == (2, len(dataset), 4)
    with torch.no_grad():
        net[0].weight.mul_(2)  # other weights: another fingerprint, nothing read back
    seen.clear()
    other = extract_features(encoder, [dataset], **kw)
    assert sum(seen[1:]) == 2 * len(dataset) and not torch.allclose(other.views, first.views)
    seen.clear()
    plain = extract_features(encoder, [dataset], **{**kw, "flip": False})  # the plain rows are stored already
    assert seen == [2] and torch.equal(plain.views[0], other.views[0])
    dataset.augmentation = lambda image: {"image": image}
    assert dataset.cache_keys() is None


def test_cache_keys_name_the_file_not_the_way_a_manifest_reaches_it(tmp_path) -> None:
    """Cross-validation folds and the final run read the same images through differently rebased manifests."""
    from sorting.training.data import ManifestDataset, Sample

    dataset = _swatch_dataset(tmp_path)
    detour = Sample(tmp_path / "data" / "img" / ".." / "img" / dataset.samples[0].path.name, dataset.samples[0].targets)
    other = ManifestDataset([detour], dataset.preprocess_config)
    assert other.cache_keys() == dataset.cache_keys()[:1]
