"""Cached backbone work: train on tensors computed once per image (and view) instead of every epoch.

Two cases, both decided by :func:`cache_applies` and both saving the full network (backbone + heads), so
export, evaluate and serve are unchanged:

* **Frozen backbone** (``freeze_backbone_epochs >= optim.epochs``): every epoch would recompute the same
  backbone features; on a CPU that is most of the run time (EfficientNet-Lite0: ~60 ms/image). The
  trainer extracts them once and trains the heads on them (:class:`HeadsOnly`).
* **Partial fine-tuning** (``model.trainable_from: K``): the stem and blocks ``0..K-1`` stay frozen and
  their output is cached once; blocks ``K..`` plus the heads train on the cache (:class:`SuffixAndHeads`).
  The late blocks run at 1/16-1/32 of the input resolution, so an epoch costs a fraction of a full
  forward + backward. The backbone must offer ``prefix(x, K) -> list[Tensor]``, ``suffix(parts, K)``
  (``suffix(prefix(x, K), K) == backbone(x)``), ``suffix_modules(K)`` and ``num_blocks``.

Augmentation becomes a fixed set of cached *views* per training image: view 0 is the unaugmented
image, ``flip`` adds its mirror, any other preset adds ``augment.views - 1`` random draws made once
(:func:`view_count`); each epoch draws one view per image. Validation uses the unaugmented view.

With ``$TEXTILE_SORTER_FEATURE_CACHE`` set, the unaugmented and mirrored rows are also kept on disk
(:class:`FeatureStore`) and read back by later runs with the same frozen encoder (cross-validation folds,
the final run on all images, other recipes on the same backbone).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from sorting.datasets.preprocess import PreprocessConfig
from sorting.errors import ConfigError
from sorting.models.multihead import EMBEDDING, MultiHeadClassifier
from sorting.training.config import FIXED_VIEWS, TrainConfig
from sorting.training.data import ManifestDataset, Sample, build_augmentation
from sorting.training.distributed import ShardedSampler

log = logging.getLogger(__name__)

SPLIT_METHODS = ("prefix", "suffix", "suffix_modules", "num_blocks")

Encoder = Callable[[torch.Tensor], list[torch.Tensor]]


def cache_applies(config: TrainConfig, world_size: int = 1) -> bool:
    """True when the run trains on cached tensors (frozen backbone throughout, or a frozen prefix)."""
    if world_size != 1:
        return False
    if config.model.trainable_from is not None:
        return True
    return config.freeze_backbone_epochs >= config.optim.epochs and (
        config.augment.preset in FIXED_VIEWS or config.augment.views is not None
    )


def view_count(config: TrainConfig) -> int:
    """Cached views per training image: 1 for ``none``, 2 (image + mirror) for ``flip``, else ``augment.views``."""
    if config.augment.preset in FIXED_VIEWS:
        return FIXED_VIEWS[config.augment.preset]
    if config.augment.views is None:
        raise ConfigError(
            f"augment.preset={config.augment.preset} on cached features needs augment.views "
            "(how many augmented views per image to compute once)"
        )
    return config.augment.views


def check_splittable(backbone: nn.Module, start: int, name: str) -> None:
    """ConfigError unless ``backbone`` can be split at block ``start`` for partial fine-tuning."""
    missing = [m for m in SPLIT_METHODS if not hasattr(backbone, m)]
    if missing:
        raise ConfigError(
            f"model.trainable_from: backbone '{name}' cannot be split into a cached frozen prefix and a trainable "
            "rest (use an efficientnet_lite0* backbone, or freeze_backbone_epochs for frozen features)"
        )
    if not 0 <= start <= backbone.num_blocks:
        raise ConfigError(f"model.trainable_from={start} is out of range for '{name}' (0..{backbone.num_blocks})")


@dataclass(frozen=True)
class PackedLayout:
    """How a list of per-image tensors is flattened into one row (so loaders and loops see one tensor)."""

    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, parts: Sequence[torch.Tensor]) -> "PackedLayout":
        return cls(tuple(tuple(p.shape[1:]) for p in parts))

    def pack(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)

    def unpack(self, rows: torch.Tensor) -> list[torch.Tensor]:
        sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        chunks = torch.split(rows, sizes, dim=1)
        return [c.reshape(rows.shape[0], *s) for c, s in zip(chunks, self.shapes)]


@dataclass
class CachedFeatures:
    """Packed encoder outputs ``views`` (V, N, D) in dataset order (view 0 unaugmented) and targets (N, H)."""

    views: torch.Tensor
    targets: torch.Tensor
    layout: PackedLayout


class FeatureStore:
    """Encoder outputs on disk, one row per image and view, reused by every later run with the same encoder.

    Why: a frozen backbone computes the same features for an image in every run. Cross-validation trains
    one run per fold (plus the final run on all images), and comparing recipes repeats them: without a
    store every run pays the backbone pass again (minutes to an hour per run on a CPU for a few thousand
    images). The store is opt-in: set ``$TEXTILE_SORTER_FEATURE_CACHE`` to a folder (e.g. ``runs/feature-cache``).

    Rows are keyed by what determines them, so a stale row cannot be read back: the encoder's
    *fingerprint* (a digest of its outputs on a fixed random batch: other weights, another backbone, a fitted
    standardisation or another input size give another fingerprint), the image (path, size and modification
    time) with the preprocessing, and the view (plain or mirrored). Augmented views are random draws and are
    never stored.
    """

    ENV = "TEXTILE_SORTER_FEATURE_CACHE"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def from_env(cls, encoder: Encoder, dataset: Dataset, device: torch.device) -> "FeatureStore | None":
        """The store of ``encoder`` under ``$TEXTILE_SORTER_FEATURE_CACHE``, or None when that is unset or
        ``dataset`` cannot name its rows (``cache_keys``) and input size (``preprocess_config``)."""
        root = os.environ.get(cls.ENV)
        config = getattr(dataset, "preprocess_config", None)
        if not root or config is None or _row_keys(dataset, False) is None:
            return None
        return cls(Path(root) / encoder_fingerprint(encoder, config.input_size, device))

    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._file(key)
        return torch.from_numpy(np.load(path)) if path.is_file() else None

    def put(self, key: str, row: torch.Tensor) -> None:
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, row.numpy())
        os.replace(tmp, path)

    def layout(self) -> PackedLayout | None:
        path = self.folder / "layout.json"
        return PackedLayout(tuple(tuple(s) for s in json.loads(path.read_text()))) if path.is_file() else None

    def set_layout(self, layout: PackedLayout) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "layout.json").write_text(json.dumps([list(s) for s in layout.shapes]))


@torch.no_grad()
def encoder_fingerprint(encoder: Encoder, input_size: int, device: torch.device) -> str:
    """Digest of ``encoder``'s outputs (rounded to 1e-3) on a fixed random batch at ``input_size``."""
    probe = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)).to(device)
    digest = hashlib.sha1(str(input_size).encode())
    for part in encoder(probe):
        digest.update(str(tuple(part.shape)).encode())
        digest.update(torch.round(part.float().cpu() * 1000).to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


def _row_keys(dataset: Dataset, mirrored: bool) -> list[str] | None:
    """Store keys of a dataset's rows (``dataset.cache_keys()``), or None when its rows cannot be stored."""
    keys = getattr(dataset, "cache_keys", lambda: None)()
    return None if keys is None else [f"{k}-m" if mirrored else k for k in keys]


@torch.no_grad()
def _encode(encoder: Encoder, dataset: Dataset, *, mirror: bool, store: FeatureStore | None, batch_size: int,
            device: torch.device, num_workers: int, dtype: torch.dtype, desc: str,
            progress: bool) -> tuple[list[torch.Tensor], torch.Tensor, PackedLayout]:
    """Rows (packed, ``dtype``) of ``dataset`` plain (and mirrored, when ``mirror``), and its targets.

    With a ``store``, rows already in it are read back and only the other images go through the encoder."""
    variants = 2 if mirror else 1
    keys = [k for k in (_row_keys(dataset, v == 1) for v in range(variants)) if k is not None]
    use_store = store is not None and len(keys) == variants
    rows: list[list[torch.Tensor | None]] = [[None] * len(dataset) for _ in range(variants)]
    layout = store.layout() if use_store else None
    if use_store:
        for v in range(variants):
            for i, key in enumerate(keys[v]):
                row = store.get(key)
                rows[v][i] = None if row is None else row.to(dtype)
    todo = [i for i in range(len(dataset)) if any(rows[v][i] is None for v in range(variants))]
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    done, ys = 0, []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress or not todo, dynamic_ncols=True):
        ys.append(y)
        x = x.to(device)
        batch = todo[done : done + len(x)]
        done += len(x)
        for v in range(variants):
            parts = encoder(torch.flip(x, dims=[3]) if v else x)
            layout = layout or PackedLayout.of(parts)
            packed = layout.pack(parts).to("cpu", dtype)
            for i, row in zip(batch, packed):
                rows[v][i] = row
                if use_store:
                    store.put(keys[v][i], row.clone())
    if layout is None:
        raise ValueError("extract_features needs at least one image")
    if use_store and todo:
        store.set_layout(layout)
    targets = dataset.targets() if use_store else torch.cat(ys)  # type: ignore[attr-defined]
    return [torch.stack(r) for r in rows], targets, layout  # type: ignore[arg-type]


