"""Item-by-item scoring of decisions against a constructed conveyor ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from sorting.errors import DataError
from sorting.serving.policy import Policy, load_policy_config
from sorting.apps.scoring import DecisionPoint, expected_bin, load_ground_truth, score_run
from sorting.taxonomy import load_taxonomy

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def policy() -> Policy:
    tax = load_taxonomy()
    return Policy(load_policy_config(REPO / "serving" / "bins-colour-6.yaml"), {"colour": list(tax.colour)})


def _item(item_id, colour, y, entry, *, hard=None, touching=()):
    """Item moving +x at 10 px/frame, entering at x=0 in frame ``entry``, 100 px wide."""
    track = [[f, 10.0 * (f - entry), float(y)] for f in range(entry, entry + 60)]
    return {"id": item_id, "colour": colour, "fibre": "cotton", "garment": "shirt", "hard": hard is not None,
            "hard_reason": hard, "touching_ids": list(touching), "size": [100, 80], "track": track}


def _gt(*items):
    return {"fps": 30.0, "belt_speed_px_s": 300.0, "direction": "+x", "items": list(items)}


def _dec(tid, frame, x, y, bin_id, name, reason="rule:x"):
    return DecisionPoint(tid, frame, (x, y), bin_id, name, reason)


def test_expected_bin_follows_the_policy(policy):
    assert expected_bin(policy, {"colour": "white"}) == 1
    assert expected_bin(policy, {"colour": "navy"}) == 2
    assert expected_bin(policy, {"colour": "multicolour"}) == 6
    assert expected_bin(policy, {"colour": "not-a-colour"}) == policy.reject_bin


def test_perfect_run(policy):
    gt = _gt(_item(1, "white", 100, 0), _item(2, "red", 300, 5))
    # decided at x=300 (frame 30 / 35), centroids a little off the mask-box centre
    decs = [_dec(7, 30, 310, 95, 1, "white"), _dec(8, 35, 290, 305, 4, "red_pink_purple")]
    s = score_run(decs, gt, policy)
    assert (s.lost, s.duplicated, s.phantom, s.shared) == (0, 0, 0, 0)
    assert s.correct_rate == 1.0 and s.one_decision_each and s.reject_rate == 0.0
    assert s.per_bin == {"red_pink_purple": 1, "white": 1}
    assert s.to_dict()["correct_rate"] == 1.0


def test_lost_duplicate_phantom_and_wrong_bin(policy):
    gt = _gt(_item(1, "white", 100, 0), _item(2, "red", 300, 5), _item(3, "blue", 200, 40))
    decs = [
        _dec(7, 30, 300, 100, 1, "white"),
        _dec(8, 32, 300, 110, 1, "white"),  # the same garment decided again (split legs)
        _dec(9, 35, 300, 300, 3, "blue_green"),  # red item, wrong bin
        _dec(10, 20, 400, 420, 0, "reject", "ood"),  # nothing there: a stain
    ]  # item 3 never decided
    s = score_run(decs, gt, policy)
    assert (s.lost, s.duplicated, s.phantom) == (1, 1, 1)
    assert s.non_hard_total == 3 and s.non_hard_correct == 1
    assert not s.one_decision_each
    assert {e["id"] for e in s.errors} == {1, 2, 3}
    assert s.reject_rate == pytest.approx(0.25)


def test_hard_items_must_be_reject_or_correct_and_touching_pairs_may_share(policy):
    gt = _gt(_item(1, "grey", 150, 0, hard="touching", touching=[2]), _item(2, "green", 230, 0, hard="touching",
             touching=[1]), _item(3, "red", 400, 0, hard="cut_off"))
    # one blob for the touching pair, decided once, in the middle of both -> rejected; cut-off item in a wrong bin
    decs = [_dec(5, 30, 300, 190, 0, "reject", "overlap"), _dec(6, 30, 300, 400, 1, "white")]
    s = score_run(decs, gt, policy)
    assert s.lost == 0 and s.shared == 1 and s.duplicated == 0
    assert s.hard_items == 3 and s.hard_safe == 2 and s.hard_safe_rate == pytest.approx(2 / 3)
    # the pair sorted into a product bin: one of the two garments is in a wrong bin
    s2 = score_run([_dec(5, 30, 300, 190, 2, "dark"), decs[1]], gt, policy)
    assert s2.hard_safe == 1


def test_matching_is_one_to_one_cheapest_first(policy):
    # two items side by side across the belt; decisions nearer each other than to the wrong item
    gt = _gt(_item(1, "white", 100, 0), _item(2, "red", 190, 0))
    decs = [_dec(1, 30, 300, 150, 4, "red_pink_purple"), _dec(2, 30, 300, 105, 1, "white")]
    s = score_run(decs, gt, policy)
    assert s.lost == 0 and s.duplicated == 0 and s.correct_rate == 1.0


def test_bad_ground_truth_file(tmp_path):
    bad = tmp_path / "gt.json"
    bad.write_text("{\"fps\": 30}")
    with pytest.raises(DataError, match="no 'items'"):
        load_ground_truth(bad)
    with pytest.raises(DataError):
        load_ground_truth(tmp_path / "missing.json")



@pytest.fixture(scope="module")
def short_clip_run(tmp_path_factory):
    """The sorter on a short synthetic conveyor video (decoded by OpenCV) with the GT-oracle classifier."""
    from sorting.apps.bench_sorter import BenchConfig, run_bench

    out = tmp_path_factory.mktemp("bench") / "run"
    bench = BenchConfig(line=REPO / "serving" / "line-colour-6bin.yaml", out_dir=out, items=24, seed=3,
                        hard_fraction=0.3, progress=False)
    return out, run_bench(bench)


@pytest.mark.slow
def test_short_clip_one_decision_per_garment(short_clip_run):
    """Every garment gets exactly one decision; nothing that is not a garment (stains) is decided;
    cut-off garments end in reject or their correct bin."""
    out, result = short_clip_run
    s = result.score
    assert s.gt_items == 24 and s.hard_items >= 5
    assert (s.lost, s.duplicated, s.phantom) == (0, 0, 0), s.errors
    assert not [e for e in s.errors if e["hard"] == "cut_off"], s.errors
    assert (out / "bench.json").is_file() and (out / "bench.md").is_file()
    assert result.frames > 0 and result.items == s.decisions


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known gap of segmentation alone: a plain garment touching a multicolour "
                   "one, seen as one blob of ordinary size and shape, is not flagged as overlapping (segmentation.py); "
                   "a model's layout head catches it (next test)")
def test_short_clip_touching_garments_fail_safe(short_clip_run):
    """Every touching garment ends in the reject bin or its own correct bin."""
    _, result = short_clip_run
    assert not [e for e in result.score.errors if e["hard"] == "touching"], result.score.errors


@pytest.mark.slow
def test_short_clip_with_a_layout_head_routes_touching_garments_fail_safe(tmp_path):
    """With a layout head (here the oracle's: touching = "several") the policy rejects the pair that segmentation
    alone lets through, and still one decision per garment, and no single garment rejected as overlapping."""
    from sorting.apps.bench_sorter import BenchConfig, run_bench

    bench = BenchConfig(line=REPO / "serving" / "line-colour-6bin.yaml", out_dir=tmp_path / "run", items=24, seed=3,
                        hard_fraction=0.3, oracle_layout=True, progress=False)
    s = run_bench(bench).score
    assert (s.lost, s.duplicated, s.phantom) == (0, 0, 0), s.errors
    assert not [e for e in s.errors if e["hard"] == "touching"], s.errors
    assert not [e for e in s.errors if not e["hard"] and e["reason"] == "overlap"], s.errors
