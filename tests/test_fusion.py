"""The fusion rule of the spectrometer and the camera, what the bins file says about missing and
out-of-distribution readings, and the NIR evidence in the decision log (new logs and old ones)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sorting.serving.decision_log import NIR_COLUMNS, DecisionLog, DecisionLogConfig
from sorting.serving.fusion import NirEvidence, NirLikelihood, fuse
from sorting.serving.policy import ItemEvidence, Policy, PolicyConfig

NIR = ["cotton", "polyester", "polyamide", "background"]
CAMERA = ["cotton", "polyester", "polyamide", "silk"]
# out-of-fold counts, rows = true class: polyamide is read as polyester 3 times in 10
CONFUSION = [[10, 0, 0, 0], [0, 10, 0, 0], [0, 3, 7, 0], [0, 0, 0, 5]]


def test_the_likelihood_rows_are_the_smoothed_confusions_and_flat_for_fibres_without_spectra() -> None:
    lik = NirLikelihood(NIR, CAMERA, rule="confusion", confusion=CONFUSION, alpha=1.0)
    assert np.allclose(lik.rows[0], [11 / 13, 1 / 13, 1 / 13])  # cotton: read as cotton 10 of 10, +1 each
    assert np.allclose(lik.rows[2], [1 / 13, 4 / 13, 8 / 13])  # polyamide: 3 of 10 read as polyester
    assert np.allclose(lik.rows[3], [1 / 3] * 3)  # silk: no spectra, the reading says nothing about it
    # a reading of polyester (the background column is dropped and q renormalised)
    q = np.array([0.0, 0.72, 0.0, 0.28])
    assert np.allclose(lik(q), lik.rows[:, 1])
    product = NirLikelihood(NIR, CAMERA, rule="product")
    assert np.allclose(product(q), [0.0, 1.0, 0.0, 1 / 3])
    with pytest.raises(ValueError, match="confusion matrix"):
        NirLikelihood(NIR, CAMERA, rule="confusion", confusion=None)


def test_fusion_is_bayes_rule_and_a_confused_reading_cannot_overrule_a_sure_camera() -> None:
    lik = NirLikelihood(NIR, CAMERA, rule="confusion", confusion=CONFUSION)
    polyester_reading = lik(np.array([0.02, 0.95, 0.03, 0.0]))
    camera = np.array([0.05, 0.05, 0.85, 0.05])  # the camera is sure of polyamide
    fused = fuse(camera, polyester_reading)
    expected = camera * polyester_reading / np.sum(camera * polyester_reading)
    assert np.allclose(fused, expected, atol=1e-6)
    assert CAMERA[int(np.argmax(fused))] == "polyamide"  # the NIR often reads nylon as polyester
    unsure = np.array([0.4, 0.3, 0.2, 0.1])
    assert CAMERA[int(np.argmax(fuse(unsure, polyester_reading)))] == "polyester"  # and decides an unsure camera
    assert np.allclose(fuse(unsure, np.zeros(4)), unsure)  # nothing to fuse: the camera's belief


def _policy(nir: dict | None = None) -> Policy:
    cfg = PolicyConfig.model_validate({
        "bins": [{"id": 1, "name": "cotton", "distance_px": 100}, {"id": 2, "name": "polyester", "distance_px": 150},
                 {"id": 3, "name": "polyamide", "distance_px": 200}, {"id": 4, "name": "other", "distance_px": 250}],
        "thresholds": {"fibre": 0.6},
        "nir": nir or {},
        "rules": [{"name": "cotton", "bin": 1, "fibre": ["cotton"]}, {"name": "polyester", "bin": 2, "fibre": ["polyester"]},
                  {"name": "polyamide", "bin": 3, "fibre": ["polyamide"]}, {"name": "other", "bin": 4, "fibre": ["silk"]}],
    })
    return Policy(cfg, {"fibre": CAMERA})


def _item(camera: list[float], nir: NirEvidence | None, **kw: object) -> ItemEvidence:
    return ItemEvidence(item_id=1, probs={"fibre": np.array(camera, np.float32)}, labels={"fibre": CAMERA}, nir=nir,
                        **kw)  # type: ignore[arg-type]


def _reading(q: list[float], **kw: object) -> NirEvidence:
    lik = NirLikelihood(NIR, CAMERA, rule="confusion", confusion=CONFUSION)
    return NirEvidence(scans=5, fibre=NIR[int(np.argmax(q))], confidence=max(q), likelihood=lik(np.array(q)), **kw)  # type: ignore[arg-type]


def test_the_policy_sorts_on_the_fused_fibre_and_falls_back_as_the_bins_file_says() -> None:
    unsure_camera = [0.45, 0.4, 0.1, 0.05]
    polyester = _reading([0.02, 0.95, 0.03, 0.0])
    camera = _policy()
    assert camera.decide(_item(unsure_camera, None)).reason == "low_confidence:fibre"  # no spectrometer
    fused = camera.decide(_item(unsure_camera, polyester))
    assert fused.bin_name == "polyester" and fused.fibre == "polyester" and fused.confidence["fibre"] > 0.6
    sure_camera = [0.9, 0.05, 0.03, 0.02]
    # no usable reading / out of distribution: the camera alone (default) or reject
    assert camera.decide(_item(sure_camera, NirEvidence(scans=0))).bin_name == "cotton"
    assert camera.decide(_item(sure_camera, _reading([0.02, 0.95, 0.03, 0.0], ood=True))).bin_name == "cotton"
    strict = _policy({"missing": "reject", "ood": "reject"})
    assert strict.decide(_item(sure_camera, NirEvidence(scans=0))).reason == "no_nir"
    assert strict.decide(_item(sure_camera, _reading([0.9, 0.05, 0.05, 0.0], ood=True))).reason == "nir_ood"
    # earlier reasons keep their precedence: an overlap is an overlap whatever the spectrometer read
    assert strict.decide(_item(sure_camera, NirEvidence(scans=0), overlap=True)).reason == "overlap"


def test_the_camera_fibre_ood_flag_yields_to_an_in_distribution_reading_unless_the_bins_file_says_reject() -> None:
    camera = [0.3, 0.3, 0.3, 0.1]
    reading = _reading([0.01, 0.98, 0.01, 0.0])
    item = _item(camera, reading, ood=True, ood_heads=frozenset({"fibre"}))
    assert _policy({"camera_fibre_ood": "reject"}).decide(item).reason == "ood"
    vouching = _policy()  # the default: the spectrometer judges the fibre
    assert vouching.decide(item).bin_name == "polyester"
    assert vouching.decide(replace(item, nir=None)).reason == "ood"  # no spectrometer: as before
    # not when another head was out of distribution too, nor when the reading itself is
    assert vouching.decide(_item(camera, reading, ood=True, ood_heads=frozenset({"fibre", "colour"}))).reason == "ood"
    ood_reading = _reading([0.01, 0.98, 0.01, 0.0], ood=True)
    assert vouching.decide(_item(camera, ood_reading, ood=True, ood_heads=frozenset({"fibre"}))).reason == "ood"


def test_a_colour_only_line_ignores_the_spectrometer() -> None:
    cfg = PolicyConfig.model_validate({"bins": [{"id": 1, "name": "white", "distance_px": 100}],
                                       "nir": {"missing": "reject"},
                                       "rules": [{"name": "white", "bin": 1, "colour": ["white"]}]})
    policy = Policy(cfg, {"colour": ["white", "black"], "fibre": CAMERA})
    item = ItemEvidence(item_id=1, probs={"colour": np.array([0.9, 0.1]), "fibre": np.array([0.25] * 4)},
                        labels={"colour": ["white", "black"], "fibre": CAMERA}, nir=NirEvidence(scans=0))
    assert policy.decide(item).bin_name == "white"


def test_the_decision_log_keeps_the_nir_evidence_and_opens_logs_written_before_it(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # a log of schema 1 as written before the spectrometer columns
        db.executescript("""CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL UNIQUE, session TEXT NOT NULL,
 item_id TEXT NOT NULL, wall_time REAL NOT NULL, t_decision REAL, model_id TEXT, fibre TEXT, colour TEXT,
 confidence TEXT NOT NULL, probs TEXT NOT NULL, ood INTEGER NOT NULL, overlap INTEGER NOT NULL,
 cut_off INTEGER NOT NULL, n_views INTEGER NOT NULL, bin INTEGER NOT NULL, bin_name TEXT NOT NULL,
 reason TEXT NOT NULL, latency_ms REAL, crop_path TEXT, crop_width INTEGER, crop_height INTEGER,
 missed INTEGER NOT NULL DEFAULT 0, missed_reason TEXT);
