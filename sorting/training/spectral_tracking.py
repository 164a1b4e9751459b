"""MLflow for exported spectral models: ``log_spectral_onnx`` (the image models' ``MlflowTracker.log_onnx`` reads
image metadata only). Logged into the training run named in the model's metadata when it is in the store, else a
new ``export`` run, and registered as a version of ``textile-sorter-<model_name>`` (format ``onnx-spectral``).
Never raises: a broken store is one warning."""

from __future__ import annotations

import logging
from pathlib import Path

from sorting.training.tracking import MlflowTracker

log = logging.getLogger(__name__)


def log_spectral_onnx(path: str | Path, tracker: MlflowTracker | None = None) -> str | None:
    """Log ``path``; returns the run id or None when tracking failed."""
    from sorting.models.spectral_onnx import SpectralClassifier

    tracker = tracker or MlflowTracker()
    path = Path(path)
    try:
        from mlflow.exceptions import MlflowException

        meta = SpectralClassifier.load(path).metadata
        client = tracker.client
        run_id = None
        if meta.run_id:
            try:
                run_id = client.get_run(meta.run_id).info.run_id
            except MlflowException:
                run_id = None
        opened = run_id is None
        if run_id is None:
            experiment = client.get_experiment_by_name(tracker.experiment)
            exp_id = experiment.experiment_id if experiment else client.create_experiment(tracker.experiment)
            run_id = client.create_run(exp_id, run_name=f"export-{meta.model_name}",
                                       tags={"textile_sorter.job": "export"}).info.run_id
        client.log_artifact(run_id, str(path), f"onnx/{path.stem}")
        name = f"textile-sorter-{meta.model_name}"
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/onnx/{path.stem}"
        client.create_model_version(name, source, run_id=run_id, tags={"format": "onnx-spectral"})
        if opened:
            client.set_terminated(run_id, "FINISHED")
        return run_id
    except Exception as exc:  # mlflow/sqlalchemy errors of any type must not lose the exported file
        log.warning("MLflow logging of %s failed: %s", path, exc)
        return None
