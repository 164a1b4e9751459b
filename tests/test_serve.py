"""The production wiring: ``build_sorter`` from a line config with a real ONNX model, start-up errors
that close what was opened, and ``textile-sorter serve`` stopped by SIGTERM with its metrics endpoint up."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from _onnx_fixtures import make_checkpoint
from sorting.errors import ConfigError
from sorting.models.export import export_checkpoint
from sorting.serving.builder import build_sorter
from sorting.serving.classifier import ModelClassifier
from sorting.serving.line_config import load_line_config

REPO = Path(__file__).resolve().parent.parent
BINS = {
    "name": "tiny-colours",
    "bins": [{"id": 1, "name": "white", "distance_px": 200, "address": 0},
             {"id": 2, "name": "blue_green", "distance_px": 260, "address": 1},
             {"id": 3, "name": "red", "distance_px": 320, "address": 2}],
    "reject": {"id": 0, "name": "reject"},
    "rules": [{"name": "white", "bin": 1, "colour": ["white"]},
              {"name": "blue_green", "bin": 2, "colour": ["blue", "green"]},
              {"name": "red", "bin": 3, "colour": ["red"]}],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    return export_checkpoint(make_checkpoint(folder / "tiny.pt"), folder / "tiny.onnx").path


def tiny_model_line(tmp_path: Path, model: Path | None = None, **sections) -> Path:
    """A line config for ``model`` (default: a tiny random model exported here), as :func:`write_line`."""
    if model is None:
        model = export_checkpoint(make_checkpoint(tmp_path / "tiny.pt"), tmp_path / "tiny.onnx").path
    return write_line(tmp_path, model, **sections)


def write_line(tmp_path: Path, model: Path, **sections) -> Path:
    """The demo's line config with the tiny model, a bins file that fits its labels and a JSONL actuator."""
    (tmp_path / "bins.yaml").write_text(yaml.safe_dump(BINS))
    line = yaml.safe_load((REPO / "serving" / "line-colour-6bin.yaml").read_text())
    line.update(model={"path": str(model), "threads": 1, "hot_reload": True},
                policy={"bins": str(tmp_path / "bins.yaml")}, log={"path": str(tmp_path / "decisions.sqlite")},
                actuator={"kind": "jsonl", "path": str(tmp_path / "firings.jsonl")})
    line["belt"] = {"speed_px_s": 300.0, "direction": "+x"}
    line.update(sections)
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(line))
    return path


def test_build_sorter_wires_the_line_configs_parts_and_fires_only_logged_decisions(tmp_path, tiny_onnx):
    port = free_port()
    cfg = load_line_config(write_line(tmp_path, tiny_onnx, telemetry={"port": port}))
    loop = build_sorter(cfg, max_frames=120, keep_images=False)
    assert isinstance(loop.classifier, ModelClassifier) and loop.watcher is not None
    name, run, digest = loop.classifier.model_id.split(":")
    assert (name, run, len(digest)) == ("tiny", "run-123", 12)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f'model_id="{loop.classifier.model_id}"' in metrics
    decisions = [d for r in loop.run(120) for d in r.decisions]
    assert decisions, "the synthetic belt brought no garment in 120 frames"
    with sqlite3.connect(tmp_path / "decisions.sqlite") as db:
        rows = dict(db.execute("SELECT item_id, bin FROM decisions").fetchall())
    assert sorted(int(i) for i in rows) == sorted(d.track_id for d in decisions)
    fired = [json.loads(line) for line in (tmp_path / "firings.jsonl").read_text().splitlines()]
    assert all(rows[str(f["item_id"])] == f["bin"] for f in fired)  # every firing is a logged product decision
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)  # closed with the loop


def test_a_start_up_error_closes_what_was_opened(tmp_path, tiny_onnx):
    """A metrics port that is taken fails the start-up after the log and the video were opened:
    one ConfigError, and no reader thread or open log left behind."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        clip = tmp_path / "clip.mp4"
        _write_clip(clip)
        cfg = load_line_config(write_line(tmp_path, tiny_onnx, telemetry={"port": port}))
        cfg.camera.source = str(clip)
        before = set(threading.enumerate())
        with pytest.raises(ConfigError, match="cannot listen"):
            build_sorter(cfg)
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]
    with sqlite3.connect(tmp_path / "decisions.sqlite") as db:  # closed: another writer gets the lock at once
        db.execute("BEGIN IMMEDIATE")
        db.rollback()


def _write_clip(path: Path, n: int = 30) -> None:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
    for i in range(n):
        writer.write(np.full((480, 640, 3), 90 + i, np.uint8))
    writer.release()


@pytest.mark.slow
def test_serve_stops_on_sigterm_drains_and_closes_the_log(tmp_path, tiny_onnx):
    port = free_port()
    line = write_line(tmp_path, tiny_onnx, telemetry={"port": port})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sorting", "serve", "--line", str(line), "--source", "synthetic:4",
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        metrics = ""
        while time.monotonic() < deadline and "textile_sorter_items_total{" not in metrics:
            time.sleep(0.3)
            try:
                metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
        assert "textile_sorter_items_total{" in metrics, "no decision reached the metrics within 60 s"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "signal 15: stopping after this frame" in err
    assert out.startswith("frames ")
    with sqlite3.connect(tmp_path / "decisions.sqlite") as db:
        n, = db.execute("SELECT COUNT(*) FROM decisions").fetchone()
        assert n > 0 and db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not Path(f"{tmp_path / 'decisions.sqlite'}-wal").exists() or \
        Path(f"{tmp_path / 'decisions.sqlite'}-wal").stat().st_size == 0
