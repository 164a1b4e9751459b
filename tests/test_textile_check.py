"""The textile check: garment detections whose crop does not look like cloth become objects."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import pydantic
import pytest
import torch
import yaml
from torch import nn

from sorting.errors import ModelFileError
from sorting.serving.segmentation import Detection
from sorting.serving.textile_check import (
    CACHE_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    TextileCheck,
    TextileCheckConfig,
    TextileHead,
)


class _Brightness(nn.Module):
    """A stand-in network: ImageNet log-probabilities where "class 0" (the one textile class of its metadata) has
    the crop's mean brightness in 0..1 as its probability (white crops "look like cloth")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = ((x.mean(dim=(1, 2, 3)) * 128.0 + 127.0) / 255.0).clamp(1e-4, 1 - 1e-4)[:, None]
        return torch.log(torch.cat([p, ((1 - p) / 999).expand(-1, 999)], dim=1))


class _LeftBrightness(nn.Module):
    """As :class:`_Brightness`, of the crop's left side only: a network that tells a crop from its mirror image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Brightness()(x[..., : x.shape[-1] // 2])


def _fake_check(path: Path, *, metadata: bool = True, network: nn.Module | None = None) -> Path:
    torch.onnx.export(network or _Brightness(), (torch.zeros(1, 3, 8, 8),), str(path), input_names=["crops"],
                      output_names=["logprobs"], dynamic_axes={"crops": {0: "n", 2: "h", 3: "w"}, "logprobs": {0: "n"}},
                      opset_version=18, dynamo=False)
    if metadata:
        proto = onnx.load(str(path))
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps({"format": FORMAT_VERSION, "input_size": 8,
                                                                     "textile_indices": [0]}))
        onnx.save(proto, str(path))
    return path


def _det(x: int, y: int, w: int = 40, h: int = 40, kind: str = "garment") -> Detection:
    return Detection(bbox=(x, y, w, h), area=float(w * h), centroid=(x + w / 2, y + h / 2), kind=kind)


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fake_check(tmp_path_factory.mktemp("check") / "bright.onnx")


def test_a_garment_that_does_not_look_like_cloth_becomes_an_object(fake_model: Path):
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 100:] = 255  # right half white: "cloth" to the stand-in
    check = TextileCheck(TextileCheckConfig(model=fake_model, min_score=0.5))
    dets = [_det(10, 10), _det(120, 10), _det(10, 50, kind="hand")]
    out = check.relabel(image, dets)
    assert [d.kind for d in out] == ["object", "garment", "hand"]  # a hand stays a hand: only garments are checked
    assert out[1] is dets[1] and out[0] == replace(dets[0], kind="object", not_cloth=True)
    assert not dets[0].not_cloth and not out[2].not_cloth  # the evaluation tells its misses from the segmentation's
    assert check.scores(image, [(0, 0, 0, 0)]).tolist() == [0.0]  # an empty crop never passes


def test_on_a_moving_belt_a_garment_keeps_the_score_it_came_into_view_with(fake_model: Path):
    bright, dark = np.full((100, 200, 3), 255, np.uint8), np.zeros((100, 200, 3), np.uint8)
    check = TextileCheck(TextileCheckConfig(model=fake_model, min_score=0.5))
    assert check.relabel(bright, [_det(50, 20)], reuse=True)[0].kind == "garment"
    # next frame: the same garment moved 5 px (IoU >= 0.5): not scored again, even though its crop is dark now
    assert check.relabel(dark, [_det(55, 20)], reuse=True)[0].kind == "garment"
    # a garment elsewhere is new: scored
    assert check.relabel(dark, [_det(55, 20), _det(150, 50)], reuse=True)[1].kind == "object"
    # still photos (no reuse): every frame is scored
    assert check.relabel(dark, [_det(55, 20)])[0].kind == "object"


def test_on_a_fast_belt_a_garment_is_found_where_the_belt_carried_it(fake_model: Path):
    """``shift``: last frame's boxes moved by the belt's travel before they are matched. A 40 px garment that moved
    35 px overlaps its own last box by 0.07 (scored again on every frame without it); a garment leaving the view is
    matched to its last box cut at the frame's edge (IoU 0.38 uncut)."""
    bright, dark = np.full((100, 200, 3), 255, np.uint8), np.zeros((100, 200, 3), np.uint8)
    check = TextileCheck(TextileCheckConfig(model=fake_model, min_score=0.5))
    assert check.relabel(bright, [_det(50, 20), _det(150, 50)], reuse=True, shift=(35.0, 0.0))[0].kind == "garment"
    moved = check.relabel(dark, [_det(85, 20), _det(185, 50, w=15)], reuse=True, shift=(35.0, 0.0))
    assert [d.kind for d in moved] == ["garment", "garment"]  # both found again: not scored on the dark frame
    # without the shift the moved garment is new to the check: scored, dark, an object
    check = TextileCheck(TextileCheckConfig(model=fake_model, min_score=0.5))
    check.relabel(bright, [_det(50, 20)], reuse=True)
    assert check.relabel(dark, [_det(85, 20)], reuse=True)[0].kind == "object"
    # a shift that carries last frame's garment away from this one: another thing, scored
    check = TextileCheck(TextileCheckConfig(model=fake_model, min_score=0.5))
    check.relabel(bright, [_det(50, 20)], reuse=True, shift=(35.0, 0.0))
    assert check.relabel(dark, [_det(50, 20)], reuse=True, shift=(35.0, 0.0))[0].kind == "object"


