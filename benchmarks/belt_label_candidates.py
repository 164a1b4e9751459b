"""How benchmarks/belt_non_garment_boxes.csv was made: the candidates that were looked at.

The conveyor photos' ``boxes.csv`` boxes garments only; hands, arms and objects (phone, earbud case, mouse,
card, tape, ruler, USB stick, a rubber glove) are not boxed. To score what the segmentation makes of them,
this script lists every detection of a real-belt line that overlaps no garment box (IoU < 0.1 and less
than half inside one), over all 246 photos, and draws them numbered on contact sheets. Each was then
given a kind by eye: ``hand`` (hands, arms, the person beside the belt), ``object``, or left out (belt,
rail, shadow, a garment cut by the frame edge, a blob of several things). The boxes are the detections'
boxes, so objects never detected are not in the file: it measures what the line does with what it sees.

    python benchmarks/belt_label_candidates.py --line serving/line-real-belt.yaml --out runs/belt/candidates

A second round (``--whole-line --labelled benchmarks/belt_non_garment_boxes.csv``) runs the line's whole
segmentation as ``serve`` does (the textile check and carving, which cut objects out of clumps the belt model alone
left whole) and lists only the detections that no box of the file covers yet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from sorting.apps.detection_data import read_boxes_csv
from sorting.serving.annotate import tile_grid
from sorting.serving.colour_foreground import FrameError
from sorting.serving.detection_eval import COVER, OVERLAP_IOU, iou_matrix, share_inside
from sorting.serving.line_config import load_line_config
from sorting.serving.line_segmentation import LineSegmentation
from sorting.serving.segmentation import BeltSegmenter

ROOT = Path(__file__).resolve().parents[1]
TILE = 200
LABELLED_IOU = 0.3  # a detection a non-garment box overlaps this much is labelled already


def candidates(line: Path, data: Path, *, whole_line: bool = False,
               labelled: Path | None = None) -> list[tuple[str, tuple[float, ...]]]:
    """(image, box) of every detection that overlaps no garment box, in image-number order; ``whole_line``: of
    the line's whole segmentation (check and carving), not the belt model alone; ``labelled``: not those a box
    of this non-garment file already covers (IoU >= LABELLED_IOU, or mostly inside it)."""
    cfg = load_line_config(line)
    labels = read_boxes_csv(data / "boxes.csv").labels
    done = read_boxes_csv(labelled).labels if labelled is not None else {}
    segment = LineSegmentation(cfg).segment if whole_line else BeltSegmenter(cfg.segmentation).segment
    out = []
    for name in sorted(labels, key=lambda n: int("".join(c for c in Path(n).stem if c.isdigit()) or 0)):
        try:
            detections = segment(cv2.imread(str(data / name)))
        except FrameError:
            continue
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (d.bbox for d in detections)]
        boxes = [b for b in boxes if not _covered(b, [lb.box for lb in labels[name]], OVERLAP_IOU)]
        out += [(name, b) for b in boxes if not _covered(b, [lb.box for lb in done.get(name, [])], LABELLED_IOU)]
    return out


def _covered(box: tuple[float, ...], by: list[tuple[float, ...]], min_iou: float) -> bool:
    """Whether ``box`` overlaps one of ``by`` by ``min_iou`` or lies mostly (``COVER``) inside one."""
    if not by:
        return False
    return bool(iou_matrix([box], by).max() >= min_iou or share_inside([box], by).max() >= COVER)


def sheets(items: list[tuple[str, tuple[float, ...]]], data: Path, out: Path) -> None:
    """Contact sheets of 30 numbered crops each (the candidate's box in red, 30 px of context)."""
    for start in range(0, len(items), 30):
        tiles = []
        for k, (name, box) in enumerate(items[start:start + 30], start=start):
            image = cv2.imread(str(data / name))
            x0, y0, x1, y1 = (int(v) for v in box)
            cx0, cy0, cx1, cy1 = max(0, x0 - 30), max(0, y0 - 30), min(image.shape[1], x1 + 30), min(image.shape[0], y1 + 30)
            crop = image[cy0:cy1, cx0:cx1].copy()
            cv2.rectangle(crop, (x0 - cx0, y0 - cy0), (x1 - cx0, y1 - cy0), (0, 0, 255), 2)
            s = TILE / max(crop.shape[:2])
            crop = cv2.resize(crop, None, fx=s, fy=s)
            tile = np.zeros((TILE, TILE, 3), np.uint8)
            tile[: crop.shape[0], : crop.shape[1]] = crop
            cv2.putText(tile, f"{k} {Path(name).stem}", (3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
            tiles.append(tile)
        cv2.imwrite(str(out / f"candidates{start // 30}.png"), tile_grid(tiles, 6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--line", type=Path, default=ROOT / "serving" / "line-real-belt.yaml")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conveyor-photos")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "belt" / "candidates")
    parser.add_argument("--whole-line", action="store_true",
                        help="the line's whole segmentation (textile check, carving), as serve runs it")
    parser.add_argument("--labelled", type=Path, help="a non-garment boxes CSV: leave out what it covers already")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    items = candidates(args.line, args.data, whole_line=args.whole_line, labelled=args.labelled)
    (args.out / "candidates.json").write_text(json.dumps(items))
    sheets(items, args.data, args.out)
    print(f"{len(items)} candidates in {len({n for n, _ in items})} photos -> {args.out}")


if __name__ == "__main__":
    main()
