"""The classifier seam of the sorter: what the loop asks of a classifier, and the ONNX model behind it.

Once per frame the loop hands the classifier a :class:`CropBatch`: the crops of the items due for a
view, the frame they come from and the detection each crop was cut from. A model looks at the
pixels only; the ground-truth oracle of ``bench-sorter`` looks at where the detections are. Both,
and the fakes of the tests, implement :class:`Classifier`; :class:`ModelClassifier` wraps an
exported model (:class:`~sorting.models.onnx_model.OnnxClassifier`) and :class:`ModelWatcher`
hot-reloads one.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from sorting.models.onnx_model import OnnxClassifier
from sorting.serving.policy import PolicyConfig
from sorting.serving.segmentation import Detection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropBatch:
    """The crops of one frame's items due for a view, with where they came from."""

    frame: int  # source frame index
    t: float  # source time of the frame, seconds
    crops: Sequence[np.ndarray]  # BGR uint8, colour-corrected, neighbours painted out
    detections: Sequence[Detection]  # the detection each crop was cut from


class Scores(Protocol):
    """Per-head class probabilities (N, C), calibrated, and out-of-distribution flags (N,)."""

    @property
    def probs(self) -> Mapping[str, np.ndarray]: ...

    @property
    def ood(self) -> Mapping[str, np.ndarray]: ...


@dataclass(frozen=True)
class ClassScores:
    """A plain :class:`Scores` (for classifiers that are not an ONNX model)."""

    probs: Mapping[str, np.ndarray]
    ood: Mapping[str, np.ndarray]


class Classifier(Protocol):
    """What the sorter loop needs of a classifier."""

    @property
    def labels(self) -> Mapping[str, Sequence[str]]:
        """Label names per head, in the order of the probability columns."""
        ...

    @property
    def model_id(self) -> str:
        """Identity for the decision log and metrics."""
        ...

    def classify(self, batch: CropBatch) -> Scores:
        """Scores for every crop of ``batch``, in order."""
        ...

    def use_ood_quantile(self, quantile: float) -> None:
        """Flag OOD at the threshold of this validation quantile (the bins file's ``ood_quantile``)."""
        ...


def apply_ood_quantile(classifier: Classifier, policy: PolicyConfig) -> None:
    """The bins file's ``ood_quantile``, if set, picks the model's OOD thresholds (ConfigError if it lacks them)."""
    if policy.ood_quantile is not None:
        classifier.use_ood_quantile(policy.ood_quantile)
        log.info("OOD thresholds at the validation quantile %g (bins file)", policy.ood_quantile)


def file_digest(path: Path, length: int = 12) -> str:
    """First ``length`` hex digits of the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


class ModelClassifier:
    """An exported textile-sorter ONNX model as the loop's :class:`Classifier`.

    Its ``model_id`` is ``name:run:sha`` where ``sha`` hashes the file's bytes: two files with
    the same metadata but different weights never share an identity in the log.
    """

    def __init__(self, model: OnnxClassifier) -> None:
        self.model = model
        self.model_id = f"{model.metadata.model_name}:{model.metadata.run_id or model.path.stem}:" \
                        f"{file_digest(model.path)}"

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> ModelClassifier:
        """Load and self-check ``path`` (ModelFileError when it is missing, foreign or broken)."""
        model = OnnxClassifier.load(path, threads=threads)
        model.self_check()
        return cls(model)

    @property
    def labels(self) -> Mapping[str, Sequence[str]]:
        return self.model.metadata.labels

    def classify(self, batch: CropBatch) -> Scores:
        return self.model.predict(batch.crops)

    def use_ood_quantile(self, quantile: float) -> None:
        self.model.use_ood_quantile(quantile)


class ModelWatcher:
    """Hot reload: watches the model file's mtime; loads and self-checks a new file in a thread.

    :meth:`poll` (called by the loop each frame, cheap) returns a new, checked classifier once,
    or None. A file that fails to load or to self-check is logged and ignored; the old model
    keeps serving.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, poll_s: float = 2.0,
                 loader: Callable[[Path], Classifier] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.poll_s = poll_s
        self._loader = loader or (lambda p: ModelClassifier.load(p, threads=threads))
        self._clock = clock
        self._mtime = self._stat()
        self._next_check = clock() + poll_s
        self._ready: Classifier | None = None
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.loaded = 0  # new files loaded and self-checked
        self.rejected = 0  # new files refused (the old model kept serving)
        self.last_error = ""  # why the last refused file was refused

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def _load(self) -> None:
        try:
            candidate = self._loader(self.path)
        except Exception as exc:  # any failure keeps the old model serving
            self.last_error = str(exc)
            self.rejected += 1
            log.error("hot reload of %s rejected: %s (old model keeps serving)", self.path, exc)
            return
        self.loaded += 1
        with self._lock:
            self._ready = candidate
        log.info("hot reload: %s loaded and self-checked", self.path)

    def poll(self) -> Classifier | None:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            return ready
        now = self._clock()
        if now < self._next_check or (self._worker is not None and self._worker.is_alive()):
            return None
        self._next_check = now + self.poll_s
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return None
        self._mtime = mtime
        self._worker = threading.Thread(target=self._load, name="model-reload", daemon=True)
        self._worker.start()
        return None

    def join(self, timeout: float = 30.0) -> None:
        """Wait for a running load (tests)."""
        if self._worker is not None:
            self._worker.join(timeout)
