"""Hostile files for the data commands (issue 18, "Data import"): names that are not UTF-8, FIFOs and
devices posing as images, files too large to read, a crafted decision log, CSVs in another encoding,
a chart path that is not a chart. Each costs one reject or one clear line; the rest is imported."""

from __future__ import annotations

import csv
import os
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sorting.cli import main
from sorting.datasets.importers import import_csv, import_image_folder
from sorting.datasets.manifest import read_manifest
from sorting.errors import DataError
from sorting.serving.decision_log import DecisionLog, DecisionLogConfig, export_todo, labels_to_manifest, \
    layout_labels_to_csv

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]


def image(path: Path, seed: int, size: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def rejects_of(report_path: Path) -> dict[str, str]:
    with open(report_path, newline="", encoding="utf-8") as fh:
        return {r["path"]: r["reason"] for r in csv.DictReader(fh)}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``textile-sorter ARGS`` in a subprocess with 2 GB of address space and 60 s (a hang or a
    gigabyte read fails the test instead of the machine)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        return subprocess.run([sys.executable, "-m", "sorting", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=60, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"textile-sorter {' '.join(args)} still ran after 60 s")


def test_a_file_name_that_is_not_utf8_is_rejected_and_the_rest_imported(tmp_path) -> None:
    """It aborted the import with a traceback and wrote neither the manifest nor the rejects."""
    root = tmp_path / "photos"
    image(root / "white" / "good.png", 1)
    image(root / "white" / "other.png", 2)
    bad = os.fsencode(root / "white") + b"/caf\xe9.png"
    with open(bad, "wb") as fh:
        fh.write((root / "white" / "other.png").read_bytes()[:-1] + b"\x00")
    os.mkdir(os.fsencode(root) + b"/bl\xe4ck")
    with open(os.fsencode(root) + b"/bl\xe4ck/x.png", "wb") as fh:
        fh.write((root / "white" / "good.png").read_bytes())
    report = import_image_folder(root, tmp_path / "m.csv", task="colour", progress=False)
    assert sorted(r.path for r in read_manifest(tmp_path / "m.csv").rows) == ["photos/white/good.png",
                                                                             "photos/white/other.png"]
    rejects = rejects_of(report.rejects_path)
    assert rejects == {"white/caf\\xe9.png": "bad file name", "bl\\xe4ck/x.png": "bad file name"}


def test_a_fifo_posing_as_an_image_is_rejected_without_hanging(tmp_path) -> None:
    root = tmp_path / "photos"
    image(root / "white" / "good.png", 1)
    os.mkfifo(root / "white" / "pipe.jpg")
    proc = run_cli("data", "import-folder", str(root), "--task", "colour", "-o", "m.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rejects_of(tmp_path / "m.rejects.csv") == {"white/pipe.jpg": "not a regular file"}
    assert [r.path for r in read_manifest(tmp_path / "m.csv").rows] == ["photos/white/good.png"]


def test_a_link_to_a_device_is_rejected_without_reading_it(tmp_path) -> None:
    """A symlink to /dev/zero read gigabytes into memory."""
    root = tmp_path / "photos"
    image(root / "white" / "good.png", 1)
    (root / "white" / "zero.jpg").symlink_to("/dev/zero")
    image(tmp_path / "elsewhere.png", 3)
    (root / "white" / "linked.png").symlink_to(tmp_path / "elsewhere.png")  # a link to a plain file is fine
    proc = run_cli("data", "import-folder", str(root), "--task", "colour", "-o", "m.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rejects_of(tmp_path / "m.rejects.csv") == {"white/zero.jpg": "not a regular file"}
    assert len(read_manifest(tmp_path / "m.csv").rows) == 2


def test_a_file_over_the_size_cap_is_rejected_before_it_is_read(tmp_path) -> None:
    root = tmp_path / "photos"
    small = image(root / "white" / "small.png", 1, size=8)
    big = image(root / "white" / "big.png", 2, size=200)
    assert small.stat().st_size < 1000 < big.stat().st_size
    report = import_image_folder(root, tmp_path / "m.csv", task="colour", progress=False, max_bytes=1000)
    assert [(r.path, r.reason) for r in report.rejects] == [("white/big.png", "too large")]
    assert "1000" in report.rejects[0].detail or "0.001" in report.rejects[0].detail
    proc = run_cli("data", "import-folder", str(root), "--task", "colour", "-o", "cli.csv", "--max-file-mb", "0.001",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rejects_of(tmp_path / "cli.rejects.csv") == {"white/big.png": "too large"}


def test_a_csv_import_refuses_devices_too(tmp_path) -> None:
    image(tmp_path / "good.png", 1)
    (tmp_path / "labels.csv").write_text("image,colour\ngood.png,white\n/dev/zero,white\n", encoding="utf-8")
    proc = run_cli("data", "import-csv", "labels.csv", "--colour-col", "colour", "-o", "m.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rejects_of(tmp_path / "m.rejects.csv") == {"/dev/zero": "not a regular file"}


def test_a_latin1_csv_names_the_file_and_the_line(tmp_path) -> None:
    image(tmp_path / "good.png", 1)
    labels = tmp_path / "labels.csv"
    labels.write_bytes("image,colour\ngood.png,white\ncaf\u00e9.png,white\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"labels\.csv:3: not a UTF-8 text CSV"):
        import_csv(labels, tmp_path / "m.csv", label_cols={"colour": "colour"}, progress=False)


# -- import-log ------------------------------------------------------------------------------------------

def crafted_log(tmp_path: Path) -> Path:
    """A decision log whose rows point at: a good crop, a file outside the crops folder (by '..' and by an
    absolute path, both real images), a link out of it, and a crop that is not an image."""
    db = tmp_path / "logs" / "decisions.sqlite"
    DecisionLog(DecisionLogConfig(path=db), session="s").close()
    crops = tmp_path / "logs" / "decisions-crops"
    image(crops / "s-1.jpg", 1)
    outside = image(tmp_path / "secret.png", 2)
    (crops / "s-4.jpg").symlink_to(outside)
    (crops / "s-5.jpg").write_bytes(b"GIF89a not really")
    paths = {1: "decisions-crops/s-1.jpg", 2: "../secret.png", 3: str(outside), 4: "decisions-crops/s-4.jpg",
             5: "decisions-crops/s-5.jpg"}
    with sqlite3.connect(db) as conn:
        for item, path in paths.items():
            conn.execute(
                "INSERT INTO decisions (uid, session, item_id, wall_time, confidence, probs, ood, overlap, cut_off,"
                " n_views, bin, bin_name, reason, crop_path, crop_width, crop_height)"
                " VALUES (?, 's', ?, 0, '{}', '{}', 0, 0, 0, 1, 0, 'reject', 'ood', ?, 9999, 9999)",
                (f"s-{item}", str(item), path))
    return db


def labels_csv(tmp_path: Path, column: str, value: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "labels.csv"
    lines = [f"item_id,{column},note"] + [f"s-{i},{value},blanc cass\u00e9" for i in range(1, 6)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def test_import_log_takes_only_decoded_crops_inside_the_crops_folder(tmp_path) -> None:
    """A crafted log's crop_path used to go into the training manifest unread."""
    db = crafted_log(tmp_path)
    result = labels_to_manifest(db, labels_csv(tmp_path, "colour", "white"), tmp_path / "m.csv")
    manifest = read_manifest(tmp_path / "m.csv")
    assert [manifest.image_path(r).name for r in manifest.rows] == ["s-1.jpg"]
    assert (manifest.rows[0].width, manifest.rows[0].height) == (48, 48)  # measured, not the log's 9999
    assert len(result.skipped) == 4
    assert sum("outside" in s for s in result.skipped) == 3 and sum("not an image" in s for s in result.skipped) == 1


def test_import_log_layout_and_todo_take_the_same_care(tmp_path) -> None:
    db = crafted_log(tmp_path)
    result = layout_labels_to_csv(db, labels_csv(tmp_path, "layout", "single"), tmp_path / "layout.csv")
    assert result.written == 1 and len(result.skipped) == 4
    assert export_todo(db, tmp_path / "todo.csv") == 2  # s-1 and s-5 lie in the crops folder; s-5 is caught later
    listed = (tmp_path / "todo.csv").read_text(encoding="utf-8")
    assert "secret" not in listed and "s-4" not in listed


def test_import_log_with_a_latin1_labels_csv_is_one_clear_line(tmp_path, capsys) -> None:
    """It was a UnicodeDecodeError traceback."""
    db = crafted_log(tmp_path)
    labels = labels_csv(tmp_path, "colour", "white", encoding="latin-1")
    rc = main(["data", "import-log", str(db), "--labels", str(labels), "-o", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "labels.csv:2: not a UTF-8 text CSV" in err, err
    rc = main(["data", "import-log", str(db), "--labels", str(labels), "-o", str(tmp_path / "m.csv"),
               "--encoding", "latin-1"])
    assert rc == 0 and "1 labelled crops" in capsys.readouterr().out


# -- other outputs ---------------------------------------------------------------------------------------

@pytest.fixture
def manifest(tmp_path) -> Path:
    image(tmp_path / "photos" / "white" / "a.png", 1)
    import_image_folder(tmp_path / "photos", tmp_path / "m.csv", task="colour", progress=False)
    return tmp_path / "m.csv"


def test_stats_with_a_csv_out_is_one_clear_line(manifest, tmp_path, capsys) -> None:
    """``data stats -o x.csv`` was a matplotlib traceback after the counts were printed."""
    assert main(["data", "stats", str(manifest), "-o", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.csv" in err and ".png" in err, err
    assert not (tmp_path / "x.csv").exists()
    assert main(["data", "stats", str(manifest), "-o", str(tmp_path / "chart.svg")]) == 0
    assert (tmp_path / "chart.svg").is_file()


@pytest.mark.parametrize("args", [
    ["data", "import-folder", "{root}", "--task", "colour", "-o", "{taken}/m.csv"],
    ["data", "import-folder", "{root}", "--task", "colour", "-o", "{folder}"],
    ["data", "import-folder", "{root}", "--task", "colour", "-o", "m.csv", "--rejects", "{taken}/r.csv"],
    ["data", "stats", "{manifest}", "-o", "{taken}/chart.png"],
    ["data", "split", "{manifest}", "-o", "{folder}"],
])
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(manifest, tmp_path, capsys, args) -> None:
    (tmp_path / "taken").write_text("a file", encoding="utf-8")
    (tmp_path / "folder").mkdir()
    names = {"root": tmp_path / "photos", "taken": tmp_path / "taken", "folder": tmp_path / "folder",
             "manifest": manifest}
    assert main([a.format(**names) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("textile-sorter: error:"), err
