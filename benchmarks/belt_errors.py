"""Where the real-belt detection errors are: every missed garment and every false detection, by cause.

Runs the line's segmentation (as ``serve`` and ``evaluate-detection`` run it) over labelled photos and
sorts each error at IoU 0.5 into one cause:

* a **missed garment**: ``merged`` (one detection covers it and another label), ``split`` (found in
  pieces), ``loose`` (a garment detection with IoU 0.3-0.5: the box is near, the hand-drawn box loose),
  ``called non-garment`` (a hand/object detection on it), ``in a hand or object clump`` (a larger hand/object
  detection holds it), ``partly`` (best IoU 0.1-0.3), ``not found``;
* a **false detection**: ``object``/``hand`` (it overlaps a non-garment label), ``merged blob`` (it
  covers two or more labels), ``piece`` (mostly inside a garment label), ``loose`` (IoU 0.3-0.5 with a
  garment label), ``other`` (belt, shadow, rail, an unlabelled thing);
* a **reject for nothing**: a hand or object detection on nothing labelled (its box, to look at: a rail's edge, a
  shadow, a piece of garment outside its label, an unlabelled thing).

Counts per scene kind (photos 1-300: garments; 301-: clutter among garments) and the photos with most
errors. Only ever run it on the development photos when choosing settings.

    python benchmarks/belt_errors.py --line serving/line-real-belt.yaml --subset benchmarks/belt_split.json:dev
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from sorting.apps.detection_bench import _scored
from sorting.apps.detection_data import (
    fit_to_frame,
    iter_photos,
    merge_box_files,
    photo_frames,
    read_boxes_csv,
)
from sorting.datasets.box_labels import read_subset
from sorting.serving.colour_foreground import FrameError
from sorting.serving.detection_eval import (
    COVER,
    GARMENT,
    FrameScore,
    iou_matrix,
    score_frame,
    share_inside,
)
from sorting.serving.line_config import load_line_config
from sorting.serving.line_segmentation import LineSegmentation

ROOT = Path(__file__).resolve().parents[1]
CLUTTER_FROM = 301  # photo numbers from here show phones, tape, hands among the garments


def missed_causes(score: FrameScore) -> list[str]:
    """The cause of each garment label missed at IoU 0.5."""
    gd = score.garment_detections
    od = [j for j, d in enumerate(score.detections) if d.kind != GARMENT]
    out = []
    for i in score.missed(0.5):
        box = [score.labels[i].box]
        best_g = float(iou_matrix(box, [score.detections[j].box for j in gd]).max(initial=0.0)) if gd else 0.0
        best_o = float(iou_matrix(box, [score.detections[j].box for j in od]).max(initial=0.0)) if od else 0.0
        if i in score.merged:
            out.append("merged")
        elif i in score.split:
            out.append("split")
        elif best_g >= 0.3:
            out.append("loose")
        elif best_o >= 0.3:
            out.append("called non-garment")
        elif od and (share_inside(box, [score.detections[j].box for j in od])[0] >= COVER).any():
            out.append("in a hand or object clump")
        elif best_g >= 0.1:
            out.append("partly")
        else:
            out.append("not found")
    return out


def false_causes(score: FrameScore) -> list[str]:
    """The cause of each false garment detection at IoU 0.5 (cut ones left out, as in the precision)."""
    labels = score.labels
    g_idx = [i for i, lb in enumerate(labels) if lb.kind == GARMENT]
    o_idx = [i for i, lb in enumerate(labels) if lb.kind != GARMENT]
    out = []
    for j in score.false(0.5):
        box = [score.detections[j].box]
        g_boxes = [labels[i].box for i in g_idx]
        iou_g = iou_matrix(box, g_boxes)[0] if g_idx else np.zeros(0)
        covers = share_inside(g_boxes, box)[:, 0] >= 0.5 if g_idx else np.zeros(0, bool)
        inside = share_inside(box, g_boxes)[0] >= 0.5 if g_idx else np.zeros(0, bool)
        iou_o = iou_matrix(box, [labels[i].box for i in o_idx])[0] if o_idx else np.zeros(0)
        if len(iou_o) and iou_o.max() >= 0.1:
            out.append(labels[o_idx[int(iou_o.argmax())]].kind)
        elif covers.sum() >= 2:
            out.append("merged blob")
        elif len(iou_g) and iou_g.max() >= 0.3:
            out.append("loose")
        elif inside.any():
            out.append("piece")
        else:
            out.append("other")
    return out


def photo_number(name: str) -> int:
    found = re.findall(r"\d+", Path(name).stem)
    return int(found[-1]) if found else 0


def scene_kind(name: str) -> str:
    """``clutter`` (phones, tape, hands among the garments) or ``garments`` (garments alone), by photo number."""
    return "clutter" if photo_number(name) >= CLUTTER_FROM else "garments"


def tally_by_scene_kind(frames: list[dict]) -> dict[str, Counter]:
    """Photos, garments, matched and false garment detections at IoU 0.5 per scene kind, from the rows of an
    ``evaluate-detection`` run's frames.json."""
    tally: dict[str, Counter] = {"garments": Counter(), "clutter": Counter()}
    for frame in frames:
        tally[scene_kind(frame["name"])].update(photos=1, garments=frame["garments"], matched=frame["matched"],
                                                false=frame["false"])
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--line", type=Path, default=ROOT / "serving" / "line-real-belt.yaml")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conveyor-photos")
    parser.add_argument("--labels", type=Path, default=ROOT / "benchmarks" / "belt_non_garment_boxes.csv")
    parser.add_argument("--subset", default=str(ROOT / "benchmarks" / "belt_split.json") + ":dev")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="line config override")
    parser.add_argument("--worst", type=int, default=15)
    parser.add_argument("--json", type=Path, help="write the per-photo causes here")
    args = parser.parse_args()
    line = load_line_config(args.line, args.overrides)
    boxes = merge_box_files(read_boxes_csv(args.data / "boxes.csv"), read_boxes_csv(args.labels))
    found, _ = photo_frames(args.data / "images", boxes, args.data / "boxes.csv", subset=read_subset(args.subset))
    seg = LineSegmentation(line)
    entry = frozenset(("left", "right") if seg.along_axis == 0 else ("top", "bottom"))
    polygon = line.segmentation.belt_region
    region = None if polygon is None else np.asarray(polygon, np.float32).reshape(-1, 1, 2)
    tally: dict[str, Counter] = {"garments": Counter(), "missed": Counter(), "false": Counter(), "matched": Counter(),
                                 "nothing": Counter()}
    rows = []
    for frame, _ in iter_photos(found, boxes):
        if frame is None:
            continue
        try:
            dets = seg.segment(frame.image)
        except FrameError:
            continue
        labels, _ = fit_to_frame(frame.name, frame.labels, (frame.image.shape[1], frame.image.shape[0]))
        score = score_frame(frame.name, labels, [_scored(d, entry, region) for d in dets])
        scene = scene_kind(frame.name)
        missed, false = missed_causes(score), false_causes(score)
        tally["garments"][scene] += len(score.garment_labels)
        tally["matched"][scene] += len(score.matches[0.5])
        for cause in missed:
            tally["missed"][(scene, cause)] += 1
        for cause in false:
            tally["false"][(scene, cause)] += 1
        nothing = [[round(v) for v in score.detections[j].box] for j in score.other_unlabelled]
        tally["nothing"][scene] += len(nothing)
        rows.append({"name": frame.name, "scene": scene, "missed": missed, "false": false, "on_nothing": nothing})
    for scene in ("garments", "clutter"):
        n, m = tally["garments"][scene], tally["matched"][scene]
        print(f"== {scene}: {n} garments, {m} matched")
        print("  missed: " + ", ".join(f"{c} {k}" for (s, c), k in tally["missed"].most_common() if s == scene))
        print("  false:  " + ", ".join(f"{c} {k}" for (s, c), k in tally["false"].most_common() if s == scene))
        print(f"  hand or object detections on nothing labelled: {tally['nothing'][scene]}")
    rows.sort(key=lambda r: -(len(r["missed"]) + len(r["false"])))
    print("== worst photos")
    for r in rows[: args.worst]:
        print(f"  {r['name']}: missed {Counter(r['missed']) or '-'}; false {Counter(r['false']) or '-'}"
              + (f"; on nothing labelled {r['on_nothing']}" if r["on_nothing"] else ""))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
