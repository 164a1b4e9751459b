"""Tiny model + tiny image manifest shared by test_export, test_quantize and test_bench."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from sorting.datasets.manifest import ManifestRow, write_manifest
from sorting.models.checkpoint import save_checkpoint
from sorting.models.multihead import build_multihead

LABELS = {"fibre": ["cotton", "wool", "polyester"], "colour": ["red", "green", "blue", "white"]}
_BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "white": (255, 255, 255)}


def make_manifest(folder: Path, n: int = 32, seed: int = 0) -> Path:
    """``n`` noisy solid-colour crops (varied sizes) with colour and fibre labels, half val / half test."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = LABELS["colour"][i % 4]
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        img = np.clip(np.array(_BGR[colour])[None, None, :] + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "img" / f"{i:03d}.png"), img)
        rows.append(ManifestRow(path=f"img/{i:03d}.png", colour=colour, fibre=LABELS["fibre"][i % 3],
                                split="test" if i % 2 else "val"))
    return write_manifest(rows, folder / "manifest.csv")


def make_model(seed: int = 0, hidden: dict[str, int] | None = None) -> tuple[torch.nn.Module, object]:
    """The registry's ``tiny`` backbone with both heads (MLP heads where ``hidden`` says), random weights (eval mode)."""
    torch.manual_seed(seed)
    model, preprocess = build_multihead("tiny", {h: len(v) for h, v in LABELS.items()}, hidden=hidden)
    return model.eval(), preprocess


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    model, preprocess = make_model(seed)
    return save_checkpoint(
        path, model, model_name="tiny", labels=LABELS, preprocess=preprocess, taxonomy_version="test-1",
        config={"seed": seed}, metrics={"val_colour_accuracy": 0.5}, temperature={"fibre": 1.5, "colour": 0.8},
        ood={"method": "energy", "threshold": {"fibre": -1.0, "colour": -1.0}}, run_id="run-123",
        dataset_hash="abc", epoch=3,
    )
