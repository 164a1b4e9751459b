"""What a training run carries between epochs: its typed progress and its optimizer (both saved in ``last.pt``),
and one epoch's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sorting.training.loop import ValidationResult


@dataclass
class TrainState:
    """The run's progress; :meth:`to_checkpoint` is the ``trainer_state`` of ``last.pt`` (resume reads it back)."""

    epoch: int = -1  # the last finished epoch
    best_score: float = -1.0  # the best validation score (mean macro-F1) so far
    best_epoch: int = -1  # the epoch whose weights become best.pt
    bad_epochs: int = 0  # epochs since the score last improved
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch (history.json)
    stopped_early: bool = False  # set by early stopping; not saved (a resumed run trains on)

    def to_checkpoint(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": self.history}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> "TrainState":
        return cls(epoch=int(saved["epoch"]), best_score=float(saved["best_score"]), best_epoch=int(saved["best_epoch"]),
                   bad_epochs=int(saved["bad_epochs"]), history=list(saved["history"]))

    @property
    def epochs_run(self) -> int:
        return self.epoch + 1


@dataclass
class EpochOutcome:
    """One finished epoch as the steering callbacks see it; :class:`~sorting.training.callbacks.EarlyStopping`
    fills in ``improved`` and ``selected``, which :class:`~sorting.training.callbacks.Checkpointing` reads."""

    epoch: int
    record: dict[str, float]  # the history row: epoch, train/..., val/..., lr
    val: ValidationResult
    improved: bool = False  # the validation score beat the best so far (by early_stopping.min_delta)
    selected: bool = False  # these weights become best.pt (improved, or every epoch with select=last)

    @property
    def metrics(self) -> dict[str, float]:
        """The record without its epoch number, as floats (what checkpoints and observers get)."""
        return {k: float(v) for k, v in self.record.items() if k != "epoch"}


@dataclass
class Optimization:
    """The optimizer, its learning-rate schedule and (float16 on CUDA) the gradient scaler of a run."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None

    def state_dicts(self) -> dict[str, Any]:
        """What ``last.pt`` holds to resume them."""
        return {"optimizer_state": self.optimizer.state_dict(), "scheduler_state": self.scheduler.state_dict(),
                "scaler_state": self.scaler.state_dict() if self.scaler is not None else None}

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a ``last.pt`` read with :func:`~sorting.models.checkpoint.read_checkpoint_dict`."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
