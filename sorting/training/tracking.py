"""MLflow experiment tracking behind the training callbacks (never inline in the loop).

:class:`MlflowTracker` implements the trainer's callback protocol (``on_train_start``,
``on_epoch_end``, ``on_artifact``, ``on_train_end``) and logs params (the flattened
config), per-epoch metrics, the config, plots and the checkpoint, then registers the
checkpoint as a new version of a registered model. ``log_report`` logs any :class:`Trackable` report
(``textile-sorter evaluate``, ``cross-validate``) as its own run, ``log_onnx`` an exported model.

Store: ``$MLFLOW_TRACKING_URI`` when set (e.g. a tracking server), else an embedded SQLite
database ``<runs>/mlflow.db`` with artifacts in ``<runs>/mlartifacts`` (no server). Open
the UI from the repository root with::

    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db

mlflow is imported lazily (it is slow to import) and every tracker call catches its own
errors: a broken store logs one warning and disables tracking; it never stops training.
Only the main process (``RANK`` 0 or unset) tracks under torchrun/DDP.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sorting.paths import runs_dir

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "textile-sorter"
REGISTERED_TAG = "textile_sorter.registered_model"
_PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
_METRIC_BATCH = 1000
_PARAM_MAX_CHARS = 6000
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
CURVES_PNG = "training_curves.png"
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")

F = TypeVar("F", bound=Callable[..., Any])


class Trackable(Protocol):
    """A result logged as its own MLflow run (:meth:`MlflowTracker.log_report`): it names its run and hands over
    its tags (``textile_sorter.job`` at least), params, metrics and files, so the tracker knows no report type."""

    def mlflow_run_name(self) -> str: ...

    def mlflow_tags(self) -> dict[str, str]: ...

    def mlflow_params(self) -> dict[str, Any]: ...

    def mlflow_metrics(self) -> dict[str, float]: ...

    def mlflow_artifacts(self) -> list[tuple[Path, str]]:
        """``(file or folder, artifact path in the run)`` pairs."""
        ...


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the embedded SQLite store ``<runs>/mlflow.db`` (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(runs_dir() / 'mlflow.db').absolute().as_posix()}"


def _artifact_location(tracking_uri: str) -> str | None:
    """For an SQLite store, keep artifacts next to the database (``mlartifacts/``)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a server or file store decides where artifacts go
    db = Path(tracking_uri[len("sqlite:///") :])
    return (db.parent / "mlartifacts").absolute().as_uri()


