"""Score one frame's detections against labelled boxes; sum frames into recall, precision, merged and split.

The same maths scores real photos (hand-drawn ``boxes.csv``) and synthetic clips (boxes from the
ground truth's track points and sizes), so both are measured alike.

Conventions (boxes are ``(x0, y0, x1, y1)`` in pixels):

* A **garment label** must be found; a **non-garment label** (``kind`` hand, object, stain...) marks
  something that is on the belt but must not be sorted as a garment.
* Only detections of kind ``garment`` can match a garment label: one-to-one, greedily by IoU, at each
  threshold (0.5 and 0.3: hand-drawn boxes are loose). A garment detection left over is *false*,
  unless it is *cut*: it touches a frame edge where items enter or leave the view and overlaps no
  label (a garment half in view is not labelled in the photos; the tracker decides it once it is
  whole). Cut detections are counted and listed, and the strict precision counts them as false.
  A *partial* label (a synthetic item cut by the frame edge) need not be found, and a garment
  detection that matches it is cut too.
* **Merged**: a garment detection that covers at least ``cover`` of the area of two or more garment
  labels (touching garments seen as one blob): each of those labels counts as merged.
* **Split**: a garment label with two or more garment detections that lie mostly (``cover``) inside it
  and are not matched to another label (a garment seen as fragments).
* A detection of another kind (hand, object) is not a garment detection: it is *right* when it
  overlaps a non-garment label, *a garment called non-garment* when it overlaps a garment label or holds
  ``cover`` of one (a clump of objects with a small garment in it: its box is too large to overlap the
  garment's by IoU). A miss is *called not cloth* rather than *called non-garment* when that detection was a
  garment the textile check turned into an object (which of the two to fix: the check or the detections).
  A non-garment label is *found* by a non-garment detection, *taken for a garment* when only a
  garment detection overlaps it (the dangerous case: it could be ejected into a product bin).
  A non-garment detection on *nothing labelled* (it overlaps no label, lies mostly inside none and holds
  none: a rail's edge, a shadow, a sticker) is a reject the line counts for nothing on the belt.
* **Off the belt**: a detection whose centre lies outside the line's belt region (when it has one).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1
GARMENT = "garment"
THRESHOLDS = (0.5, 0.3)
COVER = 0.5  # share of a box's area inside another box that counts as "mostly inside"
OVERLAP_IOU = 0.1  # a (non-)garment detection "overlaps" a label from this IoU on
LOOSE_IOU = 0.3  # a miss or false detection this near its counterpart is a loose box (hand-drawn boxes are loose)
# why a garment was missed (FrameScore.missed_causes) and what a false garment detection is (false_causes)
MISSED_CAUSES = {
    "merged": "one detection covers it and another garment",
    "split": "found in pieces",
    "loose": "a garment detection with IoU 0.3-0.5: the box is near, the hand-drawn one loose",
    "called not cloth": "a garment detection on it (IoU 0.3 or more) that the textile check's score made an object",
    "called non-garment": "a hand or object detection on it (IoU 0.3 or more): it goes to reject",
    "in a hand or object clump": "a larger hand or object detection holds it",
    "partly": "a garment detection with IoU 0.1-0.3",
    "not found": "nothing near it",
}
FALSE_CAUSES = {
    "hand": "it overlaps a hand label: a hand taken for a garment",
    "object": "it overlaps an object label: an object taken for a garment",
    "merged blob": "it covers two or more garment labels",
    "loose": "IoU 0.3-0.5 with a garment label",
    "piece": "mostly inside a garment label",
    "other": "belt, shadow, rail or an unlabelled thing",
}


@dataclass(frozen=True)
class LabelBox:
    """One labelled thing in a frame."""

    box: Box
    kind: str = GARMENT
    partial: bool = False  # cut by the frame edge: need not be found


@dataclass(frozen=True)
class ScoredDetection:
    """What scoring needs of a detection."""

    box: Box
    kind: str = GARMENT
    at_entry_edge: bool = False  # touches a frame edge where items enter or leave the view
    on_belt: bool | None = None  # None: the line has no belt region
    not_cloth: bool = False  # a garment detection the textile check turned into an object


def corners(bbox: tuple[int, int, int, int]) -> Box:
    """A detection's ``(x, y, w, h)`` as a box ``(x0, y0, x1, y1)``."""
    x, y, w, h = bbox
    return float(x), float(y), float(x + w), float(y + h)


def _as_array(boxes: Sequence[Box]) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _areas(a: np.ndarray) -> np.ndarray:
    return np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)


