"""Manifest rows -> torch Dataset: load_image (BGR) -> RGB -> augmentation -> preprocess.

Labels are encoded per head in the model's head order; a missing (or, with
``unknown_labels: ignore``, unmappable) label becomes ``IGNORE_INDEX`` and is masked out of
the loss, so manifests that label only fibre or only colour train one model together.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sorting.datasets.images import load_image
from sorting.datasets.importers import UNLABELLED
from sorting.datasets.manifest import read_manifest
from sorting.datasets.preprocess import PreprocessConfig, preprocess
from sorting.errors import DataError
from sorting.models.multihead import IGNORE_INDEX
from sorting.paths import project_root
from sorting.taxonomy import AliasMap, Taxonomy, load_aliases, normalise_label
from sorting.training.config import TrainConfig

log = logging.getLogger(__name__)

Augmentation = Callable[..., dict[str, Any]]  # albumentations-style: aug(image=rgb)["image"]


def build_augmentation(config: TrainConfig, seed: int) -> Augmentation | None:
    """The recipe's ``augment`` preset (None for ``none``); colour-safe by default when the colour head trains."""
    if config.augment.preset == "none":
        return None
    from sorting.datasets.augment import build_augmentation as build_preset  # albumentations: slow to import

    colour_safe = config.augment.colour_safe
    if colour_safe is None:
        colour_safe = "colour" in config.model.heads
    return build_preset(config.augment.preset, colour_safe=colour_safe, seed=seed)


@dataclass(frozen=True)
class Sample:
    """One training image: absolute path and one class index per head (IGNORE_INDEX = unlabelled)."""

    path: Path
    targets: tuple[int, ...]


@dataclass(frozen=True)
class LabelSpace:
    """The heads a model has and the ordered class names of each (from the taxonomy)."""

    heads: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]
    taxonomy_version: str

    @classmethod
    def from_taxonomy(cls, taxonomy: Taxonomy, heads: Sequence[str]) -> "LabelSpace":
        ordered = tuple(h for h in ("fibre", "colour") if h in heads)
        return cls(ordered, {h: taxonomy.classes(h) for h in ordered}, taxonomy.version)

    def head_sizes(self) -> dict[str, int]:
        return {h: len(self.classes[h]) for h in self.heads}

    def labels(self) -> dict[str, list[str]]:
        return {h: list(self.classes[h]) for h in self.heads}


def load_head_aliases(heads: Sequence[str]) -> dict[str, AliasMap]:
    """The project's alias maps for ``heads`` (an absent alias file means exact class names only)."""
    out = {}
    for head in heads:
        path = project_root() / "datasets" / "aliases" / f"{head}.yaml"
        out[head] = load_aliases(head, path) if path.is_file() else AliasMap(head=head)
    return out


def _means_missing(aliases: AliasMap, raw: str) -> bool:
    """True for placeholder labels ('NA', 'none', ...) and names the alias map lists as carrying no label
    (``_unlabelled``, see :data:`sorting.datasets.importers.UNLABELLED`)."""
    return aliases.resolve(raw, (raw,)) is None or aliases.table.get(normalise_label(raw)) == UNLABELLED


def collect_samples(
    manifest_paths: Sequence[str | Path],
    split: str | None,
    space: LabelSpace,
    aliases: dict[str, AliasMap],
    *,
    unknown_labels: str = "error",
) -> list[Sample]:
    """Rows of ``split`` from every manifest with at least one head labelled, labels encoded.

    ``unknown_labels="error"`` raises :class:`DataError` naming the label and manifest;
    ``"ignore"`` masks the label and logs how many were dropped.
    """
    samples: list[Sample] = []
    for mpath in manifest_paths:
        manifest = read_manifest(mpath)
        unknown: Counter[tuple[str, str]] = Counter()
        unlabelled = 0
        for row in manifest.subset(split):
            targets = []
            for head in space.heads:
                raw = getattr(row, head)
                name = aliases[head].resolve(raw, space.classes[head])
                if raw is not None and name is None and not _means_missing(aliases[head], raw):
                    unknown[(head, raw)] += 1
                targets.append(space.classes[head].index(name) if name is not None else IGNORE_INDEX)
            if all(t == IGNORE_INDEX for t in targets):
                unlabelled += 1
                continue
            samples.append(Sample(manifest.image_path(row).absolute(), tuple(targets)))
        if unknown:
            listing = ", ".join(f"{h}={label!r} x{n}" for (h, label), n in unknown.most_common(8))
            if unknown_labels == "error":
                raise DataError(
                    f"{mpath}: labels not in the taxonomy or alias maps: {listing} "
                    "(add aliases in datasets/aliases/, or set data.unknown_labels=ignore)"
                )
            log.warning("%s: ignoring %d unknown labels: %s", mpath, sum(unknown.values()), listing)
        if unlabelled:
            log.info("%s: %d '%s' rows carry no label for heads %s", mpath, unlabelled, split, list(space.heads))
    return samples


