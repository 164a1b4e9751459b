"""Checkpoint -> one self-describing ONNX file, verified against torch before it is accepted.

The export uses torch's TorchScript-based exporter (``dynamo=False``) with ``dynamic_axes`` on
the batch dimension only: with torch 2.14 it is ~30x faster than the torch.export-based
exporter for these CNNs, writes a single file (the dynamo exporter writes weights to a side
``.onnx.data`` file by default) and gives identical graphs for our models. ``dynamo=True`` stays
available for architectures the legacy exporter cannot trace.

The check (:func:`verify_export`) runs ``onnx.checker`` and then onnxruntime against torch on
real preprocessed images: max |logit difference| <= ``atol`` and the same top-1 on every image.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from sorting.datasets.preprocess import PreprocessConfig, preprocess_batch
from sorting.errors import DataError, ModelFileError
from sorting.models.onnx_model import EMBEDDING_OUTPUT, INPUT_NAME, ModelMetadata, OnnxClassifier, logits_output

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4


@dataclass
class ExportCheck:
    """Result of comparing onnxruntime with torch on ``n_images`` images."""

    n_images: int
    source: str
    max_abs_diff: dict[str, float]
    top1_agreement: dict[str, float]
    atol: float

    @property
    def passed(self) -> bool:
        return all(d <= self.atol for d in self.max_abs_diff.values()) and all(
            a == 1.0 for a in self.top1_agreement.values()
        )

    def summary(self) -> str:
        parts = [
            f"{h}: max|diff| {self.max_abs_diff[h]:.2e}, top-1 agree {self.top1_agreement[h]:.1%}"
            for h in self.max_abs_diff
        ]
        return f"{self.n_images} {self.source} images; " + "; ".join(parts) + f" (tolerance {self.atol:g})"


@dataclass
class ExportResult:
    path: Path
    metadata: ModelMetadata
    check: ExportCheck
    size_bytes: int = field(default=0)


class _TupleOutputs(nn.Module):
    """Expose a multi-head model's dict output as a tuple in the ONNX output order."""

    def __init__(self, model: nn.Module, heads: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.heads = heads

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        return tuple(out[h] for h in self.heads) + (out[EMBEDDING_OUTPUT],)


def export_model(
    model: nn.Module,
    out_path: str | Path,
    metadata: ModelMetadata,
    *,
    check_batch: np.ndarray | None = None,
    check_source: str = "random",
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Export ``model`` (forward -> {head: logits, "embedding": features}) to ``out_path`` and verify it.

    ``check_batch`` is a preprocessed float32 (N, 3, S, S) batch for the torch/onnxruntime comparison
    (random normal if None). Raises ModelFileError (after removing the file) if the check fails.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = metadata.preprocess.input_size
    model = model.eval()
    wrapper = _TupleOutputs(model, metadata.heads).eval()
    output_names = [logits_output(h) for h in metadata.heads] + [EMBEDDING_OUTPUT]
    example = torch.zeros(2, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        _torch_export(wrapper, example, raw_path, output_names, opset=opset, dynamo=dynamo)
        proto = onnx.load(str(raw_path), load_external_data=True)
    proto.graph.doc_string = f"textile-sorter {metadata.model_name}: input '{INPUT_NAME}' float32 [batch,3,{size},{size}]"
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out_path))
    metadata = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(out_path))
    if check_batch is None:
        check_batch = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    check = verify_export(out_path, model, check_batch, source=check_source, atol=atol)
    log.info("exported %s: %s", out_path, check.summary())
    return ExportResult(out_path, metadata, check, out_path.stat().st_size)


def _torch_export(
    wrapper: nn.Module, example: torch.Tensor, path: Path, output_names: list[str], *, opset: int, dynamo: bool
) -> None:
    kwargs: dict = {"input_names": [INPUT_NAME], "output_names": output_names, "opset_version": opset}
    if dynamo:
        kwargs["dynamic_shapes"] = {"image": {0: torch.export.Dim("batch", min=1, max=4096)}}
        kwargs["external_data"] = False
    else:
        kwargs["dynamic_axes"] = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; we choose it on purpose
            torch.onnx.export(wrapper, (example,), str(path), dynamo=dynamo, **kwargs)
    except Exception as exc:  # exporter failures come in many types; report them as one model-file error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelFileError(f"ONNX export failed ({'dynamo' if dynamo else 'torchscript'} exporter): {first}") from None


