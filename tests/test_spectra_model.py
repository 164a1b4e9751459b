"""Spectral preprocessing vs scipy, the torch module, ONNX export, the serving classifier, training, CV and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import savgol_filter

from sorting.cli import main
from sorting.datasets.split import assign_folds
from sorting.datasets.spectra_import import SpectraImport, import_spectra
from sorting.datasets.spectra_store import line_holdout, load_spectral_set
from sorting.datasets.spectral_preprocess import SpectralPreprocessConfig, SpectralPreprocessor, savgol_matrix
from sorting.errors import ConfigError, ModelFileError
from sorting.models.spectral_export import export_spectral_checkpoint
from sorting.models.spectral_net import FEATURES, SpectralPreprocessModule
from sorting.models.spectral_onnx import GridMismatchError, SpectralClassifier
from sorting.training.spectral_config import load_spectral_config, recipe_task
from tests._spectra_fixtures import NANO_WL, make_swatch_folder, synthetic_spectrum

CONFIGS = [
    SpectralPreprocessConfig(snv=True, savgol_window=11, savgol_polyorder=2, derivative=1),
    SpectralPreprocessConfig(snv=True, savgol_window=15, savgol_polyorder=3, derivative=2, mean_centre=True),
    SpectralPreprocessConfig(snv=False, savgol_window=9, savgol_polyorder=2, derivative=0),
    SpectralPreprocessConfig(snv=True, savgol_window=0, derivative=0),
]


def _spectra(n: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([synthetic_spectrum(c, rng)[:196] for c in ["cotton", "polyester", "polyamide"] * (n // 3)])


def _scipy_reference(x: np.ndarray, cfg: SpectralPreprocessConfig, centre: np.ndarray | None = None) -> np.ndarray:
    """The textbook pipeline written independently: SNV (numpy, ddof 1), then scipy's savgol_filter."""
    if cfg.snv:
        x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, ddof=1, keepdims=True)
    if cfg.uses_savgol:
        x = savgol_filter(x, cfg.savgol_window, cfg.savgol_polyorder, deriv=cfg.derivative, mode="interp", axis=1)
    return x - (centre if centre is not None else 0.0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe())
def test_preprocessing_matches_scipy_and_the_torch_module(cfg: SpectralPreprocessConfig) -> None:
    x = _spectra()
    pre = SpectralPreprocessor(cfg, x.shape[1]).fit(x)
    centre = _scipy_reference(x, cfg).mean(axis=0) if cfg.mean_centre else None
    np.testing.assert_allclose(pre.transform(x), _scipy_reference(x, cfg, centre), rtol=1e-7, atol=1e-8)  # SNV's eps
    raw = cfg.model_copy(update={"snv": False, "mean_centre": False})
    np.testing.assert_allclose(x @ savgol_matrix(x.shape[1], cfg), _scipy_reference(x, raw), atol=1e-9)  # the graph's matrix
    module = SpectralPreprocessModule.from_preprocessor(pre)
    with torch.no_grad():
        got = module(torch.as_tensor(x, dtype=torch.float32)).numpy()
    scale = np.abs(pre.transform(x)).max()
    assert np.max(np.abs(got - pre.transform(x))) / scale < 1e-5


