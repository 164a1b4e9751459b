"""The simulated spectrometer of the synthetic world: the world rebuilt from a clip's ground truth, what lies
under a spot at a time, real spectra of the garment's fibre, and bench-sorter with it end to end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from sorting.apps.bench_sorter import BenchConfig, run_bench
from sorting.datasets.spectra_store import load_spectral_set
from sorting.datasets.synth.belt_truth import BELT, BeltTruth
from sorting.datasets.synth.conveyor import ConveyorConfig, ConveyorWorld
from sorting.errors import DataError
from sorting.serving.spectrometer_config import SimSpectraConfig, SpotGeometry
from sorting.serving.spectrometer_sim import SimulatedSpectrometer, SpectraPool

REPO = Path(__file__).resolve().parent.parent
WORLD = ConveyorConfig(n_items=12, seed=3, belt_speed_px_s=900.0)


@pytest.fixture(scope="module")
def world() -> ConveyorWorld:
    return ConveyorWorld(WORLD)


def test_the_world_of_a_clip_is_rebuilt_from_its_ground_truth_and_a_foreign_one_refused(world: ConveyorWorld) -> None:
    gt = world.ground_truth()
    truth = BeltTruth.from_ground_truth(gt)
    assert truth.world.ground_truth()["items"] == gt["items"]
    tampered = json.loads(json.dumps(gt))
    tampered["items"][3]["fibre"] = "silk" if tampered["items"][3]["fibre"] != "silk" else "wool"
    with pytest.raises(DataError, match="cannot rebuild the synthetic world"):
        BeltTruth.from_ground_truth(tampered)


def test_what_lies_under_a_point_follows_the_rendered_frames(world: ConveyorWorld) -> None:
    truth = BeltTruth(world)
    rng = np.random.default_rng(0)
    garment_but_belt = belt_but_changed = garment_points = total = 0
    for f, _, frame in world.frames(30, 90, only={30, 60, 89}):
        scene = world.scene  # the same frame without any garment: the belt, its light and its noise
        empty = scene.finish(scene.belt_region(0, 0, WORLD.width, WORLD.height, world._shift(f)), 0, 0,
                             world.lighting(f), f)
        points = rng.uniform((0, 40), (WORLD.width, WORLD.height), (400, 2))
        under = truth.cover(f / WORLD.fps, points)
        for (x, y), what in zip(points.astype(int), under):
            changed = bool(np.any(np.abs(frame[y, x].astype(int) - empty[y, x].astype(int)) > 3))
            garment_points += what != BELT
            garment_but_belt += what != BELT and not changed
            belt_but_changed += what == BELT and changed
            total += 1
    assert garment_points > 100 and garment_but_belt == 0  # where the truth has a garment, the frame shows one
    assert belt_but_changed < 0.05 * total  # the belt beside a garment: its soft shadow (still belt to a spectrometer)


def _pool(tiny_nir: tuple[Path, Path]) -> SpectraPool:
    return SpectraPool.load(SimSpectraConfig(spectra=tiny_nir[1], unknown_as="polyamide"))


def test_scans_are_real_unseen_spectra_of_the_garment_under_the_spot(world: ConveyorWorld, tiny_nir) -> None:
    pool = _pool(tiny_nir)
    held_out = load_spectral_set(tiny_nir[1], split="test", all_rows=False)
    assert {k: len(v) for k, v in pool.by_class.items()} == {c: held_out.labels().count(c) for c in set(held_out.labels())}
    geo = SpotGeometry(along=320.0, across=tuple(float(a) for a in range(60, 480, 60)), diameter=16.0, smear=4.5,
                       sign=1.0, decision_line_px=480.0)
    cfg = SimSpectraConfig(spectra=tiny_nir[1], noise_au=0.0, offset_au=0.0, scale=0.0)
    sim = SimulatedSpectrometer(BeltTruth(world), pool, geo, axis=0, rate_hz=50.0, cfg=cfg)
    scans = sim.poll(world.n_frames / WORLD.fps)
    assert len(scans) == pytest.approx(50 * 7 * world.n_frames / WORLD.fps, abs=8)
    assert [s.t for s in scans] == sorted(s.t for s in scans) and {s.spot for s in scans} == set(range(7))
    fibre = {it.id: it.spec.fibre for it in world.items if not it.is_stain}
    whole = [s for s in scans if s.truth is not None and s.truth.isdigit()]
    assert whole and {s.truth for s in scans if s.truth == "background"}
    for s in whole:  # a noiseless scan of one garment is one of the pool's spectra of its fibre (or the stand-in's)
        rows = pool.by_class[pool.source_class(fibre[int(s.truth)])]
        assert np.min(np.abs(rows - s.absorbance).max(axis=1)) < 1e-9
    assert sim.poll(world.n_frames / WORLD.fps) == []  # each scan once


def test_bench_sorter_with_the_simulated_spectrometer(tmp_path: Path, tiny_nir) -> None:
    bins = tmp_path / "bins.yaml"
    bins.write_text((REPO / "serving" / "bins-fibre-colour.yaml").read_text())
    result = run_bench(BenchConfig(line=REPO / "serving" / "line-colour-6bin.yaml", out_dir=tmp_path / "run",
                                   items=12, seed=5, bins=bins, spectrometer="sim", nir_model=tiny_nir[0],
                                   nir_spectra=tiny_nir[1], overrides=["spectrometer.sim.unknown_as=polyamide"],
                                   progress=False))
    nir = result.nir
    assert nir is not None and result.score.lost == 0 and result.score.duplicated == 0
    assert nir.scans["assigned"] > 20 and nir.association["right"] > nir.association["edge"]
    assert nir.association["other"] == 0  # never a scan of another garment on a garment decided alone
    assert nir.total().read >= nir.total().normal - 2  # nearly every garment passes under a spot
    with sqlite3.connect(tmp_path / "run" / "decisions.sqlite") as db:
        read = db.execute("SELECT COUNT(*) FROM decisions WHERE nir_scans > 0").fetchone()[0]
    assert read == sum(1 for d in result.decisions if d.nir is not None and d.nir.scans > 0) and read > 0
    text = (tmp_path / "run" / "bench.md").read_text()
    assert "## spectrometer (simulated)" in text


def test_the_demo_runs_its_spectrometer_only_with_a_spectral_model_or_the_data_to_make_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_nir, caplog) -> None:
    from sorting.apps.demo_nir import demo_spectrometer

    monkeypatch.setenv("TEXTILE_SORTER_SHARED_DATA", str(tmp_path / "no-data-here"))
    assert demo_spectrometer(tmp_path / "fresh", progress=False) is None  # a fresh machine without ../shared/data
    assert any("sorts without the spectrometer" in r.getMessage() for r in caplog.records)
    made = tmp_path / "made"
    made.mkdir()
    (made / "nir-line.onnx").write_bytes(tiny_nir[0].read_bytes())
    (made / "nir-line.csv").write_text("path,fibre\n")  # a previous demo's files: reused, no data needed
    found = demo_spectrometer(made, progress=False)
    assert found is not None and not found.made_now and found.model == made / "nir-line.onnx"


@pytest.mark.shared_data
@pytest.mark.slow
def test_the_demo_makes_the_lines_spectral_model_from_the_real_swatches(shared_data: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from sorting.apps.demo_nir import demo_spectrometer
    from sorting.models.spectral_onnx import SpectralClassifier

    monkeypatch.setenv("TEXTILE_SORTER_SHARED_DATA", str(shared_data))
    made = demo_spectrometer(tmp_path, progress=False)
    assert made is not None and made.made_now
    train = load_spectral_set(made.spectra, split="train", all_rows=False)
    line = load_spectral_set(made.spectra, split="test", all_rows=False)
    assert not set(train.groups()) & set(line.groups())  # the simulator never scans a swatch the model learnt
    pred = SpectralClassifier.load(made.model).predict(line.absorbance)
    right = {c: sum(p == t for p, t in zip(pred.top1(), line.labels()) if t == c) for c in ("cotton", "polyester")}
    assert right["cotton"] == line.labels().count("cotton") and right["polyester"] >= line.labels().count("polyester") - 1
