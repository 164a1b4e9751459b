"""Static INT8 quantization of a tiny exported model: format, metadata, agreement with FP32, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from _onnx_fixtures import make_checkpoint, make_manifest
from sorting.cli import main
from sorting.datasets.images import load_image
from sorting.datasets.manifest import read_manifest
from sorting.errors import DataError, ModelFileError
from sorting.models.export import export_checkpoint
from sorting.models.onnx_model import OnnxClassifier
from sorting.models.quantize import QuantizeOptions, calibration_images, quantize_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(manifest, fp32 onnx, int8 onnx)."""
    folder = tmp_path_factory.mktemp("quant")
    manifest = make_manifest(folder / "data", n=32)
    fp32 = export_checkpoint(make_checkpoint(folder / "tiny.pt"), folder / "tiny.onnx", check_manifest=manifest).path
    images = calibration_images(manifest, 16, split="val")
    int8 = quantize_model(fp32, folder / "tiny.int8.onnx", images, QuantizeOptions(n_calib=16)).path
    return manifest, fp32, int8


def test_int8_is_static_qdq_with_per_channel_weights(models: tuple[Path, Path, Path]) -> None:
    model = onnx.load(str(models[2]))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 4  # activations too: static
    assert "DynamicQuantizeLinear" not in ops
    inits = {i.name: i for i in model.graph.initializer}
    weight_scales = [inits[n.input[1]] for n in model.graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weight_scales and any(len(s.dims) == 1 and s.dims[0] > 1 for s in weight_scales)  # per-channel
    assert models[2].stat().st_size < 0.5 * models[1].stat().st_size


def test_int8_keeps_metadata_and_records_the_recipe(models: tuple[Path, Path, Path]) -> None:
    fp32, int8 = OnnxClassifier.load(models[1]).metadata, OnnxClassifier.load(models[2]).metadata
    assert (int8.labels, int8.preprocess, int8.temperature, int8.ood, int8.run_id) == (
        fp32.labels, fp32.preprocess, fp32.temperature, fp32.ood, fp32.run_id)
    assert int8.quantization is not None
    assert int8.quantization["format"] == "qdq" and int8.quantization["per_channel"] is True
    assert int8.quantization["n_calib"] == 16 and int8.quantization["source_model"] == "tiny.onnx"
    props = {p.key: p.value for p in onnx.load(str(models[2])).metadata_props}
    assert json.loads(props["quantization"])["calibration"] == "percentile"


def test_int8_predictions_follow_fp32(models: tuple[Path, Path, Path]) -> None:
    manifest = read_manifest(models[0])
    images = [load_image(manifest.image_path(r)) for r in manifest.subset("test")]
    fp32 = OnnxClassifier.load(models[1], threads=1).predict(images)
    int8 = OnnxClassifier.load(models[2], threads=1).predict(images)
    for head in ("fibre", "colour"):
        agreement = np.mean(fp32.probs[head].argmax(1) == int8.probs[head].argmax(1))
        assert agreement >= 0.85, (head, agreement)
        assert np.max(np.abs(fp32.probs[head] - int8.probs[head])) < 0.1


def test_refuses_requantizing_and_empty_calibration(models: tuple[Path, Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="already quantized"):
        quantize_model(models[2], tmp_path / "x.onnx", calibration_images(models[0], 4))
    with pytest.raises(DataError, match="no rows in split 'train'"):
        calibration_images(models[0], 4, split="train")


def test_cli_quantize_reports_accuracy_and_speed(models: tuple[Path, Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    manifest, fp32, _ = models
    out = tmp_path / "cli.int8.onnx"
    argv = ["quantize", str(fp32), "--calib", str(manifest), "--calib-split", "val", "--n-calib", "8",
            "-o", str(out), "--eval", str(manifest), "--eval-split", "test", "--no-track"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "colour top-1: FP32" in text and "INT8" in text and "img/s" in text
    assert OnnxClassifier.load(out).metadata.quantization["n_calib"] == 8


def _float_weight_nodes(path: Path, op_type: str) -> list[str]:
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == op_type and n.input[1] in inits]


def test_default_keeps_stem_convs_and_heads_in_float(models: tuple[Path, Path, Path]) -> None:
    assert len(_float_weight_nodes(models[2], "Conv")) == 3  # tiny has 4 convs: the first 3 stay FP32
    assert len(_float_weight_nodes(models[2], "Gemm")) == 2  # both heads


def test_histogram_calibration_with_uneven_image_count(models: tuple[Path, Path, Path], tmp_path: Path) -> None:
    options = QuantizeOptions(calibration="percentile", float_first_convs=0, float_heads=False, batch_size=8)
    result = quantize_model(models[1], tmp_path / "p.onnx", calibration_images(models[0], 20), options)
    recipe = OnnxClassifier.load(result.path).metadata.quantization
    assert recipe["calibration"] == "percentile" and recipe["n_calib"] == 16  # equal batches of 8
    assert _float_weight_nodes(result.path, "Conv") == [] and _float_weight_nodes(result.path, "Gemm") == []


def test_colour_statistics_branch_stays_float_but_colour_head_does_not() -> None:
    from onnx import TensorProto, helper

    from sorting.models.quantize import float_nodes

    nodes = [
        helper.make_node("Mul", ["x", "x"], ["a"], name="/model/backbone/colour/Mul"),
        helper.make_node("Gemm", ["a", "a"], ["colour_logits"], name="/model/heads/colour/Gemm"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("colour_logits", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph)
    assert float_nodes(model, first_convs=0, heads=False) == ["/model/backbone/colour/Mul"]
    assert float_nodes(model, first_convs=0, heads=True) == ["/model/backbone/colour/Mul", "/model/heads/colour/Gemm"]