def test_a_thing_still_coming_into_view_is_checked_once_it_is_in(fake_model: Path):
    """``wait``: a garment detection held back (still entering the view) keeps its kind unscored and is not
    remembered, so the first frame it is let through scores it afresh."""
    bright, dark = np.full((100, 200, 3), 255, np.uint8), np.zeros((100, 200, 3), np.uint8)
    check = TextileCheck(TextileCheckConfig(model=fake_model, min_score=0.5))
    entering = {"edges": frozenset({"left"})}
    wait = lambda d: "left" in d.edges  # noqa: E731
    assert check.relabel(dark, [replace(_det(0, 20), **entering)], reuse=True, wait=wait)[0].kind == "garment"
    # next frame, in view and bright: scored now; had the dark part been scored, its box (IoU 0.78) would pass
    # that score on: an object
    assert check.relabel(bright, [_det(5, 20)], reuse=True, wait=wait)[0].kind == "garment"
    # without wait the entering one is scored as any other: dark, an object
    assert check.relabel(dark, [replace(_det(0, 20), **entering)])[0].kind == "object"


def test_on_a_moving_belt_the_check_waits_for_things_coming_into_view(repo_root: Path):
    """A thing touching the edge things enter by is coming into view until its leading end reaches the decision
    line; one touching the far edge too (longer than the view) never waits; a still scene never does."""
    from sorting.serving.line_config import load_line_config
    from sorting.serving.line_segmentation import LineSegmentation

    def seg(direction: str, scene: str = "belt") -> LineSegmentation:
        return LineSegmentation(load_line_config(repo_root / "serving" / "line-colour-6bin.yaml", [
            f"belt.direction={direction}", "tracking.decision_line_px=300", f"tracking.scene={scene}"]))

    left = replace(_det(0, 20, w=100), edges=frozenset({"left"}))
    reaching = replace(_det(0, 20, w=320), edges=frozenset({"left"}))
    across = replace(_det(0, 20, w=640), edges=frozenset({"left", "right"}))
    plus = seg("+x")
    assert plus.coming_into_view(left) and not plus.coming_into_view(reaching)
    assert not plus.coming_into_view(across) and not plus.coming_into_view(_det(100, 20))
    minus = seg("-x")  # entering at the right edge, decided once left of x = 300
    assert not minus.coming_into_view(left)
    assert minus.coming_into_view(replace(_det(540, 20, w=100), edges=frozenset({"right"})))
    assert not minus.coming_into_view(replace(_det(250, 20, w=390), edges=frozenset({"right"})))
    assert seg("+y").coming_into_view(replace(_det(50, 0, h=80), edges=frozenset({"top"})))


