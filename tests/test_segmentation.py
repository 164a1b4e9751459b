"""Segmentation and tracking on a tiny synthetic belt clip, plus colour calibration.

(The tracker tests live here because tests/test_tracking.py is taken by the MLflow-tracking tests.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from sorting.errors import DataError
from sorting.serving.colour_calibration import ColourCorrector, measure_gains, write_gains
from sorting.datasets.preprocess import garment_crop_box
from sorting.serving.segmentation import BeltSegmenter, Detection, NeighbourMasker, SegmentationConfig
from sorting.serving.tracking import Tracker, TrackingConfig

W, H, FPS, SPEED = 320, 240, 30.0, 150.0
BELT = (95, 100, 100)
PALETTE = {"red": (40, 40, 200), "blue": (200, 90, 30), "yellow": (30, 210, 230), "white": (235, 235, 235)}
STAIN = (150, 60, 14)  # cx, cy, radius: a static dark stain on the belt
PATCH = (4, 196, 36, 36)  # x, y, w, h: white reference card at the lower-left edge
PATCH_BGR = (180, 180, 180)  # light grey: no channel saturates under the test's cast


@dataclass
class ClipItem:
    id: int
    colour: str
    entry_frame: int
    cy: int
    w: int
    h: int
    hard: str | None = None
    track: list[tuple[int, float, float]] = field(default_factory=list)


def make_belt_clip(*, n_frames: int = 140, seed: int = 0, hard: bool = True, cast=(1.0, 1.0, 1.0)):
    """Tiny conveyor clip: coloured rectangles moving +x, a static stain, a reference patch.

    The belt runs empty for the first frames (line start-up) while the belt model learns the
    stain. ``hard`` adds a touching pair and an item cut off by the top edge. ``cast``
    multiplies the BGR channels of the whole scene (a colour cast of the light).
    Returns (frames, items); ``item.track`` holds (frame, cx, cy) of the visible part.
    """
    rng = np.random.default_rng(seed)
    items = [
        ClipItem(1, "red", 10, 70, 50, 40),
        ClipItem(2, "blue", 24, 160, 56, 44),
        ClipItem(3, "yellow", 38, 100, 48, 48),
        ClipItem(4, "white", 52, 60, 54, 40),
    ]
    if hard:
        items += [
            ClipItem(5, "red", 68, 95, 50, 40, hard="touching"),
            ClipItem(6, "blue", 76, 133, 50, 40, hard="touching"),
            ClipItem(7, "yellow", 84, 8, 50, 40, hard="cut_off"),
        ]
    yy, xx = np.ogrid[:H, :W]
    cx, cy, r = STAIN
    stain = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    noise = rng.normal(0, 3, (4, H, W, 3)).astype(np.float32)  # sensor noise, cycled
    frames = []
    for f in range(n_frames):
        img = np.empty((H, W, 3), np.float32)
        img[:] = BELT
        img += noise[f % len(noise)]
        img[stain] = (35, 35, 40)
        x, y, pw, ph = PATCH
        img[y : y + ph, x : x + pw] = PATCH_BGR
        for it in items:
            x_centre = -it.w / 2 + SPEED / FPS * (f - it.entry_frame)
            x0, x1 = int(round(x_centre - it.w / 2)), int(round(x_centre + it.w / 2))
            y0, y1 = it.cy - it.h // 2, it.cy + it.h // 2
            cx0, cx1, cy0, cy1 = max(0, x0), min(W, x1), max(0, y0), min(H, y1)
            if f < it.entry_frame or cx1 <= cx0:
                continue
            img[cy0:cy1, cx0:cx1] = np.asarray(PALETTE[it.colour]) + noise[(f + 1) % 4, cy0:cy1, cx0:cx1]
            it.track.append((f, (cx0 + cx1) / 2, (cy0 + cy1) / 2))
        img *= np.asarray(cast, np.float32)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames, items


def seg_config() -> SegmentationConfig:
    return SegmentationConfig(min_area_px=400, morph_kernel_px=5, ignore_rois=[PATCH], static_s=1.0)


def track_config(**kw) -> TrackingConfig:
    return TrackingConfig(decision_line_px=240, max_match_px=25, min_hits=3, **kw)


def run_tracker(frames, cfg=None):
    seg = BeltSegmenter(seg_config(), fps=FPS)
    tracker = Tracker(cfg or track_config(), speed_px_s=SPEED)
    decided, ids_per_frame = [], []
    for i, img in enumerate(frames):
        upd = tracker.update(seg.segment(img), i, i / FPS)
        decided += [(tr, "lost") for tr in upd.lost]
        decided += [(tr, "line") for tr in tracker.due()]
        ids_per_frame.append({tr.id: tr.centroid for tr in upd.active if tr.confirmed})
    decided += [(tr, "shutdown") for tr in tracker.drain()]
    return tracker, decided, ids_per_frame


# -- segmentation ----------------------------------------------------------------------------


def test_segmentation_finds_items_and_ignores_stain_and_patch():
    frames, items = make_belt_clip(hard=False)
    seg = BeltSegmenter(seg_config(), fps=FPS)
    checked = 0
    for f, img in enumerate(frames):
        dets = seg.segment(img)
        if f < 40:
            continue  # the stain is learned after static_s (1 s) of start-up
        for det in dets:
            x, y, w, h = det.bbox
            assert not (x <= STAIN[0] <= x + w and y <= STAIN[1] <= y + h and det.area < 1000), "stain detected"
            assert y + h < PATCH[1] or x > PATCH[0] + PATCH[2], "reference patch detected"
        for it in items:
            point = next(((x, y) for g, x, y in it.track if g == f), None)
            if point is None or point[0] < it.w / 2 + 6 or point[0] > W - it.w / 2 - 6:
                continue  # only fully visible items
            hits = [d for d in dets if abs(d.centroid[0] - point[0]) < 6 and abs(d.centroid[1] - point[1]) < 6]
            assert len(hits) == 1, (f, it.id, dets)
            assert hits[0].area == pytest.approx(it.w * it.h, rel=0.2)
            assert not hits[0].edges and not hits[0].overlap_suspect
            checked += 1
    assert checked > 100


@pytest.mark.parametrize(("brighter_threshold", "found"), [(None, set()), (18, {"pale"})])
def test_brighter_threshold_finds_pale_garments_but_not_darker_stains(brighter_threshold, found):
    """A grey garment 22 levels brighter than the belt, and a moving stain 22 levels darker: both stay under
    ``threshold`` 30; a lower ``brighter_threshold`` finds the garment and still not the stain."""
    cfg = seg_config().model_copy(update={"brighter_threshold": brighter_threshold})
    seg = BeltSegmenter(cfg, fps=FPS)
    belt = np.full((H, W, 3), BELT, np.uint8)
    seen: set[str] = set()
    for f in range(30):
        img = belt.copy()
        x = 20 + 4 * f
        img[40:90, x:x + 50] = np.add(BELT, 22).astype(np.uint8)  # pale garment
        img[150:190, x:x + 40] = np.subtract(BELT, 22).astype(np.uint8)  # stain riding on the belt
        for det in seg.segment(img):
            seen.add("pale" if det.centroid[1] < 120 else "stain")
    assert seen == found


@pytest.mark.parametrize("check_colours", [True, False])
def test_two_colour_check_runs_only_when_asked(check_colours):
    """A blob of two plain halves shows two colour regions; with ``check_colours`` off (a model whose layout head
    judges several garments) the costly check is skipped and nothing is flagged."""
    seg = BeltSegmenter(seg_config().model_copy(update={"shape_check_every": 1}), fps=FPS)
    seg.check_colours = check_colours
    img = np.full((H, W, 3), BELT, np.uint8)
    seg.segment(img)
    img[60:180, 100:160] = PALETTE["red"]
    img[60:180, 160:220] = PALETTE["blue"]
    (det,) = seg.segment(img, shape_min_area=0.0)
    assert det.two_colour_regions is check_colours


@pytest.mark.parametrize("kernel_px", [5, 7, 8])
def test_detection_box_is_where_the_garment_is_for_odd_and_even_kernels(kernel_px):
    """Morphology with an even kernel (7 px at scale 0.5 -> 4 px) must not move the mask (it once put every box
    4 px down and right of its garment)."""
    seg = BeltSegmenter(seg_config().model_copy(update={"morph_kernel_px": kernel_px}), fps=FPS)
    img = np.full((H, W, 3), BELT, np.uint8)
    seg.segment(img)
    img[60:180, 100:200] = PALETTE["red"]
    (det,) = seg.segment(img)
    assert det.bbox == (100, 60, 100, 120)
    assert det.centroid == pytest.approx((149.5, 119.5), abs=0.6)


def test_crop_paints_the_neighbour_out_and_keeps_the_garment():
    """A crop's margin reaching into a neighbour: the neighbour's pixels become belt-coloured, the garment's
    own pixels are untouched; a crop without a neighbour in reach is the plain cut."""
    seg = BeltSegmenter(seg_config(), fps=FPS)
    img = np.full((H, W, 3), BELT, np.uint8)
    seg.segment(img)
    img[60:180, 100:200] = PALETTE["red"]  # the garment
    img[60:180, 206:256] = PALETTE["blue"]  # a neighbour 6 px away: inside the red one's 10% crop margin
    img[200:230, 20:60] = PALETTE["blue"]  # far away
    dets = seg.segment(img)
    red = min(dets, key=lambda d: abs(d.centroid[0] - 150) + abs(d.centroid[1] - 120))
    far = min(dets, key=lambda d: d.centroid[0])
    assert len(dets) == 3
    masker = NeighbourMasker(seg.cfg.scale)
    box = garment_crop_box(img.shape, red.bbox)
    x, y, w, h = box
    crop = masker.crop(img, box, red, dets)
    plain = img[y : y + h, x : x + w]
    blue = np.all(plain == PALETTE["blue"], axis=2)
    assert blue.sum() > 100 and not np.all(crop == PALETTE["blue"], axis=2).any()
    own = np.all(plain == PALETTE["red"], axis=2)
    assert np.array_equal(crop[own], plain[own])
    assert np.abs(crop[blue].astype(int) - BELT).max() <= 2  # painted with the belt's colour
    far_box = garment_crop_box(img.shape, far.bbox)
    fx, fy, fw, fh = far_box
    assert np.array_equal(masker.crop(img, far_box, far, dets), img[fy : fy + fh, fx : fx + fw])


def test_segmentation_flags_edges():
    frames, items = make_belt_clip(hard=True)
    seg = BeltSegmenter(seg_config(), fps=FPS)
    edges = set()
    for img in frames:
        for det in seg.segment(img):
            edges |= det.edges
    assert {"left", "right", "top"} <= edges


# -- tracking ---------------------------------------------------------------------------------


def test_one_decision_per_item_with_stable_ids():
    frames, items = make_belt_clip(hard=False)
    _, decided, ids_per_frame = run_tracker(frames)
    assert len(decided) == len(items)
    assert all(reason == "line" for _, reason in decided)
    for it in items:  # each GT item was followed by exactly one id while confirmed
        owners = {tid for f, x, y in it.track for tid, (cx, cy) in ids_per_frame[f].items()
                  if abs(cx - x) < 20 and abs(cy - y) < 20}
        assert len(owners) == 1, (it.id, owners)


def test_hard_items_are_flagged():
    frames, _ = make_belt_clip(hard=True)
    tracker, decided, _ = run_tracker(frames)
    summaries = [tracker.summary(tr) for tr, _ in decided]
    assert sum(s.cut_off for s in summaries) == 1
    assert sum(s.overlap for s in summaries) >= 1
    assert sum(not (s.overlap or s.cut_off) for s in summaries) == 4


def test_lost_item_gets_one_lost_decision():
    tracker = Tracker(track_config(max_missed_frames=2), speed_px_s=SPEED)
    lost = []
    for f in range(8):
        x = 60 + 5 * f
        dets = [Detection(bbox=(x - 20, 100, 40, 40), area=1600.0, centroid=(float(x), 120.0))] if f < 5 else []
        lost += tracker.update(dets, f, f / FPS).lost
        assert not tracker.due()
    assert len(lost) == 1 and not tracker.drain()


def _travel(tracker: Tracker, boxes_at, frames: int, *, entry_edge: bool = False) -> list:
    """Feed ``boxes_at(f)`` (list of x, y, w, h) as detections for ``frames`` frames; return decided tracks.
    ``entry_edge``: boxes starting at x <= 0 are flagged as touching the left (entry) edge."""
    decided = []
    for f in range(frames):
        dets = [Detection(bbox=b, area=float(b[2] * b[3]), centroid=(b[0] + b[2] / 2, b[1] + b[3] / 2),
                          edges=frozenset({"left"}) if entry_edge and b[0] <= 0 else frozenset())
                for b in boxes_at(f)]
        decided += tracker.update(dets, f, f / FPS).lost + tracker.due()
    return decided + tracker.drain()


def test_piece_of_a_garment_riding_inside_its_box_is_not_a_second_item():
    # a sleeve cut off by a shadow band: a small blob inside the garment's box, moving with it from entry
    step = SPEED / FPS
    tracker = Tracker(track_config(), speed_px_s=SPEED)
    decided = _travel(tracker, lambda f: [(int(step * f), 100, 80, 70), (int(step * f) + 50, 95, 30, 25)], 80)
    assert len(decided) == 1 and decided[0].area == 80 * 70


def test_small_garment_beside_a_large_one_keeps_its_own_decision():
    step = SPEED / FPS
    tracker = Tracker(track_config(), speed_px_s=SPEED)
    decided = _travel(tracker, lambda f: [(int(step * f), 100, 80, 70), (int(step * f) + 20, 185, 30, 25)], 80)
    assert len(decided) == 2


@pytest.mark.parametrize("first_seen_on_edge, items", [(False, 1), (True, 2)])
def test_piece_split_off_while_entering_is_not_a_second_item(first_seen_on_edge: bool, items: int):
    # A dark sock cut in two by a belt-bright sheen: the foot is seen on the entry edge; the leg, too small
    # there, first appears beside it a few frames later, away from the edge: one item. A second garment
    # seen on the entry edge beside a young track stays its own item.
    step = int(SPEED / FPS)
    first = 0 if first_seen_on_edge else 8
    tracker = Tracker(track_config(), speed_px_s=SPEED)

    def boxes(f: int) -> list:
        foot = (step * f - 20, 100, 60, 30)
        leg = (step * f - 25 - (40 if first_seen_on_edge else 0), 64, 30, 34)  # 2 px above the foot
        return [foot, leg] if f >= first else [foot]

    decided = _travel(tracker, boxes, 90, entry_edge=True)
    assert len(decided) == items


@pytest.mark.parametrize(("kinds", "summary"), [
    (["garment"] * 6, None),
    (["object"] * 4 + ["garment"] * 2, "object"),
    (["not_cloth"] * 4 + ["garment"] * 2, "not_cloth"),  # the textile check's objects are a reject reason apart
    (["not_cloth"] * 2 + ["garment"] * 4, None),  # seen as one in less than half of its frames
])
def test_an_item_seen_as_a_non_garment_in_half_its_frames_says_which(kinds: list[str], summary: str | None):
    step = SPEED / FPS
    tracker = Tracker(track_config(), speed_px_s=SPEED)
    for f, kind in enumerate(kinds):
        x = 60 + int(step * f)
        tracker.update([Detection(bbox=(x, 100, 40, 40), area=1600.0, centroid=(x + 20.0, 120.0),
                                  kind="object" if kind == "not_cloth" else kind, not_cloth=kind == "not_cloth")],
                       f, f / FPS)
    (track,) = tracker.drain()
    assert tracker.summary(track).not_garment == summary


def test_static_blob_never_becomes_an_item():
    tracker = Tracker(track_config(), speed_px_s=SPEED)
    stain = Detection(bbox=(140, 50, 20, 20), area=400.0, centroid=(150.0, 60.0))
    for f in range(30):
        assert not tracker.update([stain] if f < 20 else [], f, f / FPS).lost
    assert not tracker.due() and not tracker.drain()


@pytest.mark.parametrize("aggregation", ["mean", "log_sum"])
def test_aggregation_weights_views(aggregation):
    tracker = Tracker(track_config(aggregation=aggregation), speed_px_s=SPEED)
    tracker.update([Detection(bbox=(80, 100, 40, 40), area=1600.0, centroid=(100.0, 120.0))], 0, 0.0)
    tr = tracker.tracks[0]
    tr.views.add({"colour": np.array([0.8, 0.2])}, ood=False, whole=True, weight=1.0, frame=0)
    tr.views.add({"colour": np.array([0.4, 0.6])}, ood=True, whole=False, weight=0.25, frame=2)
    p = tr.views.probs()["colour"]
    assert p.sum() == pytest.approx(1.0, abs=1e-5) and p[0] > 0.6
    assert tr.views.n == 2 and tr.views.ood == 1


# -- colour calibration ---------------------------------------------------------------------


def test_calibration_recovers_a_colour_cast():
    cast = (0.72, 1.04, 1.3)  # warm light
    frames, _ = make_belt_clip(hard=False, n_frames=30, cast=cast)
    # a garment covers the patch in a few frames: the median over frames ignores it
    for img in frames[:5]:
        x, y, w, h = PATCH
        img[y : y + h, x : x + w] = (20, 60, 200)
    gains = measure_gains(frames, PATCH, target_level=180)
    corrected = ColourCorrector(gains.white_balance, gains.exposure).apply(frames[-1])
    x, y, w, h = PATCH
    patch = np.median(corrected[y : y + h, x : x + w].reshape(-1, 3), axis=0)
    assert np.allclose(patch, PATCH_BGR, atol=3)
    belt = np.median(corrected[200:230, 200:300].reshape(-1, 3), axis=0)  # belt colour comes back too
    assert np.allclose(belt, BELT, atol=4)
    assert gains.white_balance[1] == 1.0 and gains.white_balance[0] > 1.3 and gains.white_balance[2] < 0.85


def test_colour_correction_rounds_and_saturates_per_channel():
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    gains = np.array([1.37, 1.0, 0.61])
    expected = np.clip(np.rint(image * gains), 0, 255)
    corrected = ColourCorrector(gains, 1.0).apply(image[5:30, 7:50])  # a crop: a strided view
    assert corrected.dtype == np.uint8
    np.testing.assert_array_equal(corrected, expected[5:30, 7:50])


def test_calibration_rejects_unusable_patch():
    frames = [np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)]
    with pytest.raises(DataError):
        measure_gains(frames, (0, 0, 20, 20))


def test_write_gains_keeps_other_keys(tmp_path: Path):
    line = tmp_path / "line.yaml"
    line.write_text("name: x\nbelt: {speed_px_s: 100}\ncalibration: {reference_roi: [0, 0, 4, 4]}\n")
    frames = [np.full((20, 20, 3), (100, 120, 140), np.uint8)]
    write_gains(line, measure_gains(frames, (0, 0, 4, 4), target_level=120))
    data = yaml.safe_load(line.read_text())
    assert data["name"] == "x" and data["belt"] == {"speed_px_s": 100}
    assert data["calibration"]["reference_roi"] == [0, 0, 4, 4]
    assert data["calibration"]["white_balance"] == pytest.approx([1.2, 1.0, 120 / 140], rel=1e-3)
    assert (tmp_path / "line.yaml.bak").is_file()
