"""Where the project's data files (taxonomy, aliases, recipes, line configs) live.

The top-level ``datasets/``, ``training/``, ``serving/`` and ``models/`` folders are not
Python packages (see README). The library finds them next to the ``sorting`` package
(editable install, the supported set-up) or under ``$TEXTILE_SORTER_HOME``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sorting.errors import ConfigError, SortingError


def project_root() -> Path:
    """Return the repository root holding ``datasets/``, ``training/`` and ``serving/``."""
    env = os.environ.get("TEXTILE_SORTER_HOME")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent)
    for root in candidates:
        if (root / "datasets" / "taxonomy.yaml").is_file():
            return root
    raise SortingError(
        "cannot find the project's data files (datasets/taxonomy.yaml); install with "
        "`pip install -e .` from the repository or set TEXTILE_SORTER_HOME to the repository root"
    )


def runs_dir() -> Path:
    """Default folder for run outputs (``$TEXTILE_SORTER_RUNS`` or ``./runs``)."""
    return Path(os.environ.get("TEXTILE_SORTER_RUNS", "runs"))


def check_output_path(path: str | Path, what: str, *, folder: bool = False) -> Path:
    """Refuse, before any work starts, an output that cannot be written; ``what`` names the option or key.

    A file path must not be a folder (a folder path not a file), and no part of the way to it may be a
    file. Missing folders are fine: every writer creates them.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    ancestor = next((p for p in path.parents if p.exists()), Path(path.anchor or "."))
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise ConfigError(f"{what} {path}: no permission to write in {ancestor}")
    return path
