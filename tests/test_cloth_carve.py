"""Carving garments out of clumps: the check's feature map scores windows as crops, and the cloth in a large
non-garment detection becomes garments of their own."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import pydantic
import pytest
import torch
from torch import nn

from sorting.errors import ModelFileError
from sorting.serving.cloth_carve import ClothCarver, ClothMap, _window_mean
from sorting.serving.segmentation import Detection
from sorting.serving.textile_check import (
    FORMAT_VERSION,
    METADATA_KEY,
    CarveConfig,
    TextileCheck,
    TextileCheckConfig,
    TextileHead,
)

SEG_SCALE = 0.5


def test_window_mean_is_the_mean_of_each_cells_neighbourhood_inside_the_map():
    features = np.random.default_rng(0).normal(size=(4, 5, 7)).astype(np.float32)
    got = _window_mean(features, 3)
    for r, c in ((0, 0), (2, 3), (4, 6), (1, 5)):
        expected = features[:, max(0, r - 1):r + 2, max(0, c - 1):c + 2].mean(axis=(1, 2))
        np.testing.assert_allclose(got[:, r, c], expected, rtol=1e-5)
    np.testing.assert_allclose(_window_mean(features, 1), features, rtol=1e-6)


def test_a_window_covering_the_whole_crop_scores_as_the_crop_does(model_cache: Path):
    """The packaged network's feature map through the classifier it names in its metadata gives the crop's own
    score: the map is the check, only pooled over windows."""
    check = TextileCheck(TextileCheckConfig())
    rng = np.random.default_rng(1)
    # a head scoring away from 0 and 1, for the crops and the map's windows alike
    check.scorer = check.map_scorer = TextileHead(rng.normal(0, 0.002, 1000), 0.0, 0.5, 224, {})
    image = cv2.GaussianBlur(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8), (7, 7), 0)
    box = (30, 20, 224, 224)  # the crop's own size: no resizing on either path
    crop_score = check.scores(image, [box])[0]
    cells = ClothMap(check).scores(image, box, scale=1.0, window=9)  # 7 x 7 cells; the centre one's window is all
    assert cells.shape == (7, 7)
    assert cells[3, 3] == pytest.approx(crop_score, abs=1e-4)
    assert 0.05 < crop_score < 0.95


class _StubMap:
    """Cloth where the cell's centre lies left of ``cloth_below_x`` (frame pixels)."""

    stride = 32

    def __init__(self, cloth_below_x: float) -> None:
        self.cloth_below_x = cloth_below_x

    def scores(self, image_bgr: np.ndarray, box: tuple[int, int, int, int], *, scale: float,
               window: int) -> np.ndarray:
        x, y, w, h = box
        cell = self.stride / scale
        rows, cols = -(-round(h * scale) // self.stride), -(-round(w * scale) // self.stride)
        centres = x + (np.arange(cols) + 0.5) * cell
        return np.repeat((centres < self.cloth_below_x).astype(np.float32)[None], rows, axis=0)


def _blob(x0: int, y0: int, x1: int, y1: int, kind: str) -> Detection:
    """A rectangular detection of frame pixels [x0, x1) x [y0, y1), outlined at the segmentation scale."""
    s = SEG_SCALE
    outline = np.int32([[x0 * s, y0 * s], [x1 * s - 1, y0 * s], [x1 * s - 1, y1 * s - 1], [x0 * s, y1 * s - 1]])
    return Detection(bbox=(x0, y0, x1 - x0, y1 - y0), area=float((x1 - x0) * (y1 - y0)),
                     centroid=((x0 + x1) / 2, (y0 + y1) / 2), outline=outline.reshape(-1, 1, 2), kind=kind)


def _all_cloth(image: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    return np.ones(len(boxes), np.float32)


def _carver(cloth_below_x: float, confirm=_all_cloth, **cfg) -> ClothCarver:
    return ClothCarver(CarveConfig(**cfg), _StubMap(cloth_below_x), confirm, min_score=0.5, seg_scale=SEG_SCALE,
                       typical_area_px=10_000, min_area_px=800, border_margin_px=3)


def test_the_cloth_in_a_large_object_becomes_a_garment_and_the_rest_stays_an_object():
    image = np.zeros((200, 400, 3), np.uint8)
    clump = _blob(40, 40, 360, 160, "object")  # 3.8 typical items
    out = _carver(200).carve(image, [clump])
    assert sorted(d.kind for d in out) == ["garment", "object"]
    garment = next(d for d in out if d.kind == "garment")
    rest = next(d for d in out if d.kind == "object")
    x, y, w, h = garment.bbox
    assert 30 <= x <= 50 and 170 <= x + w <= 230 and 35 <= y and y + h <= 165  # the left part, cut near x = 200
    assert rest.bbox[0] >= 180 and rest.bbox[0] + rest.bbox[2] <= 365
    assert garment.area + rest.area == pytest.approx(clump.area, rel=0.15)
    assert not garment.overlap_suspect and garment.outline is not None
    # what the textile check refused as a whole: the cloth carved out of it is a garment, the rest stays not cloth
    refused = _carver(200).carve(image, [replace(clump, not_cloth=True)])
    assert sorted((d.kind, d.not_cloth) for d in refused) == [("garment", False), ("object", True)]


def test_what_is_left_whole():
    image = np.zeros((200, 400, 3), np.uint8)
    small = _blob(40, 40, 120, 120, "object")  # 0.64 of a typical item: below min_area
    garment = _blob(200, 40, 360, 160, "garment")
    assert _carver(400).carve(image, [small, garment]) == [small, garment]
    clump = _blob(40, 40, 360, 160, "hand")
    assert _carver(0).carve(image, [clump])[0] is clump  # no cloth in it
    assert _carver(400, kinds=["object"]).carve(image, [clump])[0] is clump  # hands not carved on this line
    assert [d.kind for d in _carver(400).carve(image, [clump])] == ["garment"]  # all cloth: a garment, no hand left
    # the map proposes, the crop check disposes: a piece whose own crop does not look like cloth stays in the clump
    nothing = _carver(400, confirm=lambda image, boxes: np.zeros(len(boxes), np.float32))
    assert nothing.carve(image, [clump])[0] is clump
    # on a moving belt, a clump still coming into view is left for the frames when it is in
    assert _carver(200).carve(image, [clump], wait=lambda d: d is clump) == [clump]


def test_a_large_garment_detection_that_is_mostly_not_cloth_is_carved_as_a_clump():
    image = np.zeros((200, 400, 3), np.uint8)
    clump = _blob(40, 40, 360, 160, "garment")  # 3.8 typical items, cloth only left of x = 150: a third of it
    out = _carver(150).carve(image, [clump])
    assert sorted(d.kind for d in out) == ["garment", "object"]  # the cloth a garment, the rest an object
    garment = next(d for d in out if d.kind == "garment")
    assert garment.bbox[0] + garment.bbox[2] <= 180
    assert _carver(400).carve(image, [clump]) == [clump]  # all cloth: one large garment, left whole
    assert _carver(150, garment_min_area=None).carve(image, [clump]) == [clump]  # garments not looked into
    assert _carver(150, garment_min_area=4.0).carve(image, [clump]) == [clump]  # not large enough for this line
    nothing = _carver(150, confirm=lambda image, boxes: np.zeros(len(boxes), np.float32))
    assert nothing.carve(image, [clump]) == [replace(clump, kind="object")]  # no garment confirmed in the clump


class _CountingMap(_StubMap):
    def __init__(self, cloth_below_x: float) -> None:
        super().__init__(cloth_below_x)
        self.runs = 0

    def scores(self, image_bgr: np.ndarray, box: tuple[int, int, int, int], *, scale: float,
               window: int) -> np.ndarray:
        self.runs += 1
        return super().scores(image_bgr, box, scale=scale, window=window)


def test_on_a_moving_belt_a_large_garment_found_whole_is_not_looked_into_again():
    image = np.zeros((200, 400, 3), np.uint8)
    cloth = _CountingMap(400)
    carver = ClothCarver(CarveConfig(), cloth, _all_cloth, min_score=0.5, seg_scale=SEG_SCALE,
                         typical_area_px=10_000, min_area_px=800, border_margin_px=3)
    big = _blob(40, 40, 360, 160, "garment")
    moved = _blob(48, 40, 368, 160, "garment")  # next frame, 8 px on: IoU 0.95
    assert carver.carve(image, [big], reuse=True) == [big] and cloth.runs == 1
    assert carver.carve(image, [moved], reuse=True) == [moved] and cloth.runs == 1  # reused: no map
    assert carver.carve(image, [moved]) == [moved] and cloth.runs == 2  # still photos: every frame looked into
    carver.carve(image, [], reuse=True)  # the belt empties
    cloth.cloth_below_x = 150  # a clump comes: carved, and looked into again in every frame
    assert len(carver.carve(image, [big], reuse=True)) == 2 and cloth.runs == 3
    assert len(carver.carve(image, [moved], reuse=True)) == 2 and cloth.runs == 4


def test_on_a_fast_belt_a_large_garment_is_found_again_where_the_belt_carried_it():
    """``shift``: 200 px on, a 320 px garment overlaps its own last box by 0.23, so without the belt's travel it is
    looked into again; with it, it is the same garment, found whole last frame."""
    image = np.zeros((200, 800, 3), np.uint8)
    cloth = _CountingMap(800)
    carver = ClothCarver(CarveConfig(), cloth, _all_cloth, min_score=0.5, seg_scale=SEG_SCALE,
                         typical_area_px=10_000, min_area_px=800, border_margin_px=3)
    big, moved = _blob(40, 40, 360, 160, "garment"), _blob(240, 40, 560, 160, "garment")
    assert carver.carve(image, [big], reuse=True, shift=(200.0, 0.0)) == [big] and cloth.runs == 1
    assert carver.carve(image, [moved], reuse=True, shift=(200.0, 0.0)) == [moved] and cloth.runs == 1  # found
    carver.carve(image, [big], reuse=True)
    assert carver.carve(image, [moved], reuse=True) == [moved] and cloth.runs == 3  # not moved on: looked into


class _ScreenedMap(_CountingMap):
    """And the check's own crop's map: each of its cells scores ``crop_cloth`` (``scores_of``)."""

    def __init__(self, cloth_below_x: float, crop_cloth: float) -> None:
        super().__init__(cloth_below_x)
        self.crop_cloth = crop_cloth

    def scores_of(self, features: np.ndarray, window: int) -> np.ndarray:
        return np.full(features.shape[1:], self.crop_cloth, np.float32)


def test_a_large_garment_its_own_crop_calls_cloth_is_left_whole_without_the_finer_map():
    """``garment_screen``: the check's crop of a large garment (kept by the check, 7 x 7 cells) calls it all cloth,
    so the finer map is not run and the garment stays whole; where the crop does not, or no crop was kept (a score
    reused on a moving belt), the finer map decides as before."""
    image = np.zeros((200, 400, 3), np.uint8)
    big = _blob(40, 40, 360, 160, "garment")
    kept = {big.bbox: (np.zeros((1280, 7, 7), np.float32), (8, 28, 392, 172))}

    def carver(cloth: _ScreenedMap, **cfg) -> ClothCarver:
        return ClothCarver(CarveConfig(**cfg), cloth, _all_cloth, min_score=0.5, seg_scale=SEG_SCALE,
                           typical_area_px=10_000, min_area_px=800, border_margin_px=3, crop_map=kept.get)

    sure = _ScreenedMap(150, crop_cloth=1.0)  # the finer map would call it a clump
    assert carver(sure).carve(image, [big]) == [big] and sure.runs == 0
    doubtful = _ScreenedMap(150, crop_cloth=0.0)
    assert len(carver(doubtful).carve(image, [big])) == 2 and doubtful.runs == 1  # carved by the finer map
    off = _ScreenedMap(150, crop_cloth=1.0)
    assert len(carver(off, garment_screen=None).carve(image, [big])) == 2 and off.runs == 1
    unscored = _ScreenedMap(400, crop_cloth=1.0)
    assert carver(unscored).carve(image, [_blob(40, 40, 360, 161, "garment")]) and unscored.runs == 1


def test_the_check_keeps_the_feature_map_of_each_crop_it_relabels(model_cache: Path):
    """``relabel`` keeps each scored crop's feature map and the frame region it covers (the box grown by the
    context, clipped to the frame); a later ``scores`` call (carving confirming its pieces) does not replace them."""
    check = TextileCheck(TextileCheckConfig())
    image = np.random.default_rng(2).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    garment = Detection(bbox=(10, 20, 100, 80), area=8000.0, centroid=(60.0, 60.0), kind="garment")
    check.relabel(image, [garment])
    features, region = check.crop_map(garment.bbox)
    assert features.shape == (1280, 7, 7) and region == check.crop_region(garment.bbox, (300, 200))
    check.scores(image, [(0, 0, 50, 50)])
    assert check.crop_map(garment.bbox) is not None and check.crop_map((0, 0, 50, 50)) is None
    check.forget_maps()
    assert check.crop_map(garment.bbox) is None


def test_the_pooled_features_of_a_crop_are_its_feature_map_averaged(model_cache: Path):
    """What a head on the features reads (``fit-textile-check --inputs features``): each crop's feature map averaged
    over its cells, one row a box; an empty box gives zeros."""
    check = TextileCheck(TextileCheckConfig())
    image = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    boxes = [(10, 20, 100, 80), (150, 30, 120, 150), (400, 0, 10, 10)]
    logprobs, pooled, empty = check.outputs(image, boxes, features=True, keep_maps=True)
    assert pooled.shape == (3, 1280) and not np.allclose(pooled[0], pooled[1])
    np.testing.assert_allclose(pooled[:2], np.stack([check.crop_map(box)[0].mean(axis=(1, 2)) for box in boxes[:2]]),
                               rtol=1e-5)
    assert empty.tolist() == [False, False, True] and not pooled[2].any()
    np.testing.assert_allclose(logprobs, check.logprobs(image, boxes)[0], atol=1e-5)
    assert check.outputs(image, boxes)[1] is None  # without features=True, no pooling


def test_a_head_on_the_features_scores_crops_and_map_windows_from_the_features(model_cache: Path, tmp_path: Path):
    """A head with ``inputs: features`` scores each crop from its pooled feature map, and the carving map's windows
    from their averaged cells, without the ImageNet classifier in between; a window covering the whole crop scores
    as the crop."""
    rng = np.random.default_rng(4)
    head = TextileHead(rng.normal(0, 0.05, 1280), -0.2, 0.5, 224, {}, 1.0, "features")
    check = TextileCheck(TextileCheckConfig(head=head.save(tmp_path / "head.json")))
    assert check.reads_features and TextileHead.load(tmp_path / "head.json").inputs == "features"
    image = cv2.GaussianBlur(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8), (7, 7), 0)
    box = (30, 20, 224, 224)
    crop_score = check.scores(image, [box])[0]
    _, pooled, _ = check.outputs(image, [box], features=True)
    expected = 1 / (1 + np.exp(-(pooled[0].astype(np.float64) @ head.weights + head.bias)))
    assert crop_score == pytest.approx(expected, abs=1e-5) and 0.02 < crop_score < 0.98
    cells = ClothMap(check).scores(image, box, scale=1.0, window=9)
    assert cells[3, 3] == pytest.approx(crop_score, abs=1e-4)


def test_a_head_on_features_of_another_width_is_refused_in_one_line(model_cache: Path, tmp_path: Path):
    head = TextileHead(np.zeros(1536), 0.0, 0.5, 224, {}, 1.0, "features").save(tmp_path / "lite3.json")
    with pytest.raises(ModelFileError, match="reads 1536 features and .* gives 1280"):
        TextileCheck(TextileCheckConfig(head=head))
    data = json.loads(head.read_text())
    (tmp_path / "odd.json").write_text(json.dumps({**data, "inputs": "pixels"}))
    with pytest.raises(ModelFileError, match="inputs 'pixels' is not logprobs or features"):
        TextileHead.load(tmp_path / "odd.json")


def test_carving_needs_a_fitted_head():
    with pytest.raises(pydantic.ValidationError, match="carve needs a head"):
        TextileCheckConfig(carve={})
    assert TextileCheckConfig(carve={"window": 2}, head="head.json").carve.window == 2


class _NoFeatures(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x.mean(dim=(2, 3)).repeat(1, 334)[:, :1000], dim=1)


def test_a_check_that_names_no_classifier_cannot_carve_and_says_so(tmp_path: Path):
    path = tmp_path / "old.onnx"
    torch.onnx.export(_NoFeatures(), (torch.zeros(1, 3, 8, 8),), str(path), input_names=["crops"],
                      output_names=["logprobs"], dynamic_axes={"crops": {0: "n", 2: "h", 3: "w"}},
                      opset_version=18, dynamo=False)
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps({"format": FORMAT_VERSION, "input_size": 8,
                                                                 "textile_indices": [0]}))
    onnx.save(proto, str(path))
    check = TextileCheck(TextileCheckConfig(model=path))
    with pytest.raises(ModelFileError, match="no feature map or names no classifier weights"):
        ClothMap(check)


