"""The learned belt detector: its targets, its decoding, the outlines it gets from the belt model, a tiny model
trained on synthetic conveyor frames end to end (train, export, serve through the line's segmentation), and its
bad inputs. The real-photo data loader is checked on the shared data when present."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from _blue_belt import blue_belt_frame
from sorting.cli import main
from sorting.errors import ConfigError, ModelFileError
from sorting.models.belt_detector import KINDS, STRIDE, DetectorArch
from sorting.models.multihead import IGNORE_INDEX
from sorting.serving.instances import instance_outlines
from sorting.serving import segmentation
from sorting.serving.belt_calibration import set_up_belt
from sorting.serving.detection_eval import iou_matrix
from sorting.serving.learned_detector import DetectorConfig, LearnedBox, LearnedDetector, decode_cells
from sorting.serving.line_config import load_line_config
from sorting.serving.line_segmentation import LineSegmentation
from sorting.datasets.box_labels import photo_group
from sorting.training.belt_detector_data import render_targets, split_by_group, DetectorSample

ARCH = DetectorArch(input_width=160, input_height=96, blocks=5, width=8, size_bins=12, min_size=4, max_size=160,
                    frozen_blocks=1)
TINY = ["model.input_size=[160,96]", "model.blocks=5", "model.width=8", "model.size_bins=12", "model.max_size=160",
        "model.frozen_blocks=1", "model.pretrained=false", "tracking.enabled=false", "progress=false", "threads=1",
        "data.synthetic.size=[480,288]", "data.synthetic.items=12", "batch_size=4"]
TEMPLATE = Path(__file__).resolve().parents[1] / "serving" / "line-colour-6bin.yaml"


def test_targets_mark_each_core_with_its_kind_and_size_and_leave_the_ring_out():
    garment, phone = (20.0, 20.0, 80.0, 60.0), (100.0, 40.0, 124.0, 56.0)
    t = render_targets([(garment, KINDS.index("garment")), (phone, KINDS.index("object"))], ARCH,
                       ignore=[(130.0, 0.0, 160.0, 30.0)])
    gw, gh = ARCH.grid()
    centre = t[:, 0].reshape(gh, gw)
    # the garment's centre cell is its core, the object's is the object's, a far corner is "none"
    assert centre[round(40 / STRIDE - 0.5), round(50 / STRIDE - 0.5)] == KINDS.index("garment")
    assert centre[round(48 / STRIDE - 0.5), round(112 / STRIDE - 0.5)] == KINDS.index("object")
    assert centre[gh - 1, 0] == 0
    assert (centre == IGNORE_INDEX).any()  # the rings around the cores and the ignored box
    assert centre[1, gw - 2] == IGNORE_INDEX  # inside the ignored box: neither a thing nor background
    core = t[:, 0] == KINDS.index("garment")
    centres = ARCH.size_centres()
    assert np.allclose(np.exp(centres[t[core, 1]]), 60, rtol=0.2) and np.allclose(np.exp(centres[t[core, 2]]), 40, rtol=0.2)
    assert (t[~(t[:, 0] > 0), 1] == IGNORE_INDEX).all()  # sizes are learned on cores only


def _cells(things: list[tuple[float, float, float, float, int]], arch: DetectorArch = ARCH) -> np.ndarray:
    """A model output with a probability bump of ``kind`` at each (cx, cy, w, h) (input pixels)."""
    gw, gh = arch.grid()
    cells = np.zeros((len(KINDS) + 2, gh, gw), np.float32)
    cells[0] = 1.0
    yy, xx = np.mgrid[0:gh, 0:gw]
    for cx, cy, w, h, kind in things:
        bump = 0.95 * np.exp(-(((xx + 0.5) * STRIDE - cx) ** 2 + ((yy + 0.5) * STRIDE - cy) ** 2) / (2 * 4.0 ** 2))
        take = bump > (1 - cells[0])
        cells[0][take] = 1 - bump[take]
        cells[1:len(KINDS)][:, take] = 0
        cells[kind][take] = bump[take]
        cells[len(KINDS)][take], cells[len(KINDS) + 1][take] = np.log(w), np.log(h)
    return cells


def test_decoding_gives_each_core_its_box_and_kind_and_cuts_touching_cores_apart():
    cells = _cells([(40, 40, 50, 30, 1), (120, 60, 20, 12, 3)])
    found = decode_cells(cells, list(KINDS), stride=STRIDE, min_score=0.5, scale=(3.0, 3.0), size=(480, 288))
    assert sorted(b.kind for b in found) == ["garment", "object"]
    garment = next(b for b in found if b.kind == "garment")
    assert garment.box == pytest.approx((3 * 15, 3 * 25, 3 * 65, 3 * 55), abs=3 * 2)
    # two garments whose cores touch (their bumps overlap above the threshold) are still two
    touching = decode_cells(_cells([(60, 48, 40, 40, 1), (76, 48, 40, 40, 1)]), list(KINDS), stride=STRIDE,
                            min_score=0.5, scale=(1.0, 1.0), size=(160, 96))
    assert len(touching) == 2
    assert sorted(round(b.centre[0]) for b in touching) == pytest.approx([60, 76], abs=4)


def test_two_peaks_are_two_things_only_when_the_cores_dip_enough_between_them():
    """``peak_dip``: one group of cores with peaks 0.9 and a saddle of 0.6 between them is cut at 0.8 (the saddle is
    below 0.8 of the lower peak) and kept whole at 0.5."""
    gw, gh = ARCH.grid()
    cells = np.zeros((len(KINDS) + 2, gh, gw), np.float32)
    cells[0] = 1.0
    cells[len(KINDS)], cells[len(KINDS) + 1] = np.log(20.0), np.log(12.0)
    for col, core in zip(range(10, 17), (0.7, 0.9, 0.7, 0.6, 0.7, 0.9, 0.7)):
        cells[0, 10:13, col], cells[1, 10:13, col] = 1 - core, core
    decode = {dip: decode_cells(cells, list(KINDS), stride=STRIDE, min_score=0.5, scale=(1.0, 1.0), size=(160, 96),
                                peak_dip=dip) for dip in (0.8, 0.5)}
    assert len(decode[0.8]) == 2 and len(decode[0.5]) == 1
    assert decode[0.5][0].centre[0] == pytest.approx((13 + 0.5) * STRIDE)


def _untrained_detector(tmp_path: Path) -> Path:
    import torch

    from sorting.models.belt_detector import BeltDetectorNet
    from sorting.models.belt_detector_export import export_belt_detector

    torch.manual_seed(0)
    net = BeltDetectorNet(ARCH, pretrained=False)
    for layer in net.modules():  # weights far from their initial scale: outputs that vary across the frame
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.weight, std=0.3)
    return export_belt_detector(net, tmp_path / "untrained.onnx")


def test_views_average_the_frame_and_its_mirror_images(tmp_path: Path):
    """With all four views the cells of a mirrored frame are the mirrored cells of the frame, whatever the network
    learned (an untrained one is no mirror of itself: one view is not); two views are the mean of the frame's and
    its top-bottom mirror's cells."""
    onnx = _untrained_detector(tmp_path)
    frame = np.random.default_rng(1).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    one, two, four = (LearnedDetector(DetectorConfig(model=onnx, views=v)) for v in (1, 2, 4))
    for flip_frame, flip_cells in ((1, 2), (0, 1)):  # left-right, top-bottom
        mirrored = np.ascontiguousarray(np.flip(frame, flip_frame))
        assert np.allclose(four.cells(mirrored), np.flip(four.cells(frame), flip_cells), atol=1e-5)
        assert not np.allclose(one.cells(mirrored), np.flip(one.cells(frame), flip_cells), atol=0.1)
    upside_down = np.flip(one.cells(np.ascontiguousarray(frame[::-1])), 1)
    assert np.allclose(two.cells(frame), (one.cells(frame) + upside_down) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="views"):
        DetectorConfig(model=onnx, views=5)


