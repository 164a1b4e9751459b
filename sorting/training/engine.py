"""The training engine, whatever the data and model: the epoch loop, its callbacks and the run folder.

A kind of model plugs in with a :class:`TrainingSetup` (model, loaders, losses, step settings, parameter
groups, how its checkpoints are written) and a recipe with the shared sections (:class:`~sorting.training.config.
Recipe`: optim, early_stopping, calibration, tracking...). :func:`run_training` then

1. opens the run folder (new, or the resumed run's) and the observers (MLflow tracking), saves ``config.yaml``;
2. runs :func:`train_epochs`: per epoch train, validate, record, and let the steering callbacks act
   (:class:`~sorting.training.callbacks.EarlyStopping`, :class:`~sorting.training.callbacks.Checkpointing`);
3. loads the selected weights and runs the post-training steps (:mod:`sorting.training.post_training`):
   calibration, the kind's own steps (e.g. the image model's layout head), the final ``best.pt`` and the
   run's files.

The image classifier's set-up is :func:`sorting.training.image_setup.build_image_setup`, wired by
:func:`sorting.training.trainer.fit`.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sorting.config import save_config
from sorting.errors import DataError
from sorting.models.checkpoint import save_checkpoint
from sorting.paths import runs_dir
from sorting.training import distributed as D
from sorting.training.callbacks import (
    Callback,
    CallbackList,
    Checkpointing,
    EarlyStopping,
    SaveCheckpoint,
    build_callbacks,
)
from sorting.training.config import OptimConfig, Recipe
from sorting.training.loop import StepSettings, ValidationResult, train_one_epoch, validate
from sorting.training.post_training import PostTrainingStep, finish_run
from sorting.training.state import EpochOutcome, Optimization, TrainState

log = logging.getLogger(__name__)


@dataclass
class TrainingSetup:
    """What the engine needs from a kind of data and model (the seam: build one, reuse everything else)."""

    model: nn.Module  # the network whose weights are selected and checkpointed
    step_model: nn.Module  # what a training/validation step runs: ``model``, or a module sharing its parameters
    train_loader: DataLoader  # batches (inputs, targets (N, heads)); IGNORE_INDEX marks a head without a label
    val_loader: DataLoader  # this rank's share of the validation set
    sampler: D.ShardedSampler  # the training order, reshuffled every epoch
    criteria: dict[str, nn.Module]  # the loss of each head
    settings: StepSettings  # heads, device, mixed precision, clipping
    param_groups: list[dict[str, Any]]  # AdamW parameter groups
    set_trainable: Callable[[bool], None]  # False: heads only (warm-up epochs); True: the trainable backbone too
    distributed: bool  # DDP-wrap ``model`` for training steps (False when steps run on cached features)
    checkpoint_fields: dict[str, Any]  # what ``save_checkpoint`` writes besides the weights (labels, preprocessing...)
    save_checkpoint: SaveCheckpoint = save_checkpoint
    sizes: dict[str, int] = field(default_factory=dict)  # recorded in metrics.json, e.g. {"train_images": 24}
    summary: str = ""  # one line for the log
    trainable_label: str = "full fine-tune"  # what trains after the warm-up, for the log


@dataclass
class TrainResult:
    """What a finished run produced (the same on every rank; only rank 0 wrote the files)."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, Any]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    seconds: float
    is_main: bool


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio`` (or constant)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimization(setup: TrainingSetup, optim: OptimConfig) -> Optimization:
    """AdamW on the set-up's parameter groups, stepped per batch on the warm-up + cosine schedule."""
    optimizer = torch.optim.AdamW(setup.param_groups)
    steps = len(setup.train_loader)
    total_steps = steps * optim.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s, total_steps=total_steps, warmup_steps=round(optim.warmup_epochs * steps),
            schedule=optim.schedule, min_ratio=optim.min_lr_ratio,
        ),
    )
    return Optimization(optimizer, scheduler, setup.settings.scaler)


def train_epochs(setup: TrainingSetup, optimization: Optimization, callbacks: CallbackList, state: TrainState,
                 ctx: D.DistContext, *, epochs: int, freeze_epochs: int, progress: bool) -> None:
    """The epoch loop, from the epoch after ``state.epoch``: train, sync, validate, record, let the callbacks act;
    ends after ``epochs`` or when a callback (early stopping) sets ``state.stopped_early``."""
    frozen: bool | None = None
    train_model = setup.step_model
    for epoch in range(state.epoch + 1, epochs):
        if (epoch < freeze_epochs) != frozen:
            frozen = epoch < freeze_epochs
            train_model = _enter_phase(setup, ctx, frozen=frozen, epoch=epoch, announce=freeze_epochs > 0)
        setup.sampler.set_epoch(epoch)
        train = train_one_epoch(train_model, setup.train_loader, optimization.optimizer, optimization.scheduler,
                                setup.criteria, setup.settings, epoch=epoch, progress=progress)
        D.sync_buffers(setup.model, ctx)
        val = validate(setup.step_model, setup.val_loader, setup.settings, ctx, progress=progress)  # no DDP collectives
        record = {"epoch": epoch, **{f"train/{k}": v for k, v in train.items()}, **val.flat(),
                  "lr": optimization.optimizer.param_groups[-1]["lr"]}
        state.history.append(record)
        state.epoch = epoch
        outcome = EpochOutcome(epoch, record, val)
        callbacks.on_epoch_scored(outcome)
        heads = "  ".join(f"{h} acc {m['accuracy']:.3f} F1 {m['macro_f1']:.3f}" for h, m in val.metrics.items())
        log.info("epoch %d/%d  loss %.4f  val: %s%s", epoch + 1, epochs, train["loss"], heads or "no frames",
                 "  *best*" if outcome.improved and heads else "")
        callbacks.on_epoch_end(epoch, outcome.metrics)
        if state.stopped_early:
            break


