"""The training job: ``fit(config)`` turns manifests + a recipe into a calibrated checkpoint.

Run folder (written by rank 0 only): ``config.yaml`` (what ran), ``last.pt`` (resumable,
every epoch), ``best.pt`` (best validation macro-F1; after training it also holds the
per-head temperature and the energy OOD threshold fitted on validation logits, and with
``layout:`` in the recipe the layout head of :mod:`sorting.training.layout`), ``history.json``,
``metrics.json`` and ``training_curves.png``.

Before the first epoch (not on resume) a backbone with a ``fit_statistics(batches)`` method (e.g.
``efficientnet_lite0_colour``'s colour standardisation) is fitted on the unaugmented training images;
when the whole backbone is frozen and cached, the fit uses the cached outputs
(``statistics_from_features``) instead of a pass of its own. A backbone frozen for the whole run (with
``augment.preset`` none/flip or ``augment.views``) trains the heads on cached features; ``model.trainable_from: K`` caches the frozen prefix (blocks before K) and
fine-tunes the rest on the cache (:mod:`sorting.training.feature_cache`). The checkpoints still hold
the full model.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from sorting.config import save_config
from sorting.datasets.preprocess import PreprocessConfig
from sorting.errors import ConfigError, DataError
from sorting.models.checkpoint import read_checkpoint_dict, save_checkpoint
from sorting.models.multihead import IGNORE_INDEX, MultiHeadClassifier, build_multihead
from sorting.models.onnx_model import ood_quantile_key
from sorting.paths import runs_dir
from sorting.taxonomy import LAYOUT_HEAD, LAYOUT_LABELS, load_taxonomy
from sorting.training import distributed as D
from sorting.training.calibration import LINE_OOD_QUANTILES, energy_thresholds, fit_temperature
from sorting.training.callbacks import Callback, CallbackList, build_callbacks
from sorting.training.config import TrainConfig
from sorting.training.layout import fit_layout_head
from sorting.training.feature_cache import (
    FeatureDataset,
    HeadsOnly,
    SuffixAndHeads,
    cache_applies,
    check_splittable,
    extract_features,
    view_count,
)
from sorting.training.data import (
    LabelSpace,
    ManifestDataset,
    Sample,
    balanced_loss_weights,
    balanced_sample_weights,
    class_counts,
    collect_samples,
    dataset_hash,
    load_head_aliases,
)
from sorting.training.loop import StepSettings, ValidationResult, train_one_epoch, validate

log = logging.getLogger(__name__)


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


def _seed_worker(_: int) -> None:
    """DataLoader worker init: derive numpy/random/augmentation seeds from the worker's torch seed.

    Without this every worker would replay the same augmentation stream.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    reseed = getattr(info.dataset, "reseed", None) if info is not None else None
    if reseed is not None:
        reseed(seed)


def _build_augmentation(config: TrainConfig, seed: int) -> Callable[..., dict[str, Any]] | None:
    if config.augment.preset == "none":
        return None
    try:
        from sorting.datasets.augment import build_augmentation
    except ImportError as exc:
        raise ConfigError(f"augmentation presets are unavailable ({exc}); set augment.preset=none") from None
    colour_safe = config.augment.colour_safe
    if colour_safe is None:
        colour_safe = "colour" in config.model.heads
    return build_augmentation(config.augment.preset, colour_safe=colour_safe, seed=seed)


def _synthetic_manifest(config: TrainConfig, ctx: D.DistContext) -> Path:
    """The synthetic crop dataset for ``data.synthetic`` (rank 0 generates it once, then it is reused)."""
    syn = config.data.synthetic
    assert syn is not None
    base = Path(syn.cache_dir) if syn.cache_dir else runs_dir() / "datasets"
    folder = base / f"synth-crops-n{syn.n}-s{syn.size}-seed{syn.seed}"
    manifest = folder / "manifest.csv"
    if ctx.is_main and not manifest.is_file():
        from sorting.datasets.synth import make_crop_dataset

        log.info("generating the synthetic crop dataset in %s", folder)
        manifest = Path(make_crop_dataset(folder, n=syn.n, size=syn.size, seed=syn.seed, progress=config.progress))
    D.barrier(ctx)
    return D.broadcast_object(manifest, ctx)


