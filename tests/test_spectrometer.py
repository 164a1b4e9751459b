"""The spectrometer on the line: its config, the folder and device sources, and the loop's association of scans
with tracked garments (geometry, timing, refusals) and the per-item reading."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from sorting.config import build_config
from sorting.errors import ConfigError
from sorting.models.spectral_onnx import GridMismatchError, SpectralClassifier
from sorting.serving.line_config import LineConfig, load_line_config
from sorting.serving.nir_stage import ASSIGNED, NirStage
from sorting.serving.segmentation import Detection
from sorting.serving.spectrometer import (
    FolderSpectrometer,
    Scan,
    SeabreezeSpectrometer,
    SpectrometerStats,
    open_seabreeze,
)
from sorting.serving.spectrometer_config import SpectrometerConfig, SpotGeometry
from sorting.serving.tracking import Track
from tests._spectra_fixtures import NANO_WL, synthetic_spectrum, write_nirscan

REPO = Path(__file__).resolve().parent.parent


def _line(**spectrometer: object) -> dict:
    return {
        "camera": {"width": 640, "height": 480},
        "belt": {"speed_px_s": 900, "px_per_m": 500},
        "tracking": {"decision_line_px": 480},
        "policy": {"bins": str(REPO / "serving" / "bins-fibre-colour.yaml")},
        "spectrometer": {"source": "sim", "model": "m.onnx", "sim": {"spectra": "s.csv"}, "along_px": 240,
                         "across_px": [70, 250, 430], "spot_px": 16, **spectrometer},
    }


@pytest.mark.parametrize(("change", "message"), [
    ({"along_px": 475}, "not upstream of the decision line"),
    ({"across_px": [70, 500]}, "outside the 480 px of the frame"),
    ({"upstream_m": 0.3}, "exactly one of along_px"),
    ({"spot_px": None}, "exactly one of spot_px or spot_m"),
    ({"source": "lidar"}, "expected sim, folder:<dir> or seabreeze"),
    ({"source": "folder:"}, "needs its folder"),
    ({"sim": None}, "needs spectrometer.sim.spectra"),
    ({"source": "seabreeze"}, "needs spectrometer.reference"),
    ({"rate_hz": float("nan")}, "rate_hz"),
])
def test_bad_spectrometer_sections_are_one_clear_line(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        build_config(LineConfig, _line(**change), "line.yaml")
    assert "\n" not in str(err.value).strip()


def test_spots_given_in_metres_upstream_of_the_decision_line() -> None:
    cfg = build_config(LineConfig, _line(along_px=None, upstream_m=0.5, spot_px=None, spot_m=0.04), "line.yaml")
    geo = cfg.spot_geometry()
    assert geo.along == pytest.approx(480 - 250) and geo.diameter == pytest.approx(20)
    assert geo.smear == pytest.approx(900 * 0.005)  # 5 ms scans on a 900 px/s belt
    with pytest.raises(ConfigError, match="px_per_m"):
        build_config(LineConfig, {**_line(along_px=None, upstream_m=0.5),
                                  "belt": {"speed_px_s": 900}}, "line.yaml")


# -- the folder source -------------------------------------------------------------------------------------

class _Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _touch(path: Path, mtime: float) -> None:
    os.utime(path, (mtime, mtime))


def test_folder_source_reads_new_files_once_they_settle_and_skips_bad_ones(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "vendor"
    old = write_nirscan(folder / "old_spot0.csv", synthetic_spectrum("cotton", rng))
    wall, line = _Clock(1000.0), _Clock(50.0)
    _touch(old, 990.0)  # written before the line started: history, not a scan
    src = FolderSpectrometer(folder, clock=line, spots=2, serial="1234567", file_delay_s=0.01, settle_s=0.05,
                             wall=wall, start=False)
    good = write_nirscan(folder / "scan_0002_spot1.csv", synthetic_spectrum("polyester", rng))
    _touch(good, 1000.2)
    foreign = folder / "notes.csv"
    foreign.write_text("operator notes, not a spectrum\nline two\n")
    _touch(foreign, 1000.2)
    cut = write_nirscan(folder / "scan_0003.csv", synthetic_spectrum("cotton", rng))
    cut.write_text(cut.read_text()[: len(cut.read_text()) - 300].rsplit("\n", 1)[0] + "\n1650.1,0.2")  # cut mid-row
    _touch(cut, 1000.2)
    wrong_spot = write_nirscan(folder / "scan_0004_spot7.csv", synthetic_spectrum("cotton", rng))
    _touch(wrong_spot, 1000.2)
    wall.t = 1000.22  # the files are 20 ms old: still being written as far as the source knows
    assert src.scan_folder() == 0 and src.poll(line.t) == []
    wall.t, line.t = 1000.3, 50.3
    assert src.scan_folder() == 4
    scans = src.poll(line.t)
    assert [s.name for s in scans] == ["scan_0002_spot1.csv"]
    assert scans[0].spot == 1 and scans[0].t == pytest.approx(50.3 - 0.1 - 0.01)
    assert src.stats.unreadable == 3
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 3 and any("notes.csv" in w for w in warned) and any("unknown spot" in w for w in warned)
    assert any("truncated" in w for w in warned)
    assert src.scan_folder() == 0  # each file once


def test_folder_source_refuses_another_instruments_scans(tmp_path: Path) -> None:
    folder = tmp_path / "vendor"
    folder.mkdir()
    wall = _Clock(1000.0)
    src = FolderSpectrometer(folder, clock=_Clock(5.0), serial="7654321", wall=wall, start=False, settle_s=0.0)
    _touch(write_nirscan(folder / "a.csv", synthetic_spectrum("cotton", np.random.default_rng(1))), 1000.5)
    wall.t = 1001.0
    src.scan_folder()
    assert src.poll(5.0) == [] and src.stats.unreadable == 1  # the file says serial 1234567


def test_folder_source_watches_on_its_own_thread(tmp_path: Path) -> None:
    folder = tmp_path / "vendor"
    folder.mkdir()
    src = FolderSpectrometer(folder, clock=time.monotonic, settle_s=0.0, poll_s=0.01)
    try:
        write_nirscan(folder / "a.csv", synthetic_spectrum("cotton", np.random.default_rng(2)))
        deadline = time.monotonic() + 5.0
        scans: list[Scan] = []
        while not scans and time.monotonic() < deadline:
            scans = src.poll(time.monotonic())
            time.sleep(0.01)
        assert len(scans) == 1 and scans[0].instrument == "1234567"
    finally:
        src.close()
    with pytest.raises(ConfigError, match="does not exist"):
        FolderSpectrometer(tmp_path / "nowhere", clock=time.monotonic, start=False)


# -- the device source -------------------------------------------------------------------------------------

class FakeDevice:
    """A seabreeze ``Spectrometer`` stand-in: counts = reference x 10^-absorbance; fails when told to."""

    def __init__(self, absorbance: np.ndarray) -> None:
        self.absorbance = absorbance
        self.reference = np.linspace(20_000, 50_000, len(NANO_WL))
        self.fail = False
        self.integration_us = 0
        self.closed = False

    def integration_time_micros(self, us: int) -> None:
        self.integration_us = us

    def wavelengths(self) -> np.ndarray:
        return NANO_WL

    def intensities(self) -> np.ndarray:
        if self.fail:
            raise OSError("USB transfer failed")
        return 100.0 + self.reference * 10.0 ** -self.absorbance

    def close(self) -> None:
        self.closed = True


def test_device_source_turns_counts_into_absorbance_and_survives_read_errors() -> None:
    absorbance = synthetic_spectrum("cotton", np.random.default_rng(3))
    device = FakeDevice(absorbance)
    clock = _Clock(12.0)
    src = SeabreezeSpectrometer(device, clock=clock, reference=device.reference + 100.0, dark=np.full(len(NANO_WL), 100.0),
                                scan_ms=8.0, serial="OI-1", start=False)
    assert device.integration_us == 8000
    scan = src.read_once()
    assert np.allclose(scan.absorbance, absorbance, atol=1e-9) and scan.t == pytest.approx(12.0 - 0.004)
    device.fail = True
    src2 = SeabreezeSpectrometer(device, clock=clock, reference=device.reference + 100.0, dark=None, scan_ms=8.0)
    deadline = time.monotonic() + 5.0
    while src2.stats.unreadable == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert src2.stats.unreadable >= 1 and src2.poll(12.0) == []  # the loop is never kept waiting
    src2.close()
    assert device.closed
    with pytest.raises(ConfigError, match="reference / dark"):
        SeabreezeSpectrometer(device, clock=clock, reference=np.ones(5), dark=None, scan_ms=8.0, start=False)


def test_the_seabreeze_source_without_its_package_is_one_clear_line(tmp_path: Path) -> None:
    try:
        import seabreeze  # noqa: F401  (the optional extra)
    except ImportError:
        pass
    else:
        pytest.skip("seabreeze is installed here: the message for a missing package cannot be shown")
    cfg = SpectrometerConfig(source="seabreeze", model=Path("m.onnx"), along_px=10, across_px=[10], spot_px=5,
                             reference=tmp_path / "white.txt")
    with pytest.raises(ConfigError, match=r"pip install 'textile-sorter\[seabreeze\]'"):
        open_seabreeze(cfg, clock=time.monotonic)


# -- association in the loop ---------------------------------------------------------------------------------

class ListSpectrometer:
    """Hands over the scans put into it at the next poll (a source whose scans the test chooses)."""

    name = "list"

    def __init__(self, wavelength_nm: np.ndarray | None = None) -> None:
        self.stats = SpectrometerStats()
        self.queue: list[Scan] = []
        self._wl = wavelength_nm

    @property
    def wavelength_nm(self) -> np.ndarray | None:
        return self._wl

    def poll(self, now: float) -> list[Scan]:
        out, self.queue = self.queue, []
        return out

    def close(self) -> None:
        pass


GEO = SpotGeometry(along=100.0, across=(50.0, 150.0, 200.0), diameter=10.0, smear=0.0, sign=1.0, decision_line_px=300.0)
SHAPE = (240, 320)
SPEED = 100.0


def _track(tid: int, bbox: tuple[int, int, int, int], *, decided: bool = False, det: Detection | None = None) -> Track:
    x, y, w, h = bbox
    detection = det or Detection(bbox=bbox, area=float(w * h), centroid=(x + w / 2, y + h / 2))
    return Track(id=tid, centroid=detection.centroid, bbox=bbox, area=float(w * h), velocity=np.array([SPEED, 0.0]),
                 first_frame=0, first_t=0.0, last_frame=0, last_t=0.0, start_along=0.0, detection=detection,
                 confirmed=True, decided=decided)


def _scan(t: float, spot: int, fibre: str = "cotton", seed: int = 0, **kw: object) -> Scan:
    return Scan(t, NANO_WL, synthetic_spectrum(fibre, np.random.default_rng(seed)), spot, "test", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def nir_model(tiny_nir: tuple[Path, Path]) -> SpectralClassifier:
    return SpectralClassifier.load(tiny_nir[0])


def _stage(model: SpectralClassifier, geo: SpotGeometry = GEO) -> tuple[NirStage, ListSpectrometer]:
    source = ListSpectrometer()
    return NirStage(source, model, geo, axis=0, camera_fibres=["cotton", "polyester", "polyamide", "silk"]), source


def test_each_scan_goes_to_the_one_garment_under_its_footprint(nir_model: SpectralClassifier) -> None:
    stage, source = _stage(nir_model)
    shared = Detection(bbox=(85, 185, 40, 30), area=1200.0, centroid=(105.0, 200.0))
    tracks = [_track(1, (80, 30, 60, 60)), _track(2, (95, 140, 30, 8)),
              _track(3, (85, 185, 40, 30), det=shared), _track(4, (85, 185, 40, 30), det=shared)]
    source.queue = [_scan(1.0, 0, seed=1), _scan(1.0, 1, seed=2), _scan(1.0, 2, seed=3)]
    out = stage.update(1.0, 1.0, tracks, SHAPE, SPEED)
    assert [(o.outcome, o.track_id) for o in out] == [(ASSIGNED, 1), ("edge", 2), ("two_garments", None)]
    source.queue = [_scan(1.02, 1, seed=4)]
    tracks = [_track(1, (80, 30, 60, 60)), _track(5, (70, 120, 30, 60)), _track(6, (100, 120, 30, 60))]
    assert [o.outcome for o in stage.update(1.02, 1.02, tracks, SHAPE, SPEED)] == ["two_garments"]
    source.queue = [_scan(1.04, 0, seed=5), _scan(1.04, 2, seed=6)]
    tracks = [_track(1, (80, 30, 60, 60), decided=True)]
    assert [o.outcome for o in stage.update(1.04, 1.04, tracks, SHAPE, SPEED)] == ["decided", "no_garment"]


def test_the_belt_carries_a_scan_to_the_frame_it_is_resolved_in(nir_model: SpectralClassifier) -> None:
    upstream = SpotGeometry(along=-40.0, across=(50.0,), diameter=10.0, smear=2.0, sign=1.0, decision_line_px=300.0)
    stage, source = _stage(nir_model, upstream)
    source.queue = [_scan(0.0, 0)]
    assert stage.update(0.0, 0.0, [], SHAPE, SPEED) == []  # the footprint is still upstream of the view
    # 0.5 s later the belt has carried that stretch of belt 50 px on: to x = 10, where the garment now lies
    out = stage.update(0.5, 0.5, [_track(7, (0, 30, 40, 40))], SHAPE, SPEED)
    assert [(o.outcome, o.track_id) for o in out] == [(ASSIGNED, 7)]
    # a scan that arrives when its stretch of belt has passed the decision line is refused as too late
    source.queue = [_scan(0.1, 0)]
    assert [o.outcome for o in stage.update(4.0, 4.0, [], SHAPE, SPEED)] == ["past"]


def test_scans_from_the_future_broken_or_on_another_grid_are_refused_and_nothing_else_is_lost(
        nir_model: SpectralClassifier, caplog) -> None:
    stage, source = _stage(nir_model)
    tracks = [_track(1, (80, 30, 60, 60))]
    broken = synthetic_spectrum("cotton", np.random.default_rng(8))
    broken[10] = np.nan
    short_wl = np.linspace(1000, 1600, 150)
    source.queue = [_scan(3.0, 0), Scan(1.0, NANO_WL, broken, 0), Scan(1.0, short_wl, np.ones(150), 0, name="x.csv"),
                    _scan(1.0, 0, seed=9)]
    out = stage.update(1.0, 1.0, tracks, SHAPE, SPEED)
    assert sorted(o.outcome for o in out) == sorted(["future", "bad", "grid", ASSIGNED])
    assert any("x.csv" in r.getMessage() and "covers 1000.0-1600.0 nm" in r.getMessage() for r in caplog.records)
    assert stage.counts["grid"] == 1 and stage.counts[ASSIGNED] == 1


def test_a_sensor_whose_wavelengths_miss_the_models_grid_is_refused_at_start_up(nir_model: SpectralClassifier) -> None:
    with pytest.raises(GridMismatchError, match="the spectrometer covers 1000.0-1600.0 nm, the model needs 910.0-1690.0"):
        NirStage(ListSpectrometer(np.linspace(1000, 1600, 150)), nir_model, GEO, axis=0, camera_fibres=["cotton"])


def test_an_items_reading_averages_its_scans_and_leaves_out_the_belt(nir_model: SpectralClassifier) -> None:
    stage, source = _stage(nir_model)
    tracks = [_track(1, (80, 30, 60, 60)), _track(2, (80, 120, 60, 60))]
    source.queue = [_scan(1.0, 0, "polyester", seed=s) for s in range(4)] + [_scan(1.0, 0, "background", seed=9)]
    source.queue.append(_scan(1.0, 1, "cotton", seed=10))
    stage.update(1.0, 1.0, tracks, SHAPE, SPEED)
    ev = stage.evidence([tracks[0], tracks[1], _track(3, (0, 0, 5, 5))])
    assert ev[1].scans == 4 and ev[1].belt_scans == 1 and ev[1].fibre == "polyester" and not ev[1].ood
    assert ev[1].likelihood is not None and len(ev[1].likelihood) == 4  # over the camera's fibre classes
    assert ev[2].scans == 1 and ev[2].fibre == "cotton"
    assert ev[3].scans == 0 and not ev[3].usable  # never under a spot
    assert stage.evidence([tracks[0]])[1].scans == 0  # the scans are forgotten once the item is decided


def test_the_annotated_frame_marks_the_spots_and_the_garment_each_reads() -> None:
    from sorting.serving.annotate import annotate_frame
    from sorting.serving.nir_stage import ScanOutcome
    from sorting.serving.records import FrameResult, TrackView

    image = np.full((240, 320, 3), 90, np.uint8)
    tracks = [TrackView(1, (80, 30, 60, 60), (110.0, 60.0), True, False, False, 2, "cotton 0.90", nir_scans=3)]
    scans = [ScanOutcome(_scan(1.0, 0), ASSIGNED, 1), ScanOutcome(_scan(1.0, 1), "no_garment")]
    result = FrameResult(index=5, t=1.0, image=image, tracks=tracks, scans=scans)
    drawn = annotate_frame(result, decision_line_px=300, spots=GEO)
    plain = annotate_frame(result, decision_line_px=300)
    magenta, grey = np.array([220, 60, 220]), np.array([150, 150, 150])
    ring0 = drawn[50, 95:106].astype(int)  # spot 0 (100, 50): reading garment 1, joined to its centre
    assert np.any(np.all(np.abs(ring0 - magenta) < 10, axis=1))
    assert np.any(np.all(np.abs(drawn[150, 95:106].astype(int) - grey) < 10, axis=1))  # spot 1 read the belt
    assert np.array_equal(plain[140:160, 90:110], image[140:160, 90:110])  # without spots: nothing drawn there
    upstream = SpotGeometry(along=-40.0, across=(50.0,), diameter=10.0, smear=0.0, sign=1.0, decision_line_px=300.0)
    marked = annotate_frame(FrameResult(index=5, t=1.0, image=image), decision_line_px=300, spots=upstream)
    assert not np.array_equal(marked[40:60, 0:8], image[40:60, 0:8])  # marked on the entry edge


def test_sample_line_is_valid_with_its_commented_spectrometer(tmp_path) -> None:
    """The block users are told to uncomment in the sample line must load as written."""
    sample = REPO / "serving" / "line-fibre-colour.yaml"
    text = sample.read_text(encoding="utf-8")
    assert load_line_config(sample).spectrometer is None
    enabled = re.sub(r"^# (spectrometer:.*|  .*)$", r"\1", text, flags=re.M)
    assert enabled != text
    (tmp_path / "line.yaml").write_text(enabled, encoding="utf-8")
    shutil.copy(REPO / "serving" / "bins-fibre-colour.yaml", tmp_path)
    spectro = load_line_config(tmp_path / "line.yaml").spectrometer
    assert spectro is not None and spectro.source.startswith("folder:")
