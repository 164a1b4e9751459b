"""Training data, loop pieces and the fit() job on tiny synthetic images (fibre-only + colour-only)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from sorting.cli import main
from sorting.datasets.manifest import ManifestRow, write_manifest
from sorting.datasets.preprocess import PreprocessConfig
from sorting.errors import ConfigError, DataError
from sorting.models.checkpoint import load_checkpoint
from sorting.models.multihead import IGNORE_INDEX, build_multihead
from sorting.taxonomy import load_taxonomy
from sorting.training.callbacks import CallbackList, EarlyStopping, build_callbacks
from sorting.training.config import EarlyStoppingConfig, TrainConfig, load_train_config
from sorting.training.data import (
    LabelSpace,
    ManifestDataset,
    balanced_loss_weights,
    balanced_sample_weights,
    collect_samples,
    load_head_aliases,
)
from sorting.training.engine import lr_factor
from sorting.training.loop import ValidationResult, multihead_loss
from sorting.training.state import EpochOutcome, TrainState
from sorting.training.trainer import fit

torch.set_num_threads(1)
COLOURS_BGR = {"red": (0, 0, 230), "blue": (230, 40, 0)}


def _image(fibre: str | None, colour: str | None, rng: np.random.Generator) -> np.ndarray:
    bgr = COLOURS_BGR.get(colour or "", (128, 128, 128))
    img = np.full((24, 24, 3), bgr, np.int32) + rng.integers(-15, 15, (24, 24, 3))
    if fibre == "polyester":
        img[::3] = 250  # stripes: the "texture" the fibre head must see
    return np.clip(img, 0, 255).astype(np.uint8)


def _manifest(folder: Path, pairs: list[tuple[str | None, str | None]], per_pair: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i, (fibre, colour) in enumerate(pairs * per_pair):
        cv2.imwrite(str(folder / "img" / f"{i}.png"), _image(fibre, colour, rng))
        rows.append(ManifestRow(f"img/{i}.png", fibre=fibre, colour=colour, split="val" if i % 4 == 0 else "train"))
    return write_manifest(rows, folder / "manifest.csv")


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> tuple[Path, Path]:
    """A fibre-only manifest (colour cells empty) and a colour-only one, 16 images each."""
    root = tmp_path_factory.mktemp("data")
    fibre = _manifest(root / "fibre", [("cotton", None), ("polyester", None)], 8, seed=0)
    colour = _manifest(root / "colour", [(None, "red"), (None, "blue")], 8, seed=1)
    return fibre, colour


def _config(manifests: tuple[Path, Path], tmp_path: Path, *extra: str) -> TrainConfig:
    return load_train_config(None, [
        f"data.train=[{manifests[0]}, {manifests[1]}]", f"output_dir={tmp_path / 'runs'}", "model.input_size=32",
        "batch_size=8", "num_workers=0", "progress=false", "threads=1", "optim.epochs=2", "optim.lr=0.01",
        "optim.warmup_epochs=0", "augment.preset=light", "tracking.enabled=false", *extra,
    ])


def _space() -> LabelSpace:
    return LabelSpace.from_taxonomy(load_taxonomy(), ["colour", "fibre"])


def test_samples_encode_missing_labels_as_ignore_index(manifests) -> None:
    space = _space()
    assert space.heads == ("fibre", "colour")
    samples = collect_samples(manifests, "train", space, load_head_aliases(space.heads))
    assert len(samples) == 24
    fibre_only = [s for s in samples if s.targets[1] == IGNORE_INDEX]
    colour_only = [s for s in samples if s.targets[0] == IGNORE_INDEX]
    assert len(fibre_only) == len(colour_only) == 12
    assert {space.classes["fibre"][s.targets[0]] for s in fibre_only} == {"cotton", "polyester"}


def test_unknown_labels_are_an_error_naming_them_or_ignored_on_request(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    path = write_manifest([ManifestRow("a.png", fibre="unobtainium", colour="red", split="train")], tmp_path / "m.csv")
    space = _space()
    with pytest.raises(DataError, match="unobtainium"):
        collect_samples([path], "train", space, load_head_aliases(space.heads))
    [sample] = collect_samples([path], "train", space, load_head_aliases(space.heads), unknown_labels="ignore")
    assert sample.targets[0] == IGNORE_INDEX and sample.targets[1] == space.classes["colour"].index("red")


def test_dataset_feeds_rgb_to_the_shared_preprocessing(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "red.png"), np.full((10, 10, 3), (0, 0, 255), np.uint8))  # BGR red on disk
    path = write_manifest([ManifestRow("red.png", colour="red", split="train")], tmp_path / "m.csv")
    space = _space()
    samples = collect_samples([path], "train", space, load_head_aliases(space.heads))
    pre = PreprocessConfig(input_size=16, resize="stretch", mean=(0, 0, 0), std=(255, 255, 255))
    x, y = ManifestDataset(samples, pre)[0]
    assert x.shape == (3, 16, 16) and x[0].mean() == pytest.approx(1.0) and x[2].mean() == pytest.approx(0.0)
    assert y.tolist() == [IGNORE_INDEX, space.classes["colour"].index("red")]


def test_masked_loss_ignores_unlabelled_heads_and_keeps_every_head_in_the_graph() -> None:
    model, _ = build_multihead("tiny", {"fibre": 2, "colour": 3})
    out = model(torch.randn(4, 3, 32, 32))
    targets = torch.tensor([[0, IGNORE_INDEX], [1, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX], [0, IGNORE_INDEX]])
    criteria = {h: torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX) for h in ("fibre", "colour")}
    loss, parts = multihead_loss(out, targets, ("fibre", "colour"), criteria)
    assert torch.isfinite(loss) and set(parts) == {"fibre"}
    loss.backward()
    assert model.classifiers["colour"][1].weight.grad is not None
    assert torch.count_nonzero(model.classifiers["colour"][1].weight.grad) == 0


def test_balancing_weights_favour_rare_classes(manifests) -> None:
    assert balanced_loss_weights(np.array([30, 10, 0])).tolist() == pytest.approx([0.5, 1.5, 1.0])
    space = _space()
    samples = collect_samples([manifests[0]], "train", space, load_head_aliases(space.heads))[:-4]  # drop 4 of one class
    w = balanced_sample_weights(samples, space)
    per_class = {t: w[[s.targets[0] == t for s in samples]].sum() for t in {s.targets[0] for s in samples}}
    assert list(per_class.values()) == pytest.approx([0.5, 0.5])


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    kw = {"total_steps": 100, "warmup_steps": 10, "schedule": "cosine", "min_ratio": 0.1}
    assert lr_factor(0, **kw) == pytest.approx(0.1) and lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(55, **kw) == pytest.approx(0.55) and lr_factor(100, **kw) == pytest.approx(0.1)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.run_id = "recorder-run"

    def on_train_start(self, config, run_dir):
        self.events.append(("start", run_dir))

    def on_epoch_end(self, epoch, metrics):
        self.events.append(("epoch", epoch, metrics))

    def on_artifact(self, path):
        self.events.append(("artifact", Path(path).name))

    def on_train_end(self, checkpoint_path, metrics):
        self.events.append(("end", Path(checkpoint_path).name))


@pytest.mark.slow
def test_fit_trains_fibre_only_and_colour_only_data_into_one_calibrated_checkpoint(manifests, tmp_path) -> None:
    recorder = Recorder()
    config = _config(manifests, tmp_path, "balance=sampler", "freeze_backbone_epochs=1")
    result = fit(config, callbacks=[recorder])
    run = result.run_dir
    assert run.parent == tmp_path / "runs" and run.name.startswith("train-")
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "best.pt", "last.pt", "metrics.json", "history.json"}
    assert yaml.safe_load((run / "config.yaml").read_text())["balance"] == "sampler"
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt.heads == ("fibre", "colour") and ckpt.preprocess.input_size == 32
    assert ckpt.run_id == "recorder-run" and ckpt.dataset_hash
    assert set(ckpt.temperature) == {"fibre", "colour"} and all(t > 0 for t in ckpt.temperature.values())
    assert ckpt.ood["method"] == "energy" and set(ckpt.ood["threshold"]) == {"fibre", "colour"}
    for head, table in ckpt.ood["by_quantile"].items():  # the thresholds a line may pick (ood_quantile)
        values = [table[k] for k in ("0.95", "0.98", "0.99", "0.995", "0.998", "0.999")]
        assert values == sorted(values) and table["0.99"] == pytest.approx(ckpt.ood["threshold"][head])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["fibre"]["n"] == 4 and metrics["val"]["colour"]["n"] == 4
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "start" and kinds.count("epoch") == 2 and kinds[-1] == "end"
    assert {"config.yaml", "best.pt", "metrics.json"} <= {e[1] for e in recorder.events if e[0] == "artifact"}
    assert "val/colour/macro_f1" in next(e for e in recorder.events if e[0] == "epoch")[2]

    resumed = fit(_config(manifests, tmp_path, "optim.epochs=3", f"resume={result.last_checkpoint}"))
    assert resumed.run_dir == run and resumed.epochs_run == 3
    assert len(json.loads((run / "history.json").read_text())) == 3


@pytest.mark.slow
def test_early_stopping_ends_a_run_that_stops_improving(manifests, tmp_path) -> None:
    config = _config(manifests, tmp_path, "optim.epochs=6", "optim.lr=1e-9", "early_stopping.patience=1",
                     "balance=loss_weights", "augment.preset=none", "model.heads=[colour]")
    result = fit(config)
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 0
    assert load_checkpoint(result.best_checkpoint).heads == ("colour",)


def test_select_last_keeps_the_final_epoch_even_when_validation_does_not_improve(manifests, tmp_path) -> None:
    config = _config(manifests, tmp_path, "optim.epochs=3", "optim.lr=1e-9", "early_stopping.patience=null",
                     "early_stopping.select=last", "augment.preset=none", "model.heads=[colour]")
    result = fit(config)
    assert result.best_epoch == 2 and result.epochs_run == 3
    assert load_checkpoint(result.best_checkpoint).epoch == 2
    with pytest.raises(ConfigError, match="patience to null"):
        _config(manifests, tmp_path, "early_stopping.select=last", "early_stopping.patience=3")


def test_cli_train_reports_the_run_and_bad_keys_in_one_line(manifests, tmp_path, capsys) -> None:
    assert main(["train", "data.trian=[x.csv]"]) == 2
    assert "did you mean 'data.train'" in capsys.readouterr().err
    assert main(["train", f"data.train=[{tmp_path / 'missing.csv'}]", "progress=false"]) == 1
    assert "missing.csv" in capsys.readouterr().err


def test_callbacks_only_on_the_main_process(manifests, tmp_path) -> None:
    config = _config(manifests, tmp_path, "tracking.enabled=true")
    assert build_callbacks(config, tmp_path, is_main_process=False) == []
    assert build_callbacks(_config(manifests, tmp_path), tmp_path, is_main_process=True) == []


@pytest.mark.parametrize("recipe", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "training").glob("*.yaml")))
def test_shipped_recipes_are_valid_configs(recipe: str, repo_root: Path) -> None:
    from sorting.training.belt_detector_config import load_belt_detector_config
    from sorting.training.spectral_config import load_spectral_config, recipe_task

    path = repo_root / "training" / recipe
    loaders = {"spectral": load_spectral_config, "belt_detector": load_belt_detector_config}
    config = loaders.get(recipe_task(path), load_train_config)(path)
    assert config.name == Path(recipe).stem


def _outcome(epoch: int, score: float) -> EpochOutcome:
    val = ValidationResult(0.0, {"colour": {"macro_f1": score, "accuracy": score}}, {}, {})
    return EpochOutcome(epoch, {"epoch": epoch, "val/score": score}, val)


def test_early_stopping_selects_the_best_epoch_and_stops_after_patience() -> None:
    state = TrainState()
    stopping = EarlyStopping(EarlyStoppingConfig(patience=2, min_delta=0.05), state, epochs=10)
    marks = []
    for epoch, score in enumerate([0.5, 0.7, 0.72, 0.6]):
        outcome = _outcome(epoch, score)
        stopping.on_epoch_scored(outcome)
        marks.append((outcome.improved, outcome.selected, state.stopped_early))
    # 0.72 is not 0.05 better than 0.7: no gain; the second epoch without gain stops the run
    assert marks == [(True, True, False), (True, True, False), (False, False, False), (False, False, True)]
    assert (state.best_epoch, state.best_score, state.bad_epochs) == (1, 0.7, 2)
    last = TrainState()
    keep_last = EarlyStopping(EarlyStoppingConfig(patience=None, select="last"), last, epochs=3)
    for epoch, score in enumerate([0.9, 0.1, 0.2]):
        keep_last.on_epoch_scored(_outcome(epoch, score))
    assert (last.best_epoch, last.best_score, last.stopped_early) == (2, 0.9, False)
    final = TrainState()
    on_last_epoch = EarlyStopping(EarlyStoppingConfig(patience=1), final, epochs=2)
    for epoch in range(2):
        on_last_epoch.on_epoch_scored(_outcome(epoch, 0.5))
    assert final.bad_epochs == 1 and not final.stopped_early  # the run used all its epochs: not stopped early


class _Broken:
    steers = False

    def on_epoch_end(self, epoch, metrics):
        raise RuntimeError("tracking server down")


class _BrokenSteering(_Broken):
    steers = True


def test_a_failing_observer_is_logged_but_a_failing_steering_callback_stops_the_run(caplog) -> None:
    CallbackList([_Broken(), Recorder()]).on_epoch_end(0, {})  # the recorder still hears of the epoch
    assert "tracking server down" in caplog.text
    with pytest.raises(RuntimeError, match="tracking server down"):
        CallbackList([_BrokenSteering()]).on_epoch_end(0, {})
    assert TrainState.from_checkpoint(TrainState(epoch=3, history=[{"epoch": 3}]).to_checkpoint()).epochs_run == 4