def extract_features(
    encoder: Encoder,
    datasets: Sequence[Dataset],
    *,
    batch_size: int,
    device: torch.device,
    flip: bool = False,
    num_workers: int = 0,
    dtype: torch.dtype = torch.float32,
    desc: str = "features",
    progress: bool = True,
) -> CachedFeatures:
    """One pass of ``encoder`` (in eval mode) over each of ``datasets`` (the same samples, differently
    augmented; one view each), plus the mirrored images of the first if ``flip``. Stored as ``dtype``.

    With ``$TEXTILE_SORTER_FEATURE_CACHE`` set, unaugmented rows go through a :class:`FeatureStore`."""
    if not datasets or not len(datasets[0]):
        raise ValueError("extract_features needs at least one image")
    store = FeatureStore.from_env(encoder, datasets[0], device)
    views: list[torch.Tensor] = []
    targets = torch.empty(0)
    layout = None
    for v, dataset in enumerate(datasets):
        name = desc if len(datasets) == 1 else f"{desc} (view {v + 1}/{len(datasets)})"
        rows, y, layout = _encode(encoder, dataset, mirror=flip and v == 0, store=store, batch_size=batch_size,
                                  device=device, num_workers=num_workers, dtype=dtype, desc=name, progress=progress)
        views.extend(rows)
        if v == 0:
            targets = y
    assert layout is not None
    return CachedFeatures(torch.stack(views), targets, layout)


