"""K-fold cross-validation: fold assignment (stratified, grouped, complete) and the train/evaluate loop on tiny images."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sorting.cli import main
from sorting.datasets.manifest import ManifestRow, read_manifest, write_manifest
from sorting.datasets.split import assign_folds
from sorting.errors import ConfigError, DataError
from sorting.training.config import load_train_config
from sorting.training.cross_validate import FoldResult, _head_calibration, cross_validate, summarise

torch.set_num_threads(1)


def _rows(n_per_class: dict[str, int], *, garments: int | None = None) -> list[ManifestRow]:
    rows = []
    for fibre, n in n_per_class.items():
        for i in range(n):
            garment = f"g{i % garments}" if garments else None
            rows.append(ManifestRow(f"{fibre}/{i}.png", fibre=fibre, garment=garment, sha1=f"{fibre}{i}"))
    return rows


def test_folds_cover_every_row_once_stratified_and_deterministic() -> None:
    rows = _rows({"cotton": 23, "wool": 12, "silk": 5})
    folds = assign_folds(rows, 5, seed=3)
    assert len(folds) == len(rows) and set(folds) == set(range(5))
    for fibre in ("cotton", "wool", "silk"):
        sizes = Counter(f for r, f in zip(rows, folds) if r.fibre == fibre)
        assert max(sizes.values()) - min(sizes.get(k, 0) for k in range(5)) <= 1, fibre  # stratified
    assert sum(Counter(folds).values()) == 40 and max(Counter(folds).values()) - min(Counter(folds).values()) <= 1
    assert assign_folds(list(reversed(rows)), 5, seed=3) == list(reversed(folds))  # content, not order
    assert assign_folds(rows, 5, seed=4) != folds


def test_groups_and_identical_images_stay_in_one_fold() -> None:
    rows = _rows({"cotton": 20, "wool": 20}, garments=6)
    rows.append(ManifestRow("copy.png", fibre="wool", sha1=rows[0].sha1))  # same bytes as a cotton row
    folds = assign_folds(rows, 3, seed=0, group_by="garment")
    by_garment: dict[str, set[int]] = {}
    for r, f in zip(rows, folds):
        if r.garment:
            by_garment.setdefault(r.garment, set()).add(f)
    assert all(len(v) == 1 for v in by_garment.values())
    assert folds[-1] == folds[0]


def test_fold_count_is_checked() -> None:
    with pytest.raises(ConfigError, match="at least 2 folds"):
        assign_folds(_rows({"cotton": 4}), 1)
    with pytest.raises(DataError, match="cannot fill 5 folds"):
        assign_folds(_rows({"cotton": 4}), 5)


def test_summary_pools_images_and_averages_folds() -> None:
    def fold(k: int, acc: float, n: int) -> FoldResult:
        return FoldResult(k, 0, 0, n, "x.pt", 1.0, {"fibre": acc}, {"fibre": acc}, {"fibre": n}, {"fibre": ["a"]},
                          {"fibre": [[n]]})

    s = summarise([fold(0, 1.0, 10), fold(1, 0.5, 30)])["fibre"]
    assert s.accuracy_mean == pytest.approx(0.75) and s.accuracy_std == pytest.approx(0.3536, abs=1e-4)
    assert s.pooled_accuracy == pytest.approx(25 / 40) and s.n_scored == 40


def _image(fibre: str, rng: np.random.Generator) -> np.ndarray:
    img = np.full((24, 24, 3), 128, np.int32) + rng.integers(-15, 15, (24, 24, 3))
    if fibre == "polyester":
        img[::3] = 250  # stripes: the "texture" the fibre head must see
    return np.clip(img, 0, 255).astype(np.uint8)


def _image_rows(folder: Path, n: int, rng: np.random.Generator, sha1_prefix: str = "") -> list[ManifestRow]:
    """``n`` images alternating cotton / polyester under ``folder/img``, as manifest rows relative to ``folder``."""
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        fibre = ("cotton", "polyester")[i % 2]
        cv2.imwrite(str(folder / "img" / f"{i}.png"), _image(fibre, rng))
        rows.append(ManifestRow(f"img/{i}.png", fibre=fibre, split="train", sha1=f"{sha1_prefix}{i}"))
    return rows


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    rows = _image_rows(tmp_path / "data", 24, np.random.default_rng(0))
    return write_manifest(rows, tmp_path / "data" / "manifest.csv")


def _config(tmp_path: Path, *extra: str):
    return load_train_config(None, [
        f"data.train=[{tmp_path / 'unused.csv'}]", "name=tiny-cv", "model.heads=[fibre]", "model.input_size=32",
        "batch_size=8", "num_workers=0", "progress=false", "threads=1", "optim.epochs=2", "optim.lr=0.01",
        "optim.warmup_epochs=0", "tracking.enabled=false", *extra,
    ])


def test_each_fold_is_trained_without_its_test_images_and_every_image_is_tested_once(manifest: Path, tmp_path: Path) -> None:
    report = cross_validate(_config(tmp_path), manifest, folds=3, seed=1, out_dir=tmp_path / "cv")
    assert [r.n_test for r in report.results] == [8, 8, 8]
    tested: list[str] = []
    for k, result in enumerate(report.results):
        fold = read_manifest(tmp_path / "cv" / f"fold-{k + 1}" / "manifest.csv")
        splits = Counter(r.split for r in fold.rows)
        assert splits["test"] == 8 and splits["val"] >= 1 and splits["train"] + splits["val"] == 16
        assert all(fold.image_path(r).is_file() for r in fold.rows)  # paths rebased onto the fold's folder
        tested += [r.sha1 for r in fold.rows if r.split == "test"]
        assert result.n_scored["fibre"] == 8 and Path(result.checkpoint).is_file()
        assert f"fold-{k + 1}" in result.checkpoint
    assert sorted(tested, key=int) == [str(i) for i in range(24)]
    summary = report.heads["fibre"]
    accs = [r.accuracy["fibre"] for r in report.results]
    assert summary.accuracy_mean == pytest.approx(sum(accs) / 3) and summary.n_scored == 24
    saved = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert saved["heads"]["fibre"]["pooled_accuracy"] == pytest.approx(summary.pooled_accuracy)
    assert (tmp_path / "cv" / "confusion_fibre.png").stat().st_size > 0
    assert "| fibre |" in (tmp_path / "cv" / "cv.md").read_text()


def test_synthetic_recipe_is_refused(tmp_path: Path, manifest: Path) -> None:
    config = _config(tmp_path, "data.synthetic={n: 20}")
    with pytest.raises(ConfigError, match="data.synthetic"):
        cross_validate(config, manifest, folds=2, out_dir=tmp_path / "cv")


def test_cli_reports_a_broken_recipe_without_training(tmp_path: Path, manifest: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {epochs: -1}\ndata: {train: [x.csv]}\n")
    assert main(["cross-validate", "--manifest", str(manifest), "--config", str(bad), "--out", str(tmp_path / "cv")]) != 0
    assert "epochs" in capsys.readouterr().err
    assert not (tmp_path / "cv").exists()


def test_an_all_rows_recipe_trains_folds_without_validation_split_and_a_final_model_calibrated_out_of_fold(
        manifest: Path, tmp_path: Path) -> None:
    from sorting.models.checkpoint import load_checkpoint

    report = cross_validate(_config(tmp_path, "data.train_split=all", "data.val_split=all",
                                    "early_stopping={patience: null, select: last}"),
                            manifest, folds=3, seed=1, out_dir=tmp_path / "cv")
    for k, result in enumerate(report.results):
        fold = read_manifest(tmp_path / "cv" / f"fold-{k + 1}" / "manifest.csv")
        assert Counter(r.split for r in fold.rows) == {"train": 16, "test": 8}  # no validation split taken out
        assert (result.n_train, result.n_val) == (16, 0)
    cal = report.calibration["fibre"]
    assert cal.n == 24 and 0.05 <= cal.temperature <= 20 and 0 <= cal.ece_cross_fitted <= 1
    assert set(cal.thresholds) >= {0.99, 0.95, 0.999}
    final = load_checkpoint(report.final_checkpoint)
    assert report.final_checkpoint == str(tmp_path / "cv" / "final.pt")
    assert final.temperature["fibre"] == pytest.approx(cal.temperature)
    assert final.ood["threshold"]["fibre"] == pytest.approx(cal.thresholds[0.99])
    assert final.ood["by_quantile"]["fibre"]["0.995"] == pytest.approx(cal.thresholds[0.995])
    assert final.metrics["train_images"] == 24  # every row of the manifest
    saved = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert saved["final_checkpoint"] == report.final_checkpoint and "fibre" in saved["calibration"]
    assert "T fitted on the other folds" in (tmp_path / "cv" / "cv.md").read_text()
    assert "least confident 20% rejected" in (tmp_path / "cv" / "cv.md").read_text()


def _fold_logits(rng: np.random.Generator, n_right: int, n_wrong: int, wrong_margin: tuple[float, float]):
    """Two-class logits of one fold: ``n_right`` confident and right, ``n_wrong`` wrong with the given margin."""
    y = rng.integers(0, 2, n_right + n_wrong)
    margin = np.r_[rng.uniform(4, 6, n_right), -rng.uniform(*wrong_margin, n_wrong)]
    z = np.zeros((len(y), 2))
    z[np.arange(len(y)), y] = margin
    return z, y, 1.0


def test_purity_at_20_percent_reject_out_of_fold() -> None:
    """Wrong calls that are the least confident fifth are what the reject takes: purity 100% once they go, with
    the threshold from the pooled predictions and with one fitted on the other folds; confident mistakes stay."""
    rng = np.random.default_rng(0)
    unsure = _head_calibration([_fold_logits(rng, 16, 4, (0.1, 0.5)) for _ in range(4)], 0.99)
    assert unsure.purity_pooled == 1.0 and unsure.purity_cross_fitted == 1.0
    assert 0.2 <= unsure.reject_cross_fitted <= 0.3
    sure = _head_calibration([_fold_logits(rng, 16, 4, (4, 6)) for _ in range(4)], 0.99)
    assert sure.purity_pooled < 0.85 and sure.purity_cross_fitted < 0.85


def test_the_recipes_other_manifests_are_trained_in_every_fold_and_never_tested(manifest: Path, tmp_path: Path) -> None:
    rows = _image_rows(tmp_path / "extra", 6, np.random.default_rng(1), sha1_prefix="x")
    (tmp_path / "extra" / "img" / "dup.png").write_bytes((tmp_path / "data" / "img" / "3.png").read_bytes())
    rows.append(ManifestRow("img/dup.png", fibre="polyester", split="train", sha1="3"))  # a CV row's bytes: left out
    extra = write_manifest(rows, tmp_path / "extra" / "manifest.csv")
    config = _config(tmp_path, f"data.train=[{manifest},{extra}]")
    report = cross_validate(config, manifest, folds=2, seed=0, out_dir=tmp_path / "cv")
    for k in range(2):
        fold = read_manifest(tmp_path / "cv" / f"fold-{k + 1}" / "manifest.csv")
        from_extra = [r for r in fold.rows if r.sha1.startswith("x")]
        assert len(from_extra) == 6 and all(r.split == "train" and fold.image_path(r).is_file() for r in from_extra)
        assert sum(r.split == "test" for r in fold.rows) == 12 and not any("dup" in r.path for r in fold.rows)
    assert report.heads["fibre"].n_scored == 24  # only the cross-validated manifest is scored
