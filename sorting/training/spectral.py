"""Training a spectral model: ``fit_spectral(config)`` turns spectral manifests + a recipe into a checkpoint.

:func:`train_spectral_model` is the whole fit on one training set (also what each cross-validation fold runs):

1. grouped inner folds of the training set (by swatch, ``calibration.folds``): a model fitted without each fold
   gives that fold's out-of-fold logits and OOD scores;
2. the temperature is fitted on the out-of-fold logits (:func:`~sorting.training.calibration.fit_temperature`),
   the OOD threshold is the ``ood.quantile`` of the out-of-fold scores (plus the line quantiles table), so both
   come from spectra of swatches the scoring model never saw, as on a line;
3. the model is fitted on the whole training set; with ``composition:`` its cotton-share head is fitted on the
   composition data (:mod:`sorting.training.composition`).

Run folder (``<output_dir>/<name>-<time>/``): ``config.yaml``, ``best.pt`` (the spectral checkpoint),
``metrics.json`` (out-of-fold figures of the training set), ``confusion_oof.png`` and ``class_means.png``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sorting.config import save_config
from sorting.datasets.split import assign_folds
from sorting.datasets.spectra_labels import BACKGROUND
from sorting.datasets.spectra_stats import plot_class_means
from sorting.datasets.spectra_store import SpectralSet, load_spectral_set
from sorting.errors import DataError
from sorting.models.onnx_model import ood_quantile_key
from sorting.models.spectral_checkpoint import save_spectral_checkpoint
from sorting.models.spectral_net import LOGITS, OOD_SCORE, MahalanobisScore, SpectralModel
from sorting.models.spectral_onnx import SpectralMetadata
from sorting.paths import runs_dir
from sorting.taxonomy import load_taxonomy
from sorting.models import plots
from sorting.models.calibration import LINE_OOD_QUANTILES, energy_scores, fit_temperature, softmax
from sorting.training.callbacks import CallbackList, build_callbacks
from sorting.training.composition import fit_composition
from sorting.models.metrics import classification_metrics
from sorting.training.spectral_config import SpectralTrainConfig
from sorting.training.spectral_models import fit_classifier, fit_mahalanobis, predict

log = logging.getLogger(__name__)


def load_training_set(paths: list[str], split: str | None) -> SpectralSet:
    """The rows (of ``split``, or all) of one or more spectral manifests on one grid."""
    sets = [load_spectral_set(p, split=split, all_rows=split is None) for p in paths]
    grids = {s.grid for s in sets}
    if len(grids) != 1:
        raise DataError(f"training manifests are on different grids ({', '.join(g.spec() for g in grids)}): import them "
                        "with the same --grid")
    rows = [r for s in sets for r in s.rows if r.fibre]
    absorbance = np.vstack([s.absorbance[[i for i, r in enumerate(s.rows) if r.fibre]] for s in sets])
    if not rows:
        raise DataError(f"no labelled spectra in {', '.join(paths)}" + (f" (split {split})" if split else ""))
    return SpectralSet(rows, absorbance, sets[0].grid, [i for s in sets for i, r in zip(s.instruments, s.rows) if r.fibre],
                       sets[0].manifest)


def label_list(names: list[str], taxonomy: str | None = None) -> list[str]:
    """Classes present in ``names``, in taxonomy order, ``background`` last."""
    order = [*load_taxonomy(taxonomy).fibre, BACKGROUND]
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise DataError(f"labels {unknown} are not classes of the taxonomy (nor background): import with its aliases")
    return [c for c in order if c in set(names)]


@dataclass
class TrainedSpectral:
    """A fitted spectral model with its calibration and the out-of-fold outputs they came from."""

    model: SpectralModel
    labels: list[str]
    temperature: float
    ood: dict[str, Any]
    oof_logits: np.ndarray
    oof_scores: np.ndarray
    oof_true: np.ndarray
    oof_seen: np.ndarray  # the row's class was in its calibration fold's training part
    losses: list[float] = field(default_factory=list)
    composition: dict[str, Any] | None = None


def _fit_once(x: np.ndarray, y: np.ndarray, classes: int, config: SpectralTrainConfig, seed: int) -> tuple[SpectralModel, list[float]]:
    model, pre, losses = fit_classifier(x, y, classes, config, seed=seed)
    if isinstance(model.ood, MahalanobisScore):
        fit_mahalanobis(model.ood, pre.transform(x), y, config.ood.components)
    return model, losses


def _out_of_fold(data: SpectralSet, y: np.ndarray, classes: int, config: SpectralTrainConfig,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold logits and OOD scores, and whether each row's class was in its fold's training part (a class
    with one swatch is not: that row is an unseen-class example, left out of temperature and threshold fits)."""
    groups = len(set(data.groups()))
    folds = np.asarray(assign_folds(data.rows, min(config.calibration.folds, groups), seed=seed, group_by="garment"))
    logits = np.zeros((len(y), classes))
    scores = np.zeros(len(y))
    seen = np.zeros(len(y), dtype=bool)
    for k in tqdm(np.unique(folds), desc="calibration folds", leave=False, disable=not config.progress):
        train, test = folds != k, folds == k
        model, _ = _fit_once(data.absorbance[train], y[train], classes, config, seed + int(k) + 1)
        out = predict(model, data.absorbance[test])
        logits[test], scores[test] = out[LOGITS], out[OOD_SCORE]
        seen[test] = np.isin(y[test], y[train])
    return logits, scores, seen


