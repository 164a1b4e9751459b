"""After the last epoch (main process): calibrate the selected weights, run the model kind's own steps (e.g. the
layout head), write the final ``best.pt`` and the run's files, and tell the observers.

``best.pt`` then also holds the per-head temperature and the energy OOD threshold fitted on the validation
logits of the selected epoch (plus the thresholds at :data:`~sorting.models.calibration.LINE_OOD_QUANTILES`,
from which a sorting line may pick its own). The run folder gets ``history.json``, ``metrics.json`` and
``training_curves.png``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from sorting.models.calibration import LINE_OOD_QUANTILES, energy_thresholds, fit_temperature
from sorting.models.onnx_model import ood_quantile_key
from sorting.training.callbacks import CallbackList, Checkpointing
from sorting.training.config import CalibrationConfig
from sorting.training.loop import ValidationResult
from sorting.training.plots import plot_training_curves
from sorting.training.state import TrainState

log = logging.getLogger(__name__)

# A step after training: may change the selected model (e.g. add a head); returns metrics to record and
# checkpoint fields to override (e.g. the labels of the added head).
PostTrainingStep = Callable[[nn.Module], tuple[dict[str, Any], dict[str, Any]]]


def calibrate(val: ValidationResult, config: CalibrationConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-head temperature (NLL on validation logits) and energy OOD threshold at the configured quantile,
    plus the thresholds at :data:`LINE_OOD_QUANTILES`, from which a sorting line may pick its own."""
    temperature, threshold, by_quantile = {}, {}, {}
    for head, logits in val.logits.items():
        t = fit_temperature(logits, val.labels[head]) if config.temperature else 1.0
        temperature[head] = float(t)
        trained, *line = energy_thresholds(logits, t, (config.ood_quantile, *LINE_OOD_QUANTILES))
        threshold[head] = trained
        by_quantile[head] = {ood_quantile_key(q): v for q, v in zip(LINE_OOD_QUANTILES, line)}
    return temperature, {"method": "energy", "quantile": config.ood_quantile, "threshold": threshold,
                         "by_quantile": by_quantile}


def finish_run(checkpoints: Checkpointing, state: TrainState, best_val: ValidationResult, metrics: dict[str, Any],
               observers: CallbackList, calibration: CalibrationConfig, steps: Sequence[PostTrainingStep],
               run_dir: Path) -> None:
    """Calibrate, run ``steps``, write best.pt and the run files, log them with the observers (main process).

    ``metrics`` (the run's final metrics) gains the calibration and the steps' metrics.
    """
    temperature, ood = calibrate(best_val, calibration)
    metrics.update(temperature=temperature, ood_threshold=ood["threshold"])
    fields: dict[str, Any] = {}
    for step in steps:
        step_metrics, step_fields = step(checkpoints.model)
        metrics.update(step_metrics)
        fields.update(step_fields)
    checkpoints.save_best(**fields, metrics={k: v for k, v in metrics.items() if k != "weight_digests"},
                          temperature=temperature, ood=ood, epoch=state.best_epoch)
    artifacts = [checkpoints.best_path, checkpoints.last_path, _write_json(run_dir / "history.json", state.history),
                 _write_json(run_dir / "metrics.json", {**metrics, "val": best_val.metrics})]
    try:
        artifacts.append(plot_training_curves(state.history, run_dir / "training_curves.png", title=run_dir.name))
    except ValueError as exc:  # an empty history
        log.warning("no training curve plot: %s", exc)
    for path in artifacts:
        observers.on_artifact(path)
    observers.on_train_end(checkpoints.best_path, metrics)
    if best_val.metrics:
        log.info("best epoch %d, val score %.4f; checkpoint %s", state.best_epoch + 1, best_val.score,
                 checkpoints.best_path)
    else:  # nothing validated (a belt detector with data.val_share 0): the last epoch is kept
        log.info("kept epoch %d (no validation frames); checkpoint %s", state.best_epoch + 1, checkpoints.best_path)


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=float), encoding="utf-8")
    return path