def verify_export(
    onnx_path: str | Path, model: nn.Module, batch: np.ndarray, *, source: str = "given", atol: float = DEFAULT_ATOL
) -> ExportCheck:
    """onnx.checker + onnxruntime vs torch on ``batch``; ModelFileError with the figures on mismatch.

    The failed file is deleted so a broken model is never left next to good ones.
    """
    onnx_path = Path(onnx_path)
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
        classifier = OnnxClassifier.load(onnx_path, threads=1)
        classifier.self_check()
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ModelFileError) as exc:
        onnx_path.unlink(missing_ok=True)
        raise ModelFileError(f"exported model failed validation: {exc}") from None
    with torch.no_grad():
        reference = model.eval()(torch.from_numpy(batch))
    got = classifier.predict_logits(batch)
    diffs, agree = {}, {}
    for head in classifier.metadata.heads:
        ref = reference[head].numpy()
        diffs[head] = float(np.max(np.abs(ref - got[head]))) if len(ref) else 0.0
        agree[head] = float(np.mean(ref.argmax(1) == got[head].argmax(1))) if len(ref) else 1.0
    check = ExportCheck(len(batch), source, diffs, agree, atol)
    if not check.passed:
        onnx_path.unlink(missing_ok=True)
        raise ModelFileError(f"ONNX output differs from torch: {check.summary()}; {onnx_path} removed")
    return check


def check_images_from_manifest(manifest_path: str | Path, preprocess: PreprocessConfig, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` images (deterministic sample) of a manifest, preprocessed into an (n, 3, S, S) batch."""
    from sorting.datasets.images import load_image
    from sorting.datasets.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    if not manifest.rows:
        raise DataError(f"{manifest_path}: manifest has no rows to check the export with")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(manifest.rows), size=min(n, len(manifest.rows)), replace=False)
    images = [load_image(manifest.image_path(manifest.rows[i])) for i in sorted(idx)]
    return preprocess_batch(images, preprocess, input_order="BGR")


def synthetic_check_images(preprocess: PreprocessConfig, n: int, *, seed: int = 0) -> tuple[np.ndarray, str]:
    """Synthetic crops from :mod:`sorting.datasets.synth` (random normal if that is unavailable)."""
    try:
        from sorting.datasets.synth.crops import make_crop_dataset
    except ImportError:
        log.warning("sorting.datasets.synth.make_crop_dataset not available: checking export on random inputs")
        rng = np.random.default_rng(seed)
        return rng.standard_normal((n, 3, preprocess.input_size, preprocess.input_size)).astype(np.float32), "random"
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_crop_dataset(Path(tmp) / "synth", n=max(n, 24), size=min(128, preprocess.input_size), seed=seed,
                                     progress=False)
        return check_images_from_manifest(manifest, preprocess, n, seed=seed), "synthetic"


def export_checkpoint(
    checkpoint_path: str | Path,
    out_path: str | Path,
    *,
    check_manifest: str | Path | None = None,
    n_check: int = 16,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """`textile-sorter export`: load a training checkpoint, export it with metadata, verify it."""
    from sorting.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint_path)
    metadata = ModelMetadata(
        model_name=ckpt.model_name,
        heads=tuple(ckpt.heads),
        labels=ckpt.labels,
        preprocess=ckpt.preprocess,
        taxonomy_version=ckpt.taxonomy_version,
        temperature=ckpt.temperature,
        ood=ckpt.ood,
        run_id=ckpt.run_id,
        dataset_hash=ckpt.dataset_hash,
        metrics=ckpt.metrics,
    )
    if check_manifest is not None:
        batch, source = check_images_from_manifest(check_manifest, ckpt.preprocess, n_check), "manifest"
    else:
        batch, source = synthetic_check_images(ckpt.preprocess, n_check)
    return export_model(
        ckpt.model, out_path, metadata, check_batch=batch, check_source=source, opset=opset, dynamo=dynamo, atol=atol
    )