def ood_table(scores: np.ndarray, config: SpectralTrainConfig) -> dict[str, Any]:
    """Threshold at the recipe's quantile and the line quantiles table (serving/BINS.md ``ood_quantile``)."""
    finite = scores[np.isfinite(scores)]
    trained, *line = np.quantile(finite, (config.ood.quantile, *LINE_OOD_QUANTILES))
    return {"method": config.ood.method, "quantile": config.ood.quantile, "threshold": float(trained),
            "by_quantile": {ood_quantile_key(q): float(v) for q, v in zip(LINE_OOD_QUANTILES, line)}}


def train_spectral_model(data: SpectralSet, labels: list[str], config: SpectralTrainConfig, *, seed: int,
                         composition: SpectralSet | None = None) -> TrainedSpectral:
    """Calibrated spectral model on ``data`` (every row labelled with one of ``labels``)."""
    y = np.array([labels.index(r.fibre) for r in data.rows])  # type: ignore[arg-type]
    logits, scores, seen = _out_of_fold(data, y, len(labels), config, seed)
    temperature = fit_temperature(logits, np.where(seen, y, -1)) if config.calibration.temperature else 1.0
    if config.ood.method == "energy":
        scores = energy_scores(logits, temperature)
    model, losses = _fit_once(data.absorbance, y, len(labels), config, seed)
    if config.ood.method == "energy":
        model.ood.temperature.fill_(temperature)
    info = None
    if composition is not None and config.composition is not None:
        model.composition, info = fit_composition(composition, config.composition, seed)
        model._arch["composition"] = {"snv": config.composition.preprocess.snv}
    return TrainedSpectral(model, labels, float(temperature), ood_table(scores[seen], config), logits, scores, y,
                           seen, losses, info)


def oof_metrics(trained: TrainedSpectral) -> dict[str, Any]:
    """Out-of-fold accuracy, per-class recall and background-called-a-fibre count of a training set."""
    pred = trained.oof_logits.argmax(axis=1)
    m = classification_metrics(trained.oof_true, pred, len(trained.labels))
    probs = softmax(trained.oof_logits, trained.temperature)
    seen = trained.oof_seen
    out: dict[str, Any] = {"oof/accuracy": m["accuracy"], "oof/macro_f1": m["macro_f1"],
                           "oof/accuracy_seen_classes": float(np.mean(pred[seen] == trained.oof_true[seen])),
                           "oof/mean_confidence": float(probs.max(axis=1).mean()), "temperature": trained.temperature,
                           "oof/unseen_flagged_ood": float(np.mean(trained.oof_scores[~seen] > trained.ood["threshold"]))
                           if np.any(~seen) else float("nan")}
    for i, name in enumerate(trained.labels):
        if np.any(trained.oof_true == i):
            out[f"oof/recall/{name}"] = float(np.mean(pred[trained.oof_true == i] == i))
    if BACKGROUND in trained.labels:
        b = trained.labels.index(BACKGROUND)
        out["oof/background_called_fibre"] = int(np.sum((trained.oof_true == b) & (pred != b)))
    return out


