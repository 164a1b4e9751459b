"""Class lists per head (fibre, colour) and label aliases.

The classes and aliases are data files under ``datasets/`` (``taxonomy.yaml`` and
``aliases/*.yaml``), not code, so a hub can add its own fractions without a release.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from sorting.config import read_yaml
from sorting.errors import ConfigError
from sorting.paths import project_root

log = logging.getLogger(__name__)

HEADS: tuple[str, ...] = ("fibre", "colour")  # the tasks labelled in manifests and taxonomies
# An optional extra head a model may carry: does the crop show one garment or several (touching)?
# Its labels are fixed, not a taxonomy; it is trained on synthetic conveyor crops (sorting.training.layout).
LAYOUT_HEAD = "layout"
SINGLE_LABEL, SEVERAL_LABEL = "single", "several"
LAYOUT_LABELS: tuple[str, ...] = (SINGLE_LABEL, SEVERAL_LABEL)
# a line's layout crop list (CSV): crop path relative to the file, and its layout label
LAYOUT_CROP_COLUMNS: tuple[str, ...] = ("path", "layout")
MODEL_HEADS: tuple[str, ...] = (*HEADS, LAYOUT_HEAD)  # every head a model (checkpoint, ONNX) may have


def normalise_label(label: str) -> str:
    """Canonical form used for alias matching: lower-case, no spaces, '-' or '_'."""
    return re.sub(r"[\s_\-]+", "", str(label).strip().lower())


@dataclass(frozen=True)
class Taxonomy:
    """Ordered class names per head plus a version string stored with every model."""

    version: str
    fibre: tuple[str, ...]
    colour: tuple[str, ...]

    def classes(self, head: str) -> tuple[str, ...]:
        if head not in HEADS:
            raise ConfigError(f"unknown head '{head}' (expected one of {', '.join(HEADS)})")
        return getattr(self, head)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy YAML (default: ``datasets/taxonomy.yaml``)."""
    path = Path(path) if path else project_root() / "datasets" / "taxonomy.yaml"
    data = read_yaml(path)
    unknown = set(data) - {"version", "fibre", "colour", "blends"}  # blends: read by sorting.datasets.spectra_labels
    if unknown:
        raise ConfigError(f"taxonomy {path}: unknown key(s) {sorted(unknown)}")
    heads = {}
    for head in HEADS:
        names = data.get(head)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"taxonomy {path}: '{head}' must be a non-empty list of names")
        if len(set(names)) != len(names):
            raise ConfigError(f"taxonomy {path}: '{head}' has duplicate class names")
        heads[head] = tuple(names)
    return Taxonomy(version=str(data.get("version", "unversioned")), **heads)


@dataclass(frozen=True)
class AliasMap:
    """Maps free-text source labels (``Navy Blue``, ``PET``) to class names of one head."""

    head: str
    table: dict[str, str] = field(default_factory=dict)

    def resolve(self, label: str | None, classes: tuple[str, ...]) -> str | None:
        """Return the class for ``label`` or None when it is empty or unknown.

        A label equal to a class name (after normalisation) always resolves to it.
        """
        if label is None:
            return None
        key = normalise_label(label)
        if key in ("", "na", "nan", "none", "null"):
            return None
        direct = {normalise_label(c): c for c in classes}
        if key in direct:
            return direct[key]
        target = self.table.get(key)
        return target if target in classes else None


def load_aliases(head: str, path: str | Path | None = None) -> AliasMap:
    """Load ``datasets/aliases/<head>.yaml`` (class -> list of source names)."""
    path = Path(path) if path else project_root() / "datasets" / "aliases" / f"{head}.yaml"
    data = read_yaml(path)
    table: dict[str, str] = {}
    for target, names in data.items():
        if not isinstance(names, list):
            raise ConfigError(f"alias file {path}: '{target}' must map to a list of names")
        for name in names:
            key = normalise_label(name)
            if key in table and table[key] != target:
                raise ConfigError(f"alias file {path}: '{name}' maps to both {table[key]} and {target}")
            table[key] = str(target)
    log.debug("loaded %d %s aliases from %s", len(table), head, path)
    return AliasMap(head=head, table=table)