def _enter_phase(setup: TrainingSetup, ctx: D.DistContext, *, frozen: bool, epoch: int, announce: bool) -> nn.Module:
    """(Un)freeze the backbone and return what the training steps run (DDP rebuilt: the trainable set changed)."""
    setup.set_trainable(not frozen)
    if announce:
        log.info("epoch %d: backbone %s", epoch, "frozen (heads only)" if frozen else f"unfrozen ({setup.trainable_label})")
    return D.wrap_model(setup.model, ctx) if setup.distributed else setup.step_model


def restore_selected(setup: TrainingSetup, checkpoints: Checkpointing, ctx: D.DistContext,
                     progress: bool) -> tuple[ValidationResult, list[str]]:
    """Load the selected epoch's weights into the model; returns their validation and every rank's digest of the
    final (last-epoch) weights."""
    digests = D.gather_objects(D.state_digest(setup.model), ctx)
    if checkpoints.best_weights is None:
        raise DataError("no epoch was trained (optim.epochs already reached by the resumed run?)")
    setup.model.load_state_dict(checkpoints.best_weights)
    if checkpoints.best_val is not None:
        return checkpoints.best_val, digests
    # resumed after the best epoch: score the best weights again
    return validate(setup.step_model, setup.val_loader, setup.settings, ctx, progress=progress), digests


def new_run_dir(recipe: Recipe, ctx: D.DistContext) -> Path:
    """``<output_dir or runs/train>/<name>-<UTC time>`` (made unique), created by rank 0 and shared."""
    run_dir = None
    if ctx.is_main:
        base = Path(recipe.output_dir) if recipe.output_dir else runs_dir() / "train"
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_dir = base / f"{recipe.name}-{stamp}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = base / f"{recipe.name}-{stamp}-{suffix}"
        run_dir.mkdir(parents=True)
    return D.broadcast_object(run_dir, ctx)


def run_training(setup: TrainingSetup, recipe: Recipe, ctx: D.DistContext, *, resume: dict[str, Any] | None = None,
                 callbacks: Sequence[Callback] = (), post_steps: Sequence[PostTrainingStep] = ()) -> TrainResult:
    """Train ``setup`` as ``recipe`` says (continuing ``resume``, a ``last.pt``), select, calibrate and write
    the run; ``callbacks`` observe it (main process only)."""
    started = time.perf_counter()
    optimization = build_optimization(setup, recipe.optim)
    state = TrainState()
    if resume is not None:
        optimization.load(resume)
        state = TrainState.from_checkpoint(resume["trainer_state"])
        run_dir = Path(str(recipe.resume)).parent
    else:
        run_dir = new_run_dir(recipe, ctx)
    observers = CallbackList([*build_callbacks(recipe, run_dir, ctx.is_main), *callbacks] if ctx.is_main else [])
    if ctx.is_main:
        observers.on_train_start(recipe, run_dir)
        observers.on_artifact(save_config(recipe, run_dir / "config.yaml"))
        log.info("run %s: %s, %d process(es) on %s", run_dir, setup.summary, ctx.world_size, ctx.device)
    save = functools.partial(setup.save_checkpoint, **setup.checkpoint_fields, run_id=observers.run_id or run_dir.name)
    checkpoints = Checkpointing(run_dir, setup.model, save, optimization, state, recipe.early_stopping.select,
                                ctx.is_main)
    if resume is not None:
        checkpoints.start_from_best_pt()
    steering = [EarlyStopping(recipe.early_stopping, state, recipe.optim.epochs), checkpoints]
    progress = recipe.progress and ctx.is_main
    train_epochs(setup, optimization, CallbackList([*steering, *observers.callbacks]), state, ctx,
                 epochs=recipe.optim.epochs, freeze_epochs=recipe.freeze_backbone_epochs, progress=progress)
    best_val, digests = restore_selected(setup, checkpoints, ctx, progress)
    metrics: dict[str, Any] = {
        "best_epoch": state.best_epoch, "epochs_run": state.epochs_run, "stopped_early": state.stopped_early,
        **best_val.flat(), **setup.sizes, "world_size": ctx.world_size, "weight_digests": digests,
        "ranks_in_sync": len(set(digests)) == 1, "seconds": round(time.perf_counter() - started, 1),
    }
    if ctx.is_main:
        if not metrics["ranks_in_sync"]:
            log.error("ranks ended with different weights: %s", digests)
        finish_run(checkpoints, state, best_val, metrics, observers, recipe.calibration, post_steps, run_dir)
    D.barrier(ctx)
    return TrainResult(
        run_dir=run_dir, best_checkpoint=checkpoints.best_path, last_checkpoint=checkpoints.last_path, metrics=metrics,
        best_epoch=state.best_epoch, epochs_run=state.epochs_run, stopped_early=state.stopped_early,
        seconds=time.perf_counter() - started, is_main=ctx.is_main,
    )