def _run_dir(config: SpectralTrainConfig) -> Path:
    root = Path(config.output_dir) if config.output_dir else runs_dir() / "train"
    run = root / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    while run.exists():
        run = run.with_name(run.name + "-1")
    run.mkdir(parents=True)
    return run


def spectral_metadata(trained: TrainedSpectral, data: SpectralSet, config: SpectralTrainConfig, version: str,
                      metrics: dict[str, Any], run_id: str | None) -> SpectralMetadata:
    pre = {"config": config.preprocess.model_dump(mode="json"), "points": data.grid.points,
           "centre": trained.model.preprocess.centre.tolist() if config.preprocess.mean_centre else None}
    return SpectralMetadata(
        model_name=f"spectral-{config.model.family}", model_version=version, labels=trained.labels, grid=data.grid,
        preprocess=pre, taxonomy_version=load_taxonomy(config.data.taxonomy).version, temperature=trained.temperature,
        ood=trained.ood, composition=trained.composition, run_id=run_id,
        dataset_hash=_dataset_hash(data), metrics=metrics)


def _dataset_hash(data: SpectralSet) -> str:
    import hashlib

    digest = hashlib.sha1()
    for row in sorted(data.rows, key=lambda r: r.sha1 or r.path):
        digest.update(f"{row.sha1}:{row.fibre}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class SpectralTrainResult:
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    labels: list[str]
    seconds: float
    is_main: bool = True


def fit_spectral(config: SpectralTrainConfig) -> SpectralTrainResult:
    """The ``train`` job for ``task: spectral`` recipes (see module docstring)."""
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    data = load_training_set(config.data.train, config.data.split)
    labels = label_list([r.fibre for r in data.rows], config.data.taxonomy)  # type: ignore[misc]
    composition = load_training_set(config.composition.train, None) if config.composition else None
    run_dir = _run_dir(config)
    callbacks = CallbackList(build_callbacks(config, run_dir, True))  # type: ignore[arg-type]
    callbacks.on_train_start(config, run_dir)  # type: ignore[arg-type]
    save_config(config, run_dir / "config.yaml")
    trained = train_spectral_model(data, labels, config, seed=config.seed, composition=composition)
    for epoch, loss in enumerate(trained.losses):
        callbacks.on_epoch_end(epoch, {"train/loss": loss})
    metrics = {**oof_metrics(trained), "n_train": len(data), "n_swatches": len(set(data.groups()))}
    cm = classification_metrics(trained.oof_true, trained.oof_logits.argmax(1), len(labels))["confusion_matrix"]
    metrics["oof/confusion"] = cm  # rows: true class, columns: read as (the line's fusion rule uses it)
    if trained.composition:
        metrics["composition/components"] = trained.composition["components"]
    metadata = spectral_metadata(trained, data, config, run_dir.name, metrics, callbacks.run_id)
    ckpt = save_spectral_checkpoint(run_dir / "best.pt", trained.model, metadata, config.model_dump(mode="json"))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n", encoding="utf-8")
    pngs = [plots.plot_confusion_matrix(np.asarray(cm), labels, run_dir / "confusion_oof.png",
                                        title="out-of-fold (grouped by swatch) on the training set"),
            plot_class_means(data, run_dir / "class_means.png")]
    for path in [run_dir / "config.yaml", run_dir / "metrics.json", *pngs]:
        callbacks.on_artifact(path)
    callbacks.on_train_end(ckpt, metrics)
    log.info("spectral model written to %s", ckpt)
    return SpectralTrainResult(run_dir, ckpt, metrics, labels, time.perf_counter() - started)
