"""Where the real-belt detection errors are: every missed garment and every false detection, by cause.

Runs the line's segmentation (as ``serve`` and ``evaluate-detection`` run it) over labelled photos and
sorts each error at IoU 0.5 into one cause (``FrameScore.missed_causes`` / ``false_causes`` of
``sorting.serving.detection_eval``, whose ``MISSED_CAUSES`` and ``FALSE_CAUSES`` say what each means; the totals are
in every ``evaluate-detection`` summary too); and lists each hand or object detection on nothing labelled (a reject
for nothing: a rail's edge, a shadow, a piece of garment outside its label, an unlabelled thing).

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
from sorting.serving.detection_eval import score_frame
from sorting.serving.line_config import load_line_config
from sorting.serving.line_segmentation import LineSegmentation

ROOT = Path(__file__).resolve().parents[1]
CLUTTER_FROM = 301  # photo numbers from here show phones, tape, hands among the garments


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
        missed, false = score.missed_causes(0.5), score.false_causes(0.5)
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
