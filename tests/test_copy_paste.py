"""Copy-paste augmentation of the belt detector's frames: what is pasted, where, and what it hides."""

from __future__ import annotations

import numpy as np
import pytest

from sorting.errors import ConfigError
from sorting.models.belt_detector import KINDS
from sorting.models.multihead import IGNORE_INDEX
from sorting.training.belt_detector_data import DetectorSample
from sorting.training.copy_paste import CopyPaste, cut_out, feathered_alpha

GARMENT, HAND, OBJECT = KINDS.index("garment"), KINDS.index("hand"), KINDS.index("object")
BELT = (120, 60, 20)  # BGR of a blue belt


def _frame(things: list[tuple[tuple[float, float, float, float], int, tuple[int, int, int]]]) -> DetectorSample:
    image = np.zeros((96, 160, 3), np.uint8)
    image[:] = BELT
    for (x0, y0, x1, y1), _, colour in things:
        image[int(y0):int(y1), int(x0):int(x1)] = colour
    return DetectorSample("f", image, [(box, kind) for box, kind, _ in things])


def test_garments_and_objects_are_cut_out_and_hands_are_not():
    sample = _frame([((10, 10, 40, 30), GARMENT, (0, 0, 255)), ((60, 40, 80, 50), OBJECT, (0, 255, 0)),
                     ((140, 0, 160, 40), HAND, (200, 200, 255)), ((100, 80, 102, 82), GARMENT, (255, 0, 0))])
    cutouts, centres = cut_out([sample])
    # the hand stays where it is, the 2-pixel garment is too small to cut out; every centre counts as a place
    assert [c.kind for c in cutouts] == [GARMENT, OBJECT]
    assert cutouts[0].pixels.shape == (20, 30, 3) and (cutouts[0].pixels == (0, 0, 255)).all()
    assert centres.tolist() == [[25, 20], [70, 45], [150, 20], [101, 81]]


def test_the_pasted_box_is_labelled_with_its_kind_and_hides_the_thing_whose_centre_it_covers():
    source = _frame([((20, 20, 60, 50), OBJECT, (0, 255, 0))])
    target = _frame([((30, 25, 50, 45), GARMENT, (0, 0, 255)), ((100, 10, 140, 40), GARMENT, (255, 0, 255))])
    paste = CopyPaste([source], probability=1.0, max_things=1, seed=3)
    image, boxes, ignore = paste.paste(target.image, target.boxes, target.ignore)
    # the only place is the source's centre (40, 35), moved by at most a quarter of the box: the 40 x 30 object
    (box, kind), = [bk for bk in boxes if bk[1] == OBJECT]
    assert box[2] - box[0] == 40 and box[3] - box[1] == 30 and abs((box[0] + box[2]) / 2 - 40) <= 10
    x0, y0 = int(box[0]), int(box[1])
    # the inside is the object's pixels, the edge blends into what was there
    assert (image[y0 + 5: y0 + 25, x0 + 5: x0 + 35] == (0, 255, 0)).all()
    assert not (image[y0, x0 + 20] == (0, 255, 0)).all()
    # the garment under it is out of the loss, the one beside it is still a garment; the input is not changed
    assert ignore == [(30, 25, 50, 45)] and ((100, 10, 140, 40), GARMENT) in boxes and len(boxes) == 2
    assert (target.image == _frame([((30, 25, 50, 45), GARMENT, (0, 0, 255)),
                                    ((100, 10, 140, 40), GARMENT, (255, 0, 255))]).image).all()


def test_pasting_follows_its_probability_and_its_seed():
    frames = [_frame([((10 + 20 * i, 20, 30 + 20 * i, 40), GARMENT, (0, 0, 50 * i)) for i in range(5)])]
    target = _frame([])

    def draws(probability: float, seed: int) -> list[np.ndarray]:
        paste = CopyPaste(frames, probability=probability, max_things=3, seed=seed)
        return [paste.paste(target.image, [], [])[0] for _ in range(20)]

    assert all(image is target.image for image in draws(0.0, 1))  # never: the frame itself
    first = draws(0.5, 7)
    assert 3 <= sum(image is not target.image for image in first) <= 17
    assert all(np.array_equal(a, b) for a, b in zip(first, draws(0.5, 7)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, draws(0.5, 8)))
    # nothing labelled to cut out: nothing pasted
    assert CopyPaste([target], probability=1.0, max_things=3, seed=0).paste(target.image, [], [])[0] is target.image


def test_a_pasted_edge_fades_into_the_frame():
    alpha = feathered_alpha(12, 20)[..., 0]
    assert alpha.shape == (12, 20) and alpha[6, 10] == pytest.approx(1.0)
    assert alpha[0, 10] < 0.2 and alpha[6, 0] < 0.2 and 0.2 < alpha[2, 10] <= 1.0


def test_copy_paste_settings_are_checked():
    from sorting.training.belt_detector_config import load_belt_detector_config

    cfg = load_belt_detector_config(None, ["data.synthetic.frames=8", "augment.copy_paste=0.5",
                                           "augment.paste_things=2"])
    assert cfg.augment.copy_paste == 0.5 and cfg.augment.paste_things == 2
    for bad in ("augment.copy_paste=1.5", "augment.paste_things=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].split(".")[1]):
            load_belt_detector_config(None, ["data.synthetic.frames=8", bad])


def test_the_detector_dataset_learns_the_pasted_things():
    from sorting.models.belt_detector import DetectorArch
    from sorting.training.belt_detector_data import DetectorDataset

    arch = DetectorArch(input_width=160, input_height=96, blocks=5, width=8, size_bins=12, min_size=4, max_size=160,
                        frozen_blocks=1)
    frames = [_frame([((20, 20, 60, 50), OBJECT, (0, 255, 0))]), _frame([((100, 40, 140, 80), GARMENT, (0, 0, 255))])]
    plain = DetectorDataset(frames, arch)
    pasted = DetectorDataset(frames, arch, paste=CopyPaste(frames, probability=1.0, max_things=1, seed=0))
    def kinds(targets) -> set[int]:  # the kinds of the cores (not none, not left out)
        return set(targets[:, 0].tolist()) - {0, IGNORE_INDEX}

    assert kinds(plain[1][1]) == {GARMENT}
    assert any(OBJECT in kinds(pasted[1][1]) for _ in range(6))  # an object pasted into the garment's frame
