"""Spectral checkpoints: the module's arch + state_dict + the metadata the ONNX model will carry.

Plain values and tensors only (``torch.load(weights_only=True)``). Layout (``format`` =
``textile-sorter-spectral-checkpoint``): ``schema``, ``arch`` (:meth:`SpectralModel.arch`), ``state_dict``,
``metadata`` (:meth:`SpectralMetadata.to_props`, strings), ``config`` (the recipe that ran).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sorting.errors import ModelFileError
from sorting.models.spectral_net import SpectralModel
from sorting.models.spectral_onnx import SpectralMetadata

FORMAT = "textile-sorter-spectral-checkpoint"
SCHEMA = 1


@dataclass
class LoadedSpectral:
    model: SpectralModel
    metadata: SpectralMetadata
    config: dict[str, Any]


def save_spectral_checkpoint(path: str | Path, model: SpectralModel, metadata: SpectralMetadata,
                             config: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "schema": SCHEMA, "arch": model.arch(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "metadata": metadata.to_props(), "config": config}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def is_spectral_checkpoint(path: str | Path) -> bool:
    """True for a readable spectral checkpoint (False for image checkpoints and other files)."""
    try:
        raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for foreign files; those are simply not ours
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def load_spectral_checkpoint(path: str | Path) -> LoadedSpectral:
    """Rebuild the module in eval mode; ModelFileError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # foreign or corrupt file
        raise ModelFileError(f"{path} is not a readable checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a textile-sorter spectral checkpoint")
    if raw.get("schema") != SCHEMA:
        raise ModelFileError(f"{path} has spectral checkpoint schema {raw.get('schema')}, this version reads {SCHEMA}")
    try:
        model = SpectralModel(raw["arch"])
        model.load_state_dict(raw["state_dict"], strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(f"checkpoint {path} cannot be rebuilt: {str(exc).splitlines()[0]}") from None
    return LoadedSpectral(model.eval(), SpectralMetadata.from_props(raw["metadata"], str(path)), raw.get("config", {}))
