"""Labels given in the console: stored in the decision log's ``labels`` table, read by ``data import-log``."""

from __future__ import annotations

import sqlite3

import pytest

from _console_fixtures import make_log
from sorting.cli import main
from sorting.datasets.manifest import read_manifest
from sorting.errors import DataError
from sorting.serving.decision_log import (
    DecisionLog,
    DecisionLogConfig,
    labels_to_manifest,
    layout_labels_to_csv,
    record_label,
    stored_labels,
)


def _crop_uid(path) -> str:
    conn = sqlite3.connect(path)
    uid = conn.execute("SELECT uid FROM decisions WHERE crop_path IS NOT NULL LIMIT 1").fetchone()[0]
    conn.close()
    return uid


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "log" / "decisions.sqlite"
    uids = make_log(path, n=10)  # rejected items (2, 5, 7, 9) have crops
    return path, uids


def test_labels_are_stored_replaced_and_skips_left_out(db) -> None:
    path, uids = db
    record_label(path, uids[2], fibre="wool", colour="red")
    record_label(path, uids[2], fibre="cotton", colour="red", layout="single", by="op")  # corrected
    record_label(path, uids[5], skipped=True)
    record_label(path, uids[7], layout="several")
    assert stored_labels(path) == [
        {"item_id": uids[2], "fibre": "cotton", "colour": "red", "layout": "single"},
        {"item_id": uids[7], "fibre": "", "colour": "", "layout": "several"},
    ]
    with pytest.raises(DataError, match="no saved crop"):
        record_label(path, uids[0], fibre="wool")  # sorted item: no crop saved
    with pytest.raises(DataError, match="give a fibre"):
        record_label(path, uids[9])


def test_old_logs_without_a_labels_table_read_as_unlabelled(tmp_path) -> None:
    path = tmp_path / "old.sqlite"
    make_log(path, n=4)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE labels")  # a log written before the console existed
    conn.commit()
    conn.close()
    assert stored_labels(path) == []
    with pytest.raises(DataError, match="no usable labelled rows"):
        labels_to_manifest(path, None, tmp_path / "m.csv")
    record_label(path, _crop_uid(path), fibre="wool")  # the console adds the table on first answer
    assert len(stored_labels(path)) == 1
    DecisionLog(DecisionLogConfig(path=path), session="again").close()  # the writer still opens it


def test_stored_labels_become_a_manifest_and_layout_list(db, tmp_path) -> None:
    path, uids = db
    record_label(path, uids[2], fibre="Poly", colour="red")  # alias resolved on import, as from a CSV
    record_label(path, uids[5], colour="black", layout="several")
    record_label(path, uids[9], skipped=True)
    result = labels_to_manifest(path, None, tmp_path / "out" / "m.csv", split="train")
    rows = read_manifest(result.manifest).rows
    assert result.written == 2 and not result.skipped
    assert {(r.fibre, r.colour) for r in rows} == {("polyester", "red"), (None, "black")}
    assert all((result.manifest.parent / r.path).is_file() and r.split == "train" for r in rows)
    layout = layout_labels_to_csv(path, None, tmp_path / "out" / "layout.csv")
    assert layout.written == 1 and layout.manifest.read_text().splitlines()[1].endswith(",several")


def test_cli_import_log_reads_stored_labels_without_a_csv(db, tmp_path, capsys) -> None:
    path, uids = db
    record_label(path, uids[2], fibre="wool", colour="white", layout="single")
    out, layout = tmp_path / "new.csv", tmp_path / "layout.csv"
    assert main(["data", "import-log", str(path), "-o", str(out), "--layout-output", str(layout)]) == 0
    printed = capsys.readouterr().out
    assert "1 labelled crops" in printed and "1 layout-labelled crops" in printed
    assert read_manifest(out).rows[0].fibre == "wool"
    assert main(["data", "import-log", str(path)]) == 2
    assert "needs -o" in capsys.readouterr().err