INSERT INTO decisions (uid, session, item_id, wall_time, confidence, probs, ood, overlap, cut_off, n_views, bin,
 bin_name, reason) VALUES ('s-1', 's', '1', 0, '{}', '{}', 0, 0, 0, 1, 0, 'reject', 'lost');""")
    policy = _policy()
    with DecisionLog(DecisionLogConfig(path=old, save_crops="none"), reject_bin=0) as log:
        for item_id, nir in ((7, _reading([0.02, 0.95, 0.03, 0.0], cotton_share=12.5)), (8, None)):
            evidence = ItemEvidence(item_id=item_id, probs={"fibre": np.array([0.45, 0.4, 0.1, 0.05], np.float32)},
                                    labels={"fibre": CAMERA}, nir=nir)
            log.record(evidence, policy.decide(evidence))
    with sqlite3.connect(old) as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(decisions)")]
        rows = db.execute("SELECT item_id, bin_name, " + ", ".join(NIR_COLUMNS) + " FROM decisions ORDER BY id").fetchall()
    assert set(NIR_COLUMNS) <= set(cols)
    assert rows[0] == ("1", "reject", None, None, None, None, None)  # the old row, untouched
    assert rows[1][:5] == ("7", "polyester", 5, "polyester", pytest.approx(0.95)) and rows[1][5:] == (0, 12.5)
    assert rows[2][2:] == (None, None, None, None, None)  # no spectrometer: NULL


def test_the_default_rule_multiplies_the_calibrated_probabilities() -> None:
    policy = _policy()
    assert policy.config.nir.fusion == "product"
    q = np.array([0.2, 0.7, 0.1, 0.0])
    reading = NirEvidence(scans=3, fibre="polyester", confidence=0.7, likelihood=NirLikelihood(NIR, CAMERA)(q))
    decision = policy.decide(_item([0.45, 0.4, 0.1, 0.05], reading))
    fused = np.array([0.45 * 0.2, 0.4 * 0.7, 0.1 * 0.1, 0.05 / 3])
    assert decision.bin_name == "polyester"
    assert decision.confidence["fibre"] == pytest.approx(fused[1] / fused.sum(), abs=1e-6)