def test_outlines_share_the_foreground_between_overlapping_boxes_and_fall_back_to_an_ellipse():
    mask = np.zeros((100, 200), np.uint8)
    cv2.rectangle(mask, (10, 10), (110, 60), 255, -1)  # two touching garments seen as one blob
    boxes = [(20.0, 20.0, 120.0, 120.0), (100.0, 20.0, 220.0, 120.0), (260.0, 100.0, 380.0, 180.0)]  # full res
    (left, a_left, _), (right, a_right, _), (empty, a_empty, shown) = instance_outlines(mask, boxes, 0.5)
    assert a_left + a_right <= cv2.countNonZero(mask)  # no pixel counted twice
    assert cv2.boundingRect(left)[0] < cv2.boundingRect(right)[0]
    x, y, w, h = cv2.boundingRect(empty)  # nothing in the mask there: the box's ellipse
    assert (x, y, x + w, y + h) == pytest.approx((130, 50, 190, 90), abs=2) and a_empty > 0 and not shown


class _FixedBoxes:
    """Stands in for the ONNX detector: the same boxes on every frame."""

    def __init__(self, boxes: list[LearnedBox]) -> None:
        self.boxes = boxes

    def detect(self, frame: np.ndarray, full_size: tuple[int, int]) -> list[LearnedBox]:
        return list(self.boxes)


