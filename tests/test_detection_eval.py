"""Detection scoring (sorting.serving.detection_eval) and its label readers (sorting.apps.detection_data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sorting.apps.detection_data import (
    fit_to_frame,
    ground_truth_boxes,
    read_boxes_csv,
)
from sorting.datasets.box_labels import read_subset
from sorting.errors import DataError
from sorting.serving.detection_eval import (
    FALSE_CAUSES,
    MISSED_CAUSES,
    LabelBox,
    ScoredDetection,
    iou_matrix,
    match_boxes,
    scene_interval,
    score_frame,
    share_inside,
    summarise,
)


def test_iou_and_share_inside():
    iou = iou_matrix([(0, 0, 10, 10)], [(0, 0, 10, 10), (5, 0, 15, 10), (20, 20, 30, 30)])
    assert iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])
    assert share_inside([(0, 0, 10, 10)], [(5, 0, 15, 10)])[0, 0] == pytest.approx(0.5)


def test_matching_is_one_to_one_best_first():
    labels = [(3, 0, 13, 10), (0, 0, 10, 10)]
    dets = [(0, 0, 10, 10), (1, 0, 11, 10)]  # the first fits label 1 exactly, the second fits both well
    assert match_boxes(iou_matrix(labels, dets), 0.5) == [(0, 1), (1, 0)]
    assert match_boxes(iou_matrix(labels[1:], dets), 0.5) == [(0, 0)]  # one label, one match


def test_found_missed_false_and_thresholds():
    labels = [LabelBox((0, 0, 100, 100)), LabelBox((200, 0, 300, 100))]
    dets = [ScoredDetection((10, 10, 100, 100)), ScoredDetection((200, 0, 240, 100)), ScoredDetection((400, 0, 450, 50))]
    s = score_frame("f", labels, dets)
    assert s.matches[0.5] == [(0, 0)]  # the second detection covers 40 % of its item: IoU 0.4
    assert s.matches[0.3] == [(0, 0), (1, 1)]
    assert s.missed(0.5) == [1] and s.false(0.5) == [1, 2] and s.false(0.3) == [2]


def test_merged_and_split():
    labels = [LabelBox((0, 0, 100, 100)), LabelBox((100, 0, 200, 100)), LabelBox((300, 0, 400, 100))]
    dets = [ScoredDetection((0, 0, 200, 100)),  # two touching garments seen as one
            ScoredDetection((300, 0, 350, 100)), ScoredDetection((350, 0, 400, 100))]  # one garment in two
    s = score_frame("f", labels, dets)
    assert s.merged == [0, 1]
    assert s.split == [2]


def test_cut_detections_at_the_entry_edge_are_not_false_unless_strict():
    dets = [ScoredDetection((0, 0, 40, 80), at_entry_edge=True), ScoredDetection((0, 200, 40, 280))]
    s = score_frame("f", [], dets)
    assert s.cut == [0]
    assert s.false(0.5) == [1] and s.false(0.5, count_cut=True) == [0, 1]
    summary = summarise([s])
    assert summary.cut == 1 and summary.precision_strict["0.5"] == 0.0


def test_non_garments_are_scored_apart():
    labels = [LabelBox((0, 0, 100, 100)), LabelBox((200, 0, 260, 60), "hand"), LabelBox((400, 0, 440, 30), "object")]
    dets = [ScoredDetection((0, 0, 100, 100), "hand"),  # a garment called a hand: missed (it would be rejected)
            ScoredDetection((200, 0, 260, 60), "hand"),  # the hand found as a hand
            ScoredDetection((400, 0, 440, 30))]  # the phone taken for a garment: false, and dangerous
    s = score_frame("f", labels, dets)
    assert s.missed(0.5) == [0]
    assert s.garment_called_other == [0]
    assert s.other_found == [1] and s.other_as_garment == [2]
    assert s.false(0.5) == [2]
    summary = summarise([s])
    assert summary.recall["0.5"] == 0.0 and summary.precision["0.5"] == 0.0
    assert summary.detections_by_kind == {"garment": 1, "hand": 2}


def test_non_garment_detections_on_nothing_labelled_are_counted():
    """An object detection where nothing is labelled (a rail's edge) is a reject for nothing; a small piece of a
    garment called an object is not (it lies inside the garment's label)."""
    labels = [LabelBox((0, 0, 200, 200)), LabelBox((300, 0, 340, 30), "object")]
    dets = [ScoredDetection((0, 0, 200, 200)),
            ScoredDetection((10, 10, 40, 40), "object"),  # a piece of the garment: IoU 0.02, but inside it
            ScoredDetection((300, 0, 340, 30), "object"),  # the labelled object
            ScoredDetection((500, 380, 700, 400), "object")]  # the rail
    s = score_frame("f", labels, dets)
    assert s.other_unlabelled == [3]
    assert summarise([s, s]).other_unlabelled == 2


def test_a_clump_holding_a_small_garment_calls_it_non_garment_and_is_not_on_nothing():
    """A clump of objects called an object, with a small garment in it: their boxes overlap by less than
    ``OVERLAP_IOU``, but the garment is in the clump, so it is a garment called non-garment, not a reject for
    nothing."""
    labels = [LabelBox((100, 100, 160, 140)), LabelBox((600, 0, 700, 100))]
    dets = [ScoredDetection((0, 0, 500, 400), "object"),  # IoU with the garment 0.012: it holds all of it
            ScoredDetection((600, 0, 700, 100))]
    s = score_frame("f", labels, dets)
    assert s.garment_called_other == [0]
    assert s.other_unlabelled == []
    assert s.missed(0.5) == [0]


def test_partial_labels_need_not_be_found_and_their_detections_are_cut():
    labels = [LabelBox((0, 0, 50, 100), partial=True), LabelBox((200, 0, 300, 100))]
    s = score_frame("f", labels, [ScoredDetection((0, 0, 48, 100))])
    assert s.garment_labels == [1] and s.missed(0.5) == [1]
    assert s.cut == [0] and s.false(0.5) == []


def test_summary_rates_and_timing():
    labels = [LabelBox((0, 0, 100, 100))]
    frames = [score_frame(f"f{k}", labels, [ScoredDetection((0, 0, 100, 100))]) for k in range(3)]
    for k, f in enumerate(frames):
        f.seconds = {"segment": 0.001 * (k + 1)}
    s = summarise(frames)
    assert s.recall["0.5"] == 1.0 and s.precision["0.5"] == 1.0 and s.merged_rate == 0.0
    assert s.ms["segment"]["mean"] == pytest.approx(2.0) and s.ms["segment"]["max"] == pytest.approx(3.0)
    assert json.loads(s.to_json())["garments"] == 3


def test_boxes_csv_keeps_good_rows_and_names_bad_ones(tmp_path: Path):
    path = tmp_path / "boxes.csv"
    path.write_text("image,x0,y0,x1,y1\n"
                    "a.jpg,1,2,30,40\n"
                    "a.jpg,1,two,30,40\n"  # not a number
                    "b.jpg,,,,\n"  # an image without items
                    "c.jpg,50,50,40,60\n"  # no area
                    "c.jpg,1,2\n"  # too few columns
                    "c.jpg,5,5,20,20\n")
    boxes = read_boxes_csv(path)
    assert [lb.box for lb in boxes.labels["a.jpg"]] == [(1, 2, 30, 40)]
    assert boxes.labels["b.jpg"] == [] and len(boxes.labels["c.jpg"]) == 1
    assert len(boxes.problems) == 3
    assert "line 3" in boxes.problems[0] and "not four numbers" in boxes.problems[0]


def test_boxes_csv_kind_column_and_bad_header(tmp_path: Path):
    good = tmp_path / "kinds.csv"
    good.write_text("image,x0,y0,x1,y1,kind\na.jpg,0,0,10,10,hand\na.jpg,0,0,10,10,\n")
    assert [lb.kind for lb in read_boxes_csv(good).labels["a.jpg"]] == ["hand", "garment"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,a,b,c,d\n")
    with pytest.raises(DataError, match="header"):
        read_boxes_csv(bad)
    with pytest.raises(DataError, match="cannot read"):
        read_boxes_csv(tmp_path / "missing.csv")


def test_boxes_outside_the_image_are_clipped_or_dropped():
    labels = [LabelBox((-5, 10, 50, 60)), LabelBox((700, 10, 800, 60)), LabelBox((10, 10, 20, 20))]
    kept, problems = fit_to_frame("a.jpg", labels, (640, 480))
    assert [lb.box for lb in kept] == [(0, 10, 50, 60), (10, 10, 20, 20)]
    assert len(problems) == 2 and "clipped" in problems[0] and "outside" in problems[1]


def test_ground_truth_boxes_of_a_synthetic_clip():
    gt = {"width": 200, "height": 100, "items": [
        {"size": [40, 20], "track": [[0, 10, 50], [1, 100, 50]]},  # enters: half in view at frame 0
    ], "distractors": [{"size": [10, 10], "track": [[1, 150, 20]]}]}
    boxes = ground_truth_boxes(gt)
    assert boxes[0] == [LabelBox((0.0, 40.0, 30.0, 60.0), "garment", partial=True)]
    assert boxes[1][0] == LabelBox((80.0, 40.0, 120.0, 60.0), "garment", partial=False)
    assert boxes[1][1].kind == "stain"


def test_subset_from_a_list_or_a_json_key(tmp_path: Path):
    (tmp_path / "names.txt").write_text("a.jpg\n\nb.jpg\n")
    (tmp_path / "split.json").write_text(json.dumps({"dev": ["images/a.jpg"], "heldout": ["images/b.jpg"]}))
    assert read_subset(str(tmp_path / "names.txt")) == {"a.jpg", "b.jpg"}
    assert read_subset(f"{tmp_path / 'split.json'}:heldout") == {"images/b.jpg"}
    with pytest.raises(DataError, match="no list"):
        read_subset(f"{tmp_path / 'split.json'}:test")


def test_scene_interval_draws_whole_scenes():
    # two frames of one scene and one of another; every scene alike: the interval is the point itself
    same = scene_interval([2, 2, 4], [1, 1, 2], [0, 0, 0], [1, 1, 2])
    assert same is not None and same.recall == (0.5, 0.5) and same.precision == (1.0, 1.0) and same.scenes == 2
    # scenes that differ: the pooled figures lie inside a real interval, which narrows with more such scenes
    garments, matched, false = [4, 4, 4, 4], [4, 1, 3, 2], [0, 2, 1, 0]
    few = scene_interval(garments, matched, false, [0, 1, 2, 3])
    many = scene_interval(garments * 10, matched * 10, false * 10, list(range(40)))
    assert few is not None and many is not None
    assert few.recall[0] < 10 / 16 < few.recall[1] and few.precision is not None
    assert few.precision[0] < 10 / 13 < few.precision[1]
    assert many.recall[1] - many.recall[0] < few.recall[1] - few.recall[0]
    assert scene_interval([3, 2], [1, 1], [0, 0], [7, 7]) is None  # one scene says nothing of others
    assert scene_interval([0, 0], [0, 0], [1, 0], [1, 2]) is None  # no garment label


def test_each_miss_and_false_detection_gets_its_cause():
    """The causes a line's errors are sorted into (summary and belt_errors.py): the first that applies."""
    labels = [LabelBox((0, 0, 100, 100)), LabelBox((110, 0, 210, 100)),  # two garments side by side: merged
              LabelBox((300, 0, 400, 100)),  # found with a loose box
              LabelBox((500, 0, 600, 100)),  # called an object
              LabelBox((700, 0, 730, 30)),  # a small garment inside a clump of objects
              LabelBox((0, 300, 100, 400)),  # nothing near it
              LabelBox((800, 300, 860, 360), "object")]  # a phone, taken for a garment
    dets = [ScoredDetection((0, 0, 210, 100)),  # covers the two: a merged blob
            ScoredDetection((300, 0, 460, 130)),  # IoU 0.48 with its garment
            ScoredDetection((500, 0, 600, 100), "object"),
            ScoredDetection((650, 0, 960, 250), "object"),  # holds the small garment, IoU 0.01
            ScoredDetection((800, 300, 860, 360)),  # the phone
            ScoredDetection((300, 450, 340, 480))]  # a shadow
    s = score_frame("f", labels, dets)
    assert dict(zip(s.missed(0.5), s.missed_causes(0.5))) == {
        0: "merged", 1: "merged", 2: "loose", 3: "called non-garment", 4: "in a hand or object clump", 5: "not found"}
    assert dict(zip(s.false(0.5), s.false_causes(0.5))) == {0: "merged blob", 1: "loose", 4: "object", 5: "other"}
    summary = summarise([s])
    assert summary.missed_by_cause == {"merged": 2, "loose": 1, "called non-garment": 1,
                                       "in a hand or object clump": 1, "not found": 1}
    assert set(summary.false_by_cause) <= set(FALSE_CAUSES) and set(summary.missed_by_cause) <= set(MISSED_CAUSES)


def test_a_garment_the_textile_check_turned_into_an_object_is_called_not_cloth():
    """Which part to fix: a miss whose object detection the textile check made is "called not cloth"; one the
    segmentation (or the detector) called an object is "called non-garment", whichever overlaps it best decides."""
    labels = [LabelBox((0, 0, 100, 100)), LabelBox((200, 0, 300, 100)), LabelBox((400, 0, 500, 100))]
    dets = [ScoredDetection((0, 0, 100, 100), "object", not_cloth=True),
            ScoredDetection((200, 0, 300, 100), "object"),
            ScoredDetection((400, 0, 500, 100), "object"),  # the best overlap: the segmentation's object
            ScoredDetection((400, 0, 520, 110), "object", not_cloth=True)]
    s = score_frame("f", labels, dets)
    assert s.missed_causes(0.5) == ["called not cloth", "called non-garment", "called non-garment"]
    assert summarise([s]).missed_by_cause == {"called non-garment": 2, "called not cloth": 1}
    # evaluate-detection passes on what the check did to the line's detection
    from sorting.apps.detection_bench import _scored
    from sorting.serving.segmentation import Detection

    det = Detection(bbox=(0, 0, 100, 100), area=1e4, centroid=(50.0, 50.0), kind="object", not_cloth=True)
    assert _scored(det, frozenset(), None) == dets[0]
