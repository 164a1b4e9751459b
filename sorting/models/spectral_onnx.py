"""The exported spectral model on onnxruntime, without torch: what a sorting line loads.

Graph contract: input ``"absorbance"`` float32 (N, points) = raw absorbance on the model's wavelength grid
(preprocessing is inside the graph); outputs ``"logits"`` (N, classes), ``"ood_score"`` (N,) and, when the model
has a composition head, ``"cotton_share"`` (N,) in % (meaningful for cotton/polyester items only), and
``"features"`` (N, points): the preprocessed spectrum (checked against scipy at export; serving ignores it).

``metadata_props`` (schema :data:`SPECTRAL_SCHEMA_KEY` = :data:`SPECTRAL_SCHEMA_VERSION`) carry the labels, the
grid, the preprocessing, the temperature, the OOD rule and its quantile table, the composition head's
description, the taxonomy version and provenance (:class:`SpectralMetadata`).

Use: ``clf = SpectralClassifier.load(path)``; ``clf.check_grid(sensor_nm)`` once when a spectrometer is attached
(:class:`GridMismatchError` if its wavelengths do not cover the model's grid); ``clf.predict(spectra)`` for
spectra already on the grid, ``clf.predict_on(sensor_nm, spectra)`` for spectra on the sensor's own wavelengths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sorting.datasets.spectra_grid import WavelengthGrid, resample
from sorting.errors import ConfigError, ModelFileError
from sorting.models.onnx_model import ood_quantile_key, softmax

SPECTRAL_SCHEMA_KEY = "textile_sorter_spectral_schema"
SPECTRAL_SCHEMA_VERSION = "1"
INPUT_NAME = "absorbance"
LOGITS, OOD_SCORE, COTTON_SHARE, FEATURES = "logits", "ood_score", "cotton_share", "features"
_JSON_KEYS = ("labels", "grid", "preprocess", "composition", "ood", "metrics")


class GridMismatchError(ModelFileError):
    """Spectra (or a spectrometer) whose wavelengths do not match or cover the model's grid."""


@dataclass(frozen=True)
class SpectralMetadata:
    """What serving needs to know about a spectral model (stored as ONNX ``metadata_props``).

    ``ood``: ``{"method": "mahalanobis"|"energy", "quantile": q, "threshold": t, "by_quantile": {"0.99": t, ...}}``
    (the graph's ``ood_score`` above the threshold = out of distribution). ``composition``: None or
    ``{"output": "cotton_share", "applies_to": [...], "preprocess": {...}, "components": n, "metrics": {...}}``.
    """

    model_name: str
    model_version: str
    labels: list[str]
    grid: WavelengthGrid
    preprocess: dict[str, Any]
    taxonomy_version: str
    temperature: float = 1.0
    ood: dict[str, Any] | None = None
    composition: dict[str, Any] | None = None
    run_id: str | None = None
    dataset_hash: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    exported_at: str = ""

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"a spectral model needs >= 2 distinct labels, got {self.labels}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")

    def ood_threshold(self, quantile: float | None = None) -> float | None:
        """The OOD threshold (None: no OOD rule); ``quantile`` picks one from the stored table."""
        if self.ood is None:
            return None
        if quantile is None:
            return float(self.ood["threshold"])
        table = self.ood.get("by_quantile", {})
        key = ood_quantile_key(quantile)
        if key not in table:
            raise ConfigError(f"spectral model {self.model_name} has no OOD threshold at quantile {key} "
                              f"(it has {', '.join(sorted(table)) or 'none'})")
        return float(table[key])

    def to_props(self) -> dict[str, str]:
        return {
            SPECTRAL_SCHEMA_KEY: SPECTRAL_SCHEMA_VERSION,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "labels": json.dumps(self.labels),
            "grid": json.dumps(self.grid.to_dict()),
            "preprocess": json.dumps(self.preprocess),
            "taxonomy_version": self.taxonomy_version,
            "temperature": repr(float(self.temperature)),
            "ood": json.dumps(self.ood),
            "composition": json.dumps(self.composition),
            "run_id": self.run_id or "",
            "dataset_hash": self.dataset_hash or "",
            "metrics": json.dumps(self.metrics, sort_keys=True, default=float),
            "exported_at": self.exported_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "SpectralMetadata":
        if props.get(SPECTRAL_SCHEMA_KEY) is None:
            raise ModelFileError(f"{source}: not a textile-sorter spectral model ({SPECTRAL_SCHEMA_KEY} missing); "
                                 "export one with `textile-sorter export CHECKPOINT -o model.onnx`")
        if props[SPECTRAL_SCHEMA_KEY] != SPECTRAL_SCHEMA_VERSION:
            raise ModelFileError(f"{source}: spectral schema {props[SPECTRAL_SCHEMA_KEY]!r}, this version reads "
                                 f"{SPECTRAL_SCHEMA_VERSION!r}")
        try:
            parsed = {k: json.loads(props[k]) for k in _JSON_KEYS if props.get(k)}
            return cls(model_name=props["model_name"], model_version=props.get("model_version", ""),
                       labels=list(parsed["labels"]), grid=WavelengthGrid.from_dict(parsed["grid"]),
                       preprocess=parsed["preprocess"], taxonomy_version=props["taxonomy_version"],
                       temperature=float(props.get("temperature") or 1.0), ood=parsed.get("ood"),
                       composition=parsed.get("composition"), run_id=props.get("run_id") or None,
                       dataset_hash=props.get("dataset_hash") or None, metrics=parsed.get("metrics", {}),
                       exported_at=props.get("exported_at", ""))
        except (ValueError, TypeError, KeyError, ConfigError) as exc:
            raise ModelFileError(f"{source}: malformed spectral metadata: {exc}") from None


@dataclass
class SpectralPredictions:
    """Outputs for N spectra: calibrated ``probs`` (N, C), ``ood`` flags and scores, ``cotton_share`` (N,) or None."""

    labels: list[str]
    logits: np.ndarray
    probs: np.ndarray
    ood_score: np.ndarray
    ood: np.ndarray
    cotton_share: np.ndarray | None

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def top1(self) -> list[str]:
        return [self.labels[i] for i in self.probs.argmax(axis=1)]

    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types for bad files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first})") from None


