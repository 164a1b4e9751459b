"""benchmarks/belt_cross_validation.py: how the development scenes are dealt to folds."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _cv():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports belt_errors, a script beside it
    try:
        spec = importlib.util.spec_from_file_location("belt_cross_validation",
                                                      ROOT / "benchmarks" / "belt_cross_validation.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_other_partitions_deal_the_same_groups_evenly_but_differently():
    """Partition 0 is the usual round-robin of groups in order; others shuffle the groups by their seed first, so
    each is a different, reproducible, even partition; blocks are runs of consecutive groups."""
    fold_of_groups = _cv().fold_of_groups
    groups = [3, 1, 2, 7, 5, 4, 6, 9, 8, 10, 12, 11] * 2  # one per photo, repeated
    usual = fold_of_groups(groups, 3)
    assert usual == {g: i % 3 for i, g in enumerate(range(1, 13))}
    assert fold_of_groups(groups, 3, partition=0) == usual
    one, two = fold_of_groups(groups, 3, partition=1), fold_of_groups(groups, 3, partition=2)
    assert one == fold_of_groups(groups, 3, partition=1) and len({str(usual), str(one), str(two)}) == 3
    for fold in (one, two):
        assert set(fold) == set(groups) and sorted(Counter(fold.values()).values()) == [4, 4, 4]
    assert fold_of_groups(groups, 3, blocked=True) == {g: (g - 1) // 4 for g in range(1, 13)}


def _setting_up_cli(calls: list[tuple[str, ...]]):
    """Stands in for the CLI of a fold's set-up and scoring: records each call's arguments; calibrate writes the
    line, evaluate-detection a summary."""

    def fake_cli(*args: str) -> str:
        calls.append(args)
        if args[0] == "calibrate":
            Path(args[args.index("--line") + 1]).write_text("name: fold\n")
        if args[0] == "evaluate-detection":
            out = Path(args[args.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text('{"matched": 1}')
        return "header\nIoU 0.5: recall ...\n"

    return fake_cli


def test_reuse_sets_a_fold_up_again_only_when_its_photos_or_arguments_changed(tmp_path: Path, monkeypatch):
    """``--reuse`` scores a fold's line again without calibrate and fit-textile-check when the fold was set up on the
    same photos with the same arguments; another photo list or another argument sets it up afresh."""
    cv = _cv()
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(cv, "_cli", _setting_up_cli(calls))
    (tmp_path / "data" / "images").mkdir(parents=True)

    def fold(setup: list[str], fit_args: list[str], reuse: bool) -> list[str]:
        calls.clear()
        summary = cv.run_fold(0, setup, ["images/c.jpg"], tmp_path / "data", tmp_path / "cv", [], fit_args,
                              reuse=reuse)
        assert summary == {"matched": 1}
        return [args[0] for args in calls]

    set_up = ["calibrate", "fit-textile-check", "evaluate-detection"]
    assert fold(["images/a.jpg"], [], reuse=True) == set_up  # nothing to reuse yet
    assert fold(["images/a.jpg"], [], reuse=True) == ["evaluate-detection"]
    assert fold(["images/a.jpg"], [], reuse=False) == set_up
    assert fold(["images/a.jpg", "images/b.jpg"], [], reuse=True) == set_up
    assert fold(["images/a.jpg", "images/b.jpg"], ["--inputs", "features"], reuse=True) == set_up
    assert fold(["images/a.jpg", "images/b.jpg"], ["--inputs", "features"], reuse=True) == ["evaluate-detection"]


def test_set_up_frames_reach_calibrate_and_a_change_sets_the_fold_up_again(tmp_path: Path, monkeypatch):
    """``--setup-frames N`` is calibrate's ``--frames N`` (left to calibrate's default without it); under ``--reuse``
    a fold set up from another number of frames is set up again."""
    cv = _cv()
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(cv, "_cli", _setting_up_cli(calls))
    (tmp_path / "data" / "images").mkdir(parents=True)

    def frames_given(setup_frames: int | None) -> list[str | None]:
        calls.clear()
        cv.run_fold(0, ["images/a.jpg"], ["images/c.jpg"], tmp_path / "data", tmp_path / "cv", [], [], reuse=True,
                    setup_frames=setup_frames)
        return [args[args.index("--frames") + 1] if "--frames" in args else None
                for args in calls if args[0] == "calibrate"]

    assert frames_given(None) == [None]
    assert frames_given(32) == ["32"]
    assert frames_given(32) == []  # the same set-up: reused
    assert frames_given(16) == ["16"]
    assert frames_given(None) == [None]


def _recording_cli(calls: list[tuple[str, ...]]):
    """Stands in for the CLI (train-belt-detector, fit-textile-check): records its arguments and writes the file its
    --out names."""

    def fake_cli(*args: str) -> str:
        calls.append(args)
        Path(args[args.index("--out") + 1]).write_bytes(b"onnx")
        return ""

    return fake_cli


def test_a_fold_detector_is_trained_once_per_set_up_and_recipe(tmp_path: Path, monkeypatch):
    """Each set of recipe overrides trains its own fold detector, passed to train-belt-detector, and keeps it
    while the fold's photos and overrides stay the same."""
    cv = _cv()
    trained: list[tuple[str, ...]] = []
    monkeypatch.setattr(cv, "_cli", _recording_cli(trained))
    (tmp_path / "setup.txt").write_text("images/a.jpg\n")
    plain = cv.fold_detector(tmp_path, 0, [])
    assert cv.fold_detector(tmp_path, 0, []) == plain and len(trained) == 1  # kept
    longer = cv.fold_detector(tmp_path, 0, ["optim.epochs=40"])
    assert longer != plain and len(trained) == 2 and trained[-1][-1] == "optim.epochs=40"
    assert cv.fold_detector(tmp_path, 0, ["optim.epochs=40"]) == longer and len(trained) == 2
    assert cv.fold_detector(tmp_path, 1, []) != plain and len(trained) == 3  # another seed
    (tmp_path / "setup.txt").write_text("images/b.jpg\n")
    assert cv.fold_detector(tmp_path, 0, []) == plain and len(trained) == 4  # other photos: trained again


