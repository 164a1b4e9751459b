"""Spectral checkpoint -> one ONNX file (preprocessing inside), verified before it is accepted.

The check runs ``onnx.checker``, loads the file with :class:`~sorting.models.spectral_onnx.SpectralClassifier`
and compares onnxruntime with torch on real or synthetic spectra (every output within ``atol``, the same top-1),
and the graph's ``features`` output with the numpy/scipy preprocessing (:class:`SpectralPreprocessor`) of the
same spectra. A failed file is deleted.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from sorting.datasets.spectral_preprocess import SpectralPreprocessConfig, SpectralPreprocessor
from sorting.errors import ModelFileError
from sorting.models.spectral_checkpoint import load_spectral_checkpoint
from sorting.models.spectral_net import COTTON_SHARE, FEATURES, LOGITS, OOD_SCORE, SpectralModel
from sorting.models.spectral_onnx import INPUT_NAME, SpectralClassifier, SpectralMetadata

log = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-3  # logits/scores in float32 after a 196x196 matmul; features are compared relative to their scale


@dataclass
class SpectralExportCheck:
    n_spectra: int
    source: str
    max_abs_diff: dict[str, float]
    preprocess_vs_scipy: float  # max |ONNX features - numpy/scipy| / max |features|
    top1_agreement: float
    atol: float

    @property
    def passed(self) -> bool:
        return (all(d <= self.atol for d in self.max_abs_diff.values()) and self.preprocess_vs_scipy <= 1e-4
                and self.top1_agreement == 1.0)

    def summary(self) -> str:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in self.max_abs_diff.items())
        return (f"{self.n_spectra} {self.source} spectra; onnxruntime vs torch max|diff|: {diffs}; top-1 agree "
                f"{self.top1_agreement:.0%}; preprocessing vs scipy (relative) {self.preprocess_vs_scipy:.1e}")


class _Outputs(nn.Module):
    def __init__(self, model: SpectralModel, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, absorbance: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(absorbance)
        return tuple(out[n] for n in self.names)


def export_spectral_model(model: SpectralModel, metadata: SpectralMetadata, out_path: str | Path, *,
                          check_spectra: np.ndarray, check_source: str = "given", opset: int = 18,
                          atol: float = DEFAULT_ATOL) -> tuple[Path, SpectralExportCheck]:
    """Write ``out_path`` with ``metadata`` and verify it on ``check_spectra`` (N, points)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = [LOGITS, OOD_SCORE, FEATURES] + ([COTTON_SHARE] if model.composition is not None else [])
    example = torch.zeros(2, metadata.grid.points)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(_Outputs(model.eval(), names), (example,), str(raw), dynamo=False,
                                  input_names=[INPUT_NAME], output_names=names, opset_version=opset,
                                  dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]})
        except Exception as exc:  # exporter failures come in many types
            raise ModelFileError(f"ONNX export failed: {(str(exc).splitlines() or [type(exc).__name__])[0][:300]}") from None
        proto = onnx.load(str(raw))
    proto.graph.doc_string = (f"textile-sorter spectral model {metadata.model_name}: input '{INPUT_NAME}' float32 "
                              f"[batch,{metadata.grid.points}] raw absorbance on grid {metadata.grid.spec()}")
    for key, value in metadata.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out_path))
    check = verify_spectral_export(out_path, model, check_spectra, source=check_source, atol=atol)
    return out_path, check


def verify_spectral_export(path: Path, model: SpectralModel, spectra: np.ndarray, *, source: str,
                           atol: float = DEFAULT_ATOL) -> SpectralExportCheck:
    """onnx.checker + onnxruntime vs torch + the graph's preprocessing vs numpy/scipy; ModelFileError on failure."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        clf = SpectralClassifier.load(path, threads=1)
    except (onnx.checker.ValidationError, ModelFileError) as exc:
        path.unlink(missing_ok=True)
        raise ModelFileError(f"exported spectral model failed validation: {exc}") from None
    batch = np.ascontiguousarray(spectra, dtype=np.float32)
    got = dict(zip([o.name for o in clf.session.get_outputs()], clf.session.run(None, {INPUT_NAME: batch})))
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in model.eval()(torch.from_numpy(batch)).items()}
    diffs = {k: float(np.max(np.abs(ref[k] - got[k]))) for k in got if k != FEATURES}
    pre = SpectralPreprocessor(SpectralPreprocessConfig.model_validate(clf.metadata.preprocess["config"]),
                               clf.metadata.grid.points, _centre(clf.metadata.preprocess))
    expected = pre.transform(batch.astype(np.float64))
    rel = float(np.max(np.abs(expected - got[FEATURES])) / max(np.max(np.abs(expected)), 1e-12))
    agree = float(np.mean(ref[LOGITS].argmax(1) == got[LOGITS].argmax(1)))
    check = SpectralExportCheck(len(batch), source, diffs, rel, agree, atol)
    if not check.passed:
        path.unlink(missing_ok=True)
        raise ModelFileError(f"exported spectral model differs: {check.summary()}; {path} removed")
    return check


def _centre(preprocess: dict) -> np.ndarray | None:
    centre = preprocess.get("centre")
    return None if centre is None else np.asarray(centre)


def export_spectral_checkpoint(checkpoint: str | Path, out_path: str | Path, *, check_spectra: np.ndarray | None = None,
                               check_source: str = "synthetic", opset: int = 18) -> tuple[Path, SpectralExportCheck, SpectralMetadata]:
    """`textile-sorter export` for a spectral checkpoint: check on ``check_spectra`` or on smooth random spectra."""
    loaded = load_spectral_checkpoint(checkpoint)
    if check_spectra is None:
        rng = np.random.default_rng(0)
        grid = np.linspace(0, 1, loaded.metadata.grid.points)
        bands = sum(rng.uniform(0, 0.2, (16, 1)) * np.exp(-0.5 * ((grid - c) / 0.05) ** 2) for c in (0.3, 0.6, 0.9))
        check_spectra = bands + rng.uniform(0, 0.5, (16, 1)) + rng.normal(0, 0.002, (16, len(grid)))
    path, check = export_spectral_model(loaded.model, loaded.metadata, out_path, check_spectra=check_spectra,
                                        check_source=check_source, opset=opset)
    return path, check, loaded.metadata
