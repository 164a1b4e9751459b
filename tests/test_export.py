"""ONNX export round trip, metadata contract, self-check and loader errors (tiny model)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from _onnx_fixtures import LABELS, make_checkpoint, make_manifest, make_model

from sorting.cli import main
from sorting.datasets.manifest import read_manifest
from sorting.errors import ConfigError, ModelFileError
from sorting.models.export import export_checkpoint, export_model, verify_export
from sorting.models.onnx_model import SCHEMA_KEY, ModelMetadata, OnnxClassifier, energy_score, softmax


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint, manifest, exported onnx)."""
    folder = tmp_path_factory.mktemp("export")
    manifest = make_manifest(folder / "data", n=16)
    ckpt = make_checkpoint(folder / "tiny.pt")
    result = export_checkpoint(ckpt, folder / "tiny.onnx", check_manifest=manifest, n_check=8)
    assert result.check.source == "manifest" and result.check.n_images == 8
    return ckpt, manifest, result.path


def test_graph_has_named_io_and_only_a_dynamic_batch(exported: tuple[Path, Path, Path]) -> None:
    model = onnx.load(str(exported[2]))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [i.name for i in model.graph.input] == ["image"]
    assert dims(model.graph.input[0]) == ["batch", 3, 64, 64]
    outputs = {o.name: dims(o) for o in model.graph.output}
    dim = make_model()[0].feature_dim
    assert outputs == {"fibre_logits": ["batch", 3], "colour_logits": ["batch", 4], "embedding": ["batch", dim]}
    assert len(list(exported[2].parent.glob("*.data"))) == 0  # weights inside the one file


def test_metadata_carries_everything_serving_needs(exported: tuple[Path, Path, Path]) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported[2])).metadata_props}
    for key in ("model_name", "heads", "labels", "preprocess", "taxonomy_version", "temperature", "ood",
                "run_id", "dataset_hash", "metrics", "exported_at"):
        assert props.get(key), key
    assert props[SCHEMA_KEY] == "1"
    meta = OnnxClassifier.load(exported[2]).metadata
    assert meta.heads == ("fibre", "colour") and meta.labels == LABELS
    assert meta.temperature == {"fibre": 1.5, "colour": 0.8}
    assert meta.ood == {"method": "energy", "threshold": {"fibre": -1.0, "colour": -1.0}}
    assert (meta.run_id, meta.dataset_hash, meta.taxonomy_version) == ("run-123", "abc", "test-1")
    assert meta.preprocess.input_size == 64 and meta.quantization is None


