"""Real belts: the belt colour model, the belt region, touching garments, non-garments, bad frames, and the
``calibrate --belt`` / ``evaluate-detection`` commands, on tiny synthetic blue-belt frames (tests/_blue_belt.py)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from _blue_belt import BELT_BOTTOM, BELT_TOP, COLOURS, H, W, Thing, _garment, blue_belt_frame

from sorting.cli import main
from sorting.errors import ConfigError
from sorting.serving.belt_calibration import (
    BOX_TRIM,
    EDGE_STRIP_SHARE,
    NECK_SHARE_OF_ITEM,
    SPLIT_REGION_SHARE,
    set_up_belt,
)
from sorting.serving.belt_colour_model import distances, fit_belt_colour
from sorting.serving.blob_split import SplitConfig, split_blob
from sorting.serving.colour_foreground import ColourForeground, FrameError
from sorting.serving.detection_eval import iou_matrix
from sorting.serving.line_config import load_line_config
from sorting.serving.line_segmentation import LineSegmentation
from sorting.serving.non_garment import NonGarmentConfig
from sorting.serving.segmentation import BeltSegmenter, SegmentationConfig
from sorting.serving.textile_check import TextileCheckConfig

TEMPLATE = Path(__file__).resolve().parents[1] / "serving" / "line-colour-6bin.yaml"


@pytest.fixture(scope="module")
def belt_cfg() -> SegmentationConfig:
    """The segmentation ``calibrate --belt`` sets up from four frames of the synthetic blue belt."""
    base = SegmentationConfig(split_touching=SplitConfig(), non_garment=NonGarmentConfig())
    setup = set_up_belt([blue_belt_frame(seed)[0] for seed in range(4)], base)
    return SegmentationConfig.model_validate({**base.model_dump(), **setup.segmentation})


def _best(things: list, detections: list) -> list[tuple[float, str]]:
    """Per thing: the IoU of its best detection and that detection's kind."""
    boxes = [(x, y, x + w, y + h) for x, y, w, h in (d.bbox for d in detections)]
    iou = iou_matrix([t.box for t in things], boxes)
    return [(float(row.max()), detections[int(row.argmax())].kind) if len(boxes) else (0.0, "") for row in iou]


def test_belt_colour_fit_ignores_the_garments_on_the_belt():
    rng = np.random.default_rng(0)
    level = rng.uniform(0.5, 1.4, (4000, 1))
    belt = np.clip(np.array([120, 85, 35]) * level + rng.normal(0, 3, (4000, 3)), 0, 255)
    garments = np.concatenate([np.tile(c, (600, 1)) + rng.normal(0, 5, (600, 3)) for c in COLOURS.values()])
    model = fit_belt_colour(np.concatenate([belt, garments]).astype(np.uint8))
    assert np.quantile(distances(model, belt.astype(np.uint8)), 0.95) < 3.0
    far = (distances(model, np.clip(garments, 0, 255).astype(np.uint8)) > model.max_distance).reshape(4, 600)
    assert far[:2].mean(axis=1).min() > 0.9  # red and white are not belt-coloured at all
    # black and navy are dark and bluish: the belt's colour across frames cannot exclude them; the local
    # test against the belt beside them does (test_set_up_finds_the_belt_band_and_every_kind_of_thing)


def test_a_garment_of_the_belts_colour_but_much_brighter_is_found(belt_cfg: SegmentationConfig):
    """A light-blue garment on a blue belt: near the belt's chromaticity (belt-coloured to the belt model, not
    surely belt), twice its brightness, which the belt never is beside itself; with the brightness test off it
    is taken for belt."""
    image, _ = blue_belt_frame(16, garments=())
    rng = np.random.default_rng(16)
    light = (228, 175, 70)  # the belt (120, 85, 35) x 1.9, a little greener
    assert belt_cfg.belt_colour.sure_distance < distances(belt_cfg.belt_colour, np.uint8([light]))[0] < \
        belt_cfg.belt_colour.max_distance
    box = _garment(image, rng, (240, 130), 40, light)
    light_blue = [Thing("garment", "light blue", box)]
    found = _best(light_blue, BeltSegmenter(belt_cfg).segment(image))
    assert belt_cfg.belt_colour.local_bright_ratio == 1.6 and found[0][0] >= 0.5
    off = belt_cfg.model_copy(update={"belt_colour": belt_cfg.belt_colour.model_copy(update={"local_bright_ratio": 0})})
    assert _best(light_blue, BeltSegmenter(off).segment(image))[0][0] < 0.5


