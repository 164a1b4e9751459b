"""The spectrometer on the synthetic line, scored: fibre-correct bins with and without it, and its association.

One run gives both sortings of the same clip: the loop decides every item with the spectrometer and also
records what the camera alone would have decided (``ItemDecision.camera_decision``; segmentation and tracking
do not depend on the spectrometer, so this is what a run without it decides). Garments are reported in two
groups: those whose fibre the simulated spectrometer has real unseen spectra of (``own``: cotton, polyester,
polyamide, polycotton, other in the swatch hold-out), and those it reads through a stand-in (``stand-in``: wool,
acrylic, viscose, linen, silk get ``unknown_as``'s spectra, a fibre the line's model never learnt).

Association: every scan the loop assigned to a garment is checked against the clip's truth: ``right`` (it read
the garment of the track it went to), ``edge`` (that garment, but the footprint also touched the belt: a mixed
spectrum), ``belt`` (only the bare belt: the detection's mask was larger than the garment; the spectral model
then reads the belt and the scan is left out at the decision), ``other`` (another garment, or two: a wrong
association; ``other_pair`` when the track is one of a touching pair, seen as one blob and rejected as an
overlap), ``unmatched`` (its track matched no garment).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sorting.apps.scoring import DecisionPoint, SortScore, score_run
from sorting.datasets.spectra_labels import BACKGROUND
from sorting.serving.nir_stage import ASSIGNED, OUTCOMES, ScanOutcome
from sorting.serving.policy import Policy
from sorting.serving.records import ItemDecision

GROUPS = ("own", "stand-in")
# The simulated spectrometer of bench-sorter and the demo: 7 spots across the 640x480 synthetic belt (one every
# 60 px between the guard rail and the lower edge), 240 px along (half a frame upstream of the decision line),
# 16 px spots (3.2 cm at 500 px/m), 5 ms scans at 50 scans/s per spot.
SIM_SPOTS = {"along_px": 240, "across_px": [70, 130, 190, 250, 310, 370, 430], "spot_px": 16, "scan_ms": 5,
             "rate_hz": 50}


def sim_spectrometer_overrides(model: Path, spectra: Path) -> list[str]:
    """Line-config overrides that give a line the simulated spectrometer of :data:`SIM_SPOTS`."""
    spots = [f"spectrometer.{k}={v}" for k, v in SIM_SPOTS.items()]
    return ["spectrometer.source=sim", f"spectrometer.model={Path(model).resolve()}",
            f"spectrometer.sim.spectra={Path(spectra).resolve()}", *spots]


@dataclass(frozen=True)
class ScanRecord:
    """What the benchmark keeps of one scan."""

    t: float
    spot: int
    truth: str | None
    outcome: str
    track_id: int | None

    @classmethod
    def of(cls, outcome: ScanOutcome) -> ScanRecord:
        return cls(outcome.scan.t, outcome.scan.spot, outcome.scan.truth, outcome.outcome, outcome.track_id)


@dataclass
class GroupCounts:
    """Normal garments in their right bin, with the spectrometer and with the camera alone; hard ones safe."""

    normal: int = 0
    right_nir: int = 0
    right_camera: int = 0
    read: int = 0  # normal garments the spectrometer read (a usable reading)
    wrong_nir: int = 0  # normal garments in a wrong product bin (not the reject), with the spectrometer
    wrong_camera: int = 0  # the same, camera alone
    hard: int = 0
    safe_nir: int = 0
    safe_camera: int = 0


@dataclass
class NirScore:
    """The spectrometer's part of a bench run (see the module docstring)."""

    groups: dict[str, GroupCounts]
    by_fibre: dict[str, GroupCounts]
    scans: dict[str, int]
    truths: dict[str, int]
    association: dict[str, int]
    reasons_nir: dict[str, int] = field(default_factory=dict)
    reasons_camera: dict[str, int] = field(default_factory=dict)

    def total(self) -> GroupCounts:
        out = GroupCounts()
        for g in self.groups.values():
            for k, v in asdict(g).items():
                setattr(out, k, getattr(out, k) + v)
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["total"] = asdict(self.total())
        return out

    def markdown(self) -> list[str]:
        lines = ["## spectrometer (simulated)", "",
                 "| garments | normal right bin, with NIR | camera alone | wrong product bin, with NIR | camera alone "
                 "| read by NIR | hard safe, with NIR | camera alone |",
                 "|---|---|---|---|---|---|---|---|"]
        for name, g in [*self.groups.items(), ("all", self.total())]:
            lines.append(f"| {name} | {g.right_nir}/{g.normal} | {g.right_camera}/{g.normal} | {g.wrong_nir} | "
                         f"{g.wrong_camera} | {g.read}/{g.normal} | {g.safe_nir}/{g.hard} | {g.safe_camera}/{g.hard} |")
        lines += ["", "per fibre (normal right with NIR / camera alone / total): " + ", ".join(
            f"{f} {g.right_nir}/{g.right_camera}/{g.normal}" for f, g in sorted(self.by_fibre.items())), ""]
        lines += ["scans: " + ", ".join(f"{k} {v}" for k, v in self.scans.items() if v), "",
                  "what the scans saw: " + ", ".join(f"{k} {v}" for k, v in sorted(self.truths.items())), "",
                  "assigned scans: " + ", ".join(f"{k} {v}" for k, v in self.association.items()), "",
                  "reasons with NIR: " + ", ".join(f"{k}={v}" for k, v in self.reasons_nir.items()), "",
                  "reasons camera alone: " + ", ".join(f"{k}={v}" for k, v in self.reasons_camera.items()), ""]
        return lines


