"""Data and model set-up of the image classifier: manifests + recipe -> a :class:`TrainingSetup`.

Labelled samples from the recipe's manifests (and the synthetic crop set), the multi-head model (pretrained,
or the state of the checkpoint a run resumes from), its preprocessing, augmentation, class balancing and the
loaders. Before the first epoch (not on resume) a backbone with a ``fit_statistics(batches)`` method (e.g.
``efficientnet_lite0_colour``'s colour standardisation) is fitted on the unaugmented training images; when the
whole backbone is frozen and cached, the fit uses the cached outputs (``statistics_from_features``) instead of a
pass of its own. A backbone frozen for the whole run (with ``augment.preset`` none/flip or ``augment.views``)
trains the heads on cached features; ``model.trainable_from: K`` caches the frozen prefix (blocks before K) and
fine-tunes the rest on the cache (:mod:`sorting.training.feature_cache`).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from sorting.datasets.preprocess import PreprocessConfig
from sorting.errors import ConfigError, DataError
from sorting.models.checkpoint import read_checkpoint_dict
from sorting.models.multihead import IGNORE_INDEX, MultiHeadClassifier, build_multihead
from sorting.paths import runs_dir
from sorting.taxonomy import load_taxonomy
from sorting.training import distributed as D
from sorting.training.config import TrainConfig
from sorting.training.data import (
    LabelSpace,
    ManifestDataset,
    Sample,
    balanced_loss_weights,
    balanced_sample_weights,
    build_augmentation,
    class_counts,
    collect_samples,
    dataset_hash,
    load_head_aliases,
)
from sorting.training.engine import TrainingSetup
from sorting.training.feature_cache import cache_applies, cached_loaders, check_splittable
from sorting.training.loop import StepSettings

log = logging.getLogger(__name__)


def build_image_setup(config: TrainConfig, ctx: D.DistContext) -> tuple[TrainingSetup, dict[str, Any] | None]:
    """The image classifier's set-up, and the ``last.pt`` it resumes from (None for a new run)."""
    space = LabelSpace.from_taxonomy(load_taxonomy(config.data.taxonomy), config.model.heads)
    train_samples, val_samples, manifests = _load_samples(config, space, ctx)
    data_hash = dataset_hash(manifests)
    resume = _read_resume(config, space)
    model, pre = _build_model(config, space, resume, ctx.device)
    cached = cache_applies(config, ctx.world_size)
    if config.model.trainable_from is not None:
        if ctx.world_size != 1:
            raise ConfigError("model.trainable_from (cached frozen prefix) runs in one process; drop torchrun or the option")
        check_splittable(model.backbone, config.model.trainable_from, config.model.backbone)
    augmentation = None if cached else build_augmentation(config, seed=config.seed + 1000 * ctx.rank)
    train_ds = ManifestDataset(train_samples, pre, augmentation, cache_images=config.data.cache_images)
    val_ds = ManifestDataset(val_samples, pre, None, cache_images=config.data.cache_images)
    stats_from_cache = resume is None and _fits_statistics_from_cache(model, config, cached)
    if resume is None and not stats_from_cache:
        fit_backbone_statistics(model, ManifestDataset(train_samples, pre, None, cache_images=False), config, ctx.device)
    weights = balanced_sample_weights(train_samples, space) if config.balance == "sampler" else None
    sampler = D.ShardedSampler(len(train_ds), ctx, seed=config.seed, weights=weights)
    step_model: nn.Module = model  # what a training/validation step runs: the model, or its heads on cached features
    if cached:
        train_loader, val_loader, step_model = cached_loaders(model, train_samples, val_ds, pre, sampler, config,
                                                              ctx.device, fit_statistics=stats_from_cache)
    else:
        train_loader, val_loader = _image_loaders(train_ds, val_ds, sampler, config, ctx)
    amp_dtype, scaler = _amp_settings(config, ctx.device)
    channels_last = ctx.device.type == "cuda" and config.channels_last
    start = config.model.trainable_from
    setup = TrainingSetup(
        model=model, step_model=step_model, train_loader=train_loader, val_loader=val_loader, sampler=sampler,
        criteria=_criteria(config, space, train_samples, ctx.device),
        settings=StepSettings(space.heads, ctx.device, amp_dtype, scaler, channels_last and not cached, config.optim.grad_clip),
        param_groups=_param_groups(model, config),
        # what (un)freezes after the warm-up: the cached suffix of a partial fine-tune, else the model's backbone
        set_trainable=getattr(step_model, "set_backbone_trainable", model.set_backbone_trainable),
        distributed=not cached,
        checkpoint_fields={"model_name": config.model.backbone, "labels": space.labels(), "preprocess": pre,
                           "taxonomy_version": space.taxonomy_version, "config": config.model_dump(mode="json"),
                           "dataset_hash": data_hash},
        sizes={"train_images": len(train_samples), "val_images": len(val_samples)},
        summary=f"{len(train_samples)} train / {len(val_samples)} val images, heads {list(space.heads)}, "
                f"backbone {config.model.backbone}",
        trainable_label="full fine-tune" if start is None else f"blocks {start}.. fine-tuned",
    )
    return setup, resume


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


