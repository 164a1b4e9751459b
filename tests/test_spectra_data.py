"""Spectrum readers, grid checks, labels from names and label files, the import and the spectral manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sorting.cli import main
from sorting.datasets.manifest import read_manifest
from sorting.datasets.spectra_grid import DEFAULT_NIR_GRID, WavelengthGrid, check_spectrum, resample
from sorting.datasets.spectra_import import LabelSource, SpectraImport, import_spectra, resolve_entry
from sorting.datasets.spectra_labels import LabelError, NameRules, SpectralLabels
from sorting.datasets.spectra_readers import Spectrum, SpectrumError, read_spectrum, read_table, sniff_format
from sorting.datasets.spectra_store import load_spectral_set, spectra_path
from tests._spectra_fixtures import NANO_WL, make_swatch_folder, synthetic_spectrum, write_nirscan


@pytest.fixture(scope="module")
def vocab() -> SpectralLabels:
    return SpectralLabels.load()


@pytest.fixture(scope="module")
def names() -> NameRules:
    return NameRules.load()


def test_nirscan_csv_is_read_with_its_header(tmp_path: Path) -> None:
    y = synthetic_spectrum("cotton", np.random.default_rng(0))
    path = write_nirscan(tmp_path / "Cotton_C01_Pos1_01.csv", y)
    spectrum = read_spectrum(path)
    assert spectrum.format == "nirscan" and spectrum.meta["Serial Number"] == "1234567"
    np.testing.assert_allclose(spectrum.wavelength_nm, NANO_WL, atol=1e-6)
    np.testing.assert_allclose(spectrum.absorbance, y, atol=1e-6)


def test_ftir_and_two_column_files(tmp_path: Path) -> None:
    ftir = tmp_path / "Wool - 1.csv"
    ftir.write_text("Created as New Dataset,1 Somebody\ncm-1,%T\n" + "".join(f"{4000 - i},{50 + i % 7}\n" for i in range(40)))
    s = read_spectrum(ftir)
    assert s.format == "ftir" and s.wavelength_nm[0] == pytest.approx(1e7 / 4000)  # ascending nm
    assert s.absorbance[0] == pytest.approx(-np.log10(0.5))  # 4000 cm-1 (2500 nm, the shortest) had 50 %T
    two = tmp_path / "s_60_40_specimen1_area0_spot1.txt"
    two.write_text("".join(f"{12000 - 10 * i:.3f}\t{0.1 + i / 1000:.5f}\n" for i in range(50)))  # tabs, cm-1
    t = read_spectrum(two)
    assert t.format == "two-column" and t.wavelength_nm[-1] == pytest.approx(1e7 / 11510)
    assert np.all(np.diff(t.wavelength_nm) > 0)


def test_table_rows_keep_label_cells_and_report_bad_rows(tmp_path: Path) -> None:
    wl = np.arange(900, 1000, 10)
    header = "id,fibre,swatch," + ",".join(str(w) for w in wl)
    good = "a,cotton,S1," + ",".join("0.1" for _ in wl)
    bad = "b,wool,S2," + ",".join("x" for _ in wl)
    short = "c,wool,S3,0.1"
    path = tmp_path / "table.csv"
    path.write_text("\n".join([header, good, bad, short]) + "\n")
    assert sniff_format(path) == "table"
    rows, errors = read_table(path)
    assert [r.labels["fibre"] for r in rows] == ["cotton"] and rows[0].spectrum.absorbance.shape == (10,)
    assert [(n, e.reason) for n, e in errors] == [(2, "malformed"), (3, "malformed")]


@pytest.mark.parametrize("content, reason", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a spectrum file"),
    (b"name,colour\nshirt,red\n", "not a spectrum file"),
    (b"", "empty file"),
])
def test_foreign_files_are_rejected_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(SpectrumError) as err:
        read_spectrum(path)
    assert err.value.reason == reason


def test_truncated_nirscan_file(tmp_path: Path) -> None:
    path = write_nirscan(tmp_path / "Cotton_C01_Pos1_01.csv", synthetic_spectrum("cotton", np.random.default_rng(1)))
    text = path.read_text()
    lines = text.splitlines()
    path.write_text("\n".join(lines[:120] + [lines[120].rsplit(",", 2)[0]]))  # cut inside a row: 2 of 4 cells
    with pytest.raises(SpectrumError) as err:
        read_spectrum(path)
    assert err.value.reason == "truncated file"
    path.write_text(text[: int(len(text) * 0.6)].rsplit("\n", 1)[0] + "\n")  # cut at a row: 900 to ~1300 nm left
    with pytest.raises(SpectrumError) as err:
        check_spectrum(read_spectrum(path), DEFAULT_NIR_GRID)
    assert err.value.reason == "does not cover the grid"


def _spectrum(y: np.ndarray, wl: np.ndarray = NANO_WL) -> Spectrum:
    return Spectrum(wl, y, "test")


@pytest.mark.parametrize("make, reason", [
    (lambda y: np.where(np.arange(len(y)) == 50, np.nan, y), "nan values"),
    (lambda y: np.full_like(y, 0.3), "flat"),
    (lambda y: y + 7.0, "saturated"),
    (lambda y: np.minimum(y, np.sort(y)[-12]), "saturated"),  # a clipped top: 12 equal values at the max
])
def test_quality_checks(make, reason: str) -> None:
    y = synthetic_spectrum("cotton", np.random.default_rng(2))
    if reason == "saturated" and "minimum" in str(make.__code__.co_names):
        y = np.sort(y)  # the clipped points next to each other
    with pytest.raises(SpectrumError) as err:
        check_spectrum(_spectrum(make(y)), DEFAULT_NIR_GRID)
    assert err.value.reason == reason


def test_a_spectrum_coarser_than_the_grid_is_rejected() -> None:
    wl = np.linspace(900, 1700, 100)
    with pytest.raises(SpectrumError) as err:
        check_spectrum(_spectrum(synthetic_spectrum("cotton", np.random.default_rng(3), wl), wl), DEFAULT_NIR_GRID)
    assert err.value.reason == "shorter than the grid"


def test_resample_averages_a_finer_source_and_interpolates_a_coarser_one() -> None:
    fine = np.linspace(900, 1100, 2001)
    grid = np.arange(910, 1090, 10.0)
    np.testing.assert_allclose(resample(fine, 2 * fine + 1, grid), 2 * grid + 1, atol=1e-6)  # linear stays exact
    square = (fine >= 1000) & (fine < 1005)  # 5 nm wide block inside the 995-1005 cell: cell mean 0.5
    assert resample(fine, square.astype(float), grid)[list(grid).index(1000)] == pytest.approx(0.5, abs=0.01)
    coarse = np.linspace(900, 1100, 21)  # as coarse as the grid: interpolated
    np.testing.assert_allclose(resample(coarse, coarse**2, grid), np.interp(grid, coarse, coarse**2))


def test_grid_spec_round_trip() -> None:
    grid = WavelengthGrid.parse("910:1690:4")
    assert grid.points == 196 and grid.nm[0] == 910 and grid.nm[-1] == 1690
    assert WavelengthGrid.parse(grid.spec()) == grid
    wn = WavelengthGrid.parse("4000:650:5cm-1")
    assert wn.nm[0] == pytest.approx(1e7 / 4000) and np.all(np.diff(wn.nm) > 0)


@pytest.mark.parametrize("stem, cls, composition, swatch", [
    ("Cotton_C01_Fold4_09", "cotton", None, "Cotton_C01"),
    ("Nylon_Std_Single_02", "polyamide", None, "Nylon_Std"),
    ("Acetate_Std_Single_01", "other", None, "Acetate_Std"),
    ("Blend_Cotton55_Polyester45_Fold4_1", "polycotton", "cotton:55,polyester:45", "Blend_Cotton55_Polyester45"),
    ("Blend_Nylon30_Polyester70_Fold8_03", "other", "polyester:70,polyamide:30", "Blend_Nylon30_Polyester70"),
    ("Blend_Cotton97_Elastane3_Pos1_01", "cotton", "cotton:97,other:3", "Blend_Cotton97_Elastane3"),
    ("Background_PVC_Single_04", "background", None, "Background_PVC_Single_04"),  # every belt scan its own group
    ("cotton-0001", "cotton", None, "cotton"),
    ("s_60.53_39.47_specimen2_area0_spot7_240812", "polycotton", "polyester:60.53,cotton:39.47", "s_60.53_39.47_specimen2"),
])
def test_labels_from_file_names(vocab: SpectralLabels, names: NameRules, stem: str, cls: str,
                                composition: str | None, swatch: str) -> None:
    assert resolve_entry(LabelSource({}, stem), vocab, names) == (cls, composition, swatch)


@pytest.mark.parametrize("given, stem, reason", [
    ({}, "Mystery_M01_Pos1_01", "no label"),
    ({"fibre": "Kevlarish"}, "scan_01", "unknown label 'Kevlarish'"),
    ({"composition": "cotton:55,polyester:40"}, "scan_01", "bad composition"),
    ({"fibre": "polyester"}, "Cotton_C01_Pos1_01", "conflicting labels"),  # mislabelled: file name says cotton
    ({"fibre": "wool", "composition": "cotton:50,polyester:50"}, "scan_01", "conflicting labels"),
])
def test_bad_labels_are_rejected(vocab: SpectralLabels, names: NameRules, given: dict, stem: str, reason: str) -> None:
    with pytest.raises(LabelError) as err:
        resolve_entry(LabelSource(given, stem), vocab, names)
    assert err.value.reason == reason


def test_import_folder_writes_manifest_spectra_and_rejects(tmp_path: Path) -> None:
    root = make_swatch_folder(tmp_path / "scans", swatches=2, scans=3)
    (root / "notes.txt").write_text("measured on monday\n")  # foreign
    write_nirscan(root / "Wool_W01_Pos1_01.csv", np.full(228, 0.2))  # flat
    (root / "labels.csv").write_text("file,fibre\nCotton_C01_Pos1_01.csv,polyester\n")  # mislabelled
    table = read_label_table_for(root / "labels.csv")
    report = import_spectra([root], tmp_path / "out" / "nir.csv", SpectraImport(label_table=table, progress=False))
    reasons = sorted(r.reason for r in report.rejects)
    # labels.csv itself is read as a spectrum file and rejected too: every input lands somewhere
    assert reasons == ["conflicting labels", "flat", "not a spectrum file", "not a spectrum file"]
    assert report.kept + len(report.rejects) == report.scanned == 3 * 2 * 3 + 4 + 3
    data = load_spectral_set(report.manifest_path)
    assert data.absorbance.shape == (report.kept, DEFAULT_NIR_GRID.points) and data.grid == DEFAULT_NIR_GRID
    assert {r.garment for r in data.rows if r.fibre == "cotton"} == {"scans/Cotton_C01", "scans/Cotton_C02"}
    assert sum(r.fibre == "background" for r in data.rows) == 4


def read_label_table_for(path: Path) -> dict:
    from sorting.datasets.spectra_import import read_label_table

    return read_label_table(path)


def test_cli_import_split_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_swatch_folder(tmp_path / "scans", swatches=3, scans=4)
    out = tmp_path / "nir.csv"
    assert main(["data", "import-spectra", str(root), "-o", str(out)]) == 0
    split = tmp_path / "elsewhere" / "split.csv"
    assert main(["data", "split", str(out), "--group-by", "garment", "--fractions", "0.6", "0.2", "0.2",
                 "-o", str(split)]) == 0
    rows = load_spectral_set(split).rows  # the sidecar came along, paths were rebased
    by_swatch: dict[str, set] = {}
    for row in rows:
        by_swatch.setdefault(row.garment, set()).add(row.split)
    assert all(len(s) == 1 for s in by_swatch.values())
    assert main(["data", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cotton" in text and (tmp_path / "nir.spectra.png").stat().st_size > 10_000
    assert main(["data", "import-spectra", str(tmp_path / "missing"), "-o", str(out)]) == 1


def test_manifest_without_sidecar_is_a_clear_error(tmp_path: Path) -> None:
    root = make_swatch_folder(tmp_path / "scans", swatches=1, scans=2)
    report = import_spectra([root], tmp_path / "nir.csv", SpectraImport(progress=False))
    spectra_path(report.manifest_path).unlink()
    with pytest.raises(Exception, match="no spectra beside it"):
        load_spectral_set(report.manifest_path)
    assert read_manifest(report.manifest_path).rows  # the manifest itself is intact


@pytest.mark.shared_data
def test_real_nirscan_swatches_import(shared_data: Path, tmp_path: Path) -> None:
    report = import_spectra([shared_data / "nir-spectra" / "nirscan-nano-swatches"], tmp_path / "nir.csv",
                            SpectraImport(progress=False))
    assert report.kept == report.scanned and report.kept >= 150
    counts = report.class_counts["fibre"]
    assert {"cotton", "polyester", "polyamide", "polycotton", "background"} <= set(counts)
    swatches = {r.garment for r in report.rows if r.fibre == "polyester"}
    assert len(swatches) >= 10  # split by swatch, not by scan
