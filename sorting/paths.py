"""Where the project's data files (taxonomy, aliases, recipes, line configs) live.

The top-level ``datasets/``, ``training/``, ``serving/`` and ``models/`` folders are not
Python packages (see README). The library finds them next to the ``sorting`` package
(editable install, the supported set-up) or under ``$TEXTILE_SORTER_HOME``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sorting.errors import SortingError


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
