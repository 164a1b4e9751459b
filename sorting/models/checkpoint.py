"""Checkpoint files: state_dict + everything needed to rebuild, serve and resume the model.

Only plain Python values and tensors are stored so :func:`torch.load` runs with
``weights_only=True`` (no pickled code). Layout (``format`` = ``textile-sorter-checkpoint``)::

    schema, model_name, heads, labels {head: [names]}, head_sizes, dropout, head_hidden {head: units}, state_dict,
    preprocess (PreprocessConfig as dict), taxonomy_version, config (the full training config),
    metrics, temperature {head: T}, ood {"method": "energy", "threshold": {head: t}} | None,
    run_id, dataset_hash, epoch, and for resuming: optimizer, scheduler, scaler, trainer_state.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sorting.datasets.preprocess import PreprocessConfig
from sorting.errors import ConfigError, ModelFileError
from sorting.models.multihead import MultiHeadClassifier, build_multihead

log = logging.getLogger(__name__)

FORMAT = "textile-sorter-checkpoint"
SCHEMA = 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP / DataParallel / torch.compile wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths to plain JSON-like Python values."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back: the rebuilt model in eval mode plus its metadata."""

    model: MultiHeadClassifier
    model_name: str
    labels: dict[str, list[str]]
    preprocess: PreprocessConfig
    taxonomy_version: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    temperature: dict[str, float]
    ood: dict[str, Any] | None
    run_id: str | None
    dataset_hash: str | None
    epoch: int
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def heads(self) -> tuple[str, ...]:
        return self.model.heads


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    labels: dict[str, list[str]],
    preprocess: PreprocessConfig,
    taxonomy_version: str,
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    temperature: dict[str, float] | None = None,
    ood: dict[str, Any] | None = None,
    run_id: str | None = None,
    dataset_hash: str | None = None,
    epoch: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    scheduler_state: dict[str, Any] | None = None,
    scaler_state: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename) and return its path."""
    net = unwrap_model(model)
    if not isinstance(net, MultiHeadClassifier):
        raise TypeError(f"expected a MultiHeadClassifier, got {type(net).__name__}")
    if set(labels) != set(net.heads):
        raise ValueError(f"labels cover heads {sorted(labels)} but the model has {list(net.heads)}")
    for head, size in net.head_sizes.items():
        if len(labels[head]) != size:
            raise ValueError(f"head '{head}' has {size} outputs but {len(labels[head])} label names")
    dropout = next(m.p for m in net.classifiers[net.heads[0]] if isinstance(m, nn.Dropout))
    payload = {
        "format": FORMAT,
        "schema": SCHEMA,
        "model_name": model_name,
        "heads": list(net.heads),
        "labels": {h: list(labels[h]) for h in net.heads},
        "head_sizes": net.head_sizes,
        "dropout": float(dropout),
        "head_hidden": net.head_hidden,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "preprocess": preprocess.model_dump(mode="json"),
        "taxonomy_version": str(taxonomy_version),
        "config": _plain(config),
        "metrics": _plain(metrics or {}),
        "temperature": {h: float(t) for h, t in (temperature or {}).items()},
        "ood": _plain(ood),
        "run_id": run_id,
        "dataset_hash": dataset_hash,
        "epoch": int(epoch),
        "optimizer": optimizer_state,
        "scheduler": _plain(scheduler_state) if scheduler_state is not None else None,
        "scaler": scaler_state,
        "trainer_state": _plain(trainer_state) if trainer_state is not None else None,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    log.debug("saved checkpoint %s (epoch %d)", path, epoch)
    return path


def read_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (validated format), loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise ModelFileError(f"{path} is not a readable checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a textile-sorter checkpoint")
    if raw.get("schema") != SCHEMA:
        raise ModelFileError(f"{path} has checkpoint schema {raw.get('schema')}, this version reads {SCHEMA}")
    return raw


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model from a checkpoint (no pretrained download; weights come from the file)."""
    raw = read_checkpoint_dict(path)
    try:
        model, _ = build_multihead(raw["model_name"], dict(raw["head_sizes"]), pretrained=False, dropout=raw["dropout"],
                                   hidden=dict(raw.get("head_hidden") or {}))
        model.load_state_dict(raw["state_dict"], strict=True)
        preprocess = PreprocessConfig.model_validate(raw["preprocess"])
    except (KeyError, RuntimeError, ConfigError, ValueError) as exc:
        raise ModelFileError(f"checkpoint {path} cannot be rebuilt: {str(exc).splitlines()[0]}") from None
    model.eval()
    return LoadedCheckpoint(
        model=model,
        model_name=raw["model_name"],
        labels={h: list(v) for h, v in raw["labels"].items()},
        preprocess=preprocess,
        taxonomy_version=raw["taxonomy_version"],
        config=raw["config"],
        metrics=raw["metrics"],
        temperature=dict(raw["temperature"]),
        ood=raw["ood"],
        run_id=raw["run_id"],
        dataset_hash=raw["dataset_hash"],
        epoch=raw["epoch"],
        raw=raw,
    )
