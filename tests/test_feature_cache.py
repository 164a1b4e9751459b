"""Frozen-backbone runs train the heads on cached features and still save a full, working checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from sorting.datasets.manifest import ManifestRow, write_manifest
from sorting.datasets.preprocess import preprocess
from sorting.models.checkpoint import load_checkpoint
from sorting.training import trainer
from sorting.training.config import load_train_config
from sorting.training.feature_cache import cache_applies

torch.set_num_threads(1)


def _manifest(folder: Path) -> Path:
    """24 red / 24 blue swatches (colour head), every 4th in val."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(48):
        colour, bgr = ("red", (0, 0, 230)) if i % 2 else ("blue", (230, 40, 0))
        img = np.clip(np.full((24, 24, 3), bgr, np.int32) + rng.integers(-15, 15, (24, 24, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "img" / f"{i}.png"), img)
        rows.append(ManifestRow(f"img/{i}.png", colour=colour, split="val" if i % 4 == 0 else "train"))
    return write_manifest(rows, folder / "manifest.csv")


def test_cached_heads_training_gives_a_full_checkpoint(tmp_path, monkeypatch) -> None:
    config = load_train_config(None, [
        f"data.train=[{_manifest(tmp_path / 'data')}]", f"output_dir={tmp_path / 'runs'}", "model.heads=[colour]",
        "model.input_size=32", "batch_size=8", "num_workers=0", "progress=false", "threads=1", "optim.epochs=4",
        "optim.lr=0.05", "optim.warmup_epochs=0", "freeze_backbone_epochs=4", "augment.preset=flip",
        "balance=sqrt_loss_weights", "model.pad_value=255",
    ])
    assert cache_applies(config) and not cache_applies(config.model_copy(update={"freeze_backbone_epochs": 3}))
    passes = []
    real_extract = trainer.extract_features
    monkeypatch.setattr(trainer, "extract_features", lambda *a, **kw: passes.append(kw.get("flip", False)) or real_extract(*a, **kw))
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
