"""Copy-paste augmentation of the belt detector: cut-outs of labelled things, laid on other frames with their boxes,
and what it leaves out of the loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _blue_belt import blue_belt_frame
from sorting.cli import main
from sorting.errors import ConfigError
from sorting.models.belt_detector import KINDS, DetectorArch
from sorting.training.belt_detector_config import load_belt_detector_config
from sorting.training.belt_detector_data import DetectorDataset, DetectorSample
from sorting.training.belt_detector_paste import CopyPaste, Cutout, build_bank, cut_out, row_band

GARMENT, OBJECT = KINDS.index("garment"), KINDS.index("object")
ARCH = DetectorArch(input_width=480, input_height=270, blocks=5, width=8, size_bins=12, min_size=4, max_size=270,
                    frozen_blocks=1)


def _sample(seed: int, name: str, **kwargs: object) -> DetectorSample:
    frame, things = blue_belt_frame(seed, **kwargs)
    boxes = [(tuple(float(v) for v in t.box), KINDS.index(t.kind)) for t in things]
    return DetectorSample(name, frame, boxes)


def test_a_garment_is_cut_out_without_the_belt_around_it():
    sample = _sample(0, "a.jpg")
    (x0, y0, x1, y1), _ = sample.boxes[0]  # the red garment
    grown = (x0 - 6, y0 - 6, x1 + 6, y1 + 6)  # a loose hand-drawn box
    mask = cut_out(sample.image, grown)
    assert mask is not None and mask.shape == (y1 - y0 + 12, x1 - x0 + 12)
    patch = sample.image[int(y0) - 6:int(y1) + 6, int(x0) - 6:int(x1) + 6].astype(int)
    red = (patch[..., 2] > 120) & (patch[..., 0] < 90)
    assert (mask[red] == 1).mean() > 0.95  # the cloth is in
    assert (mask[~red] == 0).mean() > 0.9  # the belt in the loose box is out
    assert cut_out(sample.image, (10.0, 10.0, 12.0, 12.0)) is None  # too small to be a thing


def test_the_bank_takes_lone_things_of_the_wanted_kinds_only():
    sample = _sample(1, "a.jpg", phone=True)
    kinds = [k for _, k in sample.boxes]
    assert OBJECT in kinds
    garments_only = build_bank([sample], [GARMENT])
    assert len(garments_only) == kinds.count(GARMENT) and {c.kind for c in garments_only} == {GARMENT}
    both = build_bank([sample], [GARMENT, OBJECT])
    assert len(both) == len(kinds) and all(c.source == "a.jpg" for c in both)
    (box, kind) = sample.boxes[0]
    overlapped = DetectorSample("b.jpg", sample.image, [(box, kind), ((box[0] + 10, box[1], box[2] + 10, box[3]), kind)])
    assert build_bank([overlapped], [GARMENT]) == []  # two labels on each other: a cut-out would hold the neighbour


def _paster(bank: list[Cutout], **kwargs: float) -> CopyPaste:
    settings = {"p": 1.0, "max_items": 1, "touching": 0.0, "seed": 0, **kwargs}
    return CopyPaste(bank, (40.0, 220.0), **settings)  # type: ignore[arg-type]


def test_a_pasted_thing_shows_where_its_box_says_and_never_comes_from_the_same_photo():
    source, target = _sample(2, "source.jpg"), _sample(3, "target.jpg", garments=())
    bank = build_bank([source], [GARMENT])
    for seed in range(5):
        image, boxes, ignore = _paster(bank, seed=seed)(target)
        assert len(boxes) == 1 and not ignore
        (x0, y0, x1, y1), kind = boxes[0]
        assert kind == GARMENT and 40 <= y0 and y1 <= 220  # in the band of rows where things lie
        changed = np.abs(image.astype(int) - target.image.astype(int)).sum(axis=2) > 30
        ys, xs = np.nonzero(changed)
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        assert changed[int(y0):int(y1), int(x0):int(x1)].mean() > 0.3
    assert np.array_equal(_paster(bank, p=0.0)(target)[0], target.image)  # p 0: the frame as it is
    assert _paster(bank)(source)[1] == source.boxes  # the only cut-outs are its own: nothing pasted


def test_things_laid_against_others_touch_them_and_a_thing_buried_leaves_the_loss():
    source = _sample(4, "source.jpg")
    target = _sample(5, "target.jpg", garments=("white",))
    bank = build_bank([source], [GARMENT])
    (tx0, ty0, tx1, ty1), _ = target.boxes[0]
    for seed in range(5):
        _, boxes, _ = _paster(bank, touching=1.0, seed=seed)(target)
        (x0, y0, x1, y1), _ = boxes[-1]
        gap_x = max(x0 - tx1, tx0 - x1)
        gap_y = max(y0 - ty1, ty0 - y1)
        assert max(gap_x, gap_y) <= 0  # the boxes touch or overlap a little
    big = Cutout(np.full((120, 160, 3), 200, np.uint8), np.ones((120, 160), np.float32), GARMENT, "other.jpg")
    small = DetectorSample("small.jpg", target.image, [((200.0, 100.0, 230.0, 130.0), GARMENT)])
    paster = CopyPaste([big], (0.0, 270.0), p=1.0, max_items=1, touching=1.0, seed=0)
    _, boxes, ignore = paster(small)
    assert len(boxes) == 1 and boxes[0][1] == GARMENT and boxes[0][0] != small.boxes[0][0]  # the pasted one
    assert ignore == [small.boxes[0][0]]  # wholly under the pasted one: neither a thing nor background


def test_pasted_frames_give_the_detector_more_cores_to_learn():
    source, target = _sample(6, "source.jpg"), _sample(7, "target.jpg", garments=("red",))
    plain = DetectorDataset([target], ARCH)
    pasted = DetectorDataset([target], ARCH, paste=_paster(build_bank([source], [GARMENT]), max_items=3))
    cores = [int((ds[0][1][:, 0] == GARMENT).sum()) for ds in (plain, pasted)]
    assert cores[1] > cores[0] > 0


def test_the_band_of_rows_comes_from_the_labels():
    samples = [_sample(seed, f"{seed}.jpg") for seed in range(3)]
    low, high = row_band(samples)
    tops = [b[1] for s in samples for b, _ in s.boxes]
    bottoms = [b[3] for s in samples for b, _ in s.boxes]
    assert min(tops) <= low < high <= max(bottoms)


def test_bad_paste_settings_give_one_clear_error():
    with pytest.raises(ConfigError):
        load_belt_detector_config(None, ["data.synthetic.frames=8", "augment.paste.p=1.5"])
    with pytest.raises(ConfigError):
        load_belt_detector_config(None, ["data.synthetic.frames=8", "augment.paste.kinds=[sock]"])
    with pytest.raises(ValueError, match="cut-out"):
        CopyPaste([], (0.0, 1.0), p=1.0, max_items=1, touching=0.0, seed=0)


def test_a_tiny_detector_trains_with_copy_paste_and_says_so(tmp_path: Path, capsys):
    """Synthetic frames as training photos' stand-in: the bank is cut from the training frames, the file records the
    paste share."""
    out = tmp_path / "det.onnx"
    tiny = ["model.input_size=[160,96]", "model.blocks=5", "model.width=8", "model.size_bins=12",
            "model.max_size=160", "model.frozen_blocks=1", "model.pretrained=false", "tracking.enabled=false",
            "progress=false", "threads=1", "data.synthetic.size=[480,288]", "data.synthetic.items=12", "batch_size=4",
            "data.synthetic.frames=8", "optim.epochs=1", "augment.paste.p=1.0", f"output_dir={tmp_path / 'runs'}"]
    assert main(["train-belt-detector", "--out", str(out), *tiny]) == 0
    from sorting.serving.onnx_file import json_metadata, open_session

    meta = json_metadata(open_session(out, threads=1, what="belt detector"), out, key="belt_detector", version=1,
                         what="belt detector", writer="test")
    assert meta["trained_on"]["copy_paste"] == 1.0
    assert json.loads((next((tmp_path / "runs").iterdir()) / "frames.json").read_text())["train"]
