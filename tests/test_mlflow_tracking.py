"""MLflow tracking: a tiny run lands in a temporary SQLite store with metrics, artifacts, model versions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sorting.datasets.preprocess import PreprocessConfig
from sorting.models.evaluation import EvaluationReport, evaluate_head
from sorting.models.onnx_model import ModelMetadata
from sorting.training.config import TrackingConfig
from sorting.training.cross_validate import CrossValidationReport, FoldResult, summarise
from sorting.training.tracking import MlflowTracker, default_tracking_uri, flatten, numeric_metrics

pytestmark = pytest.mark.slow  # creating an MLflow SQLite store runs its migrations (~10 s)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{(tmp_path_factory.mktemp('mlflow') / 'mlflow.db').as_posix()}"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_training_run_is_logged_and_registered(store: str, tmp_path: Path):
    tracker = MlflowTracker(TrackingConfig(enabled=True, experiment="unit", tracking_uri=store))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"name": "tiny-test", "optim": {"lr": 0.001, "epochs": 2}, "model": {"heads": ["fibre", "colour"]}}
    tracker.on_train_start(config, run_dir)
    assert tracker.run_id
    for epoch, (loss, f1) in enumerate([(1.0, 0.5), (0.6, 0.7)], start=1):
        tracker.on_epoch_end(epoch, {"train": {"loss": loss}, "val": {"macro_f1": f1, "per_class": [0.1, 0.2]}})
    png = run_dir / "confusion.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    tracker.on_artifact(png)
    ckpt = run_dir / "best.pt"
    ckpt.write_bytes(b"weights")
    tracker.on_artifact(ckpt)  # checkpoints are uploaded once, by on_train_end
    tracker.on_train_end(ckpt, {"test": {"accuracy": 0.9}})
    assert tracker.enabled

    client = _client(store)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["model.heads"] == '["fibre", "colour"]'
    history = client.get_metric_history(tracker.run_id, "val/macro_f1")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.7)]
    assert run.data.metrics["test/accuracy"] == pytest.approx(0.9)
    assert "val/per_class" not in run.data.metrics
    artifacts = _artifacts(client, tracker.run_id)
    assert {"config.yaml", "plots/confusion.png", "plots/training_curves.png", "checkpoint/best.pt"} <= artifacts
    assert "best.pt" not in artifacts
    versions = client.search_model_versions("name='textile-sorter-tiny-test'")
    assert len(versions) == 1 and versions[0].run_id == tracker.run_id
    assert versions[0].source.endswith("/checkpoint")


def _tiny_onnx(path: Path, run_id: str | None) -> Path:
    meta = ModelMetadata(model_name="tiny", heads=("fibre",), labels={"fibre": ["cotton", "wool"]},
                         preprocess=PreprocessConfig(input_size=16), taxonomy_version="t", run_id=run_id)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["fibre_logits"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("fibre_logits", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph)
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_onnx_joins_its_training_run_and_registry(store: str, tmp_path: Path):
    train = MlflowTracker(experiment="unit", tracking_uri=store, registered_model_name="sorter-x")
    train.on_train_start({"name": "x"}, tmp_path)
    train.on_train_end(None, {})
    onnx_path = _tiny_onnx(tmp_path / "model.onnx", train.run_id)
    run_id = MlflowTracker(experiment="unit", tracking_uri=store).log_onnx(onnx_path)
    assert run_id == train.run_id
    client = _client(store)
    assert "onnx/model/model.onnx" in _artifacts(client, run_id)
    versions = client.search_model_versions("name='sorter-x'")
    assert [v.tags.get("format") for v in versions] == ["onnx"]
    # an ONNX model whose training run is unknown gets its own export run
    other = MlflowTracker(experiment="unit", tracking_uri=store).log_onnx(_tiny_onnx(tmp_path / "b.onnx", "nope"))
    assert other and other != run_id
    assert client.get_run(other).data.tags["textile_sorter.train_run_id"] == "nope"


def test_an_evaluation_report_logs_itself(store: str, tmp_path: Path):
    out = tmp_path / "eval"
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    head = evaluate_head("colour", logits, np.array([0, 1, 1]), ["red", "blue"], out_dir=out)
    (out / "metrics.json").write_text("{}")
    report = EvaluationReport(model_path="m.pt", model_kind="checkpoint", model_name="tiny", run_id="abc",
                              manifest_path="m.csv", split="test", tta=False, out_dir=out, n_rows=3,
                              n_evaluated=3, n_unreadable=0, unreadable=[], heads={"colour": head})
    run_id = MlflowTracker(experiment="unit", tracking_uri=store).log_report(report)
    client = _client(store)
    run = client.get_run(run_id)
    assert run.data.metrics["colour_accuracy"] == pytest.approx(2 / 3)
    assert run.data.tags["textile_sorter.train_run_id"] == "abc"
    assert {"evaluation/metrics.json", "evaluation/confusion_colour.png"} <= _artifacts(client, run_id)


def test_a_cross_validation_report_logs_itself(store: str, tmp_path: Path):
    results = [FoldResult(k, 8, 2, 5, f"fold-{k + 1}/best.pt", 3.0, {"fibre": acc}, {"fibre": acc / 2}, {"fibre": 5},
                          {"fibre": ["cotton", "wool"]}, {"fibre": [[2, 1], [0, 2]]}) for k, acc in enumerate((0.6, 1.0))]
    report = CrossValidationReport("tiny", "m.csv", 2, 0, None, tmp_path, results, summarise(results))
    (tmp_path / "cv.md").write_text(report.summary_markdown())
    (tmp_path / "cv.json").write_text("{}")
    (tmp_path / "confusion_fibre.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    run_id = MlflowTracker(experiment="unit", tracking_uri=store).log_report(report)
    run = _client(store).get_run(run_id)
    assert run.data.metrics["cv/fibre/accuracy_mean"] == pytest.approx(0.8)
    assert run.data.metrics["cv/fibre/pooled_accuracy"] == pytest.approx(0.8)
    assert run.data.params["folds"] == "2" and run.data.tags["textile_sorter.job"] == "cross-validate"
    assert {"cross-validation/cv.md", "cross-validation/cv.json", "cross-validation/confusion_fibre.png"} <= \
        _artifacts(_client(store), run_id)


def test_broken_store_warns_instead_of_crashing(caplog: pytest.LogCaptureFixture, tmp_path: Path):
    tracker = MlflowTracker(tracking_uri="nosuchscheme://nowhere")
    with caplog.at_level(logging.WARNING, logger="sorting.training.tracking"):
        tracker.on_train_start({"name": "x"}, tmp_path)
        tracker.on_epoch_end(1, {"loss": 1.0})
        tracker.on_train_end(None, {})
    assert not tracker.enabled
    assert sum("MLflow tracking disabled" in r.message for r in caplog.records) == 1


def test_non_zero_rank_does_not_track(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("RANK", "1")
    tracker = MlflowTracker(tracking_uri="nosuchscheme://nowhere")
    tracker.on_train_start({"name": "x"}, tmp_path)
    assert tracker.run_id is None and not tracker.enabled


def test_default_uri_and_helpers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TEXTILE_SORTER_RUNS", str(tmp_path / "runs"))
    assert default_tracking_uri() == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert default_tracking_uri() == "http://tracking:5000"
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}}) == {"a.b": 1, "a.c.d": [1]}
    assert numeric_metrics({"val": {"acc": 1, "ok": True, "x": float("nan")}, "p@5": 2}) == {"val/acc": 1.0, "p_5": 2.0}
