"""The layout head: does a crop show one garment or several touching ones?

Touching garments merge into one blob on the belt. The segmenter's shape and colour rules catch
many such blobs, but a colour-block garment shows two colour regions too, and a sock lying against
a shirt hardly changes the outline. The trained embedding separates the two cases well, so after
training a logistic regression on it is fitted to synthetic conveyor crops
(:func:`sorting.datasets.synth.layout.render_layout_samples`) and attached as the model's
``layout`` head (labels ``single``/``several``). It is exported with the other heads, and the
sorting policy sends items it calls "several" to reject as overlapping.

A line's own labelled crops (``layout.crops``: CSV ``path,layout`` written by ``textile-sorter data
import-log --layout-output``) are added to the synthetic ones, or replace them (``worlds: 0``): the
synthetic belt is not the line's belt.

The regression is fitted on standardised embeddings (L-BFGS, L2 penalty) and the standardisation
is folded into the head's weights. Worlds, not crops, are split for validation: crops of one
world share belt and lighting. Of the line's own crops a fixed quarter (by a hash of the path) is
held out and scored on its own (``val_line_*``).
"""

from __future__ import annotations

import csv
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sorting.datasets.images import load_image
from sorting.datasets.preprocess import PreprocessConfig, preprocess_batch
from sorting.datasets.synth.layout import SEVERAL, LayoutSample, render_layout_samples
from sorting.errors import ConfigError, DataError
from sorting.models.multihead import EMBEDDING, MultiHeadClassifier
from sorting.models.standardise import column_statistics
from sorting.taxonomy import LAYOUT_CROP_COLUMNS, LAYOUT_HEAD, LAYOUT_LABELS
from sorting.training.config import LayoutConfig

log = logging.getLogger(__name__)

BATCH = 64
LBFGS_STEPS = 100
LINE_WORLD = -1  # the ``world`` of a line's own crops


@torch.no_grad()
def embed(model: MultiHeadClassifier, samples: list[LayoutSample], preprocess: PreprocessConfig) -> torch.Tensor:
    """The model's embedding of each crop (eval mode, float32 on the CPU)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(samples), BATCH):
        batch = preprocess_batch([s.image for s in samples[start : start + BATCH]], preprocess)
        out.append(model(torch.from_numpy(batch).to(device))[EMBEDDING].float().cpu())
    model.train(was_training)
    return torch.cat(out)


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, l2: float) -> nn.Linear:
    """Binary logistic regression (two logits) on standardised features; standardisation folded in."""
    mean, std = column_statistics(features)
    z = (features - mean) / std
    w = torch.zeros(features.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    target = labels.float()
    opt = torch.optim.LBFGS([w, b], max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z @ w + b, target) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    linear = nn.Linear(features.shape[1], 2)
    with torch.no_grad():
        scale = w.detach() / std
        # logit(several) - logit(single) = z.w + b; split symmetrically over the two outputs
        linear.weight.copy_(torch.stack([-scale / 2, scale / 2]))
        bias = b.detach() - (mean * scale).sum()
        linear.bias.copy_(torch.cat([-bias / 2, bias / 2]))
    return linear


def _rates(linear: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        several = linear(features).argmax(1) == SEVERAL
    pairs, singles = labels == SEVERAL, labels != SEVERAL
    return {
        "accuracy": float((several == pairs).float().mean()),
        "several_caught": float(several[pairs].float().mean()) if pairs.any() else float("nan"),
        "single_flagged": float(several[singles].float().mean()) if singles.any() else float("nan"),
    }


def load_layout_crops(paths: Sequence[str | Path]) -> list[LayoutSample]:
    """A line's own labelled crops from CSV files ``path,layout`` (paths relative to each file)."""
    samples = []
    for csv_path in map(Path, paths):
        if not csv_path.is_file():
            raise DataError(f"layout crop list {csv_path} does not exist")
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not set(LAYOUT_CROP_COLUMNS) <= set(reader.fieldnames or ()):
                raise DataError(f"{csv_path}: needs columns {', '.join(LAYOUT_CROP_COLUMNS)} (got {reader.fieldnames})")
            for line, row in enumerate(reader, start=2):
                value = (row["layout"] or "").strip().lower()
                if value not in LAYOUT_LABELS:
                    raise DataError(f"{csv_path}:{line}: layout '{value}' is not one of {list(LAYOUT_LABELS)}")
                image = load_image(csv_path.parent / row["path"])
                samples.append(LayoutSample(image, LAYOUT_LABELS.index(value), LINE_WORLD, row["path"]))
    return samples


def held_out_mask(samples: Sequence[LayoutSample]) -> np.ndarray:
    """Validation mask: the last quarter of the synthetic worlds, and a fixed quarter of the line's crops."""
    worlds = np.array([s.world for s in samples])
    names = np.unique(worlds[worlds != LINE_WORLD])
    val = np.isin(worlds, names[-max(1, len(names) // 4):]) if names.size else np.zeros(len(samples), bool)
    line_quarter = np.array([s.world == LINE_WORLD and zlib.crc32(s.description.encode()) % 4 == 0 for s in samples])
    return val | line_quarter


def fit_layout_head(model: MultiHeadClassifier, preprocess: PreprocessConfig, cfg: LayoutConfig, *,
                    workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Collect the layout set (synthetic worlds and/or the line's crops), validate a head on the held-out
    part, refit on all and attach it to ``model``."""
    samples = []
    if cfg.worlds:
        samples += render_layout_samples(worlds=cfg.worlds, items_per_world=cfg.items_per_world, seed=cfg.seed,
                                         workers=workers, progress=progress)
    samples += load_layout_crops(cfg.crops)
    labels = torch.tensor([s.label for s in samples])
    if len(set(labels.tolist())) < 2:
        raise ConfigError("the layout set needs crops of single garments and of several touching ones")
    features = embed(model, samples, preprocess)
    val = torch.from_numpy(held_out_mask(samples))
    line = torch.tensor([s.world == LINE_WORLD for s in samples])
    check = fit_logistic(features[~val], labels[~val], cfg.l2)
    metrics = {f"val_{k}": v for k, v in _rates(check, features[val], labels[val]).items()}
    if (val & line).any():
        metrics.update({f"val_line_{k}": v for k, v in _rates(check, features[val & line], labels[val & line]).items()})
    head = fit_logistic(features, labels, cfg.l2)
    model.add_head(LAYOUT_HEAD, head.to(next(model.parameters()).device))
    metrics.update(crops=len(samples), several=int((labels == SEVERAL).sum()), line_crops=int(line.sum()),
                   labels=list(LAYOUT_LABELS))
    log.info("layout head: %d crops (%d several); held out: accuracy %.3f, several caught %.3f, "
             "single flagged %.3f", len(samples), metrics["several"], metrics["val_accuracy"],
             metrics["val_several_caught"], metrics["val_single_flagged"])
    return metrics