def test_the_check_is_told_the_belts_travel_along_its_direction(repo_root: Path):
    """On a moving belt the segmentation hands the check the belt's travel since the last frame as an (x, y) shift
    along the belt's direction: one frame at the nominal speed unless told; a still scene reuses nothing."""
    from sorting.serving.line_config import load_line_config
    from sorting.serving.line_segmentation import LineSegmentation

    class Recording:
        def __init__(self) -> None:
            self.calls: list[tuple[bool, tuple[float, float]]] = []

        def relabel(self, image, detections, *, reuse, shift, wait):
            self.calls.append((reuse, shift))
            return detections

    def seg(direction: str, scene: str = "belt") -> LineSegmentation:
        line = LineSegmentation(load_line_config(repo_root / "serving" / "line-colour-6bin.yaml", [
            f"belt.direction={direction}", "belt.speed_px_s=300", "tracking.decision_line_px=300",
            f"tracking.scene={scene}"]), fps=30.0)
        line.textile_check = Recording()
        return line

    image = np.full((480, 640, 3), 128, np.uint8)
    minus, down, still = seg("-x"), seg("+y"), seg("+x", "still")
    minus.segment(image)
    minus.segment(image, moved_px=25.0)
    down.segment(image)
    still.segment(image)
    assert minus.textile_check.calls == [(True, (-10.0, 0.0)), (True, (-25.0, 0.0))]
    assert down.textile_check.calls == [(True, (0.0, 10.0))]
    assert still.textile_check.calls[0][0] is False


def test_a_file_that_is_not_a_textile_check_is_refused_in_one_line(tmp_path: Path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="cannot load textile check"):
        TextileCheck(TextileCheckConfig(model=tmp_path / "junk.onnx"))
    with pytest.raises(ModelFileError, match="is not a textile check"):
        TextileCheck(TextileCheckConfig(model=_fake_check(tmp_path / "plain.onnx", metadata=False)))
    with pytest.raises(ModelFileError, match="not found"):
        TextileCheck(TextileCheckConfig(model=tmp_path / "missing.onnx"))


def test_the_line_config_resolves_the_model_against_its_folder(tmp_path: Path, repo_root: Path):
    from sorting.serving.line_config import load_line_config

    line = load_line_config(repo_root / "serving" / "line-colour-6bin.yaml",
                            ["segmentation.textile_check={model: check.onnx, min_score: 0.1}"])
    assert line.segmentation.textile_check is not None
    assert line.segmentation.textile_check.model == (repo_root / "serving" / "check.onnx").resolve()


@pytest.fixture(scope="module")
def packaged_check(model_cache: Path) -> TextileCheck:
    """The real check: ImageNet Lite0 from its PyPI package, exported on first use to the session's cache."""
    check = TextileCheck(TextileCheckConfig())
    assert (model_cache / CACHE_NAME).is_file()
    return check


def test_the_packaged_check_is_exported_once_and_scores_in_0_1(packaged_check: TextileCheck, model_cache: Path):
    modified = (model_cache / CACHE_NAME).stat().st_mtime_ns
    TextileCheck(TextileCheckConfig())  # the second line reads the cached file
    assert (model_cache / CACHE_NAME).stat().st_mtime_ns == modified
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    scores = packaged_check.scores(noise, [(0, 0, 80, 60), (40, 30, 100, 80)])
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()


def test_another_backbone_is_exported_to_a_file_of_its_own(tmp_path: Path, model_cache: Path, capsys):
    """``export-textile-check --backbone lite1 --out F`` writes Lite1 (its metadata says so) that a check reads
    like the default one; without --out it would replace the Lite0 check the lines share in the cache: refused."""
    from sorting.cli import main

    cached = sorted(model_cache.iterdir())
    assert main(["export-textile-check", "--backbone", "lite1"]) != 0
    assert "needs --out" in capsys.readouterr().err and sorted(model_cache.iterdir()) == cached
    out = tmp_path / "check-lite1.onnx"
    assert main(["export-textile-check", "--backbone", "lite1", "--out", str(out)]) == 0
    check = TextileCheck(TextileCheckConfig(model=out))
    assert check.meta["backbone"] == "efficientnet_lite1" and check.meta["input_size"] == 240
    noise = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    score = check.scores(noise, [(0, 0, 80, 60)])
    assert score.shape == (1,) and 0 <= score[0] <= 1


