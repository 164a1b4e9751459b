"""Policy: bins files, start-up validation against model labels, fail-safe decisions."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sorting.config import build_config
from sorting.errors import ConfigError
from sorting.serving.policy import ItemEvidence, Policy, PolicyConfig, load_policy_config
from sorting.taxonomy import load_taxonomy

FIBRE = ["cotton", "polyester", "wool"]
COLOUR = ["white", "black", "blue", "multicolour"]
LABELS = {"fibre": FIBRE, "colour": COLOUR}

CONFIG = {
    "bins": [
        {"id": 1, "name": "cotton_white", "distance_m": 1.0},
        {"id": 2, "name": "polyester", "distance_m": 1.5},
        {"id": 3, "name": "dark", "distance_m": 2.0},
    ],
    "reject": {"id": 0, "name": "reject"},
    "thresholds": {"fibre": 0.5, "colour": 0.5},
    "rules": [
        {"name": "cotton_white", "bin": 1, "fibre": ["cotton"], "colour": ["white"], "min_confidence": {"fibre": 0.8}},
        {"name": "polyester", "bin": 2, "fibre": ["polyester"]},
        {"name": "dark", "bin": 3, "colour": ["black"]},
    ],
}


def cfg(**changes) -> PolicyConfig:
    return build_config(PolicyConfig, {**CONFIG, **changes})


def onehot(names: list[str], label: str, p: float) -> np.ndarray:
    rest = (1.0 - p) / (len(names) - 1)
    return np.array([p if n == label else rest for n in names], dtype=np.float32)


def ev(fibre="cotton", colour="white", pf=0.9, pc=0.9, **flags) -> ItemEvidence:
    probs = {"fibre": onehot(FIBRE, fibre, pf), "colour": onehot(COLOUR, colour, pc)}
    return ItemEvidence(item_id=1, probs=probs, labels=LABELS, **flags)


@pytest.fixture
def policy() -> Policy:
    return Policy(cfg(), LABELS)


@pytest.mark.parametrize(
    ("evidence", "bin_id", "reason"),
    [
        (ev(), 1, "rule:cotton_white"),
        (ev("polyester", "white"), 2, "rule:polyester"),  # first matching rule wins
        (ev("wool", "black"), 3, "rule:dark"),
        (ev("wool", "blue"), 0, "unmatched"),
        (ev(pf=0.7), 0, "low_confidence:fibre"),  # matched rule's own min_confidence
        (ev("polyester", pc=0.4), 0, "low_confidence:colour"),  # global per-head threshold
        (ev(ood=True), 0, "ood"),
        (ev(overlap=True), 0, "overlap"),
        (ev(cut_off=True), 0, "cut_off"),
        (ev(n_views=0), 0, "lost"),
        (ev(not_garment="object"), 0, "not_a_garment"),
        (ev(not_garment="hand"), 0, "not_a_garment"),
        (ev(not_garment="not_cloth"), 0, "not_cloth"),  # the textile check held a garment back: counted apart
    ],
)
def test_decide(policy: Policy, evidence: ItemEvidence, bin_id: int, reason: str) -> None:
    decision = policy.decide(evidence)
    assert (decision.bin, decision.reason) == (bin_id, reason)
    assert decision.bin_name == {0: "reject", 1: "cotton_white", 2: "polyester", 3: "dark"}[bin_id]


def test_two_colour_regions_mean_overlap_for_a_model_without_layout_head(policy: Policy) -> None:
    assert policy.decide(ev(two_colours=True)).reason == "overlap"


LAYOUT_LABELS = {**LABELS, "layout": ["single", "several"]}


def layout_ev(p_several: float, **flags) -> ItemEvidence:
    base = ev(**flags)
    probs = {**base.probs, "layout": np.array([1.0 - p_several, p_several], dtype=np.float32)}
    return ItemEvidence(item_id=1, probs=probs, labels=LAYOUT_LABELS, **flags)


@pytest.mark.parametrize(
    ("p_several", "flags", "reason"),
    [
        (0.1, {}, "rule:cotton_white"),
        (0.1, {"two_colours": True}, "rule:cotton_white"),  # the head, not the colour regions, judges
        (0.5, {}, "overlap"),  # several_threshold 0.5 is inclusive
        (0.9, {}, "overlap"),
        (0.1, {"overlap": True}, "overlap"),  # shape evidence still rejects
    ],
)
def test_layout_head_decides_several_garments(p_several: float, flags: dict, reason: str) -> None:
    policy = Policy(cfg(), LAYOUT_LABELS)
    assert policy.decide(layout_ev(p_several, **flags)).reason == reason


def test_two_colour_evidence_is_used_only_without_layout_head() -> None:
    assert Policy(cfg(), LABELS).uses_two_colours
    assert not Policy(cfg(), LAYOUT_LABELS).uses_two_colours


def test_layout_threshold_is_configurable_and_a_missing_head_output_fails_safe() -> None:
    policy = Policy(cfg(several_threshold=0.95), LAYOUT_LABELS)
    assert policy.decide(layout_ev(0.9)).reason == "rule:cotton_white"
    missing = ItemEvidence(1, ev().probs, LAYOUT_LABELS)  # the model has the head but no output reached us
    assert policy.decide(missing).reason == "overlap"
    with pytest.raises(ConfigError, match="layout"):
        Policy(cfg(), {**LABELS, "layout": ["one", "many"]})


def test_decision_carries_labels_and_confidence(policy: Policy) -> None:
    d = policy.decide(ev("polyester", "blue", pf=0.75, pc=0.6))
    assert (d.fibre, d.colour) == ("polyester", "blue")
    assert d.confidence == pytest.approx({"fibre": 0.75, "colour": 0.6})


def test_ood_can_be_ignored_by_config() -> None:
    assert Policy(cfg(ood="ignore"), LABELS).decide(ev(ood=True)).reason == "rule:cotton_white"


def test_bad_probabilities_go_to_reject(policy: Policy) -> None:
    broken = ItemEvidence(1, {"fibre": np.array([np.nan, 1, 0]), "colour": np.ones(2)}, LABELS)
    assert policy.decide(broken).reason == "lost"
    nan_fibre = ItemEvidence(1, {"fibre": np.array([np.nan, 1, 0]), "colour": onehot(COLOUR, "white", 0.9)}, LABELS)
    assert policy.decide(nan_fibre).bin == 0  # no fibre -> cotton rule can't match, threshold fails


def test_colour_only_model_with_colour_rules() -> None:
    c = cfg(thresholds={"colour": 0.5}, rules=[{"name": "dark", "bin": 3, "colour": ["black"]}])
    p = Policy(c, {"colour": COLOUR})
    e = ItemEvidence(1, {"colour": onehot(COLOUR, "black", 0.9)}, {"colour": COLOUR})
    d = p.decide(e)
    assert (d.bin, d.fibre, d.colour) == (3, None, "black")


def test_unknown_label_is_a_startup_error() -> None:
    c = cfg(rules=[{"name": "r", "bin": 1, "colour": ["whte"]}])
    with pytest.raises(ConfigError, match="unknown colour label.*whte"):
        Policy(c, LABELS)


def test_rule_on_missing_head_is_a_startup_error() -> None:
    with pytest.raises(ConfigError, match="no 'fibre' head"):
        Policy(cfg(), {"colour": COLOUR})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bins": [{"id": 1, "name": "a", "distance_m": 1}, {"id": 1, "name": "b", "distance_m": 2}]}, "duplicate"),
        ({"bins": [{"id": i, "name": f"b{i}", "distance_m": 1} for i in range(64)]}, "> 64"),
        ({"reject": {"id": 1}}, "reject id"),
        ({"rules": [{"name": "x", "bin": 9, "colour": ["white"]}]}, "not defined"),
        ({"bins": [{"id": 1, "name": "a", "distance_m": 1}, {"id": 2, "name": "b", "distance_px": 9}]}, "same unit"),
        ({"bins": [{"id": 1, "name": "a"}]}, "exactly one"),
        ({"bins": [{"id": 64, "name": "a", "distance_m": 1}]}, "bins.0.id"),
        ({"thresholds": {"colour": 1.5}}, "0..1"),
        ({"rules": [{"name": "x", "bin": 1, "colour": "all"}]}, "colour"),
        ({"bnis": []}, "did you mean 'bins'"),
    ],
)
def test_config_errors(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg(**changes)


def test_63_bins_plus_reject_is_allowed() -> None:
    bins = [{"id": i, "name": f"b{i}", "distance_m": 0.1 * i} for i in range(1, 64)]
    c = cfg(bins=bins, rules=[{"name": "x", "bin": 63, "colour": ["white"]}])
    assert len(c.bin_names()) == 64


@pytest.mark.parametrize("name", ["bins-colour-6.yaml", "bins-fibre-colour.yaml"])
def test_sample_bins_files_fit_the_default_taxonomy(repo_root, name: str) -> None:
    tax = load_taxonomy()
    c = load_policy_config(repo_root / "serving" / name)
    policy = Policy(c, {"fibre": list(tax.fibre), "colour": list(tax.colour)})
    assert policy.reject_bin == 0
    used = {r.bin for r in c.rules}
    assert used == {b.id for b in c.bins}, "every bin is reachable by a rule"


def test_sample_colour_line_routes_dark_navy(repo_root) -> None:
    tax = load_taxonomy()
    labels = {"colour": list(tax.colour)}
    policy = Policy(load_policy_config(repo_root / "serving" / "bins-colour-6.yaml"), labels)
    d = policy.decide(ItemEvidence(5, {"colour": onehot(list(tax.colour), "navy", 0.9)}, labels))
    assert (d.bin_name, d.reason) == ("dark", "rule:dark")


def test_fibre_colour_file_refuses_a_model_without_those_fibres(repo_root, tmp_path) -> None:
    c = load_policy_config(repo_root / "serving" / "bins-fibre-colour.yaml")
    with pytest.raises(ConfigError, match="unknown fibre label"):
        Policy(c, {"fibre": ["cotton", "denim", "linen", "polyester"], "colour": list(load_taxonomy().colour)})
    bad = tmp_path / "b.yaml"
    bad.write_text(yaml.safe_dump({**CONFIG, "ood": "maybe"}))
    with pytest.raises(ConfigError, match="ood"):
        load_policy_config(bad)
