"""Partial fine-tuning on cached prefix activations (model.trainable_from) and cached augmented views."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _swatches import red_blue_manifest

from sorting.datasets.preprocess import preprocess
from sorting.errors import ConfigError
from sorting.models.checkpoint import load_checkpoint
from sorting.models.multihead import build_multihead
from sorting.models.registry import create_backbone
from sorting.training import feature_cache, trainer
from sorting.training.config import load_train_config
from sorting.training.feature_cache import PackedLayout, cache_applies, view_count

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_multistage", "efficientnet_lite0_colour"])
def test_cached_prefix_plus_suffix_equals_the_whole_backbone(name: str) -> None:
    torch.manual_seed(0)
    module = create_backbone(name).module.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = module(x)
        for start in (0, 3, 11, module.num_blocks):
            parts = module.prefix(x, start)
            layout = PackedLayout.of(parts)
            rebuilt = module.suffix(layout.unpack(layout.pack(parts).half().float()), start)  # through the fp16 cache
            torch.testing.assert_close(module.suffix(parts, start), whole, rtol=0, atol=0)
            torch.testing.assert_close(rebuilt, whole, rtol=0.05, atol=0.05)
    trainable = {id(p) for m in module.suffix_modules(11) for p in m.parameters()}
    assert 0 < len(trainable) < len(list(module.parameters()))


def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    manifest = tmp_path / "data" / "manifest.csv"
    return [
        f"data.train=[{manifest if manifest.is_file() else red_blue_manifest(tmp_path / 'data', 32)}]", f"output_dir={tmp_path / 'runs'}", "model.heads=[colour]",
        "model.backbone=efficientnet_lite0", "model.input_size=32", "batch_size=8", "num_workers=0", "progress=false",
        "threads=1", "optim.epochs=3", "optim.lr=0.01", "optim.warmup_epochs=0", "model.trainable_from=14",
        "tracking.enabled=false", *extra,
    ]


def test_partial_finetune_caches_the_prefix_once_and_trains_only_the_rest(tmp_path, monkeypatch) -> None:
    config = load_train_config(None, _overrides(tmp_path, "augment.preset=light", "augment.views=3", "freeze_backbone_epochs=1"))
    assert cache_applies(config) and view_count(config) == 3
    torch.manual_seed(config.seed)  # the trainer seeds the same way before building the model
    start_state = {k: v.clone() for k, v in build_multihead("efficientnet_lite0", {"colour": 12})[0].state_dict().items()}
    passes = []
    real_extract = feature_cache.extract_features
    monkeypatch.setattr(feature_cache, "extract_features", lambda enc, ds, **kw: passes.append(len(ds)) or real_extract(enc, ds, **kw))
    result = trainer.fit(config)
    assert passes == [3, 1]  # one prefix pass per training view and one over validation, not one per epoch

    ckpt = load_checkpoint(result.best_checkpoint)
    state = ckpt.model.state_dict()
    prefix_keys = [k for k in state if k.startswith(("backbone._conv_stem", "backbone._blocks.0.", "backbone._blocks.13."))]
    suffix_keys = [k for k in state if k.startswith(("backbone._blocks.14.", "backbone._conv_head")) and k.endswith("weight")]
    assert prefix_keys and suffix_keys
    assert all(torch.equal(state[k], start_state[k]) for k in prefix_keys)  # same init (seed), never trained
    assert any(not torch.equal(state[k], start_state[k]) for k in suffix_keys)  # the fine-tuned blocks moved
    # the saved full network reproduces the validation the trainer measured on the cache
    val = json.loads((result.run_dir / "metrics.json").read_text())["val"]["colour"]
    rows = [i for i in range(32) if i % 4 == 0]
    x = torch.from_numpy(np.stack([
        preprocess(cv2.imread(str(tmp_path / "data" / "img" / f"{i}.png")), ckpt.preprocess, input_order="BGR") for i in rows
    ]))
    with torch.no_grad():
        pred = ckpt.model(x)["colour"].argmax(1)
    truth = torch.tensor([ckpt.labels["colour"].index("red" if i % 2 else "blue") for i in rows])
    assert float((pred == truth).float().mean()) == pytest.approx(val["accuracy"])


def test_partial_finetune_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot be split"):
        trainer.fit(load_train_config(None, _overrides(tmp_path, "model.backbone=tiny")))
    with pytest.raises(ConfigError, match="out of range"):
        trainer.fit(load_train_config(None, _overrides(tmp_path, "model.trainable_from=17")))
    with pytest.raises(ConfigError, match="freeze_backbone_epochs"):
        load_train_config(None, _overrides(tmp_path, "freeze_backbone_epochs=3"))
    with pytest.raises(ConfigError, match="augment.views"):
        view_count(load_train_config(None, _overrides(tmp_path, "augment.preset=texture")))
    with pytest.raises(ConfigError, match="leave augment.views unset"):
        load_train_config(None, _overrides(tmp_path, "augment.preset=flip", "augment.views=4"))
    with pytest.raises(ConfigError, match="needs a cached run"):
        load_train_config(None, ["data.train=[x.csv]", "augment.preset=light", "augment.views=3"])
    with pytest.raises(ConfigError, match="freeze_bn"):
        load_train_config(None, ["data.train=[x.csv]", "model.freeze_bn=true"])
