"""The trainer's callback protocol: how tracking (MLflow) and other observers hook in.

The trainer calls, on the main process only:
``on_train_start(config, run_dir)`` once the run folder exists; ``on_epoch_end(epoch, metrics)``
with flat ``{"train/loss": .., "val/fibre/macro_f1": .., "lr": ..}`` floats;
``on_artifact(path)`` for every file it writes into the run folder (config, checkpoints,
plots, metrics); ``on_train_end(checkpoint_path, metrics)`` with the best checkpoint and
final metrics. A callback may expose ``run_id`` (e.g. the MLflow run id) after
``on_train_start``; the trainer stores it in the checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sorting.errors import ConfigError
from sorting.training.config import TrainConfig

log = logging.getLogger(__name__)


@runtime_checkable
class Callback(Protocol):
    def on_train_start(self, config: TrainConfig, run_dir: Path) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_artifact(self, path: Path) -> None: ...

    def on_train_end(self, checkpoint_path: Path, metrics: dict[str, Any]) -> None: ...


class CallbackList:
    """Calls every callback in order; a failing observer is logged and never kills training."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)

    def _call(self, method: str, *args: Any) -> None:
        for cb in self.callbacks:
            try:
                getattr(cb, method)(*args)
            except Exception:  # tracking servers go down; the model must still be saved
                log.exception("callback %s.%s failed", type(cb).__name__, method)

    def on_train_start(self, config: TrainConfig, run_dir: Path) -> None:
        self._call("on_train_start", config, run_dir)

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


def build_callbacks(config: TrainConfig, run_dir: Path, is_main_process: bool) -> list[Callback]:
    """Callbacks for a run: MLflow tracking when ``tracking.enabled`` (main process only).

    ``run_dir`` is the run folder; the MLflow store defaults under the runs folder above it.
    """
    if not is_main_process:
        return []
    callbacks: list[Callback] = []
    if config.tracking.enabled:
        try:
            from sorting.training.tracking import MlflowTracker
        except ImportError as exc:
            raise ConfigError(f"tracking.enabled needs MLflow tracking support: {exc}") from None
        callbacks.append(MlflowTracker(config.tracking))
    return callbacks
