"""The training job: ``fit(config)`` turns manifests + a recipe into a calibrated checkpoint.

The parts, in the order a run meets them:

- data and model set-up: :func:`sorting.training.image_setup.build_image_setup` (samples, model, preprocessing,
  augmentation, cached features, losses) -> a :class:`~sorting.training.engine.TrainingSetup`;
- the engine (:func:`sorting.training.engine.run_training`): run folder, observers (MLflow), the epoch loop
  (:func:`~sorting.training.engine.train_epochs`) with the steering callbacks
  (:class:`~sorting.training.callbacks.EarlyStopping`, :class:`~sorting.training.callbacks.Checkpointing`) and
  the typed :class:`~sorting.training.state.TrainState`;
- the post-training steps (:mod:`sorting.training.post_training`): calibration, the layout head
  (:mod:`sorting.training.layout`, with ``layout:`` in the recipe), the final ``best.pt`` and the run's files.

Run folder (written by rank 0 only): ``config.yaml`` (what ran), ``last.pt`` (resumable, every epoch),
``best.pt`` (best validation macro-F1, or the last epoch with ``early_stopping.select: last``; after training
it also holds the per-head temperature and the energy OOD threshold fitted on validation logits, and the layout
head), ``history.json``, ``metrics.json`` and ``training_curves.png``. DDP-aware: the same call runs under
torchrun (:mod:`sorting.training.distributed`).
"""

from __future__ import annotations

import torch

from sorting.datasets.preprocess import PreprocessConfig
from sorting.taxonomy import LAYOUT_HEAD, LAYOUT_LABELS
from sorting.training import distributed as D
from sorting.training.callbacks import Callback
from sorting.training.config import TrainConfig
from sorting.training.engine import TrainResult, run_training, seed_everything
from sorting.training.image_setup import build_image_setup
from sorting.training.layout import fit_layout_head
from sorting.training.post_training import PostTrainingStep

__all__ = ["TrainResult", "fit"]


def fit(config: TrainConfig, *, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train, validate every epoch, keep the best checkpoint, calibrate it; DDP-aware (see module doc)."""
    ctx = D.init_distributed(config.device)
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed, config.deterministic)
        setup, resume = build_image_setup(config, ctx)
        steps = [] if config.layout is None else [_layout_step(config, setup.checkpoint_fields, ctx.is_main)]
        return run_training(setup, config, ctx, resume=resume, callbacks=callbacks or [], post_steps=steps)
    finally:
        D.shutdown(ctx)


def _layout_step(config: TrainConfig, fields: dict, is_main: bool) -> PostTrainingStep:
    """Fit the layout head on the selected model's embedding and add its labels to the checkpoint."""
    assert config.layout is not None
    layout = config.layout
    preprocess: PreprocessConfig = fields["preprocess"]

    def step(model: torch.nn.Module) -> tuple[dict, dict]:
        metrics = fit_layout_head(model, preprocess, layout, workers=config.threads or 1,
                                  progress=config.progress and is_main)
        return {"layout": metrics}, {"labels": {**fields["labels"], LAYOUT_HEAD: list(LAYOUT_LABELS)}}

    return step
