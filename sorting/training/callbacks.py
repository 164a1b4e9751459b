"""The trainer's callback list: observers (MLflow tracking, a test's recorder) and the callbacks that steer a run
(early stopping, checkpoints).

Hooks, each called on every callback of the list that has it, in list order:

- ``on_train_start(config, run_dir)`` once the run folder exists;
- ``on_epoch_scored(outcome)`` (steering callbacks only) when an epoch's validation is in: an
  :class:`~sorting.training.state.EpochOutcome` that :class:`EarlyStopping` marks (improved? selected? stop?)
  and :class:`Checkpointing` then writes;
- ``on_epoch_end(epoch, metrics)`` with flat ``{"train/loss": .., "val/fibre/macro_f1": .., "lr": ..}`` floats;
- ``on_artifact(path)`` for every file the main process writes into the run folder (config, checkpoints, plots,
  metrics);
- ``on_train_end(checkpoint_path, metrics)`` with the best checkpoint and the final metrics.

Observers implement :class:`Callback`, run on the main process only, and a failing observer is logged and never
kills training. A callback with ``steers = True`` runs on every rank (their decisions must agree) and its errors
propagate (a checkpoint that cannot be written stops the run). An observer may expose ``run_id`` (e.g. the MLflow
run id) after ``on_train_start``; the trainer stores it in the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from sorting.models.checkpoint import read_checkpoint_dict
from sorting.training.config import EarlyStoppingConfig, Recipe
from sorting.training.loop import ValidationResult
from sorting.training.state import EpochOutcome, Optimization, TrainState

log = logging.getLogger(__name__)


@runtime_checkable
class Callback(Protocol):
    """An observer of a training run (main process only; its errors are logged, never raised)."""

    def on_train_start(self, config: Recipe, run_dir: Path) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_artifact(self, path: Path) -> None: ...

    def on_train_end(self, checkpoint_path: Path, metrics: dict[str, Any]) -> None: ...


class CallbackList:
    """Calls every callback that has a hook, in order; observers' errors are logged, steering callbacks' raised."""

    def __init__(self, callbacks: list[Any]) -> None:
        self.callbacks = list(callbacks)

    def _call(self, method: str, *args: Any) -> None:
        for cb in self.callbacks:
            hook = getattr(cb, method, None)
            if hook is None:
                continue
            if getattr(cb, "steers", False):
                hook(*args)
                continue
            try:
                hook(*args)
            except Exception:  # tracking servers go down; the model must still be saved
                log.exception("callback %s.%s failed", type(cb).__name__, method)

    def on_train_start(self, config: Any, run_dir: Path) -> None:
        self._call("on_train_start", config, run_dir)

    def on_epoch_scored(self, outcome: EpochOutcome) -> None:
        self._call("on_epoch_scored", outcome)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self._call("on_epoch_end", epoch, metrics)

    def on_artifact(self, path: Path) -> None:
        self._call("on_artifact", path)

    def on_train_end(self, checkpoint_path: Path, metrics: dict[str, Any]) -> None:
        self._call("on_train_end", checkpoint_path, metrics)

    @property
    def run_id(self) -> str | None:
        """The first run id a callback reports (e.g. MLflow's), if any."""
        return next((rid for cb in self.callbacks if (rid := getattr(cb, "run_id", None))), None)


def build_callbacks(config: Recipe, run_dir: Path, is_main_process: bool) -> list[Callback]:
    """Observers for a run: MLflow tracking when ``tracking.enabled`` (main process only).

    ``run_dir`` is the run folder; the MLflow store defaults under the runs folder above it.
    """
    if not is_main_process or not config.tracking.enabled:
        return []
    from sorting.training.tracking import MlflowTracker  # imports mlflow only when a run starts

    return [MlflowTracker(config.tracking)]


class EarlyStopping:
    """Scores each epoch against the best so far: marks an improvement, selects the epoch whose weights become
    best.pt (the best one; with ``select: last`` every one) and stops the run after ``patience`` epochs without
    gain (never on the last epoch: a run that used all its epochs did not stop early)."""

    steers = True

    def __init__(self, config: EarlyStoppingConfig, state: TrainState, epochs: int) -> None:
        self.config = config
        self.state = state
        self.epochs = epochs

    def on_epoch_scored(self, outcome: EpochOutcome) -> None:
        state, cfg = self.state, self.config
        outcome.improved = outcome.val.score > state.best_score + cfg.min_delta
        outcome.selected = outcome.improved or cfg.select == "last"
        if outcome.improved:
            state.best_score, state.bad_epochs = outcome.val.score, 0
        else:
            state.bad_epochs += 1
        if outcome.selected:
            state.best_epoch = outcome.epoch
        patience = cfg.patience
        state.stopped_early = patience is not None and state.bad_epochs >= patience and outcome.epoch + 1 < self.epochs

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.state.stopped_early:
            log.info("early stopping: no val macro-F1 gain for %d epochs (best epoch %d)", self.config.patience,
                     self.state.best_epoch + 1)


SaveCheckpoint = Callable[..., Path]  # save(path, model, *, metrics, epoch, **more) -> path, the model's fields bound


@dataclass
class Checkpointing:
    """Keeps the selected epoch's weights (in memory, on every rank) and, on the main process, writes ``best.pt``
    when the score improved (``select: best``; with ``last`` it is written once, after the run) and the resumable
    ``last.pt`` after every epoch. A resumed run starts from its best.pt's weights (:meth:`start_from_best_pt`)."""

    steers: ClassVar[bool] = True
    run_dir: Path
    model: nn.Module
    save: SaveCheckpoint
    optimization: Optimization
    state: TrainState
    select: str  # early_stopping.select
    is_main: bool
    best_weights: dict[str, torch.Tensor] | None = None
    best_val: ValidationResult | None = None  # None after a resume until an epoch is selected

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def start_from_best_pt(self) -> None:
        """Resuming: the selected weights so far are those of the run's best.pt (if it has one yet)."""
        if self.best_path.is_file():
            self.best_weights = read_checkpoint_dict(self.best_path)["state_dict"]

    def on_epoch_scored(self, outcome: EpochOutcome) -> None:
        if outcome.selected:
            self.best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            self.best_val = outcome.val
        if not self.is_main:
            return
        metrics, epoch = outcome.metrics, outcome.epoch
        if outcome.improved and self.select == "best":
            self.save(self.best_path, self.model, metrics=metrics, epoch=epoch)
        self.save(self.last_path, self.model, metrics=metrics, epoch=epoch, **self.optimization.state_dicts(),
                  trainer_state=self.state.to_checkpoint())

    def save_best(self, **fields: Any) -> Path:
        """The final best.pt: the selected weights (loaded into the model) with calibration and other fields."""
        return self.save(self.best_path, self.model, **fields)

