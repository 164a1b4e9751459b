"""Evaluate a checkpoint (.pt) or an exported ONNX model on a manifest (``textile-sorter evaluate``).

The evaluation itself is :mod:`sorting.models.evaluation` (numpy metrics, no torch); this module adds the
checkpoint side: :class:`TorchPredictor` runs a training checkpoint behind the same
:class:`~sorting.models.evaluation.Predictor` interface as the ONNX model, so both are scored by one code path
and write the same files.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sorting.errors import ModelFileError
from sorting.models.evaluation import (
    EvaluationReport,
    OnnxPredictor,
    Predictor,
    check_batch_size,
    evaluate_predictor,
    model_info,
)
from sorting.taxonomy import HEADS

ONNX_SUFFIXES = (".onnx",)


class TorchPredictor:
    """A training checkpoint (``sorting.models.checkpoint.load_checkpoint``) on CPU."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        from sorting.models.checkpoint import load_checkpoint  # torch: only when a checkpoint is evaluated

        self._threads = threads
        ckpt = load_checkpoint(path)
        self._model = ckpt.model.eval()
        self.info = model_info(ckpt, tuple(h for h in HEADS if h in ckpt.labels), "checkpoint")

    def forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with _torch_threads(self._threads), torch.inference_mode():
            out = self._model(torch.from_numpy(np.ascontiguousarray(batch)))
        return {h: out[h].float().cpu().numpy() for h in self.info.heads}


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, restoring the previous setting afterwards."""
    import torch

    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_predictor(model_path: str | Path, *, threads: int | None = None) -> Predictor:
    """Open a checkpoint or an ONNX file (by suffix) as a :class:`Predictor`."""
    path = Path(model_path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if path.suffix.lower() in ONNX_SUFFIXES:
        return OnnxPredictor(path, threads=threads)
    return TorchPredictor(path, threads=threads)


def evaluate_model(
    model_path: str | Path,
    manifest_path: str | Path,
    *,
    out_dir: str | Path,
    split: str | None = None,
    tta: bool = False,
    batch_size: int = 32,
    threads: int | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Score a checkpoint or ONNX model on the rows of a manifest (optionally one split)."""
    check_batch_size(batch_size)
    predictor = load_predictor(model_path, threads=threads)
    return evaluate_predictor(predictor, manifest_path, out_dir=out_dir, split=split, tta=tta,
                              batch_size=batch_size, progress=progress, model_path=str(model_path))
