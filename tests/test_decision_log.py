"""Decision log: rows, crops, WAL, threads, summary, and the import-log active-learning loop."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading

import numpy as np
import pytest

from sorting.cli import main
from sorting.datasets.manifest import read_manifest
from sorting.errors import DataError
from sorting.serving.decision_log import (
    DecisionLog,
    DecisionLogConfig,
    export_todo,
    labels_to_manifest,
    layout_labels_to_csv,
)
from sorting.serving.policy import Decision, ItemEvidence

LABELS = {"fibre": ["cotton", "polyester"], "colour": ["white", "black", "red"]}


def evidence(item_id: int, pf: float = 0.9, **flags) -> ItemEvidence:
    probs = {"fibre": np.array([pf, 1 - pf]), "colour": np.array([0.8, 0.1, 0.1])}
    return ItemEvidence(item_id, probs, LABELS, **flags)


def decision(bin_id: int, reason: str, conf: float = 0.9) -> Decision:
    name = "reject" if bin_id == 0 else f"bin{bin_id}"
    return Decision(bin_id, name, reason, "cotton", "white", {"fibre": conf, "colour": 0.8})


def crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (40, 30, 3), dtype=np.uint8)


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "logs" / "decisions.sqlite"


def fill(path, session: str = "s1") -> DecisionLog:
    log = DecisionLog(DecisionLogConfig(path=path), model_id="m1", reject_bin=0, session=session)
    log.record(evidence(1), decision(1, "rule:white"), latency_ms=5.0, crop=crop(1))  # sure: no crop
    log.record(evidence(2, 0.55), decision(0, "low_confidence:fibre", 0.55), latency_ms=7.0, crop=crop(2))
    log.record(evidence(3, ood=True), decision(0, "ood"), latency_ms=6.0, crop=crop(3))
    log.record(evidence(4), decision(1, "rule:white", 0.7), latency_ms=9.0, crop=crop(4))  # accepted, unsure
    log.record(evidence(5), decision(0, "late"), latency_ms=8.0, crop=crop(5))  # late: class was fine
    return log


def test_rows_are_committed_with_probs_and_crops(log_path) -> None:
    log = fill(log_path)
    # another connection sees every row immediately: persisted before the actuator is told
    other = sqlite3.connect(log_path)
    rows = other.execute("SELECT item_id, bin, reason, probs, model_id, crop_path FROM decisions ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert json.loads(rows[0][3]) == {"fibre": {"cotton": 0.9, "polyester": 0.1}, "colour": {"white": 0.8, "black": 0.1, "red": 0.1}}
    assert rows[0][4] == "m1"
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with_crop = [r[0] for r in rows if r[5]]
    assert with_crop == ["2", "3", "4"]
    assert (log_path.parent / "decisions-crops" / "s1-2.jpg").is_file()
    other.close()
    log.close()
    log.close()  # idempotent
    assert not log_path.with_name("decisions.sqlite-wal").exists() or log_path.with_name("decisions.sqlite-wal").stat().st_size == 0


def test_summary_counts_and_missed(log_path) -> None:
    with fill(log_path) as log:
        log.mark_missed(1, "disconnected")
        s = log.summary()
        assert s["items"] == 5 and s["missed"] == 1
        assert s["per_bin"] == {"bin1": 2, "reject": 3}
        assert s["per_reason"]["rule:white"] == 2
        assert s["reject_rate"] == pytest.approx(4 / 5)
        assert s["latency_ms_p50"] == pytest.approx(7.0)
        assert log.counts("missed_reason") == {"disconnected": 1}


def test_writes_from_several_threads(log_path) -> None:
    log = DecisionLog(DecisionLogConfig(path=log_path, save_crops="none"), session="t")

    def worker(k: int) -> None:
        for i in range(25):
            item = k * 100 + i
            log.record(evidence(item), decision(1, "rule:x"))
            log.mark_missed(item)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.summary()["items"] == 100 and log.summary()["missed"] == 100
    log.close()


def test_duplicate_decision_is_kept_visible(log_path) -> None:
    with DecisionLog(DecisionLogConfig(path=log_path), session="d") as log:
        log.record(evidence(1), decision(1, "rule:x"))
        uid, _ = log.record(evidence(1), decision(1, "rule:x"))
        assert uid.startswith("d-1-dup") and log.summary()["items"] == 2


def test_export_todo_and_import_labels_to_manifest(log_path, tmp_path) -> None:
    fill(log_path).close()
    todo = tmp_path / "label" / "todo.csv"
    assert export_todo(log_path, todo) == 3
    with open(todo, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["item_id"] for r in rows] == ["s1-2", "s1-3", "s1-4"]
    assert (todo.parent / rows[0]["crop"]).is_file()
    rows[0].update(fibre="Polyester", colour="")  # alias/case resolved; colour unknown to labeller
    rows[1].update(fibre="", colour="purplish")  # not a class: skipped, not fatal
    rows[2].update(fibre="cotton", colour="red")
    rows.append({**rows[2], "item_id": "nope-9"})
    with open(todo, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "ds" / "relabelled.csv"
    result = labels_to_manifest(log_path, todo, out, split="train")
    assert result.written == 2 and len(result.skipped) == 2
    manifest = read_manifest(out)
    assert [(r.fibre, r.colour, r.split) for r in manifest.rows] == [("polyester", None, "train"), ("cotton", "red", "train")]
    row = manifest.rows[0]
    assert manifest.image_path(row).is_file() and (row.width, row.height) == (30, 40) and len(row.sha1) == 40


def test_layout_labels_become_a_layout_crop_list(log_path, tmp_path) -> None:
    fill(log_path).close()
    todo = tmp_path / "label" / "todo.csv"
    export_todo(log_path, todo)
    with open(todo, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["layout"] == "" for r in rows)
    rows[0].update(layout="several")
    rows[1].update(layout="maybe")  # not a layout label: skipped with the reason
    rows[2].update(layout=" Single ")
    rows.append({**rows[2], "item_id": "nope-9"})
    rows.append({**rows[2], "item_id": "s1-1", "layout": ""})  # not labelled for layout: ignored
    with open(todo, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "ds" / "layout.csv"
    result = layout_labels_to_csv(log_path, todo, out)
    assert result.written == 2 and len(result.skipped) == 2 and "maybe" in result.skipped[0]
    with open(out, newline="") as fh:
        listed = list(csv.DictReader(fh))
    assert [r["layout"] for r in listed] == ["several", "single"]
    assert all((out.parent / r["path"]).is_file() for r in listed)
    no_layout = tmp_path / "no_layout.csv"
    no_layout.write_text("item_id,fibre\ns1-2,cotton\n")
    with pytest.raises(DataError, match="layout"):
        layout_labels_to_csv(log_path, no_layout, out)


def test_import_errors(log_path, tmp_path) -> None:
    fill(log_path).close()
    with pytest.raises(DataError, match="does not exist"):
        labels_to_manifest(tmp_path / "missing.sqlite", tmp_path / "x.csv", tmp_path / "m.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n1,cotton\n")
    with pytest.raises(DataError, match="item_id"):
        labels_to_manifest(log_path, bad, tmp_path / "m.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("item_id,fibre,colour\ns1-2,,\n")
    with pytest.raises(DataError, match="no usable"):
        labels_to_manifest(log_path, empty, tmp_path / "m.csv")


def test_cli_round_trip(log_path, tmp_path, capsys) -> None:
    fill(log_path).close()
    todo = tmp_path / "todo.csv"
    assert main(["data", "import-log", str(log_path), "--export-todo", str(todo)]) == 0
    assert "3 crops to label" in capsys.readouterr().out
    lines = todo.read_text().splitlines()
    lines[1] = lines[1].rstrip(",") + ",cotton,white"
    todo.write_text("\n".join(lines) + "\n")
    out = tmp_path / "m.csv"
    assert main(["data", "import-log", str(log_path), "--labels", str(todo), "-o", str(out)]) == 0
    assert "1 labelled crops" in capsys.readouterr().out
    assert len(read_manifest(out).rows) == 1
    assert main(["data", "import-log", str(log_path), "--labels", str(todo)]) == 2
    assert "needs -o" in capsys.readouterr().err
    lines[2] = lines[2] + "several"  # second crop: no fibre/colour, layout "several"
    todo.write_text("\n".join(lines) + "\n")
    layout = tmp_path / "layout.csv"
    assert main(["data", "import-log", str(log_path), "--labels", str(todo), "--layout-output", str(layout)]) == 0
    assert "1 layout-labelled crops" in capsys.readouterr().out
    assert layout.read_text().splitlines()[1].endswith(",several")