def test_a_blob_that_looks_like_the_belt_around_it_is_dropped(belt_cfg: SegmentationConfig):
    """Plain belt that the local tests took for a thing (a patch whose local belt colour was spread from elsewhere)
    has the colour of the belt around it: dropped. A navy garment beside it differs from its surroundings and stays,
    and so does a blob with no belt around it to compare with; with the test off, all three stay."""
    image, _ = blue_belt_frame(3, garments=())
    image[100:140, 300:350] = COLOURS["navy"]
    belt = image[123:128, 228:233].copy()
    image[BELT_TOP:BELT_BOTTOM, 200:260] = COLOURS["red"]  # a red band across the belt ...
    image[123:128, 228:233] = belt  # ... with a hole of belt in it
    fg = np.zeros((H, W), np.uint8)
    fg[100:140, 100:150] = 255  # plain belt
    fg[100:140, 300:350] = 255  # the navy garment
    fg[BELT_TOP:BELT_BOTTOM, 200:260] = 255
    fg[123:128, 228:233] = 0
    fg[124:127, 229:232] = 255  # a blob of belt in the hole: too little belt around it (16 px) to compare with
    region = np.zeros((H, W), np.uint8)
    region[BELT_TOP:BELT_BOTTOM] = 255
    model = belt_cfg.belt_colour.model_copy(update={"belt_like_chroma": 2.0})  # opt-in
    kept = ColourForeground(model, np.full((H, W), 255, np.uint8), region, sigma_px=20).drop_belt_like(fg, image, region)
    assert kept[110, 120] == 0 and kept[120, 320] == 255 and kept[125, 230] == 255 and kept[60, 230] == 255
    off = model.model_copy(update={"belt_like_chroma": 0.0})
    unchanged = ColourForeground(off, np.full((H, W), 255, np.uint8), region, sigma_px=20).drop_belt_like(fg, image, region)
    assert np.array_equal(unchanged, fg)


def test_set_up_finds_the_belt_band_and_every_kind_of_thing(belt_cfg: SegmentationConfig):
    rows = sorted(p[1] for p in belt_cfg.belt_region)
    assert BELT_TOP <= rows[0] <= BELT_TOP + 8 and BELT_BOTTOM - 8 <= rows[-1] <= BELT_BOTTOM  # rails left out
    assert belt_cfg.belt_model == "colour" and belt_cfg.frame_size == (W, H)
    image, things = blue_belt_frame(10, hand=True, phone=True)
    detections = BeltSegmenter(belt_cfg).segment(image)
    found = _best(things, detections)
    for thing, (iou, kind) in zip(things, found):
        assert iou >= 0.5, f"{thing.colour} {thing.kind} found at IoU {iou:.2f}"
        assert kind == thing.kind, f"{thing.colour} {thing.kind} called {kind}"
    assert len(detections) == len(things)  # nothing on the rails, no shadows, no fragments


def test_a_skin_coloured_rag_inside_the_belt_is_a_garment_an_arm_from_its_edge_a_hand(belt_cfg: SegmentationConfig):
    """A smooth, long, skin-coloured blob is a hand only where it reaches the belt region's edge: a hand is at the
    end of an arm that comes from beside the belt; a pale pink rag lying on the belt touches none of its edges."""
    assert belt_cfg.non_garment is not None and belt_cfg.non_garment.hand_reaches_in
    image, _ = blue_belt_frame(13, garments=())
    top = max(p[1] for p in belt_cfg.belt_region[:2])
    skin = (120, 160, 215)
    rag = np.array([[120, 120], [230, 112], [232, 146], [122, 152]], np.int32)  # inside the belt, 3.4 x as long
    arm = np.array([[300, 0], [340, 0], [352, top + 110], [318, top + 112]], np.int32)  # over the top rail
    for outline in (rag, arm):
        cv2.fillPoly(image, [outline], skin)
    things = [Thing("garment", "pink", (120, 112, 233, 153)), Thing("hand", "skin", (318, top, 353, top + 113))]
    for thing, (iou, kind) in zip(things, _best(things, BeltSegmenter(belt_cfg).segment(image))):
        assert iou >= 0.5 and kind == thing.kind, f"{thing.colour} {thing.kind}: IoU {iou:.2f}, {kind}"
    anywhere = belt_cfg.non_garment.model_copy(update={"hand_reaches_in": False})
    kinds = [k for _, k in _best(things, BeltSegmenter(belt_cfg.model_copy(update={"non_garment": anywhere}))
                                 .segment(image))]
    assert kinds == ["hand", "hand"]  # without the rule the rag is a hand too


def _without_edge_strips(cfg: SegmentationConfig) -> SegmentationConfig:
    assert cfg.belt_colour is not None
    return cfg.model_copy(update={"belt_colour": cfg.belt_colour.model_copy(update={"edge_strip_px": 0})})


def test_belt_region_follows_a_bumped_camera(belt_cfg: SegmentationConfig):
    image, things = blue_belt_frame(11, shift=12)  # the belt band now starts 12 px lower: rail inside the region
    plain = _without_edge_strips(belt_cfg)  # the rail strip's blob would be dropped as one along the edge anyway
    fixed = BeltSegmenter(plain.model_copy(update={"belt_region_follow_px": 0.0})).segment(image)
    followed = BeltSegmenter(plain.model_copy(update={"belt_region_follow_px": 20.0})).segment(image)
    assert any(d.bbox[2] > 0.8 * W for d in fixed)  # the rail strip, as wide as the frame
    assert not any(d.bbox[2] > 0.8 * W for d in followed)
    assert min(iou for iou, _ in _best(things, followed)) >= 0.5


