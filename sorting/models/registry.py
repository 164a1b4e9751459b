"""Registry of backbones by name (timm-style ``create_backbone(name, ...)``).

A backbone is a feature extractor: ``module(x)`` maps a (N, 3, S, S) batch to (N, feature_dim)
pooled features. Builders are keyword-only functions registered with :func:`register_backbone`;
registering a name twice is an error so two modules cannot silently shadow each other.
The built-in builders live in :mod:`sorting.models.backbones` and are imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import nn

from sorting.datasets.preprocess import PreprocessConfig
from sorting.errors import ConfigError

BUILTIN_MODULE = "sorting.models.backbones"


@dataclass
class Backbone:
    """A feature extractor plus the preprocessing its (pretrained) weights expect."""

    module: nn.Module
    feature_dim: int
    preprocess: PreprocessConfig


class BackboneBuilder(Protocol):
    def __call__(self, *, pretrained: bool = False, weights_path: Path | None = None) -> Backbone: ...


class BackboneRegistry:
    """Name -> builder table. One process-wide instance, :data:`REGISTRY`, holds the built-ins."""

    def __init__(self) -> None:
        self._builders: dict[str, BackboneBuilder] = {}

    def register(self, name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
        def decorator(builder: BackboneBuilder) -> BackboneBuilder:
            if name in self._builders:
                raise ValueError(f"backbone '{name}' is already registered")
            self._builders[name] = builder
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> BackboneBuilder:
        if name not in self._builders:
            raise ConfigError(f"unknown backbone '{name}' (available: {', '.join(self.names())})")
        return self._builders[name]


REGISTRY = BackboneRegistry()


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering a keyword-only backbone builder under ``name`` (duplicates raise)."""
    return REGISTRY.register(name)


def _load_builtins() -> None:
    importlib.import_module(BUILTIN_MODULE)  # registers on first import only


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    _load_builtins()
    return REGISTRY.names()


def create_backbone(name: str, *, pretrained: bool = False, weights_path: str | Path | None = None) -> Backbone:
    """Build backbone ``name``; ``pretrained`` loads ImageNet weights from local files only (never downloads)."""
    _load_builtins()
    builder = REGISTRY.get(name)
    return builder(pretrained=pretrained, weights_path=Path(weights_path) if weights_path else None)