def test_a_fold_detector_is_trained_again_when_the_recipe_settings_change_not_its_comments(tmp_path: Path,
                                                                                            monkeypatch):
    cv = _cv()
    trained: list[tuple[str, ...]] = []
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim: {epochs: 80}  # long\nseed: 0\n")
    monkeypatch.setattr(cv, "_cli", _recording_cli(trained))
    monkeypatch.setattr(cv, "RECIPE", recipe)
    (tmp_path / "setup.txt").write_text("images/a.jpg\n")
    cv.fold_detector(tmp_path, 0, [])
    recipe.write_text("# the recipe, commented\nseed: 0\noptim:\n  epochs: 80  # four times 20\n")
    cv.fold_detector(tmp_path, 0, [])
    assert len(trained) == 1  # the same settings, written otherwise
    recipe.write_text("seed: 0\noptim: {epochs: 120}\n")
    cv.fold_detector(tmp_path, 0, [])
    assert len(trained) == 2 and trained[-1][trained[-1].index("--config") + 1] == str(recipe)


def test_a_head_on_the_detector_line_is_fitted_on_that_line_and_kept(tmp_path: Path, monkeypatch):
    """--head-on-detector: the fold's line with its detector and settings is written, fit-textile-check fits a head
    on that line (and writes it in), and the pair is kept until the detector or its settings change."""
    cv = _cv()
    fitted: list[tuple[str, ...]] = []
    monkeypatch.setattr(cv, "_cli", _recording_cli(fitted))
    line = tmp_path / "line.yaml"
    line.write_text("segmentation: {scale: 0.5, textile_check: {head: head.json}}\n")
    model = tmp_path / "detector-seed0.onnx"
    model.with_suffix(".setup.txt").write_text("images/a.jpg\n")
    data = tmp_path / "photos"
    first = cv.detector_line(tmp_path, line, model, "box: outline, views: 4", data, ["--keep", "0.98"])
    written = yaml.safe_load(first.read_text())["segmentation"]
    assert written["detector"] == {"model": str(model), "box": "outline", "views": 4} and written["scale"] == 0.5
    (call,) = fitted
    assert call[0] == "fit-textile-check" and call[call.index("--line") + 1] == str(first)
    assert "--write-line" in call and call[-2:] == ("--keep", "0.98")
    assert call[call.index("--out") + 1] != str(tmp_path / "head.json")  # the classical line's head stays
    assert cv.detector_line(tmp_path, line, model, "box: outline, views: 4", data, ["--keep", "0.98"]) == first
    assert len(fitted) == 1  # kept
    other = cv.detector_line(tmp_path, line, model, "box: outline", data, ["--keep", "0.98"])
    assert other != first and len(fitted) == 2
    model.with_suffix(".setup.txt").write_text("images/b.jpg\n")  # the detector trained again on other photos
    assert cv.detector_line(tmp_path, line, model, "box: outline", data, ["--keep", "0.98"]) != other
    assert len(fitted) == 3


def test_the_mean_over_partitions_gives_the_missed_garments_a_partition_by_cause():
    cv = _cv()
    figures = [cv.PartitionFigures(0.8, 0.9, 1, 100, Counter({"called not cloth": 20, "loose": 10})),
               cv.PartitionFigures(0.9, 0.95, 2, 110, Counter({"called not cloth": 25, "not found": 4}))]
    assert cv.mean_lines(figures) == [
        "mean over 2 partitions: IoU 0.5 recall 85.0%, precision 92.5%; hands and objects taken for a garment 1.5, "
        "found as such 105.0",
        "missed a partition: called not cloth 22.5, loose 5.0, not found 2.0"]


def test_a_share_of_the_set_up_keeps_whole_scenes_drawn_by_seed():
    share_of_scenes = _cv().share_of_scenes
    photos = [f"images/color_img{n}.jpg" for n in range(100, 200, 3)]  # 34 photos in 10 scene groups
    groups = {n: int(n.split("img")[1].split(".")[0]) // 10 for n in photos}
    assert share_of_scenes(photos, groups, 1.0, seed=0) == photos
    half = share_of_scenes(photos, groups, 0.5, seed=0)
    kept = {groups[n] for n in half}
    assert len(kept) == 5 and half == [n for n in photos if groups[n] in kept]  # whole groups, in order
    assert share_of_scenes(photos, groups, 0.5, seed=0) == half and share_of_scenes(photos, groups, 0.5, seed=1) != half
    assert len({groups[n] for n in share_of_scenes(photos, groups, 0.01, seed=0)}) == 1  # never none
