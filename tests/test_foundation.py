"""Repository layout, configuration, taxonomy and preprocessing basics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field

from sorting.config import StrictModel, load_config, parse_overrides
from sorting.datasets.preprocess import PreprocessConfig, garment_crop, preprocess, preprocess_batch
from sorting.datasets.synth.crops import crop_box
from sorting.errors import ConfigError
from sorting.taxonomy import load_aliases, load_taxonomy


def test_imports_from_repo_root_do_not_shadow_third_party(repo_root: Path) -> None:
    code = "import sorting, mlflow, mlflow.data; import importlib.util as u; print(u.find_spec('datasets'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    spec_line = out.stdout.strip().splitlines()[-1]
    # Either HuggingFace datasets is installed (then it must win) or nothing is found; never our folder as a package.
    assert str(repo_root / "datasets" / "__init__.py") not in spec_line


@pytest.mark.parametrize("folder", ["datasets", "models", "training", "serving"])
def test_artifact_folders_are_not_packages(repo_root: Path, folder: str) -> None:
    assert (repo_root / folder).is_dir()
    assert not (repo_root / folder / "__init__.py").exists()
    assert (repo_root / folder / "README.md").is_file()


class _Inner(StrictModel):
    lr: float = 0.1
    epochs: int = 3


class _Job(StrictModel):
    name: str = "x"
    train: _Inner = Field(default_factory=_Inner)


def test_config_yaml_plus_overrides(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: recipe\ntrain:\n  lr: 0.01\n")
    cfg = load_config(_Job, path, ["train.epochs=7"])
    assert (cfg.name, cfg.train.lr, cfg.train.epochs) == ("recipe", 0.01, 7)


def test_config_unknown_key_names_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'.*did you mean 'train.epochs'"):
        load_config(_Job, None, ["train.epoch=2"])


def test_config_wrong_type_names_key() -> None:
    with pytest.raises(ConfigError, match=r"'train.lr'"):
        load_config(_Job, None, ["train.lr=fast"])


def test_config_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(_Job, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_Job, bad)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_default_taxonomy_and_catalogue_aliases() -> None:
    tax = load_taxonomy()
    assert len(tax.colour) == 12 and "multicolour" in tax.colour
    assert len(tax.fibre) == 10 and "polycotton" in tax.fibre
    colour = load_aliases("colour")
    assert colour.resolve("Navy Blue", tax.colour) == "navy"
    assert colour.resolve("Grey Melange", tax.colour) == "grey"
    assert colour.resolve("Coffee Brown", tax.colour) == "brown_beige"
    assert colour.resolve("NA", tax.colour) is None
    assert colour.resolve("Fluorescent Green", tax.colour) is None
    fibre = load_aliases("fibre")
    assert fibre.resolve("PET", tax.fibre) == "polyester"
    assert fibre.resolve("Nylon", tax.fibre) == "polyamide"
    assert fibre.resolve("Denim", tax.fibre) == "cotton"


def test_taxonomy_override_file(tmp_path: Path) -> None:
    path = tmp_path / "tax.yaml"
    path.write_text("version: t1\nfibre: [a, b]\ncolour: [c]\n")
    assert load_taxonomy(path).fibre == ("a", "b")
    path.write_text("version: t1\nfibre: [a, a]\ncolour: [c]\n")
    with pytest.raises(ConfigError, match="duplicate"):
        load_taxonomy(path)


@pytest.mark.parametrize("mode", ["letterbox", "stretch", "center_crop"])
def test_preprocess_shape_and_colour_order(mode: str) -> None:
    cfg = PreprocessConfig(input_size=32, resize=mode, mean=(0, 0, 0), std=(1, 1, 1))
    bgr = np.zeros((40, 80, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV's BGR order
    out = preprocess(bgr, cfg)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert out[2, 16, 16] == 255 and out[0, 16, 16] == 0  # channel 2 of RGB is blue
    same = preprocess(bgr[..., ::-1].copy(), cfg, input_order="RGB")
    np.testing.assert_array_equal(out, same)
    assert preprocess_batch([bgr, bgr], cfg).shape == (2, 3, 32, 32)


def test_sorter_cuts_garments_like_the_training_crops() -> None:
    """Train/serve skew check: the crop dataset and the sorter grow a garment's box the same way."""
    mask = np.zeros((100, 200), bool)
    mask[30:70, 50:150] = True  # tight box x=50 y=30 w=100 h=40
    assert crop_box(mask) == (40, 26, 120, 48)
    image = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3)
    crop = garment_crop(image, (50, 30, 100, 40))
    np.testing.assert_array_equal(crop, image[26:74, 40:160])
    assert garment_crop(image, (0, 0, 100, 40)).shape[:2] == (44, 110)  # clipped at the frame edge


def test_preprocess_config_round_trips_json() -> None:
    cfg = PreprocessConfig(input_size=96, resize="stretch")
    assert PreprocessConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError):
        PreprocessConfig.from_json('{"input_size": 96, "bogus": 1}')
