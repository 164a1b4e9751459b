"""The layout head: synthetic single/touching crops, the folded logistic regression, and the head's
path through checkpoint, ONNX export and the sorter's classifier."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sorting.datasets.preprocess import preprocess_batch
from sorting.datasets.synth.layout import SEVERAL, SINGLE, render_layout_samples
from sorting.errors import ConfigError, DataError
from sorting.models.checkpoint import load_checkpoint, save_checkpoint
from sorting.models.export import export_checkpoint
from sorting.models.onnx_model import OnnxClassifier
from sorting.taxonomy import LAYOUT_HEAD, LAYOUT_LABELS
from sorting.training.config import LayoutConfig
from sorting.training.layout import fit_layout_head, fit_logistic, held_out_mask, load_layout_crops
from tests._onnx_fixtures import LABELS, make_model


@pytest.fixture(scope="module")
def samples():
    return render_layout_samples(worlds=2, items_per_world=40, seed=3, workers=1, progress=False)


def test_layout_samples_hold_singles_and_touching_pairs(samples) -> None:
    labels = [s.label for s in samples]
    assert labels.count(SINGLE) > 10 and labels.count(SEVERAL) > 3
    assert {s.world for s in samples} == {3001, 3002}
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and min(s.image.shape[:2]) >= 16
        assert ("+" in s.description) == (s.label == SEVERAL)
    pairs = [s.image.shape[0] * s.image.shape[1] for s in samples if s.label == SEVERAL]
    singles = [s.image.shape[0] * s.image.shape[1] for s in samples if s.label == SINGLE]
    assert np.median(pairs) > np.median(singles)  # a pair's box spans two garments


def test_layout_samples_are_reproducible(samples) -> None:
    again = render_layout_samples(worlds=2, items_per_world=40, seed=3, workers=1, progress=False)
    assert [s.description for s in again] == [s.description for s in samples]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again, samples))


def test_layout_set_needs_enough_worlds() -> None:
    with pytest.raises(ConfigError, match="worlds"):
        render_layout_samples(worlds=1)


def test_fit_logistic_folds_the_standardisation_into_the_head() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (400, 5)) * np.array([1, 50, 0.01, 3, 1]) + np.array([0, 500, -2, 0, 7])
    y = (x[:, 1] - 500 + 40 * x[:, 0] > 0).astype(np.int64)  # separable on two very differently scaled columns
    linear = fit_logistic(torch.tensor(x, dtype=torch.float32), torch.tensor(y), l2=1e-3)
    with torch.no_grad():
        pred = linear(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    assert (pred == y).mean() > 0.97


def test_layout_head_travels_through_checkpoint_and_onnx(samples, tmp_path) -> None:
    model, preprocess = make_model(hidden={"fibre": 16})  # an MLP fibre head next to the linear layout head
    metrics = fit_layout_head(model, preprocess, LayoutConfig(worlds=2, items_per_world=40, seed=3), workers=1,
                              progress=False)
    assert model.heads == ("fibre", "colour", LAYOUT_HEAD)
    assert metrics["crops"] == len(samples) and metrics["several"] == sum(s.label == SEVERAL for s in samples)
    held_out = [s.label for s, val in zip(samples, held_out_mask(samples)) if val]  # the last world of two
    pairs, singles = held_out.count(SEVERAL), held_out.count(SINGLE)
    assert pairs and singles
    right = metrics["val_several_caught"] * pairs + (1 - metrics["val_single_flagged"]) * singles
    assert metrics["val_accuracy"] == pytest.approx(right / len(held_out))  # scored on the held-out world only
    labels = {**LABELS, LAYOUT_HEAD: list(LAYOUT_LABELS)}
    ckpt = save_checkpoint(tmp_path / "m.pt", model, model_name="tiny", labels=labels, preprocess=preprocess,
                           taxonomy_version="test", config={})
    loaded = load_checkpoint(ckpt)
    assert loaded.labels[LAYOUT_HEAD] == list(LAYOUT_LABELS)
    assert loaded.model.head_hidden == {"fibre": 16, "colour": 0, LAYOUT_HEAD: 0}
    onnx_path = export_checkpoint(ckpt, tmp_path / "m.onnx", n_check=4).path
    classifier = OnnxClassifier.load(onnx_path)
    preds = classifier.predict([s.image for s in samples[:6]])
    with torch.no_grad():
        batch = torch.from_numpy(preprocess_batch([s.image for s in samples[:6]], preprocess))
        expected = torch.softmax(loaded.model(batch)[LAYOUT_HEAD], dim=1).numpy()
    np.testing.assert_allclose(preds.probs[LAYOUT_HEAD], expected, atol=1e-4)
    assert not preds.ood[LAYOUT_HEAD].any()  # no OOD threshold: the layout head never flags OOD


def test_a_head_cannot_be_added_twice_or_with_the_wrong_width() -> None:
    model, _ = make_model()
    with pytest.raises(ConfigError):
        model.add_head("colour", torch.nn.Linear(model.feature_dim, 2))
    with pytest.raises(ConfigError):
        model.add_head(LAYOUT_HEAD, torch.nn.Linear(model.feature_dim + 1, 2))


def _crop_list(samples, folder, rows=None) -> str:
    """Write the samples as a line's labelled crops (PNG files + ``path,layout`` CSV); return the CSV path."""
    (folder / "crops").mkdir(parents=True, exist_ok=True)
    lines = ["path,layout"]
    for i, s in enumerate(samples):
        cv2.imwrite(str(folder / "crops" / f"{i:03d}.png"), s.image)
        lines.append(f"crops/{i:03d}.png,{LAYOUT_LABELS[s.label]}")
    path = folder / "layout.csv"
    path.write_text("\n".join(rows or lines) + "\n")
    return str(path)


def test_layout_head_from_a_lines_own_crops_only(samples, tmp_path) -> None:
    crops = _crop_list(samples, tmp_path)
    loaded = load_layout_crops([crops])
    assert [s.label for s in loaded] == [s.label for s in samples]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(loaded, samples))
    model, preprocess = make_model()
    metrics = fit_layout_head(model, preprocess, LayoutConfig(worlds=0, crops=[crops]), workers=1, progress=False)
    assert model.heads[-1] == LAYOUT_HEAD and metrics["line_crops"] == metrics["crops"] == len(samples)
    assert 0.0 <= metrics["val_line_accuracy"] <= 1.0 and metrics["val_line_accuracy"] == metrics["val_accuracy"]


def test_layout_crop_lists_and_config_fail_clearly(samples, tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_layout_crops([tmp_path / "none.csv"])
    bad = _crop_list(samples[:2], tmp_path, rows=["path,layout", "crops/000.png,pile"])
    with pytest.raises(DataError, match=r"layout.csv:2: layout 'pile'"):
        load_layout_crops([bad])
    one_class = _crop_list(samples[:2], tmp_path, rows=["path,layout", "crops/000.png,single", "crops/001.png,single"])
    with pytest.raises(ConfigError, match="single garments and of several"):
        fit_layout_head(make_model()[0], make_model()[1], LayoutConfig(worlds=0, crops=[one_class]), progress=False)
    with pytest.raises(ValidationError, match="synthetic worlds or crop lists"):
        LayoutConfig(worlds=0)
    with pytest.raises(ValidationError, match="at least 2"):
        LayoutConfig(worlds=1)
