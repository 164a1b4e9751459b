"""Shared fixtures: the optional real data folder and a headless matplotlib backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TEXTILE_SORTER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built-in models exported on first use (the textile check) go to a folder of this session, not the home."""
    folder = tmp_path_factory.mktemp("model-cache")
    old = os.environ.get("TEXTILE_SORTER_CACHE")
    os.environ["TEXTILE_SORTER_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("TEXTILE_SORTER_CACHE", None)
    else:
        os.environ["TEXTILE_SORTER_CACHE"] = old


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real reference data folder (../shared/data); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not present at {SHARED_DATA} (only in the project's CI/dev machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_nir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small spectral model trained on synthetic swatches (cotton, polyester, polyamide, background) and its
    manifest split by swatch (``test``: spectra it never saw). ``(model.onnx, manifest)``."""
    from tests._spectra_fixtures import tiny_spectral_model

    return tiny_spectral_model(tmp_path_factory.mktemp("tiny-nir"))
