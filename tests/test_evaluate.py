"""End-to-end evaluation of a tiny checkpoint on a tiny manifest (plus bad rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sorting.datasets.manifest import ManifestRow, write_manifest
from sorting.errors import DataError, ModelFileError
from sorting.models.checkpoint import save_checkpoint
from sorting.models.evaluation import predict_logits
from sorting.models.multihead import build_multihead
from sorting.training.evaluate import evaluate_model, load_predictor

FIBRES = ["cotton", "polyester", "wool"]
COLOURS = ["red", "blue"]
BGR = {"red": (0, 0, 220), "blue": (220, 0, 0)}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model, preprocess = build_multihead("tiny", {"fibre": len(FIBRES), "colour": len(COLOURS)})
    return save_checkpoint(
        tmp_path / "model.pt", model, model_name="tiny", labels={"fibre": FIBRES, "colour": COLOURS},
        preprocess=preprocess, taxonomy_version="test", config={"model": {"backbone": "tiny"}},
        temperature={"fibre": 1.5, "colour": 0.8}, ood={"method": "energy", "threshold": {"fibre": 0.0}},
        run_id=None, dataset_hash=None, epoch=1,
    )


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "images"
    folder.mkdir(parents=True)
    rows = []
    for i in range(12):
        colour = COLOURS[i % 2]
        img = np.full((40, 56, 3), BGR[colour], dtype=np.uint8)
        img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i}.png"), img)
        fibre = FIBRES[i % 3] if i < 10 else None  # two colour-only rows
        rows.append(ManifestRow(path=f"images/{i}.png", fibre=fibre, colour=colour,
                                split="test" if i < 8 else "val"))
    rows[0].fibre = "Cotton"  # case differs from the model's label: still resolved
    rows[1].fibre = "PET"  # an alias of polyester
    rows[2].fibre = "kevlar"  # unknown to the model: counted and excluded
    (folder / "broken.png").write_bytes(b"not a png")
    rows.append(ManifestRow(path="images/broken.png", fibre="wool", colour="red", split="test"))
    return write_manifest(rows, tmp_path / "data" / "manifest.csv")


def test_evaluate_checkpoint_end_to_end(tiny_checkpoint: Path, tiny_manifest: Path, tmp_path: Path):
    out = tmp_path / "eval"
    report = evaluate_model(tiny_checkpoint, tiny_manifest, out_dir=out, batch_size=4, threads=1, progress=False)
    assert report.n_rows == 13
    assert report.n_unreadable == 1 and "broken.png" in report.unreadable[0]
    assert report.n_evaluated == 12
    fibre, colour = report.heads["fibre"], report.heads["colour"]
    assert fibre.n == 9  # 10 fibre-labelled readable rows minus the unknown 'kevlar'
    assert fibre.unknown_labels == {"kevlar": 1}
    assert fibre.n_unlabelled == 2
    assert colour.n == 12
    assert sum(fibre.metrics["support"]) == 9
    assert fibre.metrics["support"][FIBRES.index("polyester")] == 3  # PET resolved through the aliases
    assert colour.temperature == pytest.approx(0.8)
    assert fibre.ood_rate is not None and colour.ood_rate is None

    data = json.loads((out / "metrics.json").read_text())
    assert data["n_unreadable"] == 1
    head = data["heads"]["fibre"]
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "ece_before_temperature",
                "ece_after_temperature", "purity_at_reject"):
        assert key in head
    assert [row["target_reject_rate"] for row in head["purity_at_reject"]] == [0.0, 0.05, 0.1, 0.2]
    assert head["purity_at_reject"][0]["purity"] == pytest.approx(head["accuracy"])
    assert set(head["per_class"]) == set(FIBRES)
    for name in ("confusion_fibre.png", "purity_reject_fibre.png", "confusion_colour.png", "purity_reject_colour.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "## fibre" in summary and "kevlar" in summary and "broken.png" in summary
    lines = (out / "predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 12


def test_evaluate_split_and_tta(tiny_checkpoint: Path, tiny_manifest: Path, tmp_path: Path):
    report = evaluate_model(tiny_checkpoint, tiny_manifest, out_dir=tmp_path / "e", split="val", tta=True,
                            progress=False)
    assert report.n_rows == 4 and report.split == "val" and report.tta
    assert report.heads["colour"].n == 4
    assert "colour_accuracy" in report.flat_metrics()


def test_tta_averages_identity_and_flips(tiny_checkpoint: Path):
    predictor = load_predictor(tiny_checkpoint)
    img = np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    views = [img, img[:, ::-1].copy(), img[::-1].copy()]
    plain = predict_logits(predictor, views, tta=False)
    tta = predict_logits(predictor, [img], tta=True)
    assert tta["fibre"].shape == (1, len(FIBRES))
    assert not np.allclose(plain["fibre"][0], plain["fibre"][1])  # the flips do change the input
    for head in ("fibre", "colour"):
        np.testing.assert_allclose(tta[head][0], plain[head].mean(axis=0), rtol=1e-4, atol=1e-5)


def test_evaluate_bad_inputs(tiny_checkpoint: Path, tiny_manifest: Path, tmp_path: Path):
    with pytest.raises(ModelFileError):
        evaluate_model(tmp_path / "missing.pt", tiny_manifest, out_dir=tmp_path / "x")
    with pytest.raises(DataError, match="split 'train'"):
        evaluate_model(tiny_checkpoint, tiny_manifest, out_dir=tmp_path / "x", split="train", progress=False)
    with pytest.raises(DataError):
        evaluate_model(tiny_checkpoint, tmp_path / "nope.csv", out_dir=tmp_path / "x")


@pytest.mark.slow
def test_onnx_export_scores_like_its_checkpoint(tiny_checkpoint: Path, tiny_manifest: Path, tmp_path: Path):
    from sorting.models.export import export_checkpoint

    onnx_path = export_checkpoint(tiny_checkpoint, tmp_path / "model.onnx", n_check=2).path
    a = evaluate_model(tiny_checkpoint, tiny_manifest, out_dir=tmp_path / "pt", progress=False)
    b = evaluate_model(onnx_path, tiny_manifest, out_dir=tmp_path / "onnx", threads=1, progress=False)
    assert b.model_kind == "onnx" and a.model_kind == "checkpoint"
    for head in ("fibre", "colour"):
        assert b.heads[head].metrics["confusion_matrix"] == a.heads[head].metrics["confusion_matrix"]
        assert b.heads[head].ece_after == pytest.approx(a.heads[head].ece_after, abs=1e-4)
    # the models room scores the ONNX file without torch (what bench and quantize use)
    script = (
        "import json, sys\n"
        "from sorting.models.evaluation import evaluate_onnx\n"
        f"r = evaluate_onnx({str(onnx_path)!r}, {str(tiny_manifest)!r}, out_dir={str(tmp_path / 'np')!r}, threads=1,"
        " progress=False)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'cm': r.heads['colour'].metrics['confusion_matrix']}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch_free = json.loads(proc.stdout.strip().splitlines()[-1])
    assert torch_free == {"torch": False, "cm": b.heads["colour"].metrics["confusion_matrix"]}


def test_cli_evaluate_prints_summary(tiny_checkpoint: Path, tiny_manifest: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]):
    from sorting.cli import main

    out = tmp_path / "cli"
    rc = main(["evaluate", str(tiny_checkpoint), str(tiny_manifest), "--split", "test", "--out", str(out),
               "--no-track", "--batch-size", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "## colour" in printed and "purity" in printed
    assert (out / "metrics.json").is_file()
    assert main(["evaluate", str(tmp_path / "nope.onnx"), str(tiny_manifest), "--no-track"]) == 1
