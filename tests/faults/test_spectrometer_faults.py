"""Faults of the spectrometer on a running line (issue 13): it stops sending, stamps scans in the future or the
past, writes foreign, truncated or mislabelled files, or measures on wavelengths the model was not trained on.
Each gets one clear message, is counted, and loses nothing else: every item is still decided exactly once.

The line is the loop tests' tiny belt clip (coloured rectangles, known positions); :class:`ClipSpectrometer`
reads it as a probe bar would, with spectra of each colour's fibre.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_loop import ColourFakeClassifier, ListSource, line_config
from test_segmentation import FPS, SPEED, make_belt_clip

from sorting.errors import SortingError
from sorting.models.spectral_onnx import GridMismatchError
from sorting.serving.actuators import SimulatedActuator
from sorting.serving.builder import build_sorter
from sorting.serving.ejector import FixedSpeed
from sorting.serving.spectrometer import FolderSpectrometer, Scan, SpectrometerStats
from sorting.serving.spectrometer_config import SpectrometerConfig
from sorting.taxonomy import load_taxonomy
from tests._spectra_fixtures import NANO_WL, synthetic_spectrum, write_nirscan

pytestmark = pytest.mark.faults

FIBRE_OF = {"red": "cotton", "blue": "polyester", "yellow": "polyamide", "white": "cotton"}
ALONG, ACROSS, SPOT = 100.0, (60.0, 100.0, 160.0), 8.0
FIBRES = list(load_taxonomy().fibre)


class ClipSpectrometer:
    """Scans of the belt clip at ``rate`` per spot: the fibre of the rectangle under the spot, else the belt.
    ``silent_after``: it sends nothing for scans after that time; ``extra``: odd scans to send at the first poll."""

    name = "clip"

    def __init__(self, items, *, rate: float = 60.0, silent_after: float | None = None,
                 extra: list[Scan] | None = None) -> None:
        self.items, self.rate, self.silent_after = items, rate, silent_after
        self.extra = list(extra or [])
        self.stats = SpectrometerStats()
        self._k = 0
        self._rng = np.random.default_rng(0)

    @property
    def wavelength_nm(self) -> np.ndarray:
        return NANO_WL

    def _under(self, t: float, across: float) -> str:
        for it in self.items:
            x_centre = -it.w / 2 + SPEED * (t - it.entry_frame / FPS)
            inside_x = abs(ALONG - x_centre) <= it.w / 2 - SPOT
            if t >= it.entry_frame / FPS and inside_x and abs(across - it.cy) <= it.h / 2 - SPOT:
                return FIBRE_OF[it.colour]
        return "background"

    def poll(self, now: float) -> list[Scan]:
        out, self.extra = self.extra, []
        while self._k / self.rate <= now:
            t = self._k / self.rate
            self._k += 1
            if self.silent_after is not None and t > self.silent_after:
                continue
            for spot, across in enumerate(ACROSS):
                fibre = self._under(t, across)
                out.append(Scan(t, NANO_WL, synthetic_spectrum(fibre, self._rng), spot, "clip"))
        self.stats.scans += len(out)
        return out

    def close(self) -> None:
        pass


class FibreColourFake(ColourFakeClassifier):
    """The loop tests' colour classifier with an unsure fibre head: the camera cannot tell the fibres apart."""

    model_id = "fake:fibre-colour"

    def __init__(self) -> None:
        super().__init__()
        self.labels = {"colour": self.labels["colour"], "fibre": FIBRES}

    def classify(self, batch):
        scores = super().classify(batch)
        n = len(batch.crops)
        fibre = np.full((n, len(FIBRES)), 0.02, np.float32)
        for name in ("cotton", "polyester", "polyamide"):
            fibre[:, FIBRES.index(name)] = 0.3
        fibre /= fibre.sum(axis=1, keepdims=True)
        return type(scores)({**scores.probs, "fibre": fibre}, {**scores.ood, "fibre": np.zeros(n, bool)})


def fibre_bins(tmp_path: Path, nir: dict) -> Path:
    bins = {"name": "fibre", "bins": [{"id": 1, "name": "cotton", "distance_m": 0.12},
                                      {"id": 2, "name": "polyester", "distance_m": 0.2},
                                      {"id": 3, "name": "polyamide", "distance_m": 0.28}],
            "thresholds": {"fibre": 0.6}, "nir": nir,
            "rules": [{"name": f, "bin": i, "fibre": [f]} for i, f in ((1, "cotton"), (2, "polyester"), (3, "polyamide"))]}
    path = tmp_path / f"bins-{nir.get('missing', 'camera')}.yaml"
    path.write_text(yaml.safe_dump(bins))
    return path


def nir_line(tmp_path: Path, model: Path, nir: dict):
    cfg = line_config(tmp_path)
    cfg.policy.bins = fibre_bins(tmp_path, nir)
    cfg.spectrometer = SpectrometerConfig(source="sim", model=model, sim={"spectra": tmp_path / "unused.csv"},
                                          along_px=ALONG, across_px=list(ACROSS), spot_px=SPOT, silent_s=0.5)
    return cfg


def sort_clip(tmp_path: Path, model: Path, spectrometer, nir: dict):
    frames, items = make_belt_clip(hard=False, n_frames=150)
    loop = build_sorter(nir_line(tmp_path, model, nir), source=ListSource(frames), classifier=FibreColourFake(),
                        actuator=SimulatedActuator(), speed=FixedSpeed(SPEED, "px"), spectrometer=spectrometer)
    started = time.monotonic()
    results = list(loop.run())
    return loop, results, items, time.monotonic() - started