def test_the_outline_box_fits_the_garment_where_the_learned_size_is_off(monkeypatch):
    base = segmentation.SegmentationConfig()
    set_up = set_up_belt([blue_belt_frame(seed)[0] for seed in range(4)], base).segmentation
    image, things = blue_belt_frame(10, garments=("red",))
    red = things[0].box
    cx, cy = (red[0] + red[2]) / 2, (red[1] + red[3]) / 2
    too_big = LearnedBox((cx - 60, cy - 50, cx + 60, cy + 50), "garment", 0.9)  # the learned size is off
    bare = LearnedBox((280.0, 120.0, 330.0, 170.0), "garment", 0.6)  # nothing in the mask there
    monkeypatch.setattr(segmentation, "LearnedDetector", lambda cfg: _FixedBoxes([too_big, bare]))
    boxes = {}
    for mode in ("outline", "learned"):
        cfg = segmentation.SegmentationConfig.model_validate(
            {**base.model_dump(), **set_up, "detector": {"model": "stub.onnx", "box": mode}})
        found = segmentation.BeltSegmenter(cfg).segment(image)
        assert len(found) == 2 and [d.kind for d in found] == ["garment", "garment"]
        boxes[mode] = [(x, y, x + w, y + h) for x, y, w, h in (d.bbox for d in found)]
    assert iou_matrix([red], boxes["outline"][:1])[0, 0] > 0.8
    assert iou_matrix([red], boxes["learned"][:1])[0, 0] < 0.5
    assert boxes["learned"][0] == pytest.approx(too_big.box, abs=1)
    assert boxes["outline"][1] == boxes["learned"][1] == pytest.approx(bare.box, abs=1)  # the mask does not show it


def test_photos_are_split_by_scene_group():
    samples = [DetectorSample(f"images/color_img{n}.jpg", np.zeros((2, 2, 3), np.uint8), []) for n in range(100, 180)]
    train, val = split_by_group(samples, val_share=0.25, group_size=10, seed=3)
    assert len(val) == 20 and len(train) == 60
    assert not {photo_group(s.name, 10) for s in train} & {photo_group(s.name, 10) for s in val}
    train, val = split_by_group(samples, val_share=0.0, group_size=10, seed=3)
    assert len(train) == 80 and val == []  # 0: every photo trains


def test_a_detector_trains_on_every_frame_when_nothing_validates(tmp_path: Path, capsys, caplog):
    """val_share 0: all frames train (the last epoch is kept; there is nothing to select or calibrate on)."""
    caplog.set_level("INFO", logger="sorting.training")
    out = tmp_path / "det.onnx"
    args = ["train-belt-detector", "--out", str(out), *TINY, "data.synthetic.frames=8", "optim.epochs=1",
            "data.val_share=0", f"output_dir={tmp_path / 'runs'}"]
    assert main(args) == 0
    assert "no validation frames" in capsys.readouterr().out and out.is_file()
    metrics = json.loads((next((tmp_path / "runs").iterdir()) / "metrics.json").read_text())
    assert metrics["train_frames"] == 8 and metrics["val_frames"] == 0
    assert "kept epoch 1 (no validation frames)" in caplog.text and "val score" not in caplog.text
    from sorting.training.belt_detector_config import load_belt_detector_config

    with pytest.raises(ConfigError, match="val_share=0"):
        load_belt_detector_config(None, [*TINY, "data.synthetic.frames=8", "data.val_share=0",
                                         "early_stopping.select=best", "early_stopping.patience=3"])


def _line(tmp_path: Path, onnx: Path) -> Path:
    data = yaml.safe_load(TEMPLATE.read_text())
    data["segmentation"]["detector"] = {"model": str(onnx), "min_score": 0.5}
    data["camera"].update(width=480, height=288)
    data["tracking"]["decision_line_px"] = 360
    data["segmentation"]["ignore_rois"] = []
    data["policy"]["bins"] = str((TEMPLATE.parent / data["policy"]["bins"]).resolve())
    data["calibration"].update(reference_roi=None, continuous=False)
    line = tmp_path / "line.yaml"
    line.write_text(yaml.safe_dump(data))
    return line


