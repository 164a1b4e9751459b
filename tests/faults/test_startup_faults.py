"""Start-up errors through ``textile-sorter serve`` (a subprocess): one line ``textile-sorter: error: ...``,
rc 2, no traceback, nothing run. Issue 18, "Start-up and configs": also with a video file as the source
(its reader thread used to turn an error into ``FATAL: exception not rethrown``, SIGABRT, rc 134)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _onnx_fixtures import make_checkpoint
from sorting.models.export import export_checkpoint

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
BINS = {
    "name": "tiny-colours",
    "bins": [{"id": 1, "name": "white", "distance_px": 200, "address": 0},
             {"id": 2, "name": "blue_green", "distance_px": 260, "address": 1}],
    "reject": {"id": 0, "name": "reject"},
    "rules": [{"name": "white", "bin": 1, "colour": ["white"]}, {"name": "blue_green", "bin": 2, "colour": ["blue"]}],
}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    return export_checkpoint(make_checkpoint(folder / "tiny.pt"), folder / "tiny.onnx").path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    import cv2
    import numpy as np

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
    for i in range(20):
        writer.write(np.full((480, 640, 3), 90 + i, np.uint8))
    writer.release()
    return path


@pytest.fixture
def line(tmp_path, tiny_onnx) -> Path:
    """A 640x480 line with the tiny model, its bins file and a log in ``tmp_path``."""
    (tmp_path / "bins.yaml").write_text(yaml.safe_dump(BINS), encoding="utf-8")
    cfg = {
        "name": "faults",
        "camera": {"source": "synthetic:0", "fps": 30, "width": 640, "height": 480},
        "belt": {"speed_px_s": 300.0, "direction": "+x"},
        "tracking": {"decision_line_px": 480},
        "model": {"path": str(tiny_onnx), "threads": 1, "hot_reload": False},
        "policy": {"bins": "bins.yaml"},
        "log": {"path": "log/decisions.sqlite"},
    }
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def serve(line: Path, *args: str) -> subprocess.CompletedProcess:
    """``textile-sorter serve --line LINE ARGS`` run in the line's folder (at most 20 frames)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sorting", "serve", "--line", str(line), "--no-progress",
                           "--max-frames", "20", *args], cwd=line.parent, env=env, capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """rc 2, the error as the last stderr line, no traceback, nothing sorted."""
    lines = proc.stderr.strip().splitlines()
    assert lines, f"rc {proc.returncode}, no error printed; stdout: {proc.stdout[-500:]}"
    assert "Traceback" not in proc.stderr and "FATAL" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("textile-sorter: error: "), proc.stderr[-3000:]
    assert proc.returncode == 2, f"rc {proc.returncode}: {lines[-1]}"
    assert not proc.stdout.startswith("frames "), "the line ran"
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


def test_an_infinite_belt_speed_stops_the_start(line) -> None:
    """It used to sort 0 items and exit 0."""
    assert_one_line_error(serve(line, "--set", "belt.speed_px_s=.inf"), "belt.speed_px_s", "finite")


def test_a_decision_line_outside_the_frame_stops_the_start(line, clip) -> None:
    assert_one_line_error(serve(line, "--source", str(clip), "--set", "tracking.decision_line_px=900"),
                          "tracking.decision_line_px 900")


def test_an_unknown_bin_address_with_a_video_source(line, clip) -> None:
    assert_one_line_error(serve(line, "--source", str(clip), "--set", "actuator.addresses={9: 3}"),
                          "actuator.addresses", "[9]")


def test_a_busy_metrics_port_with_a_video_source(line, clip) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(serve(line, "--source", str(clip), "--set", f"telemetry.port={port}"),
                              "cannot listen", str(port))


def test_a_log_path_that_is_a_folder_with_a_video_source(line, clip) -> None:
    (line.parent / "log" / "decisions.sqlite").mkdir(parents=True)
    assert_one_line_error(serve(line, "--source", str(clip)), "log.path", "is a folder")


@pytest.mark.parametrize("args, what", [
    (["--set", "log.path=taken/decisions.sqlite"], "log.path"),
    (["--set", "log.crops_dir=taken/crops"], "log.crops_dir"),
    (["--video-out", "taken/annotated.mp4"], "--video-out"),
    (["--set", "actuator.kind=jsonl", "--set", "actuator.path=taken/firings.jsonl"], "actuator.path"),
])
def test_an_output_under_a_file_stops_the_start(line, args, what) -> None:
    """``taken`` is a file, so no folder can be made there: it was a traceback (the video's after the run)."""
    (line.parent / "taken").write_text("not a folder", encoding="utf-8")
    assert_one_line_error(serve(line, *args), what, "taken")


def test_a_jsonl_actuator_path_that_is_a_folder_stops_the_start(line) -> None:
    (line.parent / "firings").mkdir()
    assert_one_line_error(serve(line, "--set", "actuator.kind=jsonl", "--set", "actuator.path=firings"),
                          "actuator.path", "is a folder")


def test_outputs_in_missing_folders_are_made(line, clip) -> None:
    proc = serve(line, "--source", str(clip), "--set", "log.path=new/a/decisions.sqlite",
                 "--video-out", "new/b/annotated.mp4", "--set", "actuator.kind=jsonl",
                 "--set", "actuator.path=new/c/firings.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("a/decisions.sqlite", "b/annotated.mp4", "c/firings.jsonl"):
        assert (line.parent / "new" / name).is_file(), name