def test_strips_along_the_belt_edge_are_dropped_and_a_garment_over_the_rail_kept(belt_cfg: SegmentationConfig):
    """A rail's bright lip showing inside the belt region is a blob of its own, a reject for nothing; set up from
    the belt's width, the segmentation drops blobs lying wholly that close to the edge. A garment lying over the
    rail reaches further into the belt and is found whole."""
    assert belt_cfg.belt_colour is not None and belt_cfg.belt_region is not None
    belt_width = BELT_BOTTOM - BELT_TOP
    assert abs(belt_cfg.belt_colour.edge_strip_px - EDGE_STRIP_SHARE * belt_width) <= 0.1 * belt_width
    image, things = blue_belt_frame(12, garments=("red", "navy"))
    top = max(p[1] for p in belt_cfg.belt_region[:2])  # the region's top edge, where it is lowest
    lip = (260, top + 1, 400, top + 7)  # a strip of the rail's colour just inside the region
    cv2.rectangle(image, lip[:2], (lip[2] - 1, lip[3] - 1), (170, 170, 165), -1)
    x0, y0, x1, y1 = _garment(image, np.random.default_rng(3), (160, top), 30, COLOURS["black"])
    things = [*things, Thing("garment", "black", (x0, max(y0, top), x1, y1))]  # the segmentation sees the belt only
    kept = BeltSegmenter(_without_edge_strips(belt_cfg)).segment(image)
    dropped = BeltSegmenter(belt_cfg).segment(image)
    assert max(iou for iou, _ in _best([Thing("object", "rail", lip)], kept)) >= 0.3  # off: the lip is found
    assert _best([Thing("object", "rail", lip)], dropped)[0][0] < 0.1
    for thing, (iou, kind) in zip(things, _best(things, dropped)):
        assert iou >= 0.5 and kind == thing.kind, f"{thing.colour} {thing.kind}: IoU {iou:.2f}, {kind}"
    assert len(dropped) == len(things)
    too_far = belt_cfg.belt_colour.model_copy(update={"edge_strip_px": belt_width})
    with pytest.raises(ConfigError, match="edge_strip_px .* whole belt region"):
        BeltSegmenter(belt_cfg.model_copy(update={"belt_colour": too_far})).segment(image)


def test_touching_garments_of_two_colours_are_cut_apart(belt_cfg: SegmentationConfig):
    image, _ = blue_belt_frame(12, garments=())
    rng = np.random.default_rng(1)
    cv2.rectangle(image, (150, 90), (215, 170), COLOURS["red"], -1)  # a red and a white garment, touching,
    cv2.rectangle(image, (216, 110), (280, 150), COLOURS["white"], -1)  # the white one smaller: not convex
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    whole = BeltSegmenter(belt_cfg.model_copy(update={"split_touching": None, "non_garment": None})).segment(image)
    cut = BeltSegmenter(belt_cfg.model_copy(update={"non_garment": None})).segment(image)
    assert len(whole) == 1 and len(cut) == 2
    lefts = sorted(d.bbox[0] for d in cut)
    assert abs(lefts[0] - 150) <= 4 and abs(lefts[1] - 216) <= 6


def test_items_joined_by_a_narrow_bridge_are_cut_apart(belt_cfg: SegmentationConfig):
    image, _ = blue_belt_frame(15, garments=())
    rng = np.random.default_rng(3)
    cv2.rectangle(image, (100, 80), (170, 160), COLOURS["red"], -1)  # two red garments of one colour,
    cv2.rectangle(image, (240, 90), (310, 170), COLOURS["red"], -1)
    cv2.line(image, (170, 120), (240, 130), COLOURS["red"], 5)  # joined by a strap 5 px wide
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    necks = belt_cfg.split_touching.model_copy(update={"neck_px": 8})
    whole = BeltSegmenter(belt_cfg).segment(image)  # off by default
    cut = BeltSegmenter(belt_cfg.model_copy(update={"split_touching": necks})).segment(image)
    assert len(whole) == 1 and len(cut) == 2
    assert all(d.bbox[2] >= 68 for d in cut)  # each a whole garment (the strap shared out, not a third item)


def test_a_plain_garment_beside_a_striped_one_of_its_colour_is_cut_off_with_region_share(belt_cfg: SegmentationConfig):
    """A red garment touching a white one with red stripes: the red colour is the plain garment and the stripes, so
    it is scattered and the blob stays whole, unless one colour may be scattered when its largest region alone is
    ``region_share`` of the blob."""
    image, _ = blue_belt_frame(12, garments=())
    rng = np.random.default_rng(1)
    cv2.rectangle(image, (150, 90), (215, 170), COLOURS["white"], -1)
    for x in range(166, 199, 16):  # stripes short of the garment's edges: the white stays one region
        cv2.rectangle(image, (x, 106), (x + 7, 154), COLOURS["red"], -1)
    cv2.rectangle(image, (216, 110), (280, 150), COLOURS["red"], -1)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    no_ng = {"non_garment": None}
    whole = BeltSegmenter(belt_cfg.model_copy(update=no_ng)).segment(image)
    shared = belt_cfg.split_touching.model_copy(update={"region_share": 0.15})
    cut = BeltSegmenter(belt_cfg.model_copy(update={**no_ng, "split_touching": shared})).segment(image)
    assert len(whole) == 1 and len(cut) == 2
    boxes = sorted(d.bbox for d in cut)
    assert abs(boxes[0][0] - 150) <= 4 and abs(boxes[1][0] - 216) <= 6 and abs(boxes[1][1] - 110) <= 6