def by_colour(results) -> dict[str, object]:
    """Decided items by the colour the fake camera saw (each colour is one rectangle, white and red both cotton)."""
    out = {}
    for d in (d for r in results for d in r.decisions):
        out.setdefault(d.decision.colour, []).append(d)
    return out


@pytest.mark.parametrize("missing", ["camera", "reject"])
def test_a_spectrometer_that_stops_sending_never_stalls_the_line(tmp_path: Path, tiny_nir, missing: str) -> None:
    # silent from 1.95 s on: the red and blue rectangles pass the spots before, the yellow and white ones after
    loop, results, _, seconds = sort_clip(tmp_path, tiny_nir[0], ClipSpectrometer(make_belt_clip(hard=False)[1],
                                              silent_after=1.95), {"missing": missing})
    assert loop.frames_done == 150 and seconds < 60
    decided = by_colour(results)
    assert {c: len(v) for c, v in decided.items()} == {"red": 1, "blue": 1, "yellow_orange": 1, "white": 1}
    assert decided["red"][0].bin_name == "cotton" and decided["blue"][0].bin_name == "polyester"
    assert decided["red"][0].nir.scans > 0 and decided["yellow_orange"][0].nir.scans == 0
    late = [decided["yellow_orange"][0].decision.reason, decided["white"][0].decision.reason]
    assert late == (["low_confidence:fibre"] * 2 if missing == "camera" else ["no_nir"] * 2)
    assert "spectrometer" in loop.telemetry.active_alarms()


def test_scans_stamped_in_the_future_or_the_past_are_refused_and_counted(tmp_path: Path, tiny_nir) -> None:
    rng = np.random.default_rng(5)
    odd = [Scan(30.0, NANO_WL, synthetic_spectrum("cotton", rng), 0, "clip"),  # 30 s ahead of the first frame
           Scan(-40.0, NANO_WL, synthetic_spectrum("cotton", rng), 1, "clip")]  # its belt left the view long ago
    loop, results, _, _ = sort_clip(tmp_path, tiny_nir[0], ClipSpectrometer(make_belt_clip(hard=False)[1],
                                        extra=odd), {})
    counts = {s.labels["outcome"]: s.value for m in loop.telemetry.registry.collect()
              if m.name.endswith("spectrometer_scans") for s in m.samples if s.name.endswith("_total")}
    assert counts["future"] == 1 and counts["past"] == 1 and counts["assigned"] > 20
    decided = by_colour(results)
    assert [decided[c][0].bin_name for c in ("red", "blue", "yellow_orange", "white")] == \
        ["cotton", "polyester", "polyamide", "cotton"]


def test_a_sensor_off_the_models_grid_stops_the_start_with_one_line_and_leaves_nothing_open(tmp_path: Path,
                                                                                            tiny_nir) -> None:
    class NarrowSensor(ClipSpectrometer):
        @property
        def wavelength_nm(self) -> np.ndarray:
            return np.linspace(1000, 1600, 150)

    sensor = NarrowSensor([])
    closed = []
    sensor.close = lambda: closed.append(True)  # type: ignore[method-assign]
    with pytest.raises(GridMismatchError) as err:
        sort_clip(tmp_path, tiny_nir[0], sensor, {})
    assert isinstance(err.value, SortingError) and "\n" not in str(err.value)
    assert "covers 1000.0-1600.0 nm, the model needs 910.0-1690.0 nm" in str(err.value)
    assert closed == [True]
    import sqlite3

    with sqlite3.connect(tmp_path / "decisions.sqlite", timeout=0.1) as db:  # the log was closed, not left locked
        db.execute("CREATE TABLE probe (x)")


def test_foreign_truncated_and_mislabelled_files_from_the_vendor_folder_are_skipped(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "vendor"
    folder.mkdir()
    src = FolderSpectrometer(folder, clock=time.monotonic, spots=3, serial="1234567", settle_s=0.05, poll_s=0.01)
    rng = np.random.default_rng(7)
    try:
        time.sleep(0.05)
        for k in range(5):
            write_nirscan(folder / f"scan_{k:04d}_spot{k % 3}.csv", synthetic_spectrum("cotton", rng))
        (folder / "export.log").write_text("not a spectrum")  # not a spectrum suffix: never read
        (folder / "readme.csv").write_text("vendor,notes\nnothing,numeric\n")
        (folder / "scan_0100_spot9.csv").write_text(write_nirscan(folder / "tmp.txt", synthetic_spectrum(
            "cotton", rng)).read_text())  # spot 9 on a 3-spot line: mislabelled
        (folder / "tmp.txt").unlink()
        half = write_nirscan(folder / "scan_0101.csv", synthetic_spectrum("cotton", rng)).read_text()
        (folder / "scan_0101.csv").write_text(half[: len(half) // 2])  # the writer stopped half way
        deadline, scans = time.monotonic() + 5.0, []
        while len(scans) < 5 and time.monotonic() < deadline:
            scans += src.poll(time.monotonic())
            time.sleep(0.02)
        time.sleep(0.2)
        scans += src.poll(time.monotonic())
    finally:
        src.close()
    assert sorted(s.name for s in scans) == [f"scan_{k:04d}_spot{k % 3}.csv" for k in range(5)]
    assert src.stats.unreadable == 3
    warned = sorted(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert len(warned) == 3 and all("\n" not in w for w in warned)