def class_counts(samples: Sequence[Sample], head_index: int, num_classes: int) -> np.ndarray:
    """How many samples carry each class of one head (unlabelled samples not counted)."""
    labels = np.array([s.targets[head_index] for s in samples], dtype=np.int64)
    return np.bincount(labels[labels >= 0], minlength=num_classes)


def balanced_loss_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency class weights with mean 1 over the classes present (absent classes: 1)."""
    weights = np.ones(len(counts), dtype=np.float64)
    present = counts > 0
    if present.any():
        inv = 1.0 / counts[present]
        weights[present] = inv / inv.mean()
    return weights


def balanced_sample_weights(samples: Sequence[Sample], space: LabelSpace) -> np.ndarray:
    """Per-sample draw weights: the mean over labelled heads of 1 / (count of its class).

    Drawn with these weights, every class of a head appears about equally often.
    """
    counts = [class_counts(samples, i, len(space.classes[h])) for i, h in enumerate(space.heads)]
    weights = np.zeros(len(samples), dtype=np.float64)
    for k, sample in enumerate(samples):
        inv = [1.0 / counts[i][t] for i, t in enumerate(sample.targets) if t >= 0]
        weights[k] = float(np.mean(inv))
    return weights / weights.sum()


def dataset_hash(manifest_paths: Sequence[str | Path]) -> str:
    """SHA-1 over the manifest files' bytes (identifies the data a model was trained on)."""
    digest = hashlib.sha1()
    for path in manifest_paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


class ManifestDataset(Dataset):
    """Samples -> ``(image float32 (3,S,S), targets int64 (H,))`` through the shared preprocessing."""

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess_config: PreprocessConfig,
        augmentation: Augmentation | None = None,
        *,
        cache_images: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.preprocess_config = preprocess_config
        self.augmentation = augmentation
        self._cache: dict[int, np.ndarray] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.samples)

    def targets(self) -> torch.Tensor:
        """(N, heads) class indices of every sample, without loading an image."""
        return torch.tensor([s.targets for s in self.samples], dtype=torch.long)

    def cache_keys(self) -> list[str] | None:
        """One key per sample naming what its model input depends on (the file, as path, size and modification
        time, and the preprocessing), for :class:`sorting.training.feature_cache.FeatureStore`; None when the
        samples are augmented (random draws) or a file cannot be read."""
        if self.augmentation is not None:
            return None
        config = self.preprocess_config.to_json()
        keys = []
        for sample in self.samples:
            try:
                path = sample.path.resolve()  # one key per file, however a manifest's relative path reaches it
                stat = path.stat()
            except OSError:
                return None
            text = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{config}"
            keys.append(hashlib.sha1(text.encode()).hexdigest())
        return keys

    def reseed(self, seed: int) -> None:
        """Give this copy (e.g. in a DataLoader worker) its own augmentation random stream."""
        set_seed = getattr(self.augmentation, "set_random_seed", None)
        if set_seed is not None:
            set_seed(seed)

    def _rgb(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        rgb = cv2.cvtColor(load_image(self.samples[index].path), cv2.COLOR_BGR2RGB)
        if self._cache is not None:
            self._cache[index] = rgb
        return rgb

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._rgb(index)
        if self.augmentation is not None:
            image = self.augmentation(image=image)["image"]
        x = preprocess(image, self.preprocess_config, input_order="RGB")
        return torch.from_numpy(x), torch.tensor(self.samples[index].targets, dtype=torch.long)