def test_a_split_keeps_every_pixel_of_the_blob():
    """Cut off the plain red garment, the split gives every other pixel to the nearer part: the stripes and a second
    red garment beyond the striped one are not dropped with the red colour's smaller regions."""
    roi = np.zeros((120, 260, 3), np.uint8)
    roi[:] = (120, 60, 20)
    own = np.zeros((120, 260), np.uint8)
    for (x0, y0, x1, y1), colour in (((10, 20, 70, 100), "red"), ((71, 10, 170, 110), "white"),
                                     ((171, 40, 215, 80), "red")):
        cv2.rectangle(roi, (x0, y0), (x1, y1), COLOURS[colour], -1)
        cv2.rectangle(own, (x0, y0), (x1, y1), 255, -1)
    for x in range(90, 160, 16):
        cv2.rectangle(roi, (x, 26), (x + 7, 94), COLOURS["red"], -1)
    roi = np.clip(roi + np.random.default_rng(0).normal(0, 5, roi.shape), 0, 255).astype(np.uint8)
    parts = split_blob(own, roi, SplitConfig(region_share=0.15))
    assert len(parts) == 2
    assert sorted(cv2.boundingRect(part)[0] for part in parts) == [10, pytest.approx(70, abs=3)]
    union = np.bitwise_or.reduce(parts)
    assert np.count_nonzero(union) >= 0.99 * np.count_nonzero(own)  # the second red garment is in a part
    assert union[60, 190] == 255


def test_a_printed_garment_is_not_cut(belt_cfg: SegmentationConfig):
    image, _ = blue_belt_frame(13, garments=())
    box = _garment(image, np.random.default_rng(2), (240, 130), 45, COLOURS["white"])
    for x in range(box[0], box[2], 8):  # red stripes across a white garment: many small regions of each colour
        stripe = image[box[1]:box[3], x:x + 4]
        stripe[stripe.sum(axis=2) > 500] = COLOURS["red"]
    detections = BeltSegmenter(belt_cfg).segment(image)
    assert len(detections) == 1 and detections[0].kind == "garment"
    shared = belt_cfg.split_touching.model_copy(update={"region_share": 0.15})  # both colours scattered: whole still
    assert len(BeltSegmenter(belt_cfg.model_copy(update={"split_touching": shared})).segment(image)) == 1


def test_unusable_frames_raise_one_clear_error(belt_cfg: SegmentationConfig):
    segmenter = BeltSegmenter(belt_cfg)
    with pytest.raises(FrameError, match="frame is 640x480, the line's belt was set up on 480x270"):
        segmenter.segment(np.zeros((480, 640, 3), np.uint8))
    with pytest.raises(FrameError, match="black"):
        segmenter.segment(np.zeros((H, W, 3), np.uint8))
    with pytest.raises(FrameError, match="saturated"):
        segmenter.segment(np.full((H, W, 3), 255, np.uint8))
    image, things = blue_belt_frame(14)  # and the segmenter goes on with the next good frame
    assert min(iou for iou, _ in _best(things, segmenter.segment(image))) >= 0.5


@pytest.mark.parametrize("line", ["line-real-belt.yaml", "line-colour-6bin.yaml"])
def test_every_belt_model_refuses_a_black_or_saturated_frame(line: str, repo_root: Path):
    """The real belt's colour model (whose darkest band is belt-coloured, so a black frame looked like an empty
    belt) and the synthetic lines' background model (which took a white frame for one big item) refuse both."""
    cfg = load_line_config(repo_root / "serving" / line).segmentation
    width, height = cfg.frame_size or (640, 480)
    segmenter = BeltSegmenter(cfg)
    for level, what in ((0, "black"), (6, "black"), (255, "saturated"), (250, "saturated")):
        with pytest.raises(FrameError, match=f"frame unusable \\({what}: mean level {level}\\)"):
            segmenter.segment(np.full((height, width, 3), level, np.uint8))


def test_the_background_model_does_not_start_from_a_black_frame(repo_root: Path):
    """A line whose camera starts capped: the black frames are refused, and the background is learned from the
    first frame that shows the belt, so the item that then comes is found alone."""
    segmenter = BeltSegmenter(load_line_config(repo_root / "serving" / "line-colour-6bin.yaml").segmentation)
    belt = np.full((480, 640, 3), (120, 120, 110), np.uint8)
    item = belt.copy()
    cv2.rectangle(item, (200, 150), (320, 260), (40, 60, 230), -1)
    for _ in range(3):
        with pytest.raises(FrameError, match="black"):
            segmenter.segment(np.zeros_like(belt))
    assert segmenter.segment(belt) == []
    found = segmenter.segment(item)
    assert len(found) == 1
    x, y, w, h = found[0].bbox
    assert abs(x - 200) <= 6 and abs(y - 150) <= 6 and abs(w - 121) <= 10 and abs(h - 111) <= 10


def test_belt_region_outside_the_frame_is_a_config_error(tmp_path: Path):
    data = yaml.safe_load(TEMPLATE.read_text())
    data["segmentation"].update(belt_region=[[0, 0], [2000, 0], [2000, 400], [0, 400]], frame_size=[640, 480])
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="outside the 640x480 frame"):
        load_line_config(path)
    data["segmentation"].update(belt_region=None, frame_size=None, belt_model="colour")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="calibrate --belt"):
        load_line_config(path)


def _photo_folder(folder: Path, seeds: range, **kw: object) -> list[list]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        image, things = blue_belt_frame(seed, **kw)
        cv2.imwrite(str(folder / f"frame{seed:03d}.png"), image)
        out.append(things)
    return out


