"""Score a sorter run's decisions against the synthetic conveyor's ground truth, item by item.

Each decision carries where its track was when it was decided (frame, centroid). It is matched
to the ground-truth (GT) item whose track point in that frame is nearest, within a gate sized
to the item (the GT point is the centre of the garment's mask box, which differs from a blob's
centroid, and lies outside the frame for a cut-off garment). The assignment is one-to-one,
cheapest pairs first. A decision left over that still lies within the gate of an item is a
*duplicate* of it (one garment decided twice); one near no item is a *phantom* (a stain, a
shadow).

Two touching garments that the sorter saw as one blob all along get one decision; the GT
partner is then *shared* (it rides with its partner's decision: into the reject bin, or pushed
off together into a product bin), not lost.

The correct bin of an item is what the policy gives its GT labels as one-hot probabilities.
Non-hard items must reach it; hard items (touching, cut off) must reach it or the reject bin.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sorting.errors import DataError
from sorting.serving.policy import ItemEvidence, Policy
from sorting.taxonomy import LAYOUT_HEAD, SINGLE_LABEL

GATE_MIN_PX = 40.0
GATE_SIZE_SHARE = 0.6  # of the item's larger mask side
EXTRAPOLATE_FRAMES = 15  # a decision just after an item's last GT frame still matches it


@dataclass(frozen=True)
class DecisionPoint:
    """One decision reduced to what scoring needs: where its track was when decided, and the bin."""

    track_id: int
    frame: int
    centroid: tuple[float, float]
    bin: int
    bin_name: str
    reason: str

    @classmethod
    def from_item_decision(cls, item: Any, *, camera_alone: bool = False) -> DecisionPoint:
        """From a :class:`sorting.serving.loop.ItemDecision` (a shutdown decision uses its last seen frame);
        ``camera_alone``: the decision the camera alone gives (an item of a line with a spectrometer)."""
        frame = item.frame if item.frame >= 0 else item.summary.last_frame
        decision = item.camera_decision if camera_alone and item.camera_decision is not None else item.decision
        return cls(int(item.track_id), int(frame), tuple(map(float, item.summary.centroid)),
                   int(decision.bin), decision.bin_name, decision.reason)


@dataclass
class SortScore:
    """Item-by-item result of one run (counts, rates, and the items that went wrong)."""

    gt_items: int
    hard_items: int
    decisions: int
    lost: int
    duplicated: int
    phantom: int
    shared: int
    non_hard_correct: int
    non_hard_total: int
    hard_safe: int
    per_bin: dict[str, int]
    per_reason: dict[str, int]
    reject_rate: float
    errors: list[dict[str, Any]] = field(default_factory=list)
    assignment: dict[int, int | None] = field(default_factory=dict)  # GT id -> track id of its decision
    right: dict[int, bool] = field(default_factory=dict)  # GT id -> in its correct bin (a hard item: or reject)

    @property
    def correct_rate(self) -> float:
        """Share of non-hard GT items that reached their correct bin (lost ones count as wrong)."""
        return self.non_hard_correct / self.non_hard_total if self.non_hard_total else 1.0

    @property
    def hard_safe_rate(self) -> float:
        """Share of hard GT items in the reject bin or their correct bin."""
        return self.hard_safe / self.hard_items if self.hard_items else 1.0

    @property
    def one_decision_each(self) -> bool:
        return self.lost == 0 and self.duplicated == 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(correct_rate=self.correct_rate, hard_safe_rate=self.hard_safe_rate,
                   one_decision_each=self.one_decision_each)
        return out


def load_ground_truth(path: str | Path) -> dict[str, Any]:
    """Read a conveyor ground-truth JSON; DataError if missing or malformed."""
    try:
        gt = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read ground truth {path}: {exc}") from None
    if not isinstance(gt, dict) or not isinstance(gt.get("items"), list):
        raise DataError(f"{path}: not a conveyor ground truth (no 'items' list)")
    return gt


def expected_bin(policy: Policy, item: Mapping[str, Any]) -> int:
    """The bin the policy gives an item's GT labels (one-hot probabilities, one clean view)."""
    probs, labels = {}, {}
    truth = {**item, LAYOUT_HEAD: SINGLE_LABEL}  # a GT item is one garment
    for head, names in policy.labels.items():
        label = truth.get(head)
        if label not in names:
            continue
        onehot = np.zeros(len(names), np.float32)
        onehot[names.index(label)] = 1.0
        probs[head], labels[head] = onehot, names
    return policy.decide(ItemEvidence(item_id=item.get("id", -1), probs=probs, labels=labels, n_views=1)).bin


class _GtTrack:
    """An item's GT positions by frame, extrapolated along the belt for a few frames past its exit."""

    def __init__(self, item: Mapping[str, Any], step: np.ndarray) -> None:
        self.points = {int(f): (float(x), float(y)) for f, x, y in item["track"]}
        self.first, self.last = min(self.points), max(self.points)
        size = item.get("size") or [0, 0]
        self.gate = max(GATE_MIN_PX, GATE_SIZE_SHARE * float(max(size)))
        self.step = step

    def position(self, frame: int) -> tuple[float, float] | None:
        if frame in self.points:
            return self.points[frame]
        if self.last < frame <= self.last + EXTRAPOLATE_FRAMES:
            x, y = self.points[self.last]
            return x + self.step[0] * (frame - self.last), y + self.step[1] * (frame - self.last)
        return None

    def distance(self, d: DecisionPoint) -> float:
        p = self.position(d.frame)
        return float("inf") if p is None else float(np.hypot(d.centroid[0] - p[0], d.centroid[1] - p[1]))