def _association(scans: Iterable[ScanRecord], track_to_gt: Mapping[int, int], touching: set[int]) -> dict[str, int]:
    """Assigned scans against the truth: right, edge (its garment and belt), belt (only belt: the garment's mask
    was larger than the garment), other (another garment, or two), other_pair (the same, on a track of a touching
    pair: one blob, rejected as overlap), unmatched (its track matched no garment)."""
    out = dict.fromkeys(("right", "edge", "belt", "other", "other_pair", "unmatched"), 0)
    for s in scans:
        if s.outcome != ASSIGNED:
            continue
        gt = track_to_gt.get(s.track_id) if s.track_id is not None else None
        if gt is None:
            out["unmatched"] += 1
        elif s.truth == str(gt):
            out["right"] += 1
        elif s.truth == f"edge:{gt}":
            out["edge"] += 1
        elif s.truth == BACKGROUND:
            out["belt"] += 1
        else:
            out["other_pair" if s.track_id in touching else "other"] += 1
    return out


def _reasons(decisions: Sequence[DecisionPoint]) -> dict[str, int]:
    return dict(sorted(Counter(d.reason.split(":")[0] if not d.reason.startswith("rule:") else "rule"
                               for d in decisions).items()))


def score_nir(items: Sequence[ItemDecision], gt: Mapping[str, Any], policy: Policy, scans: Sequence[ScanRecord],
              own: Iterable[str], score: SortScore | None = None) -> NirScore:
    """Score a run with a spectrometer (``own``: the fibres the simulator has their own spectra of)."""
    own = set(own)
    with_nir = [DecisionPoint.from_item_decision(d) for d in items]
    alone = [DecisionPoint.from_item_decision(d, camera_alone=True) for d in items]
    nir_score = score or score_run(with_nir, gt, policy)
    camera_score = score_run(alone, gt, policy)
    read_tracks = {d.track_id for d in items if d.nir is not None and d.nir.usable}
    items_by_id = {it["id"]: it for it in gt["items"]}
    wrong_nir, wrong_camera = _wrong_product(nir_score, policy), _wrong_product(camera_score, policy)
    groups = {g: GroupCounts() for g in GROUPS}
    by_fibre: dict[str, GroupCounts] = {}
    for it in gt["items"]:
        fibre = it.get("fibre") or ""
        for counts in (groups["own" if fibre in own else "stand-in"], by_fibre.setdefault(fibre, GroupCounts())):
            ok_nir, ok_cam = nir_score.right.get(it["id"], False), camera_score.right.get(it["id"], False)
            if it.get("hard"):
                counts.hard += 1
                counts.safe_nir += ok_nir
                counts.safe_camera += ok_cam
            else:
                counts.normal += 1
                counts.right_nir += ok_nir
                counts.right_camera += ok_cam
                counts.read += nir_score.assignment.get(it["id"]) in read_tracks
                counts.wrong_nir += it["id"] in wrong_nir
                counts.wrong_camera += it["id"] in wrong_camera
    track_to_gt = {t: g for g, t in nir_score.assignment.items() if t is not None}
    touching = {t for t, g in track_to_gt.items() if items_by_id.get(g, {}).get("hard_reason") == "touching"}
    outcome_counts = Counter(s.outcome for s in scans)
    truths = Counter("garment" if (s.truth or "?")[0].isdigit() else (s.truth or "?").split(":")[0] for s in scans)
    return NirScore(groups, by_fibre, {o: outcome_counts.get(o, 0) for o in OUTCOMES}, dict(truths),
                    _association(scans, track_to_gt, touching), _reasons(with_nir), _reasons(alone))


def _wrong_product(score: SortScore, policy: Policy) -> set[int]:
    """GT ids of garments that went into a product bin that is not theirs (the purity errors)."""
    return {e["id"] for e in score.errors
            if e["bin"] is not None and e["bin"] != policy.reject_bin and e["bin"] != e["expected_bin"]}
