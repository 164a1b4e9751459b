"""The self-describing ONNX classifier: metadata schema and the onnxruntime wrapper serving uses.

An exported model carries everything needed to run it in ``metadata_props`` (schema
:data:`SCHEMA_VERSION`): label names per head, the preprocessing config, taxonomy version,
temperatures, the OOD rule, provenance and validation metrics. :class:`OnnxClassifier` reads
them once at load time, so ``predict`` does no per-call parsing (serving calls it at 60+ fps).

Graph contract: input ``"image"`` float32 (N, 3, S, S), outputs ``"<head>_logits"`` per head and
``"embedding"``; only the batch dimension is dynamic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sorting.datasets.preprocess import PreprocessConfig, preprocess_batch
from sorting.errors import ConfigError, ModelFileError
from sorting.taxonomy import MODEL_HEADS

log = logging.getLogger(__name__)

SCHEMA_KEY = "textile_sorter_schema"
SCHEMA_VERSION = "1"
INPUT_NAME = "image"
EMBEDDING_OUTPUT = "embedding"
_JSON_KEYS = ("heads", "labels", "temperature", "ood", "metrics", "quantization")
_REQUIRED_KEYS = ("model_name", "heads", "labels", "preprocess", "taxonomy_version")


def logits_output(head: str) -> str:
    """Name of the ONNX output holding ``head``'s logits."""
    return f"{head}_logits"


def ood_quantile_key(quantile: float) -> str:
    """How a validation quantile is written in a model's OOD threshold table (``ood.by_quantile``): "0.995"."""
    return f"{quantile:g}"


@dataclass(frozen=True)
class ModelMetadata:
    """Everything serving needs to know about a model, stored as ONNX ``metadata_props``.

    ``ood`` is ``{"method": "energy", "threshold": {head: float}}`` or None (no OOD rule);
    ``quantization`` is None for FP32 models and describes the recipe for INT8 ones.
    """

    model_name: str
    heads: tuple[str, ...]
    labels: dict[str, list[str]]
    preprocess: PreprocessConfig
    taxonomy_version: str
    temperature: dict[str, float] = field(default_factory=dict)
    ood: dict[str, Any] | None = None
    run_id: str | None = None
    dataset_hash: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    exported_at: str = ""
    quantization: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.heads or any(h not in MODEL_HEADS for h in self.heads):
            raise ConfigError(f"heads must be a non-empty subset of {list(MODEL_HEADS)}, got {list(self.heads)}")
        missing = [h for h in self.heads if len(self.labels.get(h, [])) < 2]
        if missing:
            raise ConfigError(f"labels missing (or fewer than 2) for head(s) {missing}")
        if self.ood is not None and self.ood.get("method") != "energy":
            raise ConfigError(f"unsupported OOD method {self.ood.get('method')!r} (only 'energy')")

    def temperature_of(self, head: str) -> float:
        return float(self.temperature.get(head, 1.0))

    def ood_threshold(self, head: str, quantile: float | None = None) -> float | None:
        """The head's energy threshold (None: no OOD check); ``quantile`` picks one from the model's table of
        validation quantiles instead of the one it was trained with (ConfigError if the model has none)."""
        if self.ood is None or self.ood.get("threshold", {}).get(head) is None:
            return None
        if quantile is None:
            return float(self.ood["threshold"][head])
        table = self.ood.get("by_quantile", {}).get(head, {})
        key = ood_quantile_key(quantile)
        if key not in table:
            raise ConfigError(f"model {self.model_name} has no {head} OOD threshold at quantile {key} (it has: "
                              f"{', '.join(sorted(table)) or 'none; retrain it to get the table'})")
        return float(table[key])

    def to_props(self) -> dict[str, str]:
        """String key/value pairs for ``ModelProto.metadata_props``."""
        props = {
            SCHEMA_KEY: SCHEMA_VERSION,
            "model_name": self.model_name,
            "heads": json.dumps(list(self.heads)),
            "labels": json.dumps(self.labels),
            "preprocess": self.preprocess.to_json(),
            "taxonomy_version": self.taxonomy_version,
            "temperature": json.dumps({h: self.temperature_of(h) for h in self.heads}),
            "ood": json.dumps(self.ood),
            "run_id": self.run_id or "",
            "dataset_hash": self.dataset_hash or "",
            "metrics": json.dumps(self.metrics, sort_keys=True, default=float),
            "exported_at": self.exported_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.quantization is not None:
            props["quantization"] = json.dumps(self.quantization, sort_keys=True)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> "ModelMetadata":
        """Parse ``metadata_props``; ModelFileError naming ``source`` when absent, unknown or malformed."""
        schema = props.get(SCHEMA_KEY)
        if schema is None:
            raise ModelFileError(
                f"{source}: ONNX model has no textile-sorter metadata ({SCHEMA_KEY} missing); "
                "export it with `textile-sorter export CHECKPOINT -o model.onnx`"
            )
        if schema != SCHEMA_VERSION:
            raise ModelFileError(
                f"{source}: unknown metadata schema version {schema!r} (this version reads {SCHEMA_VERSION!r})"
            )
        missing = [k for k in _REQUIRED_KEYS if not props.get(k)]
        if missing:
            raise ModelFileError(f"{source}: metadata lacks {missing}")
        try:
            parsed = {k: json.loads(props[k]) for k in _JSON_KEYS if props.get(k)}
            return cls(
                model_name=props["model_name"],
                heads=tuple(parsed["heads"]),
                labels={h: list(v) for h, v in parsed["labels"].items()},
                preprocess=PreprocessConfig.from_json(props["preprocess"]),
                taxonomy_version=props["taxonomy_version"],
                temperature={h: float(t) for h, t in parsed.get("temperature", {}).items()},
                ood=parsed.get("ood"),
                run_id=props.get("run_id") or None,
                dataset_hash=props.get("dataset_hash") or None,
                metrics=parsed.get("metrics", {}),
                exported_at=props.get("exported_at", ""),
                quantization=parsed.get("quantization"),
            )
        except (ValueError, TypeError, KeyError, AttributeError, ConfigError) as exc:
            raise ModelFileError(f"{source}: malformed textile-sorter metadata: {exc}") from None


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read only the metadata of an ONNX file (no session is created)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError/ValueError/... for non-ONNX bytes
        raise ModelFileError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float32, numerically stable)."""
    z = logits / np.float32(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Free energy ``-T * logsumexp(logits / T)`` per row; higher means less familiar."""
    z = logits / np.float32(temperature)
    m = z.max(axis=1)
    return -np.float32(temperature) * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