def _read_resume(config: TrainConfig, space: LabelSpace) -> dict[str, Any] | None:
    """The ``last.pt`` named by ``resume`` (checked against the recipe), or None."""
    if not config.resume:
        return None
    resume = read_checkpoint_dict(config.resume)
    if resume["model_name"] != config.model.backbone or resume["labels"] != space.labels():
        raise ConfigError(f"resume checkpoint {config.resume} has a different backbone or label set than the config")
    if not resume.get("trainer_state"):
        raise ConfigError(f"{config.resume} holds no trainer state: resume from a run's last.pt")
    return resume


def _build_model(config: TrainConfig, space: LabelSpace, resume: dict[str, Any] | None,
                 device: torch.device) -> tuple[MultiHeadClassifier, PreprocessConfig]:
    """The multi-head model on ``device`` (pretrained weights only for a new run) and its preprocessing."""
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
    channels_last = device.type == "cuda" and config.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model, _make_preprocess(default_pre, config)


def _make_preprocess(default: PreprocessConfig, config: TrainConfig) -> PreprocessConfig:
    updates: dict[str, Any] = {}
    if config.model.input_size is not None:
        updates["input_size"] = config.model.input_size
    if config.model.resize is not None:
        updates["resize"] = config.model.resize
    if config.model.pad_value is not None:
        updates["pad_value"] = config.model.pad_value
    return default.model_copy(update=updates)


def _image_loaders(train_ds: ManifestDataset, val_ds: ManifestDataset, sampler: D.ShardedSampler, config: TrainConfig,
                   ctx: D.DistContext) -> tuple[DataLoader, DataLoader]:
    """Loaders of decoded, augmented images; each rank validates its share of the validation set."""
    loader_kw: dict[str, Any] = {
        "num_workers": config.num_workers,
        "pin_memory": ctx.device.type == "cuda",
        "persistent_workers": config.num_workers > 0,
        "worker_init_fn": _seed_worker,
    }
    train_loader = DataLoader(
        train_ds, batch_size=config.batch_size, sampler=sampler, drop_last=len(sampler) > config.batch_size,
        generator=torch.Generator().manual_seed(config.seed + ctx.rank), **loader_kw,
    )
    val_loader = DataLoader(
        Subset(val_ds, D.shard_indices(len(val_ds), ctx)), batch_size=config.eval_batch_size or config.batch_size,
        shuffle=False, **loader_kw,
    )
    return train_loader, val_loader


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


def fit_backbone_statistics(model: MultiHeadClassifier, dataset: ManifestDataset, config: TrainConfig,
                            device: torch.device) -> None:
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
