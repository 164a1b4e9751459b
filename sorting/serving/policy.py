"""Sorting policy: per-item evidence (class probabilities, flags) -> one bin.

The bins file (``serving/bins-*.yaml``) lists the bins with their distance from the decision
line, the reject bin (end of belt, no actuator) and ordered rules on fibre and colour. The
policy is fail-safe: anything it is not sure of (overlap, cut off, out-of-distribution, low
confidence, no rule) goes to the reject bin with a reason that the decision log keeps. Overlap is
the tracker's shape/colour evidence or, for a model with a ``layout`` head, its p(several) at or
above ``several_threshold``.

Reasons (``Decision.reason``, the decision log's text): ``rule:<name>`` for a product bin, else a
:class:`RejectReason` (``low_confidence:<head>`` names the unsure head). The policy owns them all:
the item's fate when it ended (crossed the line, lost by the tracker, in flight at shutdown) is
part of its :class:`ItemEvidence`, and the ejector turns a decision it cannot reach in time into
``late`` with :func:`as_reject`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from sorting.config import StrictModel, load_config
from sorting.errors import ConfigError
from sorting.serving.fusion import NirEvidence, fuse
from sorting.serving.non_garment import NOT_CLOTH
from sorting.taxonomy import LAYOUT_HEAD, SEVERAL_LABEL

log = logging.getLogger(__name__)

MAX_BINS = 64
RULE_PREFIX = "rule:"


class RejectReason(str, Enum):
    """Why an item went to the reject bin; the value is what the decision log stores."""

    LOST = "lost"  # tracked but never classified, or lost by the tracker before the decision line
    OVERLAP = "overlap"  # several garments in one blob
    CUT_OFF = "cut_off"  # never seen whole (the field of view cuts it)
    OOD = "ood"  # out of the model's distribution
    LOW_CONFIDENCE = "low_confidence"  # stored as ``low_confidence:<head>``
    UNMATCHED = "unmatched"  # no rule matches its classes
    LATE = "late"  # its bin cannot be reached in time
    NO_BELT_SPEED = "no_belt_speed"  # nobody measures the belt (encoder silent): no firing can be timed
    SHUTDOWN = "shutdown"  # in flight when the line stopped
    LOG_UNAVAILABLE = "log_unavailable"  # the decision log took no writes and its backlog was full
    NOT_A_GARMENT = "not_a_garment"  # a hand or an object (segmentation.non_garment): never ejected as a garment
    NOT_CLOTH = NOT_CLOTH  # a garment detection the textile check found not cloth (segmentation.textile_check)
    NO_NIR = "no_nir"  # the line has a spectrometer, the item no usable reading, and the bins file says reject
    NIR_OOD = "nir_ood"  # its reading is out of the spectral model's distribution, and the bins file says reject


Ended = Literal["line", "lost", "shutdown"]


class BinConfig(StrictModel):
    """One product bin downstream of the decision line, emptied by an air jet or pusher."""

    id: int = Field(ge=0, lt=MAX_BINS, description="bin number 0..63, unique")
    name: str = Field(min_length=1)
    distance_m: float | None = Field(default=None, gt=0, description="belt distance from the decision line")
    distance_px: float | None = Field(default=None, gt=0, description="same, in image pixels (synthetic lines)")
    address: int | None = Field(default=None, ge=0, description="coil/register of its actuator; default = id")
    pulse_ms: float | None = Field(default=None, gt=0, description="override of ejector.pulse_ms for this bin")
    description: str = ""

    @model_validator(mode="after")
    def _one_distance(self) -> BinConfig:
        if (self.distance_m is None) == (self.distance_px is None):
            raise ValueError(f"bin {self.id} ({self.name}): give exactly one of distance_m or distance_px")
        return self

    @property
    def actuator_address(self) -> int:
        return self.id if self.address is None else self.address


class RejectBinConfig(StrictModel):
    """The end-of-belt reject: items nobody pushed off fall into it; no actuator."""

    id: int = Field(default=0, ge=0, lt=MAX_BINS)
    name: str = "reject"


class RuleConfig(StrictModel):
    """``fibre`` / ``colour`` match lists of class names or ``any``; first matching rule wins.

    ``min_confidence`` (per head) is checked after a match: a matched rule whose confidence is
    too low rejects the item (``low_confidence:<head>``) rather than trying later rules.
    """

    name: str = Field(min_length=1)
    bin: int = Field(ge=0, lt=MAX_BINS)
    fibre: list[str] | Literal["any"] = "any"
    colour: list[str] | Literal["any"] = "any"
    min_confidence: dict[str, float] = Field(default_factory=dict)

    @field_validator("min_confidence")
    @classmethod
    def _in_unit(cls, value: dict[str, float]) -> dict[str, float]:
        for head, conf in value.items():
            if not 0.0 <= conf <= 1.0:
                raise ValueError(f"min_confidence[{head}] must be in 0..1")
        return value

    def heads(self) -> dict[str, list[str]]:
        """Heads this rule constrains by label, with their allowed labels."""
        return {h: v for h, v in (("fibre", self.fibre), ("colour", self.colour)) if v != "any"}


class NirPolicyConfig(StrictModel):
    """``nir:`` of a bins file: what a line with a spectrometer does with each item's reading.

    ``missing``: the item has no usable scan (it passed between the spots, the spectrometer is silent, every
    scan was refused); ``ood``: its reading is out of the spectral model's distribution. ``camera``: the camera
    decides alone under the same thresholds; ``reject``: the item goes to reject (``no_nir`` / ``nir_ood``).
    ``fusion``: how an in-distribution reading is combined with the camera (:mod:`sorting.serving.fusion`).
    ``camera_fibre_ood``: when only the camera's fibre head finds the garment out of its distribution and the
    spectrometer reads it in distribution, ``spectrometer``: the fused fibre decides (the camera's fibre doubt
    is about the garment's look, the spectrometer measures its fibre); ``reject``: it goes to reject as ``ood``.
    The defaults are the rule chosen on the tuning clips (models/NIR.md, "On the line"). Lines without a
    spectrometer ignore the section.
    """

    missing: Literal["camera", "reject"] = "camera"
    ood: Literal["camera", "reject"] = "camera"
    fusion: Literal["product", "confusion"] = "product"
    camera_fibre_ood: Literal["spectrometer", "reject"] = "spectrometer"


class PolicyConfig(StrictModel):
    """A bins file: bins, reject bin, per-head thresholds, OOD handling and ordered rules."""

    name: str = "line"
    description: str = ""
    bins: list[BinConfig] = Field(min_length=1)
    reject: RejectBinConfig = Field(default_factory=RejectBinConfig)
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="min top-1 probability per head before any rule is tried"
    )
    ood: Literal["reject", "ignore"] = "reject"
    # the model's OOD threshold at this validation quantile instead of the trained one (models store 0.95, 0.98,
    # 0.99, 0.995, 0.998, 0.999): higher rejects fewer in-distribution garments and catches fewer unknown items
    ood_quantile: float | None = Field(None, gt=0.0, lt=1.0)
    # a model with a layout head: reject as overlap when its p(several), averaged over the views, reaches this
    several_threshold: float = Field(0.5, ge=0.0, le=1.0)
    nir: NirPolicyConfig = Field(default_factory=NirPolicyConfig)
    rules: list[RuleConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyConfig:
        if len(self.bins) >= MAX_BINS:
            raise ValueError(f"{len(self.bins)} product bins + reject > {MAX_BINS}")
        ids = [b.id for b in self.bins]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate bin id(s) {dup}")
        if self.reject.id in ids:
            raise ValueError(f"reject id {self.reject.id} is also a product bin id")
        units = {"m" if b.distance_m is not None else "px" for b in self.bins}
        if len(units) > 1:
            raise ValueError("all bins must use the same unit (all distance_m or all distance_px)")
        clash = shared_output({b.id: b.actuator_address for b in self.bins}, self.bin_names())
        if clash:
            raise ValueError(clash)
        known = set(ids) | {self.reject.id}
        for rule in self.rules:
            if rule.bin not in known:
                raise ValueError(f"rule '{rule.name}' sends to bin {rule.bin}, which is not defined")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        for head, value in self.thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"thresholds[{head}] must be in 0..1")
        return self

    @property
    def distance_unit(self) -> Literal["m", "px"]:
        return "m" if self.bins[0].distance_m is not None else "px"

    def bin_names(self) -> dict[int, str]:
        """All bin ids (reject included) -> names."""
        return {self.reject.id: self.reject.name, **{b.id: b.name for b in self.bins}}

    def heads_used(self) -> frozenset[str]:
        """Heads the decision depends on: named by a rule, a threshold or a rule's min_confidence.

        A colour-only line does not care whether the fibre head is unsure or out of its
        distribution, so only these heads' OOD flags may reject an item.
        """
        used = set(self.thresholds)
        for rule in self.rules:
            used.update(rule.heads(), rule.min_confidence)
        return frozenset(used)


def shared_output(addresses: Mapping[int, int], names: Mapping[int, str]) -> str | None:
    """Bins (id -> actuator address) that share one coil/register, described; None when each has its own.

    Two bins on one output cannot be told apart: a firing for either moves both jets.
    """
    by_address: dict[int, list[int]] = {}
    for bin_id, address in sorted(addresses.items()):
        by_address.setdefault(address, []).append(bin_id)
    for address, ids in sorted(by_address.items()):
        if len(ids) > 1:
            shared = " and ".join(f"{names.get(i, '?')} ({i})" for i in ids)
            return f"bins {shared} share actuator address {address}"
    return None


def load_policy_config(path: str | Path, overrides: list[str] | None = None) -> PolicyConfig:
    """Load and validate a bins YAML (structure only; labels are checked by :class:`Policy`)."""
    return load_config(PolicyConfig, path, overrides)


@dataclass(frozen=True)
class ItemEvidence:
    """Everything the tracker knows about one item when it crosses the decision line.

    ``probs[head]`` is the aggregated (calibrated) class-probability vector over all views,
    ordered as ``labels[head]``; ``n_views`` is how many frames were classified (0 = lost).
    """

    item_id: int | str
    probs: Mapping[str, np.ndarray]
    labels: Mapping[str, Sequence[str]]
    ood: bool = False
    overlap: bool = False
    two_colours: bool = False  # segmentation saw two colour regions (used when the model has no layout head)
    cut_off: bool = False
    n_views: int = 1
    ended: Ended = "line"  # crossed the decision line, lost by the tracker, or in flight at shutdown
    not_garment: str | None = None  # the segmentation saw a hand or an object (or the textile check not cloth)
    nir: NirEvidence | None = None  # the spectrometer's reading (None: the line has no spectrometer)
    ood_heads: frozenset[str] = frozenset()  # the heads that made ``ood`` (in at least half of the views)


@dataclass(frozen=True)
class Decision:
    """Where one item goes, and why. ``fibre``/``colour`` are the top-1 labels (None if no head).

    ``reason`` is ``rule:<name>`` or a :class:`RejectReason` value (see the module docstring).
    """

    bin: int
    bin_name: str
    reason: str
    fibre: str | None = None
    colour: str | None = None
    confidence: dict[str, float] | None = None

    @property
    def kind(self) -> str:
        """``rule`` for a product bin, else the reject reason without its head (a metric label)."""
        return "rule" if self.reason.startswith(RULE_PREFIX) else self.reason.split(":", 1)[0]


def as_reject(decision: Decision, reject: RejectBinConfig, reason: RejectReason, head: str | None = None) -> Decision:
    """``decision`` sent to the reject bin for ``reason``, keeping its labels and confidences."""
    text = reason.value if head is None else f"{reason.value}:{head}"
    return replace(decision, bin=reject.id, bin_name=reject.name, reason=text)


class Policy:
    """Validated policy for one model's label set.

    ``Policy(config, labels)`` raises :class:`ConfigError` at start-up when a rule or threshold
    names a head the model lacks or a label not in the model's label names. Build a new
    Policy (same config) to validate a hot-reloaded model's labels before swapping it in.
    """

    def __init__(self, config: PolicyConfig, labels: Mapping[str, Sequence[str]]) -> None:
        self.config = config
        self.labels = {h: list(v) for h, v in labels.items()}
        self._check_labels()
        self._names = config.bin_names()
        # only the heads the bins depend on may reject as OOD (a colour line ignores an unsure fibre head)
        self.ood_heads = config.heads_used() or frozenset(self.labels)

    def _check_labels(self) -> None:
        heads = set(self.labels)
        problems = []
        if LAYOUT_HEAD in heads and SEVERAL_LABEL not in self.labels[LAYOUT_HEAD]:
            problems.append(f"the model's {LAYOUT_HEAD} head has no '{SEVERAL_LABEL}' label")
        for head in self.config.thresholds:
            if head not in heads:
                problems.append(f"thresholds: model has no '{head}' head (heads: {sorted(heads)})")
        for rule in self.config.rules:
            for head in {**rule.heads(), **rule.min_confidence}:
                if head not in heads:
                    problems.append(f"rule '{rule.name}': model has no '{head}' head (heads: {sorted(heads)})")
            for head, wanted in rule.heads().items():
                unknown = [w for w in wanted if head in heads and w not in self.labels[head]]
                if unknown:
                    problems.append(
                        f"rule '{rule.name}': unknown {head} label(s) {unknown} "
                        f"(model labels: {', '.join(self.labels[head])})"
                    )
        if problems:
            raise ConfigError(f"bins config '{self.config.name}' does not fit the model: " + "; ".join(problems))

    @property
    def uses_two_colours(self) -> bool:
        """Whether the segmentation's two-colour-regions evidence counts (the model has no layout head)."""
        return LAYOUT_HEAD not in self.labels

    def _looks_several(self, evidence: ItemEvidence) -> bool:
        """Several garments in one blob, beyond the shape evidence.

        With a layout head, its p(several) decides: it tells a colour-block garment from two touching
        garments, which the segmentation's two-colour-regions check cannot. Without one, that check does.
        """
        if self.uses_two_colours:
            return evidence.two_colours
        probs = evidence.probs.get(LAYOUT_HEAD)
        names = self.labels[LAYOUT_HEAD]
        if probs is None or np.size(probs) != len(names):
            return True  # the head's evidence is missing or broken: fail safe
        return float(np.ravel(probs)[names.index(SEVERAL_LABEL)]) >= self.config.several_threshold

    @property
    def reject_bin(self) -> int:
        return self.config.reject.id

    def reject(self, reason: RejectReason, decision: Decision | None = None, head: str | None = None) -> Decision:
        """A reject decision for ``reason``, keeping the labels/confidences of ``decision``."""
        base = decision or Decision(bin=self.reject_bin, bin_name=self.config.reject.name, reason="")
        return as_reject(base, self.config.reject, reason, head)

    def decide(self, evidence: ItemEvidence) -> Decision:
        """The bin for one item (never raises for odd evidence: unsure items go to reject).

        On a line with a spectrometer (``evidence.nir``) the fibre probabilities are the fused ones
        (:meth:`_with_nir`), or the item goes to reject when the bins file's ``nir`` section says so.
        """
        nir_reject = None
        if evidence.nir is not None and "fibre" in self.ood_heads:  # a colour-only line ignores the reading
            evidence, nir_reject = self._with_nir(evidence)
        base = self._top_labels(evidence)
        if evidence.ended != "line":
            return self.reject(RejectReason(evidence.ended), base)
        if evidence.not_garment is not None:
            return self.reject(RejectReason.NOT_CLOTH if evidence.not_garment == NOT_CLOTH
                               else RejectReason.NOT_A_GARMENT, base)
        if evidence.n_views <= 0 or not base.confidence:
            return self.reject(self._never_classified(evidence), base)
        if evidence.overlap or self._looks_several(evidence):
            return self.reject(RejectReason.OVERLAP, base)
        if evidence.cut_off:
            return self.reject(RejectReason.CUT_OFF, base)
        if evidence.ood and self.config.ood == "reject" and not self._nir_vouches(evidence):
            return self.reject(RejectReason.OOD, base)
        if nir_reject is not None:
            return self.reject(nir_reject, base)
        conf = base.confidence
        for head, threshold in self.config.thresholds.items():
            if conf.get(head, 0.0) < threshold:
                return self.reject(RejectReason.LOW_CONFIDENCE, base, head)
        top = {"fibre": base.fibre, "colour": base.colour}
        for rule in self.config.rules:
            constrained = rule.heads()
            if all(top.get(head) in wanted for head, wanted in constrained.items()):
                for head, minimum in rule.min_confidence.items():
                    if conf.get(head, 0.0) < minimum:
                        return self.reject(RejectReason.LOW_CONFIDENCE, base, head)
                return replace(base, bin=rule.bin, bin_name=self._names[rule.bin], reason=f"{RULE_PREFIX}{rule.name}")
        return self.reject(RejectReason.UNMATCHED, base)

    def _nir_vouches(self, evidence: ItemEvidence) -> bool:
        """Only the camera's fibre head found the garment out of its distribution, and the spectrometer read it in
        distribution (the bins file's ``nir.camera_fibre_ood: spectrometer``): the fibre is the spectrometer's to
        judge, so the camera's fibre OOD flag does not reject it."""
        nir = evidence.nir
        return (self.config.nir.camera_fibre_ood == "spectrometer" and nir is not None and nir.usable and not nir.ood
                and evidence.ood_heads == {"fibre"} and "fibre" in self.ood_heads)

    def _with_nir(self, evidence: ItemEvidence) -> tuple[ItemEvidence, RejectReason | None]:
        """The evidence with the fibre probabilities fused with the spectrometer's reading, or unchanged with the
        reject reason the bins file gives a missing or out-of-distribution reading (None: the camera decides)."""
        nir = evidence.nir
        assert nir is not None
        rules = self.config.nir
        if not nir.usable:
            return evidence, RejectReason.NO_NIR if rules.missing == "reject" else None
        if nir.ood:
            return evidence, RejectReason.NIR_OOD if rules.ood == "reject" else None
        camera = evidence.probs.get("fibre")
        if camera is None or nir.likelihood is None or np.size(camera) != np.size(nir.likelihood):
            return evidence, None  # no fibre head to fuse with (a colour line): nothing to change
        return replace(evidence, probs={**evidence.probs, "fibre": fuse(camera, nir.likelihood)}), None

    @staticmethod
    def _never_classified(evidence: ItemEvidence) -> RejectReason:
        """Why an item with no usable view is rejected: never seen alone (overlap), never whole, or lost."""
        if evidence.n_views <= 0 and (evidence.overlap or evidence.two_colours):
            return RejectReason.OVERLAP
        if evidence.n_views <= 0 and evidence.cut_off:
            return RejectReason.CUT_OFF
        return RejectReason.LOST

    def _top_labels(self, evidence: ItemEvidence) -> Decision:
        """A reject-bin decision carrying the top-1 label and confidence of every usable head."""
        top: dict[str, str] = {}
        conf: dict[str, float] = {}
        for head, probs in evidence.probs.items():
            names = evidence.labels.get(head, ())
            p = np.asarray(probs, dtype=np.float64).ravel()
            if p.size == 0 or p.size != len(names) or not np.all(np.isfinite(p)):
                log.warning("item %s: bad %s probabilities (size %d, %d labels)",
                            evidence.item_id, head, p.size, len(names))
                continue
            k = int(np.argmax(p))
            top[head], conf[head] = names[k], float(p[k])
        return Decision(bin=self.reject_bin, bin_name=self.config.reject.name, reason="", fibre=top.get("fibre"),
                        colour=top.get("colour"), confidence=conf)