@dataclass
class Predictions:
    """Model output for a batch of N images.

    ``probs[head]`` (N, C) temperature-calibrated softmax, ``energy[head]`` (N,), ``ood[head]`` (N,) bool
    (always False when the model has no OOD threshold for that head), ``embedding`` (N, D).
    """

    labels: dict[str, list[str]]
    logits: dict[str, np.ndarray]
    probs: dict[str, np.ndarray]
    energy: dict[str, np.ndarray]
    ood: dict[str, np.ndarray]
    embedding: np.ndarray

    def __len__(self) -> int:
        return int(self.embedding.shape[0])


class OnnxClassifier:
    """An exported textile-sorter model running on onnxruntime (CPU)."""

    def __init__(self, session: ort.InferenceSession, metadata: ModelMetadata, path: Path) -> None:
        self.session = session
        self.metadata = metadata
        self.path = path
        self._output_names = [logits_output(h) for h in metadata.heads] + [EMBEDDING_OUTPUT]
        self._temperatures = {h: metadata.temperature_of(h) for h in metadata.heads}
        self._thresholds = {h: metadata.ood_threshold(h) for h in metadata.heads}
        self._check_graph()

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> "OnnxClassifier":
        """Open ``path``; ModelFileError if it is not ONNX, lacks our metadata or has an unknown schema.

        ``threads`` sets onnxruntime's intra-op thread count (None: onnxruntime's default, all cores).
        """
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path}: not a loadable ONNX model ({first})") from None
        metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        return cls(session, metadata, path)

    def _check_graph(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelFileError(f"{self.path}: expected one input named '{INPUT_NAME}', got {[i.name for i in inputs]}")
        present = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self._output_names if n not in present]
        if missing:
            raise ModelFileError(f"{self.path}: graph lacks output(s) {missing} declared by its metadata")

    @property
    def input_size(self) -> int:
        return self.metadata.preprocess.input_size

    def predict_logits(self, batch_nchw: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs for a preprocessed float32 (N, 3, S, S) batch: ``{head: logits, "embedding": ...}``."""
        batch = np.ascontiguousarray(batch_nchw, dtype=np.float32)
        outputs = self.session.run(self._output_names, {INPUT_NAME: batch})
        result = dict(zip(self.metadata.heads, outputs[:-1]))
        result[EMBEDDING_OUTPUT] = outputs[-1]
        return result

    def predict(self, images_bgr: Sequence[np.ndarray]) -> Predictions:
        """Classify BGR uint8 crops: calibrated probabilities, energies, OOD flags and embeddings."""
        batch = preprocess_batch(images_bgr, self.metadata.preprocess, input_order="BGR")
        return self.predict_batch(batch)

    def predict_batch(self, batch_nchw: np.ndarray) -> Predictions:
        """Like :meth:`predict` for an already preprocessed batch."""
        raw = self.predict_logits(batch_nchw)
        probs, energy, ood = {}, {}, {}
        for head in self.metadata.heads:
            t = self._temperatures[head]
            probs[head] = softmax(raw[head], t)
            energy[head] = energy_score(raw[head], t)
            threshold = self._thresholds[head]
            ood[head] = energy[head] > threshold if threshold is not None else np.zeros(len(energy[head]), dtype=bool)
        logits = {h: raw[h] for h in self.metadata.heads}
        return Predictions(self.metadata.labels, logits, probs, energy, ood, raw[EMBEDDING_OUTPUT])

    def use_ood_quantile(self, quantile: float | None) -> None:
        """Flag OOD at the model's threshold for this validation quantile (None: the trained one)."""
        self._thresholds = {h: self.metadata.ood_threshold(h, quantile) for h in self.metadata.heads}

    def self_check(self) -> None:
        """Run a dummy batch of 2 and verify output shapes and finiteness; ModelFileError otherwise."""
        size = self.input_size
        dummy = np.zeros((2, 3, size, size), dtype=np.float32)
        try:
            raw = self.predict_logits(dummy)
        except Exception as exc:  # onnxruntime errors on a broken graph / wrong input size
            raise ModelFileError(f"{self.path}: self-check inference failed: {exc}") from None
        for head in self.metadata.heads:
            expected = (2, len(self.metadata.labels[head]))
            if raw[head].shape != expected:
                raise ModelFileError(
                    f"{self.path}: {logits_output(head)} has shape {raw[head].shape}, metadata implies {expected}"
                )
        for name, value in raw.items():
            if value.shape[0] != 2 or not np.all(np.isfinite(value)):
                raise ModelFileError(f"{self.path}: self-check output '{name}' is malformed or not finite")
        log.debug("self-check passed for %s", self.path)