def test_bad_preprocessing_settings_are_config_errors() -> None:
    with pytest.raises(ValueError, match="odd"):
        SpectralPreprocessConfig(savgol_window=10)
    with pytest.raises(ValueError, match="polyorder"):
        SpectralPreprocessConfig(savgol_window=11, savgol_polyorder=1, derivative=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spectra")
    make_swatch_folder(root / "scans", swatches=4, scans=4, seed=1)
    report = import_spectra([root / "scans"], root / "nir.csv", SpectraImport(progress=False))
    return report.manifest_path


def _recipe(tmp: Path, manifest: Path, family: str = "linear", extra: str = "") -> Path:
    path = tmp / f"nir-{family}.yaml"
    path.write_text(f"""task: spectral
name: test-{family}
output_dir: {tmp / 'train'}
progress: false
data: {{train: [{manifest}]}}
preprocess: {{snv: true, savgol_window: 11, savgol_polyorder: 2, derivative: 1}}
model: {{family: {family}, cnn: {{epochs: 8, channels: [4, 8]}}}}
calibration: {{folds: 2}}
tracking: {{enabled: false}}
{extra}""")
    return path


def test_train_export_load_end_to_end(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(tmp_path, dataset)
    assert recipe_task(recipe) == "spectral"
    assert main(["train", "--config", str(recipe)]) == 0
    ckpt = next((tmp_path / "train").glob("*/best.pt"))
    onnx_path = tmp_path / "nir.onnx"
    assert main(["export", str(ckpt), "-o", str(onnx_path), "--check-manifest", str(dataset), "--no-track"]) == 0
    assert "preprocessing vs scipy" in capsys.readouterr().out
    clf = SpectralClassifier.load(onnx_path)
    data = load_spectral_set(dataset)
    pred = clf.predict(data.absorbance)
    assert np.mean(np.array(pred.top1()) == np.array(data.labels())) > 0.9  # the training spectra themselves
    assert np.allclose(pred.probs.sum(axis=1), 1) and clf.metadata.grid == data.grid
    assert set(clf.metadata.ood["by_quantile"]) >= {"0.99", "0.995"} and clf.metadata.temperature > 0
    # the graph's own preprocessing equals scipy's, run independently here
    feats = clf.session.run([FEATURES], {"absorbance": data.absorbance.astype(np.float32)})[0]
    ref = _scipy_reference(data.absorbance.astype(np.float64), SpectralPreprocessConfig(savgol_window=11, derivative=1))
    assert np.max(np.abs(feats - ref)) / np.abs(ref).max() < 1e-5
    assert main(["evaluate", str(onnx_path), str(dataset), "--no-track", "-o", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == len(data) and metrics["background_called_fibre"] == 0


@pytest.mark.slow
def test_cnn_family_trains_and_exports(dataset: Path, tmp_path: Path) -> None:
    assert main(["train", "--config", str(_recipe(tmp_path, dataset, "cnn"))]) == 0
    ckpt = next((tmp_path / "train").glob("*/best.pt"))
    path, check, meta = export_spectral_checkpoint(ckpt, tmp_path / "cnn.onnx")
    assert check.passed and meta.model_name == "spectral-cnn"


def test_grid_mismatch_and_foreign_models(dataset: Path, tmp_path: Path) -> None:
    assert main(["train", "--config", str(_recipe(tmp_path, dataset))]) == 0
    path, _, _ = export_spectral_checkpoint(next((tmp_path / "train").glob("*/best.pt")), tmp_path / "m.onnx")
    clf = SpectralClassifier.load(path)
    with pytest.raises(GridMismatchError, match="196"):
        clf.predict(np.zeros((2, 228)))
    with pytest.raises(GridMismatchError, match="covers 1000.0-1700.0 nm"):
        clf.check_grid(np.linspace(1000, 1700, 300))  # a sensor starting at 1000 nm
    with pytest.raises(GridMismatchError, match="fewer"):
        clf.check_grid(np.linspace(900, 1700, 120))  # coarser than the model's grid
    data = load_spectral_set(dataset)
    on_sensor = clf.predict_on(NANO_WL, np.stack([synthetic_spectrum("polyester", np.random.default_rng(5))]))
    assert on_sensor.top1() == ["polyester"]
    other = tmp_path / "other.csv"
    make_swatch_folder(tmp_path / "o", swatches=1, scans=2)
    assert main(["data", "import-spectra", str(tmp_path / "o"), "--grid", "950:1650:5", "-o", str(other)]) == 0
    assert main(["evaluate", str(path), str(other), "--no-track", "-o", str(tmp_path / "e")]) == 1  # one-line error
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        SpectralClassifier.load(tmp_path / "junk.onnx")
    assert len(data) > 0


def test_cross_validation_folds_never_split_a_swatch(dataset: Path, tmp_path: Path) -> None:
    data = load_spectral_set(dataset)
    folds = assign_folds(data.rows, 3, seed=0, group_by="garment")
    fold_of_swatch: dict[str, set[int]] = {}
    for row, fold in zip(data.rows, folds):
        fold_of_swatch.setdefault(row.garment, set()).add(fold)
    assert all(len(f) == 1 for f in fold_of_swatch.values()) and len(set(folds)) == 3
    out = tmp_path / "cv"
    assert main(["cross-validate", "-m", str(dataset), "-c", str(_recipe(tmp_path, dataset)), "--folds", "3",
                 "--group-by", "garment", "-o", str(out)]) == 0
    result = json.loads((out / "cv.json").read_text())
    assert result["pooled"]["n"] == len(data) and len(result["fold_accuracy"]) == 3
    assert (out / "confusion_fibre.png").is_file()


def test_line_holdout_keeps_swatches_whole(dataset: Path) -> None:
    data = load_spectral_set(dataset)
    cut = line_holdout(data, fraction=0.3, seed=0)
    assert len(cut.train) + len(cut.line) == len(data)
    assert not set(cut.train.groups()) & set(cut.line.groups())
    assert {r.fibre for r in cut.line.rows} >= {"cotton", "polyester", "polyamide"}


def test_composition_head_recovers_a_blend_share(tmp_path: Path) -> None:
    from sorting.training.composition import composition_cv
    from sorting.training.spectral_config import CompositionConfig

    rng = np.random.default_rng(0)
    root = tmp_path / "blends"
    root.mkdir()
    for specimen, cotton in enumerate([20, 30, 40, 50, 60, 70, 80] * 2):
        for spot in range(3):
            y = (cotton * synthetic_spectrum("cotton", rng, noise=0.0005) + (100 - cotton)
                 * synthetic_spectrum("polyester", rng, noise=0.0005)) / 100
            (root / f"s_{100 - cotton}_{cotton}_specimen{specimen}_area0_spot{spot}.txt").write_text(
                "".join(f"{1e7 / w:.4f},{a:.6f}\n" for w, a in zip(NANO_WL[::-1], y[::-1])))
    report = import_spectra([root], tmp_path / "blends.csv", SpectraImport(progress=False))
    assert report.kept == 42
    scores, pred, truth = composition_cv(load_spectral_set(report.manifest_path), CompositionConfig(train=["x"]),
                                         folds=4, seed=0)
    assert scores.n == 42 and scores.mae < 10 and pred.shape == truth.shape


def test_shipped_recipes_load_and_unknown_keys_fail(repo_root: Path) -> None:
    recipes = sorted((repo_root / "training").glob("nir-*.yaml"))
    assert recipes
    for recipe in recipes:
        assert load_spectral_config(recipe).task == "spectral"
    assert recipe_task(repo_root / "training" / "synthetic-quick.yaml") == "image"
    with pytest.raises(ConfigError, match="unknown key"):
        load_spectral_config(recipes[0], ["model.depth=3"])


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_swatches_model_reads_another_session(shared_data: Path, tmp_path: Path) -> None:
    nir = shared_data / "nir-spectra"
    swatches = import_spectra([nir / "nirscan-nano-swatches"], tmp_path / "sw.csv", SpectraImport(progress=False))
    pet = sorted((nir / "nirscan-single-samples" / "polyester").glob("*.csv"))[:100]
    single = import_spectra(pet, tmp_path / "pet.csv", SpectraImport(progress=False))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: spectral\noutput_dir: {tmp_path}\nprogress: false\ndata: {{train: [{swatches.manifest_path}]}}\n"
                      "preprocess: {snv: true, savgol_window: 15, savgol_polyorder: 3, derivative: 2}\n"
                      "composition: null\ncalibration: {folds: 2}\ntracking: {enabled: false}\n")
    assert main(["train", "--config", str(recipe)]) == 0
    path, _, _ = export_spectral_checkpoint(next(tmp_path.glob("nir-*/best.pt")), tmp_path / "m.onnx")
    pred = SpectralClassifier.load(path).predict(load_spectral_set(single.manifest_path).absorbance)
    assert np.mean(np.array(pred.top1()) == "polyester") > 0.9  # another instrument, another polyester sample