def test_calibrate_belt_makes_a_line_from_frames_and_keeps_the_rest(tmp_path: Path, capsys):
    _photo_folder(tmp_path / "setup", range(4))
    line = tmp_path / "lines" / "line-test-belt.yaml"
    line.parent.mkdir()
    args = ["calibrate", "--belt", "--line", str(line), "--source", str(tmp_path / "setup")]
    assert main(args) == 2  # a new line needs a template to start from
    assert "give --template" in capsys.readouterr().err
    assert main([*args, "--template", str(TEMPLATE), "--camera", "rtsp://cam/1"]) == 0
    assert "belt region" in capsys.readouterr().out
    cfg = load_line_config(line)
    template = load_line_config(TEMPLATE)
    assert cfg.name == "test-belt" and cfg.camera.source == "rtsp://cam/1" and (cfg.camera.width, cfg.camera.height) == (W, H)
    assert cfg.policy.bins == template.policy.bins and cfg.model.path == template.model.path  # paths follow the move
    assert cfg.segmentation.belt_model == "colour" and cfg.segmentation.non_garment is not None
    assert cfg.segmentation.textile_check == TextileCheckConfig()  # the packaged ImageNet check, default score
    # touching items are cut at bridges narrower than a quarter of a typical item's side (at the segmentation scale)
    seg = cfg.segmentation
    assert seg.expected_item_area_px and seg.split_touching is not None
    assert seg.split_touching.neck_px == round(NECK_SHARE_OF_ITEM * seg.expected_item_area_px ** 0.5 * seg.scale) > 0
    assert seg.split_touching.region_share == SPLIT_REGION_SHARE
    assert seg.box_trim == BOX_TRIM  # garment boxes trimmed to their body
    assert cfg.calibration.reference_roi is None
    # the decision line keeps its share of the frame along the belt (480 of 640 px -> 360 of 480 px)
    share = template.tracking.decision_line_px / template.camera.width
    assert cfg.tracking.decision_line_px == pytest.approx(share * W, abs=0.1)
    assert cfg.tracking.model_copy(update={"decision_line_px": 0}) == \
        template.tracking.model_copy(update={"decision_line_px": 0})
    assert (tmp_path / "lines" / "line-test-belt-belt.png").is_file()
    # a camera is a moving belt; the new line logs to a file of its own and says what it is in a comment
    assert cfg.tracking.scene == "belt" and str(cfg.log.path) == "runs/serve/test-belt.sqlite"
    assert line.read_text().startswith("# Line test-belt: set up by `textile-sorter calibrate --belt` from 4 frames")
    data = yaml.safe_load(line.read_text())
    data["tracking"]["max_views"] = 4  # an integrator's own setting survives a second set-up
    data["segmentation"]["box_trim"] = 0.0  # as does turning the trimmed boxes off
    line.write_text(yaml.safe_dump(data))
    assert main(["calibrate", "--belt", "--line", str(line), "--source", str(tmp_path / "setup"), "--frames", "3"]) == 0
    assert load_line_config(line).tracking.max_views == 4 and load_line_config(line).segmentation.box_trim == 0
    assert yaml.safe_load(line.with_name(line.name + ".bak").read_text())["tracking"]["max_views"] == 4
    # a camera is a moving belt; the new line logs to a file of its own and says what it is in a comment


def test_calibrate_belt_on_a_folder_of_photos_makes_a_still_line(tmp_path: Path, capsys):
    """Photos (each a new scene) make a still line; a second set-up keeps the comment and an explicit scene."""
    _photo_folder(tmp_path / "photos", range(4))
    line = tmp_path / "line-photos.yaml"
    assert main(["calibrate", "--belt", "--line", str(line), "--source", str(tmp_path / "photos"),
                 "--template", str(TEMPLATE)]) == 0
    assert "tracking.scene still" in capsys.readouterr().out
    assert load_line_config(line).tracking.scene == "still"
    header = [t for t in line.read_text().splitlines() if t.startswith("#")]
    assert header and "tracking.scene: still" in " ".join(header)
    data = yaml.safe_load(line.read_text())
    data["tracking"]["scene"] = "belt"  # the integrator's choice (frames of a moving belt saved as images)
    line.write_text("# my line\n" + yaml.safe_dump(data))
    assert main(["calibrate", "--belt", "--line", str(line), "--frames", "2"]) == 0
    assert load_line_config(line).tracking.scene == "belt" and line.read_text().startswith("# my line\n")
    assert main(["calibrate", "--belt", "--line", str(line), "--frames", "2", "--scene", "still"]) == 0
    assert load_line_config(line).tracking.scene == "still"
    assert main(["calibrate", "--line", str(line), "--scene", "belt"]) == 2  # --scene goes with --belt


