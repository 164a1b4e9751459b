"""Import the real reference layouts from ../shared/data (skipped when absent).

Every file (ImageFolder) or row (CSV) must end up either in the manifest or in the
rejects file, and the manifest paths must point at the shared files, not at copies.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sorting.datasets.importers import LabelMaps, import_csv, import_image_folder
from sorting.datasets.manifest import read_manifest
from sorting.datasets.split import split_rows

pytestmark = pytest.mark.shared_data


def test_fibre_photos_image_folder_4class(shared_data: Path, tmp_path: Path, repo_root: Path) -> None:
    root = shared_data / "fibre-photos"
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    maps = LabelMaps.load(repo_root / "datasets" / "taxonomies" / "fibre-photos-4class.yaml")
    report = import_image_folder(root, tmp_path / "runs" / "fibre4.csv", task="fibre", labels=maps,
                                 workers=2, progress=False)
    manifest = read_manifest(report.manifest_path)
    assert report.scanned == len(files) == len(manifest.rows) + len(report.rejects)
    assert set(report.class_counts["fibre"]) == {"cotton", "denim", "linen", "polyester"}
    assert set(report.reject_counts) <= {"duplicate"}, report.reject_counts  # clean JPEGs, a few repeats
    on_disk = {p.resolve() for p in files}
    assert all(manifest.image_path(r).resolve() in on_disk for r in manifest.rows)
    assert all(r.path.startswith("../") for r in manifest.rows)  # relative to the manifest, not copied
    for cls in ("Cotton", "Denim", "Linen", "Polyester"):
        n_files = sum(1 for p in files if p.parent.name == cls)
        n_rejects = sum(1 for r in report.rejects if r.path.startswith(f"{cls}/"))
        assert report.class_counts["fibre"][cls.lower()] == n_files - n_rejects


@pytest.mark.slow  # decodes 3,755 images (~4 s CPU)
def test_colour_catalogue_csv(shared_data: Path, tmp_path: Path) -> None:
    labels_csv = shared_data / "colour-catalogue" / "labels.csv"
    with open(labels_csv, newline="") as fh:
        source_rows = list(csv.DictReader(fh))
    report = import_csv(labels_csv, tmp_path / "colour.csv", image_col="image", label_cols={"colour": "colour"},
                        garment_col="garment", workers=2, progress=False)
    manifest = read_manifest(report.manifest_path)
    assert report.scanned == len(source_rows) == len(manifest.rows) + len(report.rejects)
    n_na = sum(1 for r in source_rows if r["colour"] == "NA")
    assert report.reject_counts["no label"] == n_na
    assert set(report.reject_counts) <= {"no label", "duplicate"}, report.reject_counts  # every name is mapped
    assert len(report.class_counts["colour"]) == 12
    assert all((r.width, r.height) != (None, None) and r.sha1 for r in manifest.rows)
    split = split_rows(manifest.rows, seed=0)
    per_split = {s: sum(1 for r in split if r.split == s) for s in ("train", "val", "test")}
    assert per_split["train"] > 7 * per_split["test"] > 0


def test_fabric_closeups_csv_keeps_every_row_with_its_sample(shared_data: Path, tmp_path: Path, repo_root: Path) -> None:
    """Five fibre labels as they are, colour names mapped to the 12 sorting colours, `other` left unlabelled,
    and the sample id in the garment column (the group of every split and fold)."""
    labels_csv = shared_data / "fabric-closeups" / "labels.csv"
    with open(labels_csv, newline="") as fh:
        source_rows = list(csv.DictReader(fh))
    maps = LabelMaps.load(repo_root / "datasets" / "taxonomies" / "fabric-closeups.yaml")
    report = import_csv(labels_csv, tmp_path / "closeups.csv", image_col="image",
                        label_cols={"fibre": "fibre", "colour": "colour"}, garment_col="sample", labels=maps,
                        workers=2, progress=False)
    rows = read_manifest(report.manifest_path).rows
    assert report.scanned == len(source_rows) == len(rows) + len(report.rejects)
    assert set(report.reject_counts) <= {"duplicate"}, report.reject_counts  # every label is mapped
    assert set(report.class_counts["fibre"]) == {"cotton", "polyester", "wool", "mixed", "other"}
    assert set(report.class_counts["colour"]) <= set(maps.taxonomy.colour)
    by_image = {r["image"]: r for r in source_rows}
    kept = {r.path.split("fabric-closeups/", 1)[1]: r for r in rows}
    assert all(r.garment == by_image[k]["sample"] for k, r in kept.items())
    assert all((r.colour is None) == (by_image[k]["colour"] == "other") for k, r in kept.items())
    assert all(r.fibre for r in rows)
    split = split_rows(rows, seed=0, group_by="garment")
    samples_per_split = {s: {r.garment for r in split if r.split == s} for s in ("train", "val", "test")}
    assert not samples_per_split["train"] & samples_per_split["test"] and samples_per_split["test"]
