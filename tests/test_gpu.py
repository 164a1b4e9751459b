"""The CUDA training path (mixed precision, channels-last, GPU feature cache), end to end.

Skipped where there is no CUDA GPU (CI has none); on a GPU machine: ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sorting.datasets.manifest import ManifestRow, write_manifest
from sorting.models.checkpoint import load_checkpoint
from sorting.training.config import load_train_config
from sorting.training.trainer import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
COLOURS_BGR = {"red": (0, 0, 230), "blue": (230, 40, 0), "green": (30, 200, 40)}


@pytest.fixture(scope="module")
def colour_manifest(tmp_path_factory) -> Path:
    """90 noisy single-colour squares, a quarter of them validation."""
    root = tmp_path_factory.mktemp("gpu-data")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(90):
        colour = list(COLOURS_BGR)[i % 3]
        img = np.clip(np.full((40, 40, 3), COLOURS_BGR[colour], np.int32) + rng.integers(-20, 20, (40, 40, 3)), 0, 255)
        cv2.imwrite(str(root / f"{i}.png"), img.astype(np.uint8))
        rows.append(ManifestRow(f"{i}.png", colour=colour, split="val" if i % 4 == 0 else "train"))
    return write_manifest(rows, root / "manifest.csv")


def _config(manifest: Path, tmp_path: Path, *extra: str):
    return load_train_config(None, [
        f"data.train=[{manifest}]", f"output_dir={tmp_path / 'runs'}", "model.heads=[colour]", "model.input_size=32",
        "device=cuda", "amp=true", "channels_last=true", "batch_size=16", "num_workers=0", "progress=false",
        "optim.epochs=4", "optim.lr=0.01", "optim.warmup_epochs=0", "tracking.enabled=false", *extra,
    ])


def _cpu_accuracy(checkpoint: Path, manifest: Path) -> float:
    """Accuracy of the saved checkpoint, loaded and run on the CPU, over every image of the manifest."""
    from sorting.datasets.manifest import read_manifest
    from sorting.models.evaluation import predict_logits
    from sorting.training.evaluate import load_predictor

    ckpt = load_checkpoint(checkpoint)
    assert all(p.device.type == "cpu" for p in ckpt.model.parameters())
    rows = read_manifest(manifest)
    logits = predict_logits(load_predictor(checkpoint), [cv2.imread(str(rows.image_path(r))) for r in rows.rows])
    predicted = [ckpt.labels["colour"][int(k)] for k in logits["colour"].argmax(1)]
    return float(np.mean([p == r.colour for p, r in zip(predicted, rows.rows)]))


def test_mixed_precision_channels_last_training_gives_a_cpu_checkpoint(colour_manifest, tmp_path) -> None:
    result = fit(_config(colour_manifest, tmp_path, "model.backbone=tiny", "augment.preset=light"))
    assert result.epochs_run == 4
    assert _cpu_accuracy(result.best_checkpoint, colour_manifest) >= 0.9


def test_frozen_backbone_feature_cache_on_the_gpu(colour_manifest, tmp_path) -> None:
    result = fit(_config(colour_manifest, tmp_path, "model.backbone=tiny",
                         "freeze_backbone_epochs=4", "augment.preset=flip", "optim.lr=0.05"))
    assert result.epochs_run == 4
    assert _cpu_accuracy(result.best_checkpoint, colour_manifest) >= 0.6