class FeatureDataset(Dataset):
    """Cached ``(packed row float32, targets)``; with several views, each draw picks one at random."""

    def __init__(self, cached: CachedFeatures, *, seed: int = 0) -> None:
        self.cached = cached
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return int(self.cached.views.shape[1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_views = self.cached.views.shape[0]
        view = int(torch.randint(n_views, (), generator=self.generator)) if n_views > 1 else 0
        return self.cached.views[view, index].float(), self.cached.targets[index]


class HeadsOnly(nn.Module):
    """The heads of a :class:`MultiHeadClassifier` applied to cached features (shares its parameters)."""

    def __init__(self, model: MultiHeadClassifier) -> None:
        super().__init__()
        self.classifiers = model.classifiers
        self.heads = model.heads

    @property
    def head_sizes(self) -> dict[str, int]:
        return {h: self.classifiers[h][-1].out_features for h in self.heads}

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {h: self.classifiers[h](features) for h in self.heads}
        out[EMBEDDING] = features
        return out


class SuffixAndHeads(HeadsOnly):
    """Backbone blocks ``start..`` plus the heads on cached prefix outputs (shares the model's parameters).

    The prefix is never run here and stays frozen. ``freeze_bn`` keeps the suffix's BatchNorm running
    statistics (ImageNet's) in training too, instead of normalising with batch statistics: with a few
    hundred images and small batches the batch statistics are noisy and would drift the running ones.
    """

    def __init__(self, model: MultiHeadClassifier, start: int, layout: PackedLayout, *, freeze_bn: bool) -> None:
        super().__init__(model)
        self.backbone = model.backbone
        self.start = start
        self.layout = layout
        self.freeze_bn = freeze_bn
        self.suffix_frozen = False

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Train the suffix (True) or keep it fixed (False, e.g. heads-only warm-up epochs); the cached
        prefix stays frozen either way. Same contract as ``MultiHeadClassifier.set_backbone_trainable``."""
        self.suffix_frozen = not trainable
        for module in self.backbone.suffix_modules(self.start):
            for p in module.parameters():
                p.requires_grad_(trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "SuffixAndHeads":
        super().train(mode)
        self.backbone.eval()  # the prefix, and the suffix while it is fixed
        if mode and not self.suffix_frozen:
            for module in self.backbone.suffix_modules(self.start):
                module.train()
                if self.freeze_bn:
                    for m in module.modules():
                        if isinstance(m, nn.modules.batchnorm._BatchNorm):
                            m.eval()
        return self

    def forward(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().forward(self.backbone.suffix(self.layout.unpack(rows), self.start))


def cached_loaders(
    model: MultiHeadClassifier, train_samples: list[Sample], val_ds: ManifestDataset, pre: PreprocessConfig,
    sampler: ShardedSampler, config: TrainConfig, device: torch.device, *, fit_statistics: bool = False,
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
        views.append(ManifestDataset(train_samples, pre, build_augmentation(config, seed=config.seed + v), cache_images=False))
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