def is_main_process() -> bool:
    """True unless torchrun marked this process as a non-zero rank."""
    return os.environ.get("RANK", "0") == "0"


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and other leaves are kept as values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Finite numeric leaves of a (nested) metrics dict with MLflow-safe names."""
    out = {}
    for key, value in flatten(metrics, sep="/").items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[_BAD_NAME_CHARS.sub("_", key)] = float(value)
    return out


def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    return dict(config)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _never_raises(method: F) -> F:
    """Tracking must not break the job: turn an error into one warning and stop tracking."""

    @functools.wraps(method)
    def wrapper(self: "MlflowTracker", *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # mlflow/sqlalchemy/network errors of any type
            self.enabled = False
            log.warning("MLflow tracking disabled after an error in %s: %s", method.__name__, exc)
            return None

    return wrapper  # type: ignore[return-value]


class MlflowTracker:
    """Training callback + helpers that log runs to MLflow (see module docstring).

    After ``on_train_start`` the MLflow run id is ``tracker.run_id`` (store it in the
    checkpoint so evaluations and exports can link back to the training run).
    """

    def __init__(
        self,
        tracking: Any = None,
        *,
        experiment: str | None = None,
        tracking_uri: str | None = None,
        registered_model_name: str | None = None,
        run_name: str | None = None,
    ) -> None:
        """``tracking`` is the training config's ``TrackingConfig`` (experiment, tracking_uri,
        registered_model_name); keyword arguments override it."""
        self.experiment = experiment or getattr(tracking, "experiment", None) or DEFAULT_EXPERIMENT
        self.tracking_uri = tracking_uri or getattr(tracking, "tracking_uri", None) or default_tracking_uri()
        self.registered_model_name = registered_model_name or getattr(tracking, "registered_model_name", None)
        self.run_name = run_name
        self.run_id: str | None = None
        self.model_version: str | None = None
        self.enabled = is_main_process()
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._history: list[dict[str, float]] = []
        self._logged: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def client(self) -> "MlflowClient":
        if self._client is None:
            from mlflow import MlflowClient

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=_artifact_location(self.tracking_uri)
                )
        return self._experiment_id

    def _new_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self._experiment(), run_name=run_name, tags=dict(tags))
        log.info("MLflow run %s (%s) in %s", run.info.run_id, run_name, self.tracking_uri)
        return run.info.run_id

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [
            Param(key, (json.dumps(v) if isinstance(v, (list, tuple)) else str(v))[:_PARAM_MAX_CHARS])
            for key, v in sorted(params.items())
        ]
        for chunk in _chunks(items, _PARAM_BATCH):
            self.client.log_batch(run_id, params=chunk, synchronous=True)

    def _log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in sorted(metrics.items())]
        for chunk in _chunks(items, _METRIC_BATCH):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)

    def _register(self, run_id: str, artifact_dir: str, name: str, tags: Mapping[str, str]) -> str:
        """New version of registered model ``name`` pointing at ``artifact_dir`` of the run."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_dir}"
        version = self.client.create_model_version(name, source, run_id=run_id, tags=dict(tags))
        log.info("registered %s version %s (%s)", name, version.version, source)
        return str(version.version)

    def _existing_run(self, run_id: str | None) -> str | None:
        """``run_id`` when it is a run of this store, else None."""
        if not run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.run_id
        except MlflowException:
            return None

    # -- training callbacks ------------------------------------------------------------------
    @_never_raises
    def on_train_start(self, config: Any, run_dir: str | Path) -> None:
        """Open the run; log the flattened config as params and the config itself as YAML."""
        cfg = _config_dict(config)
        name = self.run_name or str(cfg.get("name") or Path(run_dir).name)
        if self.registered_model_name is None:
            self.registered_model_name = f"textile-sorter-{name}"
        self.run_id = self._new_run(name, {"textile_sorter.run_dir": str(Path(run_dir).absolute()),
                                           "textile_sorter.job": "train", REGISTERED_TAG: self.registered_model_name})
        self._log_params(self.run_id, flatten(cfg))
        self.client.log_dict(self.run_id, cfg, "config.yaml")

    @_never_raises
    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Log the epoch's numeric metrics at ``step=epoch`` (kept for the curves plot)."""
        if self.run_id is None:
            return
        values = numeric_metrics(metrics)
        self._history.append({"epoch": float(epoch), **values})
        self._log_metrics(self.run_id, values, step=int(epoch))

    @_never_raises
    def on_artifact(self, path: str | Path) -> None:
        """Log a file (PNGs under ``plots/``) or a whole folder; checkpoints wait for ``on_train_end``."""
        if self.run_id is None:
            return
        path = Path(path)
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            log.debug("not uploading %s: the best checkpoint is logged once by on_train_end", path)
            return
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), path.name)
        else:
            self.client.log_artifact(self.run_id, str(path), "plots" if path.suffix.lower() == ".png" else None)
        self._logged.add(path.name)

    @_never_raises
    def on_train_end(self, checkpoint_path: str | Path | None, metrics: Mapping[str, Any]) -> None:
        """Log final metrics, the training-curves plot and the checkpoint; register it; close the run."""
        if self.run_id is None:
            return
        last_step = int(self._history[-1]["epoch"]) if self._history else 0
        self._log_metrics(self.run_id, numeric_metrics(metrics), step=last_step)
        if self._history and CURVES_PNG not in self._logged:
            from sorting.training.plots import plot_training_curves

            with tempfile.TemporaryDirectory() as tmp:
                png = plot_training_curves(self._history, Path(tmp) / CURVES_PNG)
                self.client.log_artifact(self.run_id, str(png), "plots")
        if checkpoint_path is not None and Path(checkpoint_path).is_file():
            self.client.log_artifact(self.run_id, str(checkpoint_path), "checkpoint")
            self.model_version = self._register(self.run_id, "checkpoint", str(self.registered_model_name),
                                                {"format": "checkpoint"})
        self.client.set_terminated(self.run_id, "FINISHED")

    # -- reports / export --------------------------------------------------------------------
    @_never_raises
    def log_report(self, report: "Trackable") -> str:
        """Log a report (an evaluation, a cross-validation...) as its own run, as the report describes it;
        returns the run id."""
        run_id = self._new_run(self.run_name or report.mlflow_run_name(), report.mlflow_tags())
        self._log_params(run_id, report.mlflow_params())
        self._log_metrics(run_id, report.mlflow_metrics(), step=0)
        for path, artifact_path in report.mlflow_artifacts():
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(run_id, str(path), artifact_path)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    @_never_raises
    def log_onnx(self, path: str | Path, *, run_id: str | None = None) -> str:
        """Log an exported ONNX model and register it as a model version; returns the run id.

        Goes into ``run_id``, else the training run named in the model's metadata when it is
        in this store, else a new ``export`` run. The registered name is the training run's
        (tag ``textile_sorter.registered_model``), else this tracker's, else
        ``textile-sorter-<model_name>``.
        """
        from sorting.models.onnx_model import read_metadata

        path = Path(path)
        meta = read_metadata(path)
        target = self._existing_run(run_id) or self._existing_run(meta.run_id)
        opened = target is None
        if target is None:
            tags = {"textile_sorter.job": "export"}
            if meta.run_id:
                tags["textile_sorter.train_run_id"] = meta.run_id
            target = self._new_run(self.run_name or f"export-{meta.model_name}", tags)
        name = (self.client.get_run(target).data.tags.get(REGISTERED_TAG) or self.registered_model_name
                or f"textile-sorter-{meta.model_name}")
        artifact_dir = f"onnx/{path.stem}"  # one folder per file: a version points at exactly one model
        self.client.log_artifact(target, str(path), artifact_dir)
        fmt = "onnx-int8" if meta.quantization else "onnx"
        self.model_version = self._register(target, artifact_dir, name, {"format": fmt})
        if opened:
            self.client.set_terminated(target, "FINISHED")
        return target