def _load_samples(config: TrainConfig, space: LabelSpace, ctx: D.DistContext) -> tuple[list[Sample], list[Sample], list[Path]]:
    train_paths = [Path(p) for p in config.data.train]
    if config.data.synthetic is not None:
        train_paths.append(_synthetic_manifest(config, ctx))
    val_paths = [Path(p) for p in config.data.val] if config.data.val is not None else train_paths
    aliases = load_head_aliases(space.heads)
    kw = {"unknown_labels": config.data.unknown_labels}
    train = collect_samples(train_paths, config.data.train_split, space, aliases, **kw)
    val = collect_samples(val_paths, config.data.val_split, space, aliases, **kw)
    if not train:
        raise DataError(f"no labelled '{config.data.train_split}' rows for heads {list(space.heads)} in {[str(p) for p in train_paths]}")
    if not val:
        raise DataError(
            f"no labelled '{config.data.val_split}' rows in {[str(p) for p in val_paths]}: validation data is needed "
            "for early stopping and calibration (split the manifest, or set data.val / data.val_split)"
        )
    for i, head in enumerate(space.heads):
        n = int(class_counts(train, i, len(space.classes[head])).sum())
        if n == 0:
            log.warning("head '%s' has no training labels: it will stay untrained", head)
    manifests = sorted({str(p) for p in [*train_paths, *val_paths]})
    return train, val, [Path(m) for m in manifests]


def _make_preprocess(default: PreprocessConfig, config: TrainConfig) -> PreprocessConfig:
    updates: dict[str, Any] = {}
    if config.model.input_size is not None:
        updates["input_size"] = config.model.input_size
    if config.model.resize is not None:
        updates["resize"] = config.model.resize
    if config.model.pad_value is not None:
        updates["pad_value"] = config.model.pad_value
    return default.model_copy(update=updates)


