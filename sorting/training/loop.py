"""One training epoch and one validation pass, as separate plain functions.

The loop knows heads and masked labels, nothing about files, configs or tracking.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sorting.models.checkpoint import unwrap_model
from sorting.models.metrics import classification_metrics
from sorting.models.multihead import IGNORE_INDEX
from sorting.training.distributed import DistContext, gather_arrays


@dataclass
class StepSettings:
    """How batches run: device, mixed precision (CUDA only), memory format, clipping."""

    heads: tuple[str, ...]
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    grad_clip: float | None = None

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.device, non_blocking=True, memory_format=fmt), y.to(self.device, non_blocking=True)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


def multihead_loss(
    outputs: dict[str, torch.Tensor], targets: torch.Tensor, heads: tuple[str, ...], criteria: dict[str, nn.Module]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of per-head cross-entropies over the labelled rows of each head.

    A head with no labels in the batch contributes ``0 * logits.sum()`` so its parameters still
    take part in the graph (DDP expects every parameter to get a gradient each step).
    """
    total = outputs[heads[0]].new_zeros(())
    parts = {}
    for i, head in enumerate(heads):
        logits, y = outputs[head].float(), targets[:, i]
        if (y != IGNORE_INDEX).any():
            loss = criteria[head](logits, y)
            parts[head] = float(loss.detach())
        else:
            loss = logits.sum() * 0.0
        total = total + loss
    return total, parts


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    criteria: dict[str, nn.Module],
    settings: StepSettings,
    *,
    epoch: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train for one pass over ``loader`` (scheduler stepped per batch); returns mean loss and accuracies."""
    model.train()
    loss_sum, batches = 0.0, 0
    correct = {h: 0 for h in settings.heads}
    seen = {h: 0 for h in settings.heads}
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not progress, dynamic_ncols=True)
    for x, y in bar:
        x, y = settings.to_device(x, y)
        with settings.autocast():
            outputs = model(x)
        loss, _ = multihead_loss(outputs, y, settings.heads, criteria)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {float(loss)} at epoch {epoch} (lower optim.lr?)")
        optimizer.zero_grad(set_to_none=True)
        if settings.scaler is not None:
            settings.scaler.scale(loss).backward()
            settings.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if settings.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        if settings.scaler is not None:
            settings.scaler.step(optimizer)
            settings.scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += float(loss.detach())
        batches += 1
        with torch.no_grad():
            for i, head in enumerate(settings.heads):
                mask = y[:, i] != IGNORE_INDEX
                correct[head] += int((outputs[head].argmax(1)[mask] == y[mask, i]).sum())
                seen[head] += int(mask.sum())
        postfix = {"loss": f"{loss_sum / batches:.3f}"}
        postfix.update({f"{h}_acc": f"{correct[h] / seen[h]:.3f}" for h in settings.heads if seen[h]})
        bar.set_postfix(postfix)
    result = {"loss": loss_sum / max(batches, 1)}
    result.update({f"{h}_acc": correct[h] / seen[h] for h in settings.heads if seen[h]})
    return result


@dataclass
class ValidationResult:
    """Validation over all ranks: per-head metrics plus the labelled rows' logits (for calibration)."""

    loss: float
    metrics: dict[str, dict[str, Any]]
    logits: dict[str, np.ndarray] = field(repr=False)
    labels: dict[str, np.ndarray] = field(repr=False)

    @property
    def score(self) -> float:
        """Mean macro-F1 over heads with validation labels (the early-stopping metric)."""
        values = [m["macro_f1"] for m in self.metrics.values()]
        return float(np.mean(values)) if values else 0.0

    def flat(self, prefix: str = "val") -> dict[str, float]:
        out = {f"{prefix}/loss": self.loss, f"{prefix}/score": self.score}
        for head, m in self.metrics.items():
            out[f"{prefix}/{head}/accuracy"] = m["accuracy"]
            out[f"{prefix}/{head}/macro_f1"] = m["macro_f1"]
        return out


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    settings: StepSettings,
    ctx: DistContext,
    *,
    progress: bool = True,
) -> ValidationResult:
    """Logits for this rank's share of the validation set, gathered from all ranks, then metrics per head."""
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {h: [] for h in settings.heads}
    targets: list[np.ndarray] = []
    for x, y in tqdm(loader, desc="validate", leave=False, disable=not progress, dynamic_ncols=True):
        x, y = settings.to_device(x, y)
        with settings.autocast():
            outputs = model(x)
        for head in settings.heads:
            chunks[head].append(outputs[head].float().cpu().numpy())
        targets.append(y.cpu().numpy())
    sizes = unwrap_model(model).head_sizes  # a rank may hold no validation rows: keep shapes consistent
    local = {h: np.concatenate(c) if c else np.zeros((0, sizes[h]), np.float32) for h, c in chunks.items()}
    local["_targets"] = np.concatenate(targets) if targets else np.zeros((0, len(settings.heads)), np.int64)
    merged = gather_arrays(local, ctx)
    metrics, logits, labels, losses = {}, {}, {}, []
    for i, head in enumerate(settings.heads):
        y = merged["_targets"][:, i]
        keep = y != IGNORE_INDEX
        if not keep.any():
            continue
        z = merged[head][keep]
        logits[head], labels[head] = z, y[keep]
        metrics[head] = classification_metrics(y[keep], z.argmax(1), z.shape[1])
        losses.append(float(F.cross_entropy(torch.from_numpy(z), torch.from_numpy(y[keep]))))
    return ValidationResult(float(np.sum(losses)) if losses else 0.0, metrics, logits, labels)
