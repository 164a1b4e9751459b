"""The model benchmark in --quick mode on the tiny model: rows, columns, files (figures not asserted)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from _onnx_fixtures import make_checkpoint, make_manifest

from sorting.cli import main
from sorting.errors import ConfigError
from sorting.models.bench import BenchConfig, EvalSet, run_benchmark, write_report
from sorting.models.evaluation import evaluate_onnx
from sorting.models.export import export_checkpoint
from sorting.models.quantize import calibration_images, quantize_model
from sorting.models.speed import SpeedMeter


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(manifest, trained-looking exported onnx)."""
    folder = tmp_path_factory.mktemp("bench")
    manifest = make_manifest(folder / "data", n=24)
    onnx_path = export_checkpoint(make_checkpoint(folder / "tiny.pt"), folder / "tiny.onnx", check_manifest=manifest).path
    return manifest, onnx_path


def test_bench_registry_and_file_models_fp32_and_int8(setup: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, onnx_path = setup
    int8_path = quantize_model(onnx_path, tmp_path / "tiny.int8.onnx", calibration_images(manifest, 8, split="val")).path
    models = ["tiny", str(onnx_path), str(int8_path)]
    cfg = BenchConfig(models=models, manifests=[EvalSet.parse(f"{manifest}:test")], quick=True,
                      work_dir=tmp_path / "work", pretrained=False)
    result = run_benchmark(cfg)
    rows = result["rows"]
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("tiny", "fp32"), ("tiny", "int8"), ("tiny (tiny.onnx)", "fp32"), ("tiny (tiny.int8.onnx)", "int8")]
    assert max(r["rel_throughput"] for r in rows) == 1.0
    for r in rows:
        assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"] and r["throughput_img_s"] > 0
        assert r["params_m"] > 0.01 and r["size_mb"] > 0
    acc_key = "data[test]:colour_accuracy"
    assert acc_key not in rows[0]  # untrained registry build: no accuracy
    for row, path in ((rows[2], onnx_path), (rows[3], int8_path)):  # the shared evaluation's figures, on all 12 test rows
        report = evaluate_onnx(path, manifest, split="test", out_dir=tmp_path / "eval" / path.stem, progress=False)
        assert row[acc_key] == report.heads["colour"].metrics["accuracy"]
        assert row["data[test]:fibre_macro_f1"] == report.heads["fibre"].metrics["macro_f1"]
    assert result["machine"]["threads"] == 1 and result["machine"]["cores"] == os.cpu_count()
    assert result["config"]["calib"].endswith("manifest.csv:val")  # never calibrates on test rows

    paths = write_report(result, tmp_path / "out" / "table", command="textile-sorter bench ...", note="noisy")
    md, csv_path, json_path = paths
    text = md.read_text()
    assert "| model | variant |" in text and "textile-sorter bench ..." in text and "noisy" in text
    with csv_path.open() as fh:
        header = next(csv.reader(fh))
    assert header[:3] == ["model", "variant", "weights"] and acc_key in header
    assert len(json.loads(json_path.read_text())["rows"]) == 4


def test_bench_rejects_unknown_model_and_int8_without_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither an .onnx file nor a registered model"):
        run_benchmark(BenchConfig(models=["no_such_net"], work_dir=tmp_path, quick=True))
    with pytest.raises(ConfigError, match="needs calibration images"):
        run_benchmark(BenchConfig(models=["tiny"], work_dir=tmp_path, quick=True, pretrained=False))


def test_cli_bench_quick(setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest, onnx_path = setup
    out = tmp_path / "b"
    argv = ["bench", str(onnx_path), "--manifest", str(manifest), "--split", "val", "--no-int8", "--quick", "-o", str(out),
            "--work-dir", str(tmp_path / "w")]
    assert main(argv) == 0
    assert "img/s" in capsys.readouterr().out
    text = out.with_suffix(".md").read_text()
    assert "--no-int8 --quick" in text and "data[val]" in text


class RunClock:
    """A fake clock read twice per timed run (start, end): each run lasts the next of ``durations`` seconds."""

    def __init__(self, durations: list[float]) -> None:
        self.durations = iter(durations)
        self.now = 0.0
        self.running = False

    def __call__(self) -> float:
        if self.running:
            self.now += next(self.durations)
        self.running = not self.running
        return self.now


def test_speed_figures_come_from_the_clock(setup: tuple[Path, Path]) -> None:
    meter = SpeedMeter(setup[1], threads=1, batch=4, warmup=1,
                       clock=RunClock([0.002, 0.002, 0.002, 0.010, 0.040, 0.040, 0.080]))
    meter.sample(4, 3)  # four single-image runs (2, 2, 2, 10 ms), three batch runs (40, 40, 80 ms)
    result = meter.result()
    assert result["latency_p50_ms"] == pytest.approx(2.0)
    assert result["latency_p99_ms"] == pytest.approx(float(np.percentile([2, 2, 2, 10], 99)))
    assert result["throughput_img_s"] == pytest.approx(4 / 0.040)  # the median batch run