def test_predict_matches_torch_with_calibration_and_ood(exported: tuple[Path, Path, Path]) -> None:
    _, manifest, onnx_path = exported
    clf = OnnxClassifier.load(onnx_path, threads=1)
    clf.self_check()
    images = [cv2.imread(str(p)) for p in sorted((manifest.parent / "img").glob("*.png"))[:5]]
    pred = clf.predict(images)
    assert len(pred) == 5 and pred.embedding.shape == (5, make_model()[0].feature_dim)
    from sorting.datasets.preprocess import preprocess_batch

    torch_model, _ = make_model()
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(preprocess_batch(images, clf.metadata.preprocess)))
    for head, t in (("fibre", 1.5), ("colour", 0.8)):
        logits = ref[head].numpy()
        np.testing.assert_allclose(pred.logits[head], logits, atol=1e-4)
        np.testing.assert_allclose(pred.probs[head], softmax(logits, t), atol=1e-5)
        np.testing.assert_allclose(pred.probs[head].sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(pred.energy[head], energy_score(logits, t), atol=1e-4)
        np.testing.assert_array_equal(pred.ood[head], pred.energy[head] > -1.0)
    assert clf.predict(images[:1]).probs["colour"].shape == (1, 4)  # batch size is free


def test_energy_is_minus_t_logsumexp() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    expected = -2.0 * np.log(np.exp(logits / 2.0).sum(axis=1))
    np.testing.assert_allclose(energy_score(logits, 2.0), expected, rtol=1e-6)


def test_export_check_fails_loudly_and_removes_the_file(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    other, _ = make_model(seed=1)  # different weights than the file
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(exported[2].read_bytes())
    batch = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    with pytest.raises(ModelFileError, match=r"differs from torch: 4 given images; fibre: max\|diff\|"):
        verify_export(copy, other, batch, source="given")
    assert not copy.exists()


def test_export_without_check_images_uses_random_inputs(tmp_path: Path) -> None:
    model, preprocess = make_model()
    meta = ModelMetadata(model_name="tiny", heads=("colour",), labels={"colour": LABELS["colour"]},
                         preprocess=preprocess, taxonomy_version="t")

    class ColourOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.inner(x)
            return {"colour": out["colour"], "embedding": out["embedding"]}

    result = export_model(ColourOnly(), tmp_path / "c.onnx", meta)
    assert result.check.passed and result.metadata.heads == ("colour",)
    assert OnnxClassifier.load(result.path).predict_logits(np.zeros((3, 3, 64, 64), np.float32))["colour"].shape == (3, 4)


def _onnx_without_metadata(path: Path, props: dict[str, str] | None = None) -> Path:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["image"], ["embedding"])], "g",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    for k, v in (props or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "model file not found"),
        ("garbage", "not a loadable ONNX model"),
        ("no_metadata", "no textile-sorter metadata"),
        ("future_schema", "unknown metadata schema version '99'"),
        ("broken_metadata", "malformed textile-sorter metadata"),
    ],
)
def test_loader_errors_are_one_clear_model_file_error(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "m.onnx"
    if case == "garbage":
        path.write_bytes(b"this is a jpeg, honest" * 10)
    elif case == "no_metadata":
        _onnx_without_metadata(path)
    elif case == "future_schema":
        _onnx_without_metadata(path, {SCHEMA_KEY: "99"})
    elif case == "broken_metadata":
        _onnx_without_metadata(path, {SCHEMA_KEY: "1", "model_name": "x", "heads": "[fibre", "labels": "{}",
                                      "preprocess": "{}", "taxonomy_version": "1"})
    with pytest.raises(ModelFileError, match=message):
        OnnxClassifier.load(path)


@pytest.mark.slow  # creates an MLflow SQLite store (~10 s of migrations)
def test_cli_export_logs_the_onnx_model_and_errors_in_one_line(exported: tuple[Path, Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    store = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    ckpt = exported[0]
    out = tmp_path / "cli.onnx"
    assert main(["export", str(ckpt), "-o", str(out), "--n-check", "4"]) == 0  # checks on synthetic crops
    printed = capsys.readouterr().out
    assert "check passed: 4 synthetic images" in printed and out.is_file()
    assert "MLflow: cli.onnx logged to run" in printed
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    [model] = client.search_registered_models()
    [version] = client.search_model_versions(f"name='{model.name}'")
    assert version.tags["format"] == "onnx"
    assert main(["export", str(ckpt), "-o", str(tmp_path / "quiet.onnx"), "--n-check", "4", "--no-track"]) == 0
    assert "MLflow" not in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nope.pt"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("textile-sorter: error:")


def test_a_line_can_pick_the_ood_threshold_of_another_validation_quantile(exported: tuple[Path, Path, Path]) -> None:
    _, manifest, onnx_path = exported
    clf = OnnxClassifier.load(onnx_path, threads=1)
    with pytest.raises(ConfigError, match="retrain"):  # this model was trained before the table existed
        clf.use_ood_quantile(0.995)
    table = {"fibre": {"0.99": -1.0, "0.995": 5.0}, "colour": {"0.99": -1.0, "0.995": -100.0}}
    clf.metadata = dataclasses.replace(clf.metadata, ood={**clf.metadata.ood, "by_quantile": table})
    clf.use_ood_quantile(0.995)
    rows = read_manifest(manifest)
    images = [cv2.imread(str(rows.image_path(r))) for r in rows.rows[:6]]
    pred = clf.predict(images)
    np.testing.assert_array_equal(pred.ood["fibre"], pred.energy["fibre"] > 5.0)
    assert pred.ood["colour"].all()
    with pytest.raises(ConfigError, match="0.98"):
        clf.use_ood_quantile(0.98)
    clf.use_ood_quantile(None)
    np.testing.assert_array_equal(clf.predict(images).ood["colour"], pred.energy["colour"] > -1.0)