class SpectralClassifier:
    """An exported spectral model on onnxruntime (CPU); see the module docstring."""

    def __init__(self, session: ort.InferenceSession, metadata: SpectralMetadata, path: Path) -> None:
        self.session = session
        self.metadata = metadata
        self.path = path
        outputs = {o.name for o in session.get_outputs()}
        self._outputs = [LOGITS, OOD_SCORE] + ([COTTON_SHARE] if COTTON_SHARE in outputs else [])
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or not {LOGITS, OOD_SCORE} <= outputs:
            raise ModelFileError(f"{path}: expected input '{INPUT_NAME}' and outputs '{LOGITS}', '{OOD_SCORE}'")
        if inputs[0].shape[-1] != metadata.grid.points:
            raise GridMismatchError(f"{path}: graph takes {inputs[0].shape[-1]} points, its metadata grid has "
                                    f"{metadata.grid.points}")
        self._threshold = metadata.ood_threshold()

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> "SpectralClassifier":
        """Open an exported spectral model; ModelFileError if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        session = _session(path, threads)
        metadata = SpectralMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map), str(path))
        return cls(session, metadata, path)

    @property
    def grid_nm(self) -> np.ndarray:
        return self.metadata.grid.nm

    def use_ood_quantile(self, quantile: float | None) -> None:
        """Flag OOD at the stored threshold of this validation quantile (None: the trained one)."""
        self._threshold = self.metadata.ood_threshold(quantile)

    def check_grid(self, wavelength_nm: np.ndarray) -> None:
        """GridMismatchError unless spectra on ``wavelength_nm`` can be resampled onto the model's grid."""
        x = np.sort(np.asarray(wavelength_nm, dtype=np.float64))
        grid = self.grid_nm
        half = (grid[1] - grid[0]) / 2
        if x.size < 2 or x[0] > grid[0] + half or x[-1] < grid[-1] - half:
            covered = f"{x[0]:.1f}-{x[-1]:.1f} nm" if x.size else "nothing"
            raise GridMismatchError(f"{self.path.name}: the spectrometer covers {covered}, the model needs "
                                    f"{grid[0]:.1f}-{grid[-1]:.1f} nm ({self.metadata.grid.spec()})")
        inside = np.sum((x >= grid[0] - half) & (x <= grid[-1] + half))
        if inside < len(grid):
            raise GridMismatchError(f"{self.path.name}: the spectrometer has {inside} points in the model's range, "
                                    f"fewer than the model's {len(grid)}-point grid")

    def predict_on(self, wavelength_nm: np.ndarray, spectra: np.ndarray) -> SpectralPredictions:
        """Spectra (N, len(wavelength_nm)) on the sensor's wavelengths: checked, resampled, predicted."""
        self.check_grid(wavelength_nm)
        x = np.asarray(wavelength_nm, dtype=np.float64)
        order = np.argsort(x)
        rows = np.atleast_2d(np.asarray(spectra, dtype=np.float64))[:, order]
        return self.predict(np.stack([resample(x[order], row, self.grid_nm) for row in rows]))

    def predict(self, spectra: np.ndarray) -> SpectralPredictions:
        """Raw absorbance (N, points) on the model's grid -> calibrated probabilities, OOD flags, cotton share."""
        batch = np.ascontiguousarray(np.atleast_2d(spectra), dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.metadata.grid.points:
            raise GridMismatchError(f"{self.path.name}: spectra have {batch.shape[-1]} points, the model's grid "
                                    f"{self.metadata.grid.spec()} has {self.metadata.grid.points}; resample with predict_on")
        out = dict(zip(self._outputs, self.session.run(self._outputs, {INPUT_NAME: batch})))
        logits = out[LOGITS].astype(np.float64)
        t = self.metadata.temperature
        score = out[OOD_SCORE].astype(np.float64)
        flags = score > self._threshold if self._threshold is not None else np.zeros(len(score), dtype=bool)
        share = out.get(COTTON_SHARE)
        return SpectralPredictions(self.metadata.labels, logits, softmax(logits, t).astype(np.float64), score,
                                   flags | ~np.isfinite(score), None if share is None else share.astype(np.float64))