@pytest.mark.shared_data
def test_on_real_clumps_carving_finds_garments_and_no_hand_or_object_becomes_one(shared_data: Path, repo_root: Path,
                                                                                 tmp_path: Path):
    """The shipped real-belt line on the development photos of one busy scene (phones, tape, a tray, hands and
    garments touching them), with and without carving."""
    from sorting.apps.detection_bench import DetectionBenchConfig, run_detection_bench

    photos = shared_data / "conveyor-photos"
    dev = json.loads((repo_root / "benchmarks" / "belt_split.json").read_text())["dev"]
    busy = [name for name in dev if Path(name).stem.startswith("color_img36") and len(Path(name).stem) == 12]
    (tmp_path / "names.txt").write_text("\n".join(busy) + "\n")
    summaries = {}
    for carve in ("{}", "null"):
        summaries[carve] = run_detection_bench(DetectionBenchConfig(
            line=repo_root / "serving" / "line-real-belt.yaml", source=photos / "images", boxes=photos / "boxes.csv",
            extra_labels=repo_root / "benchmarks" / "belt_non_garment_boxes.csv", subset=str(tmp_path / "names.txt"),
            out_dir=tmp_path / carve, max_overlays=0, progress=False,
            overrides=[f"segmentation.textile_check.carve={carve}"])).summary
    carved, whole = summaries["{}"], summaries["null"]
    assert carved.frames == whole.frames == len(busy) >= 5
    assert carved.matched["0.5"] > whole.matched["0.5"]
    assert carved.other_as_garment == whole.other_as_garment == 0
    assert {"segment: belt model", "segment: textile check", "segment: carve"} <= set(carved.ms)
    assert "segment: carve" not in whole.ms