def _param_groups(model: MultiHeadClassifier, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases/norms; the backbone may get a smaller learning rate."""
    groups = []
    for part, scale in ((model.backbone, config.optim.backbone_lr_scale), (model.classifiers, 1.0)):
        decay = [p for p in part.parameters() if p.ndim > 1]
        no_decay = [p for p in part.parameters() if p.ndim <= 1]
        lr = config.optim.lr * scale
        groups.append({"params": decay, "weight_decay": config.optim.weight_decay, "lr": lr})
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr})
    return [g for g in groups if g["params"]]


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio`` (or constant)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _criteria(config: TrainConfig, space: LabelSpace, train: list[Sample], device: torch.device) -> dict[str, nn.Module]:
    criteria = {}
    for i, head in enumerate(space.heads):
        weight = None
        if config.balance in ("loss_weights", "sqrt_loss_weights"):
            w = balanced_loss_weights(class_counts(train, i, len(space.classes[head])))
            if config.balance == "sqrt_loss_weights":
                w = np.sqrt(w) / np.sqrt(w).mean()
            weight = torch.tensor(w, dtype=torch.float32, device=device)
        criteria[head] = nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE_INDEX, label_smoothing=config.label_smoothing)
    return criteria


def _amp_settings(config: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    if device.type != "cuda" or not config.amp:
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _new_run_dir(config: TrainConfig, ctx: D.DistContext) -> Path:
    run_dir = None
    if ctx.is_main:
        base = Path(config.output_dir) if config.output_dir else runs_dir() / "train"
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_dir = base / f"{config.name}-{stamp}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = base / f"{config.name}-{stamp}-{suffix}"
        run_dir.mkdir(parents=True)
    return D.broadcast_object(run_dir, ctx)


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=float), encoding="utf-8")
    return path


def _calibrate(val: ValidationResult, config: TrainConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-head temperature (NLL on validation logits) and energy OOD threshold at the configured quantile,
    plus the thresholds at :data:`LINE_OOD_QUANTILES`, from which a sorting line may pick its own."""
    temperature, threshold, by_quantile = {}, {}, {}
    for head, logits in val.logits.items():
        t = fit_temperature(logits, val.labels[head]) if config.calibration.temperature else 1.0
        temperature[head] = float(t)
        trained, *line = energy_thresholds(logits, t, (config.calibration.ood_quantile, *LINE_OOD_QUANTILES))
        threshold[head] = trained
        by_quantile[head] = {ood_quantile_key(q): v for q, v in zip(LINE_OOD_QUANTILES, line)}
    return temperature, {"method": "energy", "quantile": config.calibration.ood_quantile, "threshold": threshold,
                         "by_quantile": by_quantile}


def _fit_backbone_statistics(model: MultiHeadClassifier, dataset: ManifestDataset, config: TrainConfig, device: torch.device) -> None:
    """Let a backbone with fixed input statistics (``fit_statistics``) fit them on unaugmented training images."""
    fit_stats = getattr(model.backbone, "fit_statistics", None)
    if fit_stats is None:
        return
    loader = DataLoader(dataset, batch_size=config.eval_batch_size or config.batch_size, shuffle=False, num_workers=config.num_workers)
    bar = tqdm(loader, desc="backbone statistics", leave=False, disable=not config.progress, dynamic_ncols=True)
    n = fit_stats(x.to(device) for x, _ in bar)
    log.info("backbone statistics fitted on %d training images", n)


def _fits_statistics_from_cache(model: MultiHeadClassifier, config: TrainConfig, cached: bool) -> bool:
    """Whether the backbone's standardisation can be fitted from its cached outputs (saves a pass)."""
    return cached and config.model.trainable_from is None and hasattr(model.backbone, "statistics_from_features")


def _cached_loaders(
    model: MultiHeadClassifier, train_samples: list[Sample], val_ds: ManifestDataset, pre: PreprocessConfig,
    sampler: D.ShardedSampler, config: TrainConfig, device: torch.device, *, fit_statistics: bool = False,
) -> tuple[DataLoader, DataLoader, nn.Module]:
    """Run the frozen backbone (or its frozen prefix) once per training view and validation image.

    With ``fit_statistics`` the backbone is still unfitted (its outputs are the raw features): its
    standardisation is fitted on the cached unaugmented view and applied to the cache, which equals
    fitting first and caching the standardised outputs.

    Returns loaders of (cached rows, targets) and the module a step runs on them: the heads, or the
    trainable backbone suffix plus heads.
    """
    model.set_backbone_trainable(False)
    model.backbone.eval()
    start = config.model.trainable_from
    backbone = model.backbone
    encoder = (lambda x: [backbone(x)]) if start is None else (lambda x: backbone.prefix(x, start))
    n_views = view_count(config)
    flip = config.augment.preset == "flip"
    views = [ManifestDataset(train_samples, pre, None, cache_images=False)]
    for v in range(1, 1 if flip else n_views):
        views.append(ManifestDataset(train_samples, pre, _build_augmentation(config, seed=config.seed + v), cache_images=False))
    kw = {
        "batch_size": config.eval_batch_size or config.batch_size, "device": device, "num_workers": config.num_workers,
        "progress": config.progress, "dtype": torch.float32 if start is None else torch.float16,  # activation maps: half the RAM
    }
    started = time.perf_counter()
    train = extract_features(encoder, views, flip=flip, desc="train features", **kw)
    val = extract_features(encoder, [val_ds], desc="val features", **kw)
    if fit_statistics:
        mean, std = backbone.statistics_from_features(train.views[0])  # view 0: unaugmented, not mirrored
        for cache in (train, val):
            cache.views.sub_(mean.to(cache.views.dtype)).div_(std.to(cache.views.dtype))
        log.info("backbone statistics fitted on %d cached training images", train.views.shape[1])
    log.info(
        "cached %s of %d train images x %d views / %d val images in %.0f s (%.0f MB)",
        "frozen-backbone features" if start is None else f"backbone blocks 0-{start - 1} outputs",
        len(train_samples), n_views, len(val_ds), time.perf_counter() - started,
        (train.views.numel() + val.views.numel()) * train.views.element_size() / 1e6,
    )
    per_rank = len(sampler)
    train_loader = DataLoader(
        FeatureDataset(train, seed=config.seed), batch_size=config.batch_size, sampler=sampler, drop_last=per_rank > config.batch_size,
    )
    val_loader = DataLoader(FeatureDataset(val), batch_size=config.eval_batch_size or config.batch_size, shuffle=False)
    if start is None:
        return train_loader, val_loader, HeadsOnly(model)
    return train_loader, val_loader, SuffixAndHeads(model, start, train.layout, freeze_bn=config.model.freeze_bn)


def fit(config: TrainConfig, *, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train, validate every epoch, keep the best checkpoint, calibrate it; DDP-aware (see module doc)."""
    ctx = D.init_distributed(config.device)
    try:
        return _fit(config, ctx, callbacks)
    finally:
        D.shutdown(ctx)


def _fit(config: TrainConfig, ctx: D.DistContext, extra_callbacks: list[Callback] | None) -> TrainResult:
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed, config.deterministic)
    taxonomy = load_taxonomy(config.data.taxonomy)
    space = LabelSpace.from_taxonomy(taxonomy, config.model.heads)
    train_samples, val_samples, manifests = _load_samples(config, space, ctx)
    data_hash = dataset_hash(manifests)

    resume = read_checkpoint_dict(config.resume) if config.resume else None
    if resume is not None:
        if resume["model_name"] != config.model.backbone or resume["labels"] != space.labels():
            raise ConfigError(f"resume checkpoint {config.resume} has a different backbone or label set than the config")
        if not resume.get("trainer_state"):
            raise ConfigError(f"{config.resume} holds no trainer state: resume from a run's last.pt")
    model, default_pre = build_multihead(
        config.model.backbone,
        space.head_sizes(),
        pretrained=config.model.pretrained and resume is None,
        weights_path=config.model.weights_path,
        dropout=config.model.dropout,
        hidden=config.model.head_hidden,
    )
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
    pre = _make_preprocess(default_pre, config)
    device = ctx.device
    channels_last = device.type == "cuda" and config.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    cached = cache_applies(config, ctx.world_size)
    if config.model.trainable_from is not None:
        if ctx.world_size != 1:
            raise ConfigError("model.trainable_from (cached frozen prefix) runs in one process; drop torchrun or the option")
        check_splittable(model.backbone, config.model.trainable_from, config.model.backbone)
    augmentation = None if cached else _build_augmentation(config, seed=config.seed + 1000 * ctx.rank)
    train_ds = ManifestDataset(train_samples, pre, augmentation, cache_images=config.data.cache_images)
    val_ds = ManifestDataset(val_samples, pre, None, cache_images=config.data.cache_images)
    stats_from_cache = resume is None and _fits_statistics_from_cache(model, config, cached)
    if resume is None and not stats_from_cache:
        _fit_backbone_statistics(model, ManifestDataset(train_samples, pre, None, cache_images=False), config, device)
    weights = balanced_sample_weights(train_samples, space) if config.balance == "sampler" else None
    sampler = D.ShardedSampler(len(train_ds), ctx, seed=config.seed, weights=weights)
    loader_kw: dict[str, Any] = {
        "num_workers": config.num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": config.num_workers > 0,
        "worker_init_fn": _seed_worker,
    }
    per_rank = len(sampler)
    step_model: nn.Module = model  # what a training/validation step runs: the model, or its heads on cached features
    if cached:
        train_loader, val_loader, step_model = _cached_loaders(model, train_samples, val_ds, pre, sampler, config, device,
                                                               fit_statistics=stats_from_cache)
    else:
        train_loader = DataLoader(
            train_ds, batch_size=config.batch_size, sampler=sampler, drop_last=per_rank > config.batch_size,
            generator=torch.Generator().manual_seed(config.seed + ctx.rank), **loader_kw,
        )
        val_loader = DataLoader(
            Subset(val_ds, D.shard_indices(len(val_ds), ctx)), batch_size=config.eval_batch_size or config.batch_size,
            shuffle=False, **loader_kw,
        )

    optimizer = torch.optim.AdamW(_param_groups(model, config))
    steps = len(train_loader)
    total_steps = steps * config.optim.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s, total_steps=total_steps, warmup_steps=round(config.optim.warmup_epochs * steps),
            schedule=config.optim.schedule, min_ratio=config.optim.min_lr_ratio,
        ),
    )
    amp_dtype, scaler = _amp_settings(config, device)
    settings = StepSettings(space.heads, device, amp_dtype, scaler, channels_last and not cached, config.optim.grad_clip)
    criteria = _criteria(config, space, train_samples, device)

    state: dict[str, Any] = {"epoch": -1, "best_score": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        state.update(resume["trainer_state"])
        run_dir = Path(config.resume).parent
    else:
        run_dir = _new_run_dir(config, ctx)
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    run_name = run_dir.name

    cbs = CallbackList([*build_callbacks(config, run_dir, ctx.is_main), *(extra_callbacks or [])] if ctx.is_main else [])
    if ctx.is_main:
        cbs.on_train_start(config, run_dir)
        cbs.on_artifact(save_config(config, run_dir / "config.yaml"))
        log.info(
            "run %s: %d train / %d val images, heads %s, backbone %s, %d process(es) on %s",
            run_dir, len(train_samples), len(val_samples), list(space.heads), config.model.backbone, ctx.world_size, device,
        )
    run_id = cbs.run_id or run_name
    ckpt_meta = {
        "model_name": config.model.backbone, "labels": space.labels(), "preprocess": pre,
        "taxonomy_version": space.taxonomy_version, "config": config.model_dump(mode="json"),
        "run_id": run_id, "dataset_hash": data_hash,
    }

    best_state: dict[str, torch.Tensor] | None = None
    best_val: ValidationResult | None = None
    if resume is not None and best_path.is_file():
        best_state = read_checkpoint_dict(best_path)["state_dict"]
    ddp_model: nn.Module | None = None
    frozen: bool | None = None
    # what (un)freezes after the warm-up: the cached suffix of a partial fine-tune, else the model's backbone
    unfreeze = getattr(step_model, "set_backbone_trainable", model.set_backbone_trainable)
    stopped_early = False
    progress = config.progress and ctx.is_main
    for epoch in range(state["epoch"] + 1, config.optim.epochs):
        want_frozen = epoch < config.freeze_backbone_epochs
        if want_frozen != frozen:
            unfreeze(not want_frozen)
            ddp_model = step_model if cached else D.wrap_model(model, ctx)  # DDP: rebuilt when the trainable set changes
            frozen = want_frozen
            if ctx.is_main and config.freeze_backbone_epochs:
                what = "full fine-tune" if config.model.trainable_from is None else f"blocks {config.model.trainable_from}.. fine-tuned"
                log.info("epoch %d: backbone %s", epoch, "frozen (heads only)" if frozen else f"unfrozen ({what})")
        assert ddp_model is not None
        sampler.set_epoch(epoch)
        train_stats = train_one_epoch(ddp_model, train_loader, optimizer, scheduler, criteria, settings, epoch=epoch, progress=progress)
        D.sync_buffers(model, ctx)
        val = validate(step_model, val_loader, settings, ctx, progress=progress)  # plain module: no DDP collectives
        record = {"epoch": epoch, **{f"train/{k}": v for k, v in train_stats.items()}, **val.flat(), "lr": optimizer.param_groups[-1]["lr"]}
        state["history"].append(record)
        improved = val.score > state["best_score"] + config.early_stopping.min_delta
        keep = improved or config.early_stopping.select == "last"
        if improved:
            state.update(best_score=val.score, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if keep:  # best_epoch: the epoch whose weights are best.pt
            state["best_epoch"] = epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_val = val
        state["epoch"] = epoch
        if ctx.is_main:
            metrics_now = {k: v for k, v in record.items() if k != "epoch"}
            if improved and config.early_stopping.select == "best":  # "last": best.pt is written once, after the run
                save_checkpoint(best_path, model, **ckpt_meta, metrics=metrics_now, epoch=epoch)
            save_checkpoint(
                last_path, model, **ckpt_meta, metrics=metrics_now, epoch=epoch,
                optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
                scaler_state=scaler.state_dict() if scaler is not None else None, trainer_state=state,
            )
            cbs.on_epoch_end(epoch, {k: float(v) for k, v in record.items() if k != "epoch"})
            heads_txt = "  ".join(f"{h} acc {m['accuracy']:.3f} F1 {m['macro_f1']:.3f}" for h, m in val.metrics.items())
            log.info("epoch %d/%d  loss %.4f  val: %s%s", epoch + 1, config.optim.epochs, train_stats["loss"], heads_txt,
                     "  *best*" if improved else "")
        patience = config.early_stopping.patience
        if patience is not None and state["bad_epochs"] >= patience and epoch + 1 < config.optim.epochs:
            stopped_early = True
            if ctx.is_main:
                log.info("early stopping: no val macro-F1 gain for %d epochs (best epoch %d)", patience, state["best_epoch"] + 1)
            break

    digests = D.gather_objects(D.state_digest(model), ctx)
    if best_state is None:
        raise DataError("no epoch was trained (optim.epochs already reached by the resumed run?)")
    model.load_state_dict(best_state)
    if best_val is None:  # resumed after the best epoch: score the best weights again
        best_val = validate(step_model, val_loader, settings, ctx, progress=progress)
    metrics: dict[str, Any] = {
        "best_epoch": state["best_epoch"], "epochs_run": state["epoch"] + 1, "stopped_early": stopped_early,
        **best_val.flat(), "train_images": len(train_samples), "val_images": len(val_samples),
        "world_size": ctx.world_size, "weight_digests": digests, "ranks_in_sync": len(set(digests)) == 1,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if ctx.is_main and not metrics["ranks_in_sync"]:
        log.error("ranks ended with different weights: %s", digests)
    if ctx.is_main:
        temperature, ood = _calibrate(best_val, config)
        metrics.update(temperature=temperature, ood_threshold=ood["threshold"])
        best_meta = ckpt_meta
        if config.layout is not None:
            metrics["layout"] = fit_layout_head(model, pre, config.layout, workers=config.threads or 1,
                                                progress=progress)
            best_meta = {**ckpt_meta, "labels": {**ckpt_meta["labels"], LAYOUT_HEAD: list(LAYOUT_LABELS)}}
        save_checkpoint(
            best_path, model, **best_meta, metrics={k: v for k, v in metrics.items() if k != "weight_digests"},
            temperature=temperature, ood=ood, epoch=state["best_epoch"],
        )
        artifacts = [best_path, last_path, _write_json(run_dir / "history.json", state["history"]),
                     _write_json(run_dir / "metrics.json", {**metrics, "val": best_val.metrics})]
        try:
            from sorting.training.plots import plot_training_curves

            artifacts.append(plot_training_curves(state["history"], run_dir / "training_curves.png", title=run_name))
        except (ImportError, ValueError) as exc:
            log.warning("no training curve plot: %s", exc)
        for path in artifacts:
            cbs.on_artifact(path)
        cbs.on_train_end(best_path, metrics)
        log.info("best epoch %d, val score %.4f; checkpoint %s", state["best_epoch"] + 1, best_val.score, best_path)
    D.barrier(ctx)
    return TrainResult(
        run_dir=run_dir, best_checkpoint=best_path, last_checkpoint=last_path, metrics=metrics,
        best_epoch=state["best_epoch"], epochs_run=state["epoch"] + 1, stopped_early=stopped_early,
        seconds=time.perf_counter() - started, is_main=ctx.is_main,
    )