@pytest.mark.slow
def test_a_tiny_detector_trains_on_synthetic_frames_exports_and_serves(tmp_path: Path, capsys):
    """train-belt-detector on synthetic frames writes an ONNX file the line's segmentation runs with."""
    out = tmp_path / "det.onnx"
    args = ["train-belt-detector", "--out", str(out), *TINY, "data.synthetic.frames=8", "optim.epochs=3",
            f"output_dir={tmp_path / 'runs'}"]
    assert main(args) == 0
    assert "belt detector:" in capsys.readouterr().out and out.is_file()
    detector = LearnedDetector(DetectorConfig(model=out))
    assert detector.input_size == (160, 96) and detector.kinds == list(KINDS)
    frame = np.full((288, 480, 3), 128, np.uint8)
    assert detector.cells(frame).shape == (len(KINDS) + 2, 24, 40)
    seg = LineSegmentation(load_line_config(_line(tmp_path, out)))
    detections = seg.segment(frame)
    assert all(d.kind in KINDS[1:] for d in detections)
    assert len(seg.crops(frame, detections)) == len(detections)
    run = next((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_frames"] == 6 and metrics["val_frames"] == 2 and (run / "belt_detector.onnx").is_file()
    names = json.loads((run / "frames.json").read_text())
    assert len(names["train"]) == 6 and len(names["val"]) == 2 and not set(names["train"]) & set(names["val"])


def test_bad_detector_files_and_recipes_give_one_clear_error(tmp_path: Path):
    with pytest.raises(ModelFileError, match="not found"):
        LearnedDetector(DetectorConfig(model=tmp_path / "missing.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="cannot load belt detector"):
        LearnedDetector(DetectorConfig(model=junk))
    from sorting.training.belt_detector_config import load_belt_detector_config

    with pytest.raises(ConfigError, match="data.photos"):
        load_belt_detector_config(None, ["data.synthetic.frames=2"])
    with pytest.raises(ConfigError):
        load_belt_detector_config(None, ["data.photos=x", "data.boxes=y", "model.max_size=2"])


def test_kind_weights_make_a_missed_object_cost_more_than_a_missed_garment():
    """``loss.kind_weights`` overrides ``core_weight`` for the kinds it names; the others keep it."""
    import torch
    from sorting.training.belt_detector import _criteria
    from sorting.training.belt_detector_config import BeltDetectorTrainConfig, load_belt_detector_config

    def recipe(*overrides: str) -> BeltDetectorTrainConfig:
        return load_belt_detector_config(None, ["data.synthetic.frames=4", *overrides])

    def centre_loss(config: BeltDetectorTrainConfig, wrong: str) -> float:
        """The centre loss of a garment cell and an object cell, the ``wrong`` one called "none"."""
        garment, obj = KINDS.index("garment"), KINDS.index("object")
        logits = torch.full((2, len(KINDS)), -4.0)
        logits[0, 0 if wrong == "garment" else garment] = 4.0
        logits[1, 0 if wrong == "object" else obj] = 4.0
        return float(_criteria(config)["centre"](logits, torch.tensor([garment, obj])))

    assert _criteria(recipe("loss.kind_weights.object=24"))["centre"].weight.tolist() == [1.0, 8.0, 8.0, 24.0]
    assert centre_loss(recipe(), "object") == pytest.approx(centre_loss(recipe(), "garment"))
    weighted = recipe("loss.kind_weights.object=24")
    assert centre_loss(weighted, "object") > 2 * centre_loss(weighted, "garment")
    with pytest.raises(ConfigError, match="kind_weights"):
        recipe("loss.kind_weights.object=0")
    with pytest.raises(ConfigError, match="kind_weights"):
        recipe("loss.kind_weights.phone=2")


@pytest.mark.shared_data
def test_the_trainer_reads_only_the_development_photos(shared_data: Path, repo_root: Path):
    """With the split's dev subset, no held-out photo is read, and every box is scaled into the input frame."""
    from sorting.training.belt_detector_data import photo_samples

    split = json.loads((repo_root / "benchmarks" / "belt_split.json").read_text())
    photos = shared_data / "conveyor-photos"
    samples = photo_samples(photos / "images", photos / "boxes.csv", DetectorArch(),
                            extra_labels=[repo_root / "benchmarks" / "belt_non_garment_boxes.csv"],
                            subset=f"{repo_root / 'benchmarks' / 'belt_split.json'}:dev")
    names = {s.name for s in samples}
    assert names == set(split["dev"]) and not names & set(split["heldout"])
    assert all(s.image.shape == (136, 240, 3) for s in samples[:5])
    boxes = [b for s in samples for b, _ in s.boxes]
    assert boxes and all(0 <= b[0] < b[2] <= 240.5 and 0 <= b[1] < b[3] <= 136.5 for b in boxes)
    assert {k for s in samples for _, k in s.boxes} == {1, 2, 3}


def test_the_detector_augmentation_follows_the_run_seed() -> None:
    """Same seed, same draws (albumentations has its own generator: an unseeded one made identical runs differ)."""
    from sorting.training.belt_detector_data import build_augment

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (136, 240, 3), dtype=np.uint8)

    def draws(seed: int) -> list[np.ndarray]:
        augment = build_augment((0.75, 1.3), 0.1, 8.0, 1.0, seed=seed)
        return [augment(image=image, bboxes=[[40, 30, 120, 100]], kinds=[0])["image"] for _ in range(3)]

    first, again, other = draws(7), draws(7), draws(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