def test_a_head_on_the_features_serves_a_real_line_with_carving(shared_data: Path, repo_root: Path, tmp_path: Path):
    """``fit-textile-check --inputs features`` on the development photos but one busy scene, then the shipped line
    with that head on the busy scene, against the same line without the check: the check and carving run on the
    features, find all but at most one of the garments the line without a check finds (28 of 43 at IoU 0.5 with the
    shipped trimmed boxes against this head's 27, 24 each with the outlines' boxes: the head calls one garment an
    object, which IoU 0.3 shows either way), and take far fewer hands and objects for garments (14 without the
    check, 1 with this head, on a scene it never saw)."""
    from sorting.apps.detection_bench import DetectionBenchConfig, run_detection_bench
    from sorting.apps.textile_head import HeadFitConfig, fit_textile_head

    photos = shared_data / "conveyor-photos"
    dev = json.loads((repo_root / "benchmarks" / "belt_split.json").read_text())["dev"]
    busy = [name for name in dev if Path(name).stem.startswith("color_img36") and len(Path(name).stem) == 12]
    (tmp_path / "busy.txt").write_text("\n".join(busy) + "\n")
    (tmp_path / "setup.txt").write_text("\n".join(name for name in dev if name not in busy) + "\n")
    line = repo_root / "serving" / "line-real-belt.yaml"
    labels = repo_root / "benchmarks" / "belt_non_garment_boxes.csv"
    head = fit_textile_head(HeadFitConfig(line=line, photos=photos / "images", boxes=photos / "boxes.csv",
                                          out=tmp_path / "head.json", extra_labels=labels,
                                          subset=str(tmp_path / "setup.txt"), inputs="features", progress=False))
    assert head.inputs == "features" and head.weights.shape == (1280,) and head.info["cross_validation"]["auc"] > 0.9
    summaries = {}
    for name, check in (("features", f"segmentation.textile_check.head={tmp_path / 'head.json'}"),
                        ("none", "segmentation.textile_check=null")):
        summaries[name] = run_detection_bench(DetectionBenchConfig(
            line=line, source=photos / "images", boxes=photos / "boxes.csv", extra_labels=labels,
            subset=str(tmp_path / "busy.txt"), out_dir=tmp_path / name, max_overlays=0, progress=False,
            overrides=[check])).summary
    features, none = summaries["features"], summaries["none"]
    assert features.frames == none.frames == len(busy) >= 5
    assert features.matched["0.5"] >= none.matched["0.5"] - 1 > 0
    assert 2 * features.other_as_garment < none.other_as_garment
    assert features.garment_detections < none.garment_detections  # the rest of the clutter goes to reject
    assert {"segment: textile check", "segment: carve"} <= set(features.ms)