def test_calibrate_belt_leaves_black_and_saturated_frames_out(tmp_path: Path, caplog, capsys):
    """A capped lens and a blown exposure among the set-up photos: they made the belt's colour grey and the region
    the whole frame, or failed with a message about the belt's edges; now they are left out by name, and a set-up
    with nothing else says what to check."""
    photos = tmp_path / "photos"
    _photo_folder(photos, range(3))
    cv2.imwrite(str(photos / "frame100.png"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(photos / "frame101.png"), np.full((H, W, 3), 255, np.uint8))
    line = tmp_path / "line.yaml"
    args = ["calibrate", "--belt", "--line", str(line), "--template", str(TEMPLATE)]
    assert main([*args, "--source", str(photos)]) == 0
    assert "set-up frame 4 of 5 is black" in caplog.text and "set-up frame 5 of 5 is saturated" in caplog.text
    _photo_folder(tmp_path / "good", range(3))  # the same three photos alone
    clean = tmp_path / "clean.yaml"
    assert main(["calibrate", "--belt", "--line", str(clean), "--template", str(TEMPLATE), "--source",
                 str(tmp_path / "good")]) == 0
    assert load_line_config(line).segmentation == load_line_config(clean).segmentation  # as if they were not there
    for name in ("frame000.png", "frame001.png", "frame002.png"):
        (photos / name).unlink()
    assert main([*args, "--source", str(photos)]) == 1
    assert "all 2 set-up frames are black or saturated" in capsys.readouterr().err


def test_evaluate_detection_scores_photos_and_names_what_it_could_not_use(tmp_path: Path, belt_cfg, capsys):
    photos = tmp_path / "photos"
    things = _photo_folder(photos, range(20, 23), hand=True)
    cv2.imwrite(str(photos / "small.png"), np.zeros((100, 100, 3), np.uint8))  # a frame of another size
    rows = ["image,x0,y0,x1,y1,kind"]
    for seed, frame in zip(range(20, 23), things):
        rows += [f"frame{seed:03d}.png,{','.join(map(str, t.box))},{t.kind}" for t in frame]
    rows[-1] = "photos/" + rows[-1]  # the same photo by another name: one frame, its boxes with the others
    rows += ["frame020.png,1,2,three,4,garment", "frame021.png,900,10,990,50,garment", "small.png,,,,,"]
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    data = yaml.safe_load(TEMPLATE.read_text())
    data["segmentation"] = json.loads(belt_cfg.model_dump_json())
    data["calibration"].update(reference_roi=None, continuous=False)  # the template's patch is off these frames
    data["policy"]["bins"] = str((TEMPLATE.parent / data["policy"]["bins"]).resolve())
    (tmp_path / "line.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "eval"
    assert main(["evaluate-detection", "--line", str(tmp_path / "line.yaml"), str(photos), "--boxes",
                 str(tmp_path / "boxes.csv"), "--out", str(out), "--no-progress", "--repeat", "2"]) == 0
    printed = capsys.readouterr().out
    assert "not four numbers" in printed and "outside the 480x270 image" in printed and "small.png: frame is 100x100" in printed
    assert "photos/frame022.png: the same photo as frame022.png" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 3 and summary["garments"] == 12
    assert summary["interval_0.5"] is None  # frames 20-22 are one scene: no interval
    assert summary["recall"]["0.5"] >= 0.9 and summary["precision"]["0.5"] >= 0.9
    assert summary["other_found"] == 3 and summary["other_as_garment"] == 0
    assert summary["ms"]["segment+crops cpu"]["max"] > 0
    # each stage of the segmentation timed on its own (this line has no textile check)
    stages = {k for k in summary["ms"] if k.startswith("segment: ")}
    assert stages == {"segment: belt model"}
    assert 0 < summary["ms"]["segment: belt model"]["mean"] <= summary["ms"]["segment"]["mean"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["frame020.png", "frame021.png", "frame022.png"]


def test_evaluate_detection_scores_a_synthetic_clip_with_the_same_code(tmp_path: Path):
    from sorting.apps.detection_bench import DetectionBenchConfig, run_detection_bench
    from sorting.datasets.synth.conveyor import render_conveyor_clip

    clip = render_conveyor_clip(tmp_path / "clip", n_items=4, seed=3, belt_speed_px_s=900, stains=1, progress=False)
    report = run_detection_bench(DetectionBenchConfig(line=TEMPLATE, source=clip.video_path,
                                                      ground_truth=clip.ground_truth_path, out_dir=tmp_path / "eval",
                                                      every=2, max_overlays=3, progress=False))
    s = report.summary
    assert s.frames == (clip.n_frames + 1) // 2 and s.garments > 0
    assert s.recall["0.5"] >= 0.8  # the classical belt model on its own synthetic belt
    assert len(list((tmp_path / "eval" / "overlays").iterdir())) == 3


@pytest.mark.shared_data
def test_real_belt_line_on_a_few_development_photos(shared_data: Path, repo_root: Path, tmp_path: Path):
    """The shipped real-belt line on 12 development photos (benchmarks/belt_split.json): a floor, not the figure."""
    photos = shared_data / "conveyor-photos"
    dev = json.loads((repo_root / "benchmarks" / "belt_split.json").read_text())["dev"]
    (tmp_path / "names.txt").write_text("\n".join(dev[::15]) + "\n")
    from sorting.apps.detection_bench import DetectionBenchConfig, run_detection_bench

    report = run_detection_bench(DetectionBenchConfig(
        line=repo_root / "serving" / "line-real-belt.yaml", source=photos / "images", boxes=photos / "boxes.csv",
        extra_labels=repo_root / "benchmarks" / "belt_non_garment_boxes.csv", subset=str(tmp_path / "names.txt"),
        out_dir=tmp_path / "eval", max_overlays=0, progress=False))
    s = report.summary
    assert s.frames == 12 and not report.problems and not report.skipped
    assert s.recall["0.5"] >= 0.6 and s.precision["0.5"] >= 0.6


def _still_line(tmp_path: Path, belt_cfg, route: str):
    """A line for still photos of the blue belt: every frame a new scene, hands and objects routed by ``route``."""
    from sorting.serving.line_config import LineConfig

    data = yaml.safe_load(TEMPLATE.read_text())
    seg = json.loads(belt_cfg.model_dump_json())
    seg["non_garment"]["route"] = route
    data.update(segmentation=seg, camera={"source": str(tmp_path / "photos"), "fps": 1, "width": W, "height": H},
                log={"path": str(tmp_path / "decisions.sqlite")}, telemetry={"port": 0})
    data["tracking"].update(scene="still", decision_line_px=W / 2)
    data["calibration"].update(reference_roi=None, continuous=False)
    data["policy"]["bins"] = str((TEMPLATE.parent / data["policy"]["bins"]).resolve())
    return LineConfig.model_validate(data)


class _AnyColour:
    """Every crop a confident white garment: what matters here is what reaches the classifier at all."""

    model_id = "fake:white"

    def __init__(self) -> None:
        from sorting.taxonomy import load_taxonomy

        self.labels = {"colour": list(load_taxonomy().colour)}

    def classify(self, batch):
        from sorting.serving.classifier import ClassScores

        probs = np.full((len(batch.crops), len(self.labels["colour"])), 0.001)
        probs[:, self.labels["colour"].index("white")] = 0.99
        return ClassScores({"colour": probs}, {"colour": np.zeros(len(batch.crops), bool)})

    def use_ood_quantile(self, quantile: float) -> None:
        """No OOD table."""


@pytest.mark.parametrize("route", ["reject", "ignore"])
def test_still_photos_one_decision_per_item_and_hands_never_ejected(tmp_path: Path, belt_cfg, route: str):
    """Still scenes: each photo's garments are decided in that photo; a hand or an object goes to reject as
    ``not_a_garment`` (or is dropped before tracking with route ``ignore``), never into a product bin; a black
    frame is skipped with one message and the run goes on."""
    from sorting.serving.actuators import SimulatedActuator
    from sorting.serving.builder import build_sorter
    from sorting.serving.ejector import FixedSpeed

    things = _photo_folder(tmp_path / "photos", range(30, 34), hand=True)
    cv2.imwrite(str(tmp_path / "photos" / "frame031b.png"), np.zeros((H, W, 3), np.uint8))  # lens covered
    cfg = _still_line(tmp_path, belt_cfg, route)
    loop = build_sorter(cfg, classifier=_AnyColour(), actuator=SimulatedActuator(), speed=FixedSpeed(100.0, "px"),
                        keep_images=False)
    results = list(loop.run())
    frames = [r for r in results if r.index >= 0]
    assert len(frames) == 5 and loop.source.stats.unreadable == 1
    decisions = [d for r in results for d in r.decisions]
    assert all(d.ended == "line" for d in decisions)
    garments = sum(t.kind == "garment" for frame in things for t in frame)
    others = sum(t.kind != "garment" for frame in things for t in frame)
    product = [d for d in decisions if d.bin != d.reject_bin]
    not_garment = [d for d in decisions if d.decision.reason == "not_a_garment"]
    assert len(product) >= garments - 2, (len(product), garments)  # the belt segmentation finds most garments
    assert all(d.summary.not_garment is None for d in product), "a hand or an object went into a product bin"
    if route == "reject":
        assert len(not_garment) >= others - 1
    else:
        assert not not_garment and loop.telemetry.ignored_detections.labels(kind="hand")._value.get() >= 1


@pytest.mark.shared_data
@pytest.mark.slow
def test_serve_on_the_real_conveyor_photos_decides_every_item_it_finds(tmp_path: Path, shared_data: Path, repo_root,
                                                                       capsys):
    """``serve`` on the folder of real photos with the line set up from them: no crash, a logged decision for
    the items it finds (about one a photo at least), hands and objects among them sent to reject."""
    import sqlite3

    from sorting.cli import main
    from test_serve import BINS, tiny_model_line

    tiny = yaml.safe_load(tiny_model_line(tmp_path).read_text())["model"]["path"]
    (tmp_path / "bins.yaml").write_text(yaml.safe_dump(BINS))
    photos = shared_data / "conveyor-photos" / "images"
    db = tmp_path / "real.sqlite"
    assert main(["serve", "--line", str(repo_root / "serving" / "line-real-belt.yaml"), "--source", str(photos),
                 "--model", tiny, "--set", f"policy.bins={tmp_path / 'bins.yaml'}", "--set", f"log.path={db}",
                 "--set", "model.hot_reload=false", "--no-progress"]) == 0
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT bin, reason FROM decisions").fetchall()
    assert len(rows) >= len(list(photos.glob("*.jpg")))  # at least about one item a photo
    assert any(r[1] == "not_a_garment" for r in rows)
    stages = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("stage ms/frame"))
    assert "segment: belt model" in stages and "segment: textile check" in stages and "segment: carve" in stages


def test_propose_labels_writes_the_detections_as_boxes_to_correct(tmp_path: Path, belt_cfg, capsys):
    """``propose-labels``: one row per detection with its kind, an empty row for a photo with nothing on it, a
    numbered sheet per photo, an unreadable photo named and skipped; the file is one evaluate-detection reads,
    and scores the line that proposed it perfectly (the names resolve from the file's folder)."""
    from sorting.datasets.box_labels import read_box_rows

    photos = tmp_path / "photos"
    things = _photo_folder(photos, range(40, 43), hand=True, phone=True)
    cv2.imwrite(str(photos / "frame050.png"), blue_belt_frame(50, garments=())[0])  # the belt with nothing on it
    (photos / "frame051.png").write_bytes(b"not an image")
    line = tmp_path / "line.yaml"
    line.write_text(yaml.safe_dump(_still_line(tmp_path, belt_cfg, "reject").model_dump(mode="json")))
    out = tmp_path / "labels"
    assert main(["propose-labels", "--line", str(line), str(photos), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "4 photos: " in printed and "frame051.png: cannot read" in printed
    proposed = read_box_rows(out / "boxes.csv")
    assert not proposed.problems
    by_photo = {Path(name).name: boxes for name, boxes in proposed.boxes.items()}
    assert set(by_photo) == {"frame040.png", "frame041.png", "frame042.png", "frame050.png"}
    assert by_photo["frame050.png"] == []
    seg = LineSegmentation(load_line_config(line))
    for seed, frame in zip(range(40, 43), things):  # the line's own detections, as serve makes them
        detections = seg.segment(cv2.imread(str(photos / f"frame{seed:03d}.png")))
        assert by_photo[f"frame{seed:03d}.png"] == [((x, y, x + w, y + h), d.kind)
                                                    for d, (x, y, w, h) in ((d, d.bbox) for d in detections)]
        assert len(detections) >= len(frame) - 1  # and they are most of what is there
    sheet = cv2.imread(str(out / "sheets" / "frame040.png"))
    assert sheet.shape == (H, W, 3) and not np.array_equal(sheet, cv2.imread(str(photos / "frame040.png")))
    scored = tmp_path / "eval"
    assert main(["evaluate-detection", "--line", str(line), str(photos), "--boxes", str(out / "boxes.csv"),
                 "--out", str(scored), "--no-progress"]) == 0
    summary = json.loads((scored / "summary.json").read_text())
    assert summary["frames"] == 4 and summary["recall"]["0.5"] == 1.0 and summary["precision"]["0.5"] == 1.0
    assert summary["interval_0.5"]["scenes"] == 2 and summary["interval_0.5"]["recall"] == [1.0, 1.0]
    assert main(["propose-labels", "--line", str(line), str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) != 0
    assert "is not a folder of photos" in capsys.readouterr().err
    corrected = (out / "boxes.csv").read_text() + "frame050.png,10,60,90,120,garment\n"  # the integrator's work
    (out / "boxes.csv").write_text(corrected)
    assert main(["propose-labels", "--line", str(line), str(photos), "--out", str(out), "--no-progress"]) != 0
    assert "exists" in capsys.readouterr().err and (out / "boxes.csv").read_text() == corrected


def test_a_garment_box_leaves_out_a_string_hanging_off_it():
    """``trimmed_box``: the box that leaves out ``share`` of the blob's pixels beyond each side drops a thin string
    or shadow tail hanging off a garment, and takes only a sliver off its body; share 0 is the outline's box."""
    from sorting.serving.segmentation import outline_box, trimmed_box

    blob = np.zeros((100, 200), np.uint8)
    blob[20:80, 50:150] = 1  # the body: 100 x 60 px at the segmentation scale (0.5)
    blob[48:52, 150:190] = 1  # a string, 40 px long, 4 px wide
    contour = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0][0]
    frame = (400, 200)
    assert outline_box(contour, 0.5, frame) == (100, 40, 280, 120) == trimmed_box(contour, 0.5, frame, 0.0)
    x, y, w, h = trimmed_box(contour, 0.5, frame, 0.02)
    body = (100, 40, 300, 160)  # x0, y0, x1, y1 at full resolution
    assert x + w < body[2] + 30  # most of the string (80 px at full resolution) is gone
    assert all(abs(a - b) <= 6 for a, b in zip((x, y, y + h), (body[0], body[1], body[3])))  # the body kept
    assert x + w >= body[2]


def test_the_line_reports_trimmed_garment_boxes_and_crops_the_whole_blob(tmp_path: Path, belt_cfg):
    """``segmentation.box_trim``: the boxes leaving the line's segmentation are the garments' trimmed ones, each
    inside its outline's box; ``segment(trim=False)`` gives the outlines' boxes, which the textile check crops
    (and ``fit-textile-check`` fits on), and hands keep their boxes. The classifier still crops the whole blob."""
    cfg = _still_line(tmp_path, belt_cfg.model_copy(update={"box_trim": 0.03}), "reject")
    image, _ = blue_belt_frame(5, hand=True)
    seg = LineSegmentation(cfg)
    trimmed, whole = seg.segment(image), seg.segment(image, trim=False)
    assert [d.kind for d in trimmed] == [d.kind for d in whole] and "hand" in [d.kind for d in whole]
    for cut, full in zip(trimmed, whole):
        (x, y, w, h), (X, Y, W_, H_) = cut.bbox, full.bbox
        assert X <= x and Y <= y and x + w <= X + W_ and y + h <= Y + H_
        assert (cut.bbox == full.bbox) == (full.kind != "garment")  # every garment's box is a little tighter
        assert cut.crop_bbox == full.bbox == full.crop_bbox
    assert all(np.array_equal(a, b) for a, b in zip(seg.crops(image, trimmed), seg.crops(image, whole)))
    off = LineSegmentation(_still_line(tmp_path, belt_cfg, "reject"))
    assert [d.bbox for d in off.segment(image)] == [d.bbox for d in whole]  # box_trim 0: as before