def intersections(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """Intersection areas, shape (len(a), len(b))."""
    x, y = _as_array(a), _as_array(b)
    w = np.minimum(x[:, None, 2], y[None, :, 2]) - np.maximum(x[:, None, 0], y[None, :, 0])
    h = np.minimum(x[:, None, 3], y[None, :, 3]) - np.maximum(x[:, None, 1], y[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """Intersection over union of every pair, shape (len(a), len(b))."""
    inter = intersections(a, b)
    union = _areas(_as_array(a))[:, None] + _areas(_as_array(b))[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def share_inside(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """Share of each box of ``a`` that lies inside each box of ``b``, shape (len(a), len(b))."""
    inter = intersections(a, b)
    area = _areas(_as_array(a))[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def match_boxes(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (label, detection) pairs with IoU >= ``threshold``, the best pairs first."""
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return sorted(pairs)


@dataclass
class FrameScore:
    """One frame: which label matched which detection, and what each leftover is."""

    name: str
    labels: list[LabelBox]
    detections: list[ScoredDetection]
    matches: dict[float, list[tuple[int, int]]]  # threshold -> (label index, detection index)
    merged: list[int] = field(default_factory=list)  # garment label indices
    split: list[int] = field(default_factory=list)
    cut: list[int] = field(default_factory=list)  # unmatched garment detections at an entry edge, no label
    garment_called_other: list[int] = field(default_factory=list)  # non-garment detections on a garment label
    other_found: list[int] = field(default_factory=list)  # non-garment labels found as non-garment
    other_as_garment: list[int] = field(default_factory=list)  # non-garment labels taken for a garment
    other_unlabelled: list[int] = field(default_factory=list)  # non-garment detections on nothing labelled
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds for this frame

    @property
    def garment_labels(self) -> list[int]:
        """Garment labels to be found (partial ones excluded)."""
        return [i for i, lb in enumerate(self.labels) if lb.kind == GARMENT and not lb.partial]

    @property
    def garment_detections(self) -> list[int]:
        return [j for j, d in enumerate(self.detections) if d.kind == GARMENT]

    def false(self, threshold: float, *, count_cut: bool = False) -> list[int]:
        """Garment detections matched to no garment label at ``threshold`` (cut ones only with ``count_cut``)."""
        matched = {j for _, j in self.matches[threshold]}
        skip = set() if count_cut else set(self.cut)
        return [j for j in self.garment_detections if j not in matched and j not in skip]

    def missed(self, threshold: float) -> list[int]:
        matched = {i for i, _ in self.matches[threshold]}
        return [i for i in self.garment_labels if i not in matched]

    def missed_causes(self, threshold: float = 0.5) -> list[str]:
        """Why each garment label missed at ``threshold`` was missed, in the order of :meth:`missed` (see
        ``MISSED_CAUSES``: the first that applies)."""
        g_boxes = [d.box for d in self.detections if d.kind == GARMENT]
        others = [d for d in self.detections if d.kind != GARMENT]
        o_boxes = [d.box for d in others]
        out = []
        for i in self.missed(threshold):
            box = [self.labels[i].box]
            best_g = _best_iou(box, g_boxes)
            o_iou = iou_matrix(box, o_boxes)[0] if o_boxes else np.zeros(0)
            # the hand or object detection on it, if any: the check's own call or the segmentation's
            on_it = others[int(o_iou.argmax())] if len(o_iou) and o_iou.max() >= LOOSE_IOU else None
            held = bool(o_boxes) and bool((share_inside(box, o_boxes) >= COVER).any())
            out.append("merged" if i in self.merged else "split" if i in self.split
                       else "loose" if best_g >= LOOSE_IOU
                       else "called not cloth" if on_it is not None and on_it.not_cloth
                       else "called non-garment" if on_it is not None
                       else "in a hand or object clump" if held else "partly" if best_g >= OVERLAP_IOU
                       else "not found")
        return out

    def false_causes(self, threshold: float = 0.5) -> list[str]:
        """What each false garment detection at ``threshold`` is, in the order of :meth:`false` (see
        ``FALSE_CAUSES``: the first that applies; cut ones left out, as in the precision)."""
        g_boxes = [lb.box for lb in self.labels if lb.kind == GARMENT]
        o_labels = [lb for lb in self.labels if lb.kind != GARMENT]
        out = []
        for j in self.false(threshold):
            box = [self.detections[j].box]
            iou_o = iou_matrix(box, [lb.box for lb in o_labels])[0] if o_labels else np.zeros(0)
            covers = int((share_inside(g_boxes, box)[:, 0] >= COVER).sum()) if g_boxes else 0
            inside = bool((share_inside(box, g_boxes)[0] >= COVER).any()) if g_boxes else False
            out.append(o_labels[int(iou_o.argmax())].kind if len(iou_o) and iou_o.max() >= OVERLAP_IOU
                       else "merged blob" if covers >= 2 else "loose" if _best_iou(box, g_boxes) >= LOOSE_IOU
                       else "piece" if inside else "other")
        return out


def score_frame(name: str, labels: Sequence[LabelBox], detections: Sequence[ScoredDetection], *,
                thresholds: Sequence[float] = THRESHOLDS, cover: float = COVER) -> FrameScore:
    """Score one frame (see the module docstring for every rule)."""
    labels, detections = list(labels), list(detections)
    gi = [i for i, lb in enumerate(labels) if lb.kind == GARMENT]
    oi = [i for i, lb in enumerate(labels) if lb.kind != GARMENT]
    gd = [j for j, d in enumerate(detections) if d.kind == GARMENT]
    od = [j for j, d in enumerate(detections) if d.kind != GARMENT]
    all_boxes = [d.box for d in detections]
    g_boxes = [labels[i].box for i in gi]
    iou_g = iou_matrix(g_boxes, [all_boxes[j] for j in gd])
    paired = {t: [(gi[r], gd[c]) for r, c in match_boxes(iou_g, t)] for t in thresholds}
    matches = {t: [(i, j) for i, j in pairs if not labels[i].partial] for t, pairs in paired.items()}
    score = FrameScore(name, labels, detections, matches)
    whole = [r for r, i in enumerate(gi) if not labels[i].partial]
    # merged: one garment detection covers most of two or more (whole) garment labels
    covered = share_inside(g_boxes, [all_boxes[j] for j in gd])[whole] >= cover  # (labels, detections)
    score.merged = sorted({gi[whole[r]] for c in range(len(gd)) if covered[:, c].sum() >= 2
                           for r in np.flatnonzero(covered[:, c])})
    # split: two or more garment detections mostly inside one label and matched to no other label
    loose = min(thresholds)
    owner = {j: i for i, j in paired[loose]}
    inside = share_inside([all_boxes[j] for j in gd], g_boxes) >= cover  # (detections, labels)
    for r in whole:
        i = gi[r]
        parts = [gd[c] for c in np.flatnonzero(inside[:, r]) if owner.get(gd[c], i) == i]
        if len(parts) >= 2:
            score.split.append(i)
    # cut: garment detections of a partial label, or at an entry/exit edge overlapping no label at all
    any_iou = iou_matrix(all_boxes, [lb.box for lb in labels]) if labels else np.zeros((len(all_boxes), 0))
    of_partial = {j for i, j in paired[loose] if labels[i].partial}
    matched_d = {j for i, j in paired[loose] if not labels[i].partial}
    score.cut = [j for j in gd if j in of_partial or (
        detections[j].at_entry_edge and j not in matched_d and not np.any(any_iou[j] >= OVERLAP_IOU))]
    # kinds: non-garment detections on garment labels (overlapping one, or holding most of one: a clump); non-garment
    # labels found or taken for garments
    held = (share_inside([lb.box for lb in labels], [all_boxes[j] for j in od]) >= cover if labels and od
            else np.zeros((len(labels), len(od)), bool))  # (labels, non-garment detections)
    score.garment_called_other = [j for r, j in enumerate(od)
                                  if gi and (np.any(any_iou[j, gi] >= OVERLAP_IOU) or held[gi, r].any())]
    for i in oi:
        over = [j for j in range(len(detections)) if any_iou[j, i] >= OVERLAP_IOU]
        if any(detections[j].kind != GARMENT for j in over):
            score.other_found.append(i)
        elif over:
            score.other_as_garment.append(i)
    inside_any = (share_inside([all_boxes[j] for j in od], [lb.box for lb in labels]) >= cover if labels and od
                  else np.zeros((len(od), 0), bool))
    score.other_unlabelled = [j for r, j in enumerate(od) if not np.any(any_iou[j] >= OVERLAP_IOU)
                              and not inside_any[r].any() and not held[:, r].any()]
    return score


def _best_iou(box: Sequence[Box], others: Sequence[Box]) -> float:
    return float(iou_matrix(box, others).max(initial=0.0)) if others else 0.0


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass
class DetectionSummary:
    """Totals over frames (rates are None where their denominator is 0)."""

    frames: int
    garments: int
    garment_detections: int
    recall: dict[str, float | None]
    precision: dict[str, float | None]  # cut detections not counted
    precision_strict: dict[str, float | None]  # cut detections counted as false
    matched: dict[str, int]
    missed: dict[str, int]
    false: dict[str, int]
    cut: int
    merged: int
    split: int
    merged_rate: float | None
    split_rate: float | None
    off_belt: int | None
    detections_by_kind: dict[str, int]
    labels_by_kind: dict[str, int]
    garment_called_other: int
    other_found: int
    other_as_garment: int
    other_unlabelled: int
    missed_by_cause: dict[str, int]  # at IoU 0.5, MISSED_CAUSES, most first
    false_by_cause: dict[str, int]  # at IoU 0.5, FALSE_CAUSES, most first
    ms: dict[str, dict[str, float]]  # stage -> mean / p50 / p95 / max per frame

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _ms_stats(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1e3 for v in values)
    if not ms:
        return {}
    return {"mean": round(statistics.fmean(ms), 3), "p50": round(float(np.percentile(ms, 50)), 3),
            "p95": round(float(np.percentile(ms, 95)), 3), "max": round(ms[-1], 3)}


def summarise(frames: Iterable[FrameScore], thresholds: Sequence[float] = THRESHOLDS) -> DetectionSummary:
    """Sum frame scores into the figures of the benchmark."""
    frames = list(frames)
    n_g = sum(len(f.garment_labels) for f in frames)
    n_d = sum(len(f.garment_detections) for f in frames)
    cut = sum(len(f.cut) for f in frames)
    key = {t: f"{t:g}" for t in thresholds}
    matched = {key[t]: sum(len(f.matches[t]) for f in frames) for t in thresholds}
    false = {key[t]: sum(len(f.false(t)) for f in frames) for t in thresholds}
    merged = sum(len(f.merged) for f in frames)
    split = sum(len(f.split) for f in frames)
    belts = [d.on_belt for f in frames for d in f.detections]
    stages = sorted({s for f in frames for s in f.seconds})
    return DetectionSummary(
        frames=len(frames), garments=n_g, garment_detections=n_d,
        recall={k: _rate(m, n_g) for k, m in matched.items()},
        precision={k: _rate(m, m + false[k]) for k, m in matched.items()},
        precision_strict={k: _rate(m, n_d) for k, m in matched.items()},
        matched=matched, missed={k: n_g - m for k, m in matched.items()}, false=false, cut=cut,
        merged=merged, split=split, merged_rate=_rate(merged, n_g), split_rate=_rate(split, n_g),
        off_belt=None if any(b is None for b in belts) else sum(not b for b in belts),
        detections_by_kind=dict(sorted(Counter(d.kind for f in frames for d in f.detections).items())),
        labels_by_kind=dict(sorted(Counter(lb.kind + (" (partial)" if lb.partial else "")
                                           for f in frames for lb in f.labels).items())),
        garment_called_other=sum(len(f.garment_called_other) for f in frames),
        other_found=sum(len(f.other_found) for f in frames),
        other_as_garment=sum(len(f.other_as_garment) for f in frames),
        other_unlabelled=sum(len(f.other_unlabelled) for f in frames),
        missed_by_cause=dict(Counter(c for f in frames for c in f.missed_causes(0.5)).most_common()),
        false_by_cause=dict(Counter(c for f in frames for c in f.false_causes(0.5)).most_common()),
        ms={s: _ms_stats([f.seconds[s] for f in frames if s in f.seconds]) for s in stages},
    )


@dataclass(frozen=True)
class SceneInterval:
    """A bootstrap interval of recall and precision at one IoU, with whole scenes as the unit drawn."""

    recall: tuple[float, float]
    precision: tuple[float, float] | None  # None when no draw had a garment detection
    level: float
    scenes: int
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        return {"recall": [round(v, 4) for v in self.recall],
                "precision": None if self.precision is None else [round(v, 4) for v in self.precision],
                "level": self.level, "scenes": self.scenes, "rounds": self.rounds}


def scene_interval(garments: Sequence[int], matched: Sequence[int], false: Sequence[int], scenes: Sequence[int], *,
                   level: float = 0.95, rounds: int = 2000, seed: int = 0) -> SceneInterval | None:
    """How far recall and precision could move on other scenes like these: per-frame counts of garment labels,
    matched labels and false garment detections are summed per scene (``scenes``: a scene id per frame), the
    scenes drawn with replacement ``rounds`` times, and the middle ``level`` of the draws' recall and precision
    kept. Scenes, not frames, are the unit: photos of one scene show the same garments moved, so they are not
    independent. None with fewer than two scenes or no garment label."""
    ids = sorted(set(scenes))
    if len(ids) < 2 or not sum(garments):
        return None
    index = {s: i for i, s in enumerate(ids)}
    per_scene = np.zeros((len(ids), 3))
    for g, m, f, s in zip(garments, matched, false, scenes):
        per_scene[index[s]] += (g, m, f)
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(rounds, len(ids)))
    g, m, f = per_scene[draws].sum(axis=1).T
    tail = (1.0 - level) / 2 * 100

    def middle(values: np.ndarray) -> tuple[float, float] | None:
        values = values[np.isfinite(values)]
        return None if not len(values) else (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))

    with np.errstate(invalid="ignore", divide="ignore"):
        recall, precision = middle(m / g), middle(m / (m + f))
    return None if recall is None else SceneInterval(recall, precision, level, len(ids), rounds)
