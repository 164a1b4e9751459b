"""The INT8 textile check: quantized with the project's recipe on crops of a line's photos, read like the FP32 one,
and a head fitted on one network is not silently used with the other."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
import yaml
from torch import nn

from sorting.cli import main
from sorting.errors import DataError, ModelFileError
from sorting.models.textile_check_export import classifier_initializers
from sorting.models.textile_check_format import FEATURES, FORMAT_VERSION, INPUT, METADATA_KEY, OUTPUT
from sorting.models.textile_check_quantize import quantize_textile_check
from sorting.serving.cloth_carve import ClothMap
from sorting.serving.textile_check import TextileCheck, TextileCheckConfig, TextileHead

SIZE = 32  # the stand-in network's crop side


class _TinyCheck(nn.Module):
    """A stand-in for EfficientNet-Lite0 with the check's interface: a few convolutions (a feature map, stride 8),
    pooling and a 1,000-way linear classifier whose log-softmax is the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 1), nn.ReLU())
        self.fc = nn.Linear(32, 1000)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return torch.log_softmax(self.fc(features.mean(dim=(2, 3))), dim=1), features


@pytest.fixture(scope="module")
def fp32_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("check") / "check.onnx"
    torch.onnx.export(_TinyCheck().eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=[INPUT],
                      output_names=[OUTPUT, FEATURES],
                      dynamic_axes={INPUT: {0: "n", 2: "h", 3: "w"}, OUTPUT: {0: "n"}, FEATURES: {0: "n", 2: "a", 3: "b"}},
                      opset_version=18, dynamo=False)
    proto = onnx.load(str(path))
    meta = {"format": FORMAT_VERSION, "input_size": SIZE, "textile_indices": list(range(10)),
            "classifier": classifier_initializers(proto), "feature_stride": 8}
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def belt_photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six small photos: a blue belt with a few coloured patches on it."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        image = np.clip(np.array([120, 85, 35]) + rng.normal(0, 6, (90, 160, 3)), 0, 255).astype(np.uint8)
        for _ in range(3):
            x, y = int(rng.integers(0, 120)), int(rng.integers(0, 60))
            image[y:y + 30, x:x + 40] = rng.integers(0, 255, 3)
        paths.append(folder / f"belt{i}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def test_the_int8_check_is_read_like_the_fp32_one_and_says_it_is_int8(fp32_check: Path, belt_photos: list[Path],
                                                                     tmp_path: Path):
    result = quantize_textile_check(fp32_check, tmp_path / "check.int8.onnx", belt_photos)
    assert result.path.is_file() and result.calibration_crops == result.compared_crops == 2 * len(belt_photos)
    nodes = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= nodes  # QDQ: it is quantized
    fp32 = TextileCheck(TextileCheckConfig(model=fp32_check))
    int8 = TextileCheck(TextileCheckConfig(model=result.path))
    assert int8.quantized and not fp32.quantized and int8.meta == fp32.meta
    ClothMap(int8)  # the classifier stayed FP32 under its own names: the carving map reads it
    image = cv2.imread(str(belt_photos[0]))
    boxes = [(0, 0, 60, 60), (50, 20, 80, 60)]
    a, b = fp32.scores(image, boxes), int8.scores(image, boxes)
    assert np.abs(a - b).max() < 0.05  # the same textile-class sums, up to quantization
    assert result.class_sum_mean_abs_diff < 0.05
    assert min(result.ms_per_crop) > 0 and "fit-textile-check --check-model" in "\n".join(result.lines())
    with pytest.raises(ModelFileError, match="already quantized"):
        quantize_textile_check(result.path, tmp_path / "twice.onnx", belt_photos)


def test_bad_calibration_input_is_one_clear_error(fp32_check: Path, tmp_path: Path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="calibration crops"):
        quantize_textile_check(fp32_check, tmp_path / "out.onnx", [tmp_path / "broken.png"])
    assert not (tmp_path / "out.onnx").exists()
    assert main(["export-textile-check", "--int8", str(tmp_path)]) != 0  # no --out: the cache holds the FP32 one
    assert "--int8 needs --out" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export-textile-check", "--out", str(tmp_path / "x.onnx"), "--int8", str(tmp_path / "empty")]) != 0
    assert "no photos" in capsys.readouterr().err


def test_a_head_fitted_on_the_other_network_is_warned_of(fp32_check: Path, belt_photos: list[Path], tmp_path: Path,
                                                         caplog):
    int8 = quantize_textile_check(fp32_check, tmp_path / "check.int8.onnx", belt_photos).path
    head = TextileHead(np.zeros(1000), 0.0, 0.5, SIZE, {"fitted_on": {"check_model": {"file": fp32_check.name,
                                                                                        "quantized": False}}})
    head.save(tmp_path / "head.json")
    with caplog.at_level(logging.WARNING):
        TextileCheck(TextileCheckConfig(model=fp32_check, head=tmp_path / "head.json"))
    assert "fit it again" not in caplog.text
    with caplog.at_level(logging.WARNING):
        TextileCheck(TextileCheckConfig(model=int8, head=tmp_path / "head.json"))
    assert "fitted on the FP32 network, the line runs the INT8 one" in caplog.text


def test_writing_a_head_fitted_on_the_int8_check_points_the_line_at_both(fp32_check: Path, tmp_path: Path,
                                                                         repo_root: Path):
    from sorting.apps.textile_head import write_head_into_line

    TextileHead(np.zeros(1000), 0.0, 0.5, SIZE, {}).save(tmp_path / "runs" / "head.json")
    line = tmp_path / "lines" / "line.yaml"
    line.parent.mkdir()
    data = yaml.safe_load((repo_root / "serving" / "line-colour-6bin.yaml").read_text())
    data["model"]["path"] = str((repo_root / "serving" / data["model"]["path"]).resolve())
    data["policy"]["bins"] = str((repo_root / "serving" / data["policy"]["bins"]).resolve())
    line.write_text(yaml.safe_dump(data))
    write_head_into_line(line, tmp_path / "runs" / "head.json", check_model=fp32_check)
    written = yaml.safe_load(line.read_text())["segmentation"]["textile_check"]
    assert written["head"] == "../runs/head.json"
    assert (line.parent / written["model"]).resolve() == fp32_check.resolve()