def _belt_step(gt: Mapping[str, Any]) -> np.ndarray:
    per_frame = float(gt.get("belt_speed_px_s", 0.0)) / float(gt.get("fps", 30.0))
    return np.array([per_frame, 0.0]) if gt.get("direction", "+x") == "+x" else np.array([0.0, per_frame])


def _candidate_pairs(tracks: Sequence[_GtTrack], decs: Sequence[DecisionPoint]) -> list[tuple[float, int, int]]:
    """(gated distance, GT index, decision index) for every decision within an item's gate, closest first.

    Only decisions made while the item was in view (or just past it) can match, so each item looks at
    that window of the frame-sorted decisions: memory and time grow with the run, not with its square
    (a 10-minute soak has ~12,000 items and ~11,000 decisions).
    """
    frames = np.array([d.frame for d in decs], dtype=np.int64)
    order = np.argsort(frames, kind="stable")
    sorted_frames = frames[order]
    pairs = []
    for g, tr in enumerate(tracks):
        lo = int(np.searchsorted(sorted_frames, tr.first, side="left"))
        hi = int(np.searchsorted(sorted_frames, tr.last + EXTRAPOLATE_FRAMES, side="right"))
        for d in order[lo:hi]:
            cost = tr.distance(decs[int(d)]) / tr.gate
            if cost <= 1.0:
                pairs.append((cost, g, int(d)))
    return sorted(pairs)


def score_run(decisions: Iterable[DecisionPoint], gt: Mapping[str, Any], policy: Policy) -> SortScore:
    """Match decisions to GT items one-to-one and count lost, duplicated, phantom and bins."""
    decs = list(decisions)
    items: Sequence[Mapping[str, Any]] = gt["items"]
    step = _belt_step(gt)
    tracks = [_GtTrack(it, step) for it in items]
    pairs = _candidate_pairs(tracks, decs)
    match: dict[int, int] = {}  # GT index -> decision index
    taken: set[int] = set()
    nearest: dict[int, int] = {}  # decision index -> its nearest GT index within the gate
    for _, g, d in pairs:  # closest pairs first
        nearest.setdefault(d, g)
        if g not in match and d not in taken:
            match[g] = d
            taken.add(d)
    leftover = [d for d in range(len(decs)) if d not in taken]
    extra = Counter(nearest[d] for d in leftover if d in nearest)
    phantom = len(leftover) - sum(extra.values())

    by_id = {it["id"]: g for g, it in enumerate(items)}
    reject = policy.reject_bin
    errors: list[dict[str, Any]] = []
    assignment: dict[int, int | None] = {}
    right: dict[int, bool] = {}
    lost = shared = non_hard_total = non_hard_correct = hard_safe = 0
    for g, it in enumerate(items):
        want = expected_bin(policy, it)
        d = match.get(g)
        if d is None:  # shared with a touching partner's decision?
            partner = next((match[by_id[p]] for p in it.get("touching_ids", []) if by_id.get(p) in match), None)
            if partner is not None:
                shared += 1
                d = partner
            else:
                lost += 1
        got = decs[d] if d is not None else None
        assignment[it["id"]] = None if got is None else got.track_id
        ok = got is not None and got.bin == want
        if it.get("hard"):
            safe = got is not None and got.bin in (reject, want)
            hard_safe += int(safe)
        else:
            non_hard_total += 1
            non_hard_correct += int(ok)
            safe = ok
        right[it["id"]] = safe
        if not safe or extra.get(g):
            errors.append({"id": it["id"], "garment": it.get("garment"), "colour": it.get("colour"),
                           "fibre": it.get("fibre"), "hard": it.get("hard_reason"), "expected_bin": want,
                           "bin": None if got is None else got.bin, "reason": None if got is None else got.reason,
                           "track_id": None if got is None else got.track_id, "extra_decisions": extra.get(g, 0)})
    per_bin = Counter(d.bin_name for d in decs)
    per_reason = Counter(d.reason.split(":")[0] if not d.reason.startswith("rule:") else "rule" for d in decs)
    n_reject = sum(d.bin == reject for d in decs)
    return SortScore(
        gt_items=len(items), hard_items=sum(bool(it.get("hard")) for it in items), decisions=len(decs),
        lost=lost, duplicated=len(extra), phantom=phantom, shared=shared, non_hard_correct=non_hard_correct,
        non_hard_total=non_hard_total, hard_safe=hard_safe, per_bin=dict(sorted(per_bin.items())),
        per_reason=dict(sorted(per_reason.items())), reject_rate=n_reject / len(decs) if decs else 0.0,
        errors=errors, assignment=assignment, right=right,
    )