@pytest.mark.shared_data
def test_on_real_photos_garments_look_like_cloth_and_phones_do_not(packaged_check: TextileCheck, shared_data: Path,
                                                                   repo_root: Path):
    """On the labelled development photos of the conveyor: the garment boxes score above the hands' and
    objects' boxes (area under the curve well above chance). Measured: serving/REAL_BELT.md, "Is it cloth?"."""
    photos = shared_data / "conveyor-photos"
    dev = set(json.loads((repo_root / "benchmarks" / "belt_split.json").read_text())["dev"][::3])
    boxes: dict[str, list[tuple[list[float], bool]]] = {}
    with open(photos / "boxes.csv") as f:
        for row in csv.DictReader(f):
            if row["image"] in dev and row["x0"]:
                boxes.setdefault(row["image"], []).append(([float(row[k]) for k in ("x0", "y0", "x1", "y1")], True))
    with open(repo_root / "benchmarks" / "belt_non_garment_boxes.csv") as f:
        for row in csv.DictReader(f):
            if row["image"] in boxes:
                boxes[row["image"]].append(([float(row[k]) for k in ("x0", "y0", "x1", "y1")], False))
    garment, other = [], []
    for name, labelled in boxes.items():
        image = cv2.imread(str(photos / name))
        xywh = [(int(b[0]), int(b[1]), int(b[2] - b[0]), int(b[3] - b[1])) for b, _ in labelled]
        for score, (_, is_garment) in zip(packaged_check.scores(image, xywh), labelled):
            (garment if is_garment else other).append(score)
    assert len(garment) > 50 and len(other) > 10
    auc = float(np.mean([g > o for g in garment for o in other]))
    assert auc > 0.85, f"area under the curve {auc:.3f}"


def _head(path: Path, *, weight: float, bias: float, min_score: float, n: int = 1000) -> Path:
    weights = [0.0] * n
    weights[0] = weight
    path.write_text(json.dumps({"textile_head": 1, "bias": bias, "min_score": min_score, "input_size": 32,
                                "weights": weights}))
    return path


def test_a_fitted_head_scores_instead_of_the_class_list_with_its_own_threshold(fake_model: Path, tmp_path: Path):
    """The head's logistic score on the log-probabilities; its min_score applies unless the line sets one."""
    image = np.full((60, 120, 3), 255, np.uint8)
    image[:, :60] = 64  # left: brightness 0.25 -> log p0 = log 0.25; right: p0 ~ 1 -> log p0 ~ 0
    head = _head(tmp_path / "head.json", weight=4.0, bias=4.0, min_score=0.5)  # sigmoid(4 log p0 + 4)
    check = TextileCheck(TextileCheckConfig(model=fake_model, head=head))
    scores = check.scores(image, [(0, 0, 60, 60), (60, 0, 60, 60)])
    expected = 1 / (1 + np.exp(-(4 * np.log([64 / 255, 1 - 1e-4]) + 4)))
    assert scores == pytest.approx(expected, abs=2e-3) and check.min_score == 0.5
    assert check.size == 32  # crops at the size the head was fitted on
    dets = [_det(0, 0, 60, 60), _det(60, 0, 60, 60)]
    assert [d.kind for d in check.relabel(image, dets)] == ["object", "garment"]
    assert TextileCheck(TextileCheckConfig(model=fake_model, head=head, min_score=0.1)).min_score == 0.1


def test_a_sure_head_takes_an_object_back_as_a_garment_but_never_a_hand(fake_model: Path, tmp_path: Path):
    image = np.full((60, 180, 3), 255, np.uint8)
    image[:, :60] = 64  # left: the head scores 0.15; the rest: 0.98
    head = _head(tmp_path / "head.json", weight=4.0, bias=4.0, min_score=0.5)
    dets = [_det(0, 0, 60, 60, kind="object"), _det(60, 0, 60, 60, kind="object"), _det(120, 0, 60, 60, kind="hand")]
    sure = TextileCheck(TextileCheckConfig(model=fake_model, head=head, objects_back_from=0.95))
    assert [d.kind for d in sure.relabel(image, dets)] == ["object", "garment", "hand"]
    assert [d.kind for d in TextileCheck(TextileCheckConfig(model=fake_model, head=head, objects_back_from=0.99))
            .relabel(image, dets)] == ["object", "object", "hand"]  # not sure enough
    assert TextileCheck(TextileCheckConfig(model=fake_model, head=head)).relabel(image, dets) == dets  # rule wins
    with pytest.raises(pydantic.ValidationError, match="objects_back_from needs a head"):
        TextileCheckConfig(model=fake_model, objects_back_from=0.95)


def test_the_class_floor_overrules_a_head_that_never_saw_such_a_thing(fake_model: Path, tmp_path: Path):
    """A head fitted on photos without phones may score a phone high; where ImageNet gives the textile classes less
    than ``class_floor`` the crop is not cloth, as a garment and as an object the head would take back."""
    image = np.full((60, 180, 3), 128, np.uint8)
    image[:, :60] = 2  # left: textile-class probability 0.008; the rest 0.5
    head = _head(tmp_path / "head.json", weight=-4.0, bias=0.0, min_score=0.5)  # this head likes dark crops best
    dets = [_det(0, 0, 60, 60), _det(60, 0, 60, 60), _det(0, 0, 60, 60, kind="object")]
    alone = TextileCheck(TextileCheckConfig(model=fake_model, head=head, objects_back_from=0.95))
    assert [d.kind for d in alone.relabel(image, dets)] == ["garment", "garment", "garment"]
    floored = TextileCheck(TextileCheckConfig(model=fake_model, head=head, objects_back_from=0.95, class_floor=0.03))
    assert [d.kind for d in floored.relabel(image, dets)] == ["object", "garment", "object"]
    assert floored.min_score == 0.5 and floored.size == 32  # the head's own threshold and crop size
    scores = floored.scores(image, [(0, 0, 60, 60), (60, 0, 60, 60)])
    assert scores[0] == 0.0 and scores[1] == pytest.approx(alone.scores(image, [(60, 0, 60, 60)])[0])
    with pytest.raises(pydantic.ValidationError, match="class_floor needs a head"):
        TextileCheckConfig(model=fake_model, class_floor=0.03)


def test_a_head_crops_with_the_context_it_was_fitted_with(fake_model: Path, tmp_path: Path):
    """A head fitted on crops of the box grown 1.5 times sees the belt around the thing too, and scores new crops
    so; a head file without ``context`` crops the box alone, as before the key came."""
    image = np.zeros((120, 200, 3), np.uint8)
    image[40:80, 40:80] = 255  # a white thing on a black belt: brightness 1 alone, 1 / 2.25 with 1.5x context
    box = [(40, 40, 40, 40)]
    plain = _head(tmp_path / "plain.json", weight=1.0, bias=0.0, min_score=0.5)
    data = json.loads(plain.read_text())
    (tmp_path / "wide.json").write_text(json.dumps({**data, "context": 1.5}))
    alone = TextileCheck(TextileCheckConfig(model=fake_model, head=plain))
    wide = TextileCheck(TextileCheckConfig(model=fake_model, head=tmp_path / "wide.json"))
    assert alone.context == 1.0 and wide.context == 1.5
    p_alone, _ = alone.logprobs(image, box)
    p_wide, _ = wide.logprobs(image, box)
    assert np.exp(p_alone[0, 0]) > 0.95 and np.exp(p_wide[0, 0]) == pytest.approx(1 / 2.25, abs=0.03)
    assert TextileHead.load(tmp_path / "wide.json").save(tmp_path / "again.json") and \
        json.loads((tmp_path / "again.json").read_text())["context"] == 1.5
    (tmp_path / "huge.json").write_text(json.dumps({**data, "context": 3.0}))
    with pytest.raises(ModelFileError, match="context 3.0 is not 1..2"):
        TextileHead.load(tmp_path / "huge.json")
    from sorting.apps.textile_head import HeadFitConfig, fit_textile_head
    from sorting.errors import ConfigError

    with pytest.raises(ConfigError, match="--context 0.8"):  # refused before any photo is read
        fit_textile_head(HeadFitConfig(line=tmp_path / "none.yaml", photos=tmp_path, boxes=tmp_path / "none.csv",
                                       out=tmp_path / "head.json", context=0.8))


def test_a_head_on_standardised_features_is_saved_as_one_linear_function_of_the_raw_features(tmp_path: Path):
    """``fit-textile-check --inputs features``: the head is fitted on standardised pooled features, and the
    standardisation is folded into its weights, so the saved head scores raw features as the fitted pipeline does."""
    from sorting.apps.textile_head import Crops, HeadFitConfig, fit_head

    rng = np.random.default_rng(5)
    n = 300
    garment = (rng.random(n) < 0.6).astype(int)
    pooled = rng.normal(0.0, 1.0, (n, 40)) * rng.uniform(0.01, 5.0, 40) + rng.uniform(-2, 2, 40)  # unlike scales
    pooled[:, 7] = rng.normal(0.0, 0.05, n) + 0.08 * garment  # a small-scale feature that separates
    cfg = HeadFitConfig(line=tmp_path / "line.yaml", photos=tmp_path, boxes=tmp_path / "b.csv",
                        out=tmp_path / "head.json", inputs="features", regularisation=1.0)
    crops = Crops(rng.normal(-7, 0.5, (n, 1000)), rng.random(n), garment, np.arange(n) // 15, photos=n, pooled=pooled)
    head, oof = fit_head(crops, cfg)
    assert head.inputs == "features" and head.weights.shape == (40,) and head.info["cross_validation"]["auc"] > 0.7
    assert int(np.argmax(np.abs(head.weights * pooled.std(axis=0)))) == 7  # the feature that separates, per spread
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(pooled, garment)
    loaded = TextileHead.load(head.save(cfg.out))
    np.testing.assert_allclose(loaded.score(None, pooled), pipeline.predict_proba(pooled)[:, 1], atol=1e-5)
    with pytest.raises(ValueError, match="reads features"):
        loaded.score(crops.logprobs)
    from sorting.errors import DataError

    with pytest.raises(DataError, match="pooled features"):
        fit_head(Crops(crops.logprobs, crops.class_sum, garment, crops.groups, photos=n), cfg)


def test_a_broken_head_file_is_refused_in_one_line(fake_model: Path, tmp_path: Path):
    cases = {"missing.json": None, "junk.json": "{not json", "short.json": _head(tmp_path / "s.json", weight=1,
                                                                                  bias=0, min_score=0.5, n=10)}
    for name, content in cases.items():
        path = content if isinstance(content, Path) else tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        with pytest.raises(ModelFileError, match="textile_check.head"):
            TextileCheck(TextileCheckConfig(model=fake_model, head=path))


def test_fitting_a_head_keeps_its_share_of_garments_out_of_fold_and_points_the_line_at_it(tmp_path: Path,
                                                                                         repo_root: Path):
    from sorting.apps.textile_head import (
        Crops,
        HeadFitConfig,
        fit_head,
        plot_scores,
        write_head_into_line,
    )
    from sorting.errors import DataError

    rng = np.random.default_rng(0)
    n = 400
    garment = (rng.random(n) < 0.7).astype(int)
    logprobs = rng.normal(-7.0, 0.5, (n, 1000))
    logprobs[:, 3] += 2.0 * garment  # one "class" tells them apart, with overlap
    groups = np.arange(n) // 20
    cfg = HeadFitConfig(line=tmp_path / "line.yaml", photos=tmp_path, boxes=tmp_path / "b.csv",
                        out=tmp_path / "head.json", keep=0.9)
    class_sum = np.where(garment == 1, rng.uniform(0.02, 1.0, n), rng.uniform(0.0, 0.1, n))
    head, oof = fit_head(Crops(logprobs, class_sum, garment, groups, photos=n // 2), cfg)
    assert oof.shape == (n,) and ((oof >= 0) & (oof <= 1)).all()
    cv = head.info["cross_validation"]
    assert cv["folds"] == 5 and cv["auc"] > 0.9
    assert cv["garments_kept"] == pytest.approx(0.9, abs=0.01) and cv["others_removed"] > 0.5
    assert head.weights[3] == max(head.weights)  # it learned the class that separates
    floor = head.info["class_floor"]  # what 0.5% of the garment crops fall below
    assert floor["value"] == pytest.approx(np.quantile(class_sum[garment == 1], cfg.floor_share), abs=1e-4)
    assert 0.05 < floor["others_below"] < 0.5 and floor["garments_below"] == cfg.floor_share == 0.005
    assert plot_scores(oof, garment, head.min_score, tmp_path / "scores.png").is_file()
    loaded = TextileHead.load(head.save(cfg.out))
    assert loaded.min_score == pytest.approx(head.min_score) and loaded.info["fitted_on"]["crops"] == n
    assert loaded.input_size == cfg.input_size == 224
    with pytest.raises(DataError, match="needs garments and non-garments"):
        fit_head(Crops(logprobs, class_sum, np.ones(n, int), groups, photos=n // 2), cfg)
    # the line config points at the head (relative to its folder), with its class floor, min_score dropped, carving on,
    # the old file kept
    line = tmp_path / "lines" / "line.yaml"
    line.parent.mkdir()
    text = (repo_root / "serving" / "line-colour-6bin.yaml").read_text()
    data = yaml.safe_load(text)
    data["model"]["path"] = str((repo_root / "serving" / data["model"]["path"]).resolve())
    data["policy"]["bins"] = str((repo_root / "serving" / data["policy"]["bins"]).resolve())
    data["segmentation"]["textile_check"] = {"min_score": 0.05}
    line.write_text("# my line\n" + yaml.safe_dump(data))
    write_head_into_line(line, cfg.out)
    written = yaml.safe_load(line.read_text())["segmentation"]["textile_check"]
    assert written == {"carve": {}, "objects_back_from": 0.95, "class_floor": floor["value"], "head": "../head.json"}
    assert line.read_text().startswith("# my line\n")
    assert "min_score: 0.05" in line.with_name("line.yaml.bak").read_text()
    write_head_into_line(line, cfg.out)  # fitted again: the header says once where the head came from
    assert line.read_text().count("fit-textile-check") == 1 and line.read_text().startswith("# my line\n")


@pytest.mark.shared_data
def test_fit_textile_check_on_real_photos_writes_a_head_the_line_reads(shared_data: Path, repo_root: Path,
                                                                      tmp_path: Path, capsys):
    """The command on a third of the development photos: crops from the shipped line's segmentation, a head
    that separates them out of fold, written into a copy of the line (whose old head, not copied along, plays
    no part)."""
    from sorting.cli import main

    photos = shared_data / "conveyor-photos"
    dev = json.loads((repo_root / "benchmarks" / "belt_split.json").read_text())["dev"][::3]
    (tmp_path / "names.txt").write_text("\n".join(dev) + "\n")
    line = repo_root / "serving" / "line-real-belt.yaml"
    copy = tmp_path / "line.yaml"
    data = yaml.safe_load(line.read_text())
    data["policy"]["bins"] = str((line.parent / data["policy"]["bins"]).resolve())
    data["model"]["path"] = str((line.parent / data["model"]["path"]).resolve())
    data["camera"]["source"] = str(photos / "images")
    copy.write_text(yaml.safe_dump(data))
    assert main(["fit-textile-check", "--line", str(copy), str(photos / "images"), "--boxes", str(photos / "boxes.csv"),
                 "--labels", str(repo_root / "benchmarks" / "belt_non_garment_boxes.csv"), "--subset",
                 str(tmp_path / "names.txt"), "--out", str(tmp_path / "head.json"), "--write-line",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "area under the curve" in out and "written into" in out
    assert (tmp_path / "head.png").stat().st_size > 1000  # the out-of-fold scores, to look at
    assert f"gets wrong out of fold: {tmp_path / 'head-mistakes.png'}" in out  # and the crops behind its mistakes
    assert (tmp_path / "head-mistakes.png").stat().st_size > 1000
    head = TextileHead.load(tmp_path / "head.json")
    assert head.info["fitted_on"]["photos"] == len(dev) and head.info["cross_validation"]["auc"] > 0.85
    kinds = head.info["fitted_on"]["labels_by_kind"]  # what it learnt to reject, said in the head and printed
    assert kinds["garment"] > 50 and kinds["hand"] >= 5 and kinds["object"] >= 5 and str(kinds) in out
    from sorting.serving.line_config import load_line_config

    assert load_line_config(copy).segmentation.textile_check.head == (tmp_path / "head.json").resolve()


def test_set_up_photos_without_hands_or_objects_are_warned_of():
    from sorting.apps.textile_head import unseen_kinds

    assert unseen_kinds({"garment": 300, "hand": 40, "object": 12}) == []
    assert unseen_kinds({"garment": 300, "hand": 40}) == ["object"]  # never saw a phone: will not reject one
    assert unseen_kinds({"garment": 300, "hand": 4, "object": 5}) == ["hand"]


def test_a_cache_folder_that_cannot_be_written_falls_back_to_the_temporary_folder(tmp_path: Path, monkeypatch):
    """A read-only home must not stop a line: the packaged check goes to the system's temporary folder."""
    import sorting.models.textile_check_export as export
    from sorting.serving import textile_check

    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")  # a file where the cache folder should be: nothing can be written under it
    monkeypatch.setenv("TEXTILE_SORTER_CACHE", str(blocked))
    monkeypatch.setattr(textile_check.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    written: list[Path] = []

    def fake_export(path: Path) -> Path:  # the real export (10 s) is tested above; here only where it goes
        Path(path).parent.mkdir(parents=True)
        written.append(Path(path))
        return Path(path)

    monkeypatch.setattr(export, "export_textile_check", fake_export)
    assert textile_check.default_model() == tmp_path / "tmp" / "textile-sorter" / CACHE_NAME
    assert written == [tmp_path / "tmp" / "textile-sorter" / CACHE_NAME]


def test_a_head_fitted_with_mirrors_looks_again_with_the_mirror_images_near_its_threshold(tmp_path: Path):
    """``fit-textile-check --mirrors``: the head file says so, and a crop that scores near a threshold is scored
    again as the mean of the head's probabilities over the crop and its left-right and top-bottom mirror images (each
    cut from the mirrored frame at the mirrored box); a crop far from every threshold keeps its own score."""
    model = _fake_check(tmp_path / "left.onnx", network=_LeftBrightness())
    image = np.zeros((120, 200, 3), np.uint8)
    image[10:50, 20:40] = 255  # a thing near the top left corner: its left half white, its right half black
    box = [(20, 10, 40, 40)]
    data = json.loads(_head(tmp_path / "plain.json", weight=4.0, bias=4.0, min_score=0.5).read_text())
    (tmp_path / "mirrors.json").write_text(json.dumps({**data, "mirrors": True}))

    def check(head: str, margin: float | None = 2.0) -> TextileCheck:
        return TextileCheck(TextileCheckConfig(model=model, head=tmp_path / head, mirrors_margin=margin))

    logprobs, _, _ = check("mirrors.json").view_outputs(image, box, views=3)
    assert logprobs.shape == (1, 3, 1000)
    assert np.exp(logprobs[0, :, 0]) == pytest.approx([1.0, 1e-4, 1.0], abs=1e-3)  # the left-right mirror: black
    own, mirrored = 1 / (1 + np.exp(-4.0)), 1 / (1 + np.exp(-(4 * np.log(1e-4) + 4)))
    assert not check("plain.json", None).mirrors
    assert check("plain.json", None).scores(image, box)[0] == pytest.approx(own, abs=1e-3)
    assert check("mirrors.json", None).scores(image, box)[0] == pytest.approx((2 * own + mirrored) / 3, abs=1e-3)
    assert check("mirrors.json", 2.0).scores(image, box)[0] == pytest.approx(own, abs=1e-3)  # 4 log-odds away
    assert check("mirrors.json", 5.0).scores(image, box)[0] == pytest.approx((2 * own + mirrored) / 3, abs=1e-3)
    head = check("mirrors.json").map_scorer
    views = np.random.default_rng(1).normal(-3.0, 1.0, (4, 3, 1000))
    np.testing.assert_allclose(head.score(views), np.mean([head.score(views[:, k]) for k in range(3)], axis=0),
                               rtol=1e-6)
    assert TextileHead.load(head.save(tmp_path / "again.json")).mirrors
    (tmp_path / "bad.json").write_text(json.dumps({**data, "mirrors": "yes"}))
    with pytest.raises(ModelFileError, match="mirrors 'yes'"):
        TextileHead.load(tmp_path / "bad.json")


def test_a_head_fitted_on_mirror_images_separates_better_when_each_view_is_noisy(tmp_path: Path):
    """Each view of a crop carries the same signal and its own nuisance (a fold's shadow, glare): the mean over the
    crop and its two mirror images separates garments from the rest better, out of fold, than the crop alone."""
    from sorting.apps.textile_head import Crops, HeadFitConfig, fit_head

    rng = np.random.default_rng(3)
    n = 300
    garment = (rng.random(n) < 0.6).astype(int)
    views = rng.normal(-7.0, 0.5, (n, 3, 1000))
    views[:, :, 3] += 1.5 * garment[:, None] + rng.normal(0.0, 1.5, (n, 3))  # one signal, noise of its own per view
    class_sum = rng.uniform(0.02, 1.0, n)
    cfg = HeadFitConfig(line=tmp_path / "line.yaml", photos=tmp_path, boxes=tmp_path / "b.csv",
                        out=tmp_path / "head.json", regularisation=0.1)
    groups = np.arange(n) // 15
    alone, _ = fit_head(Crops(views[:, 0], class_sum, garment, groups, photos=n), cfg)
    both, oof = fit_head(Crops(views[:, 0], class_sum, garment, groups, photos=n, mirrored=views[:, 1:]), cfg)
    assert not alone.mirrors and both.mirrors and oof.shape == (n,)
    assert both.info["cross_validation"]["auc"] > alone.info["cross_validation"]["auc"] + 0.03
    assert both.weights[3] == max(both.weights)
