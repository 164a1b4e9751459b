"""A trained belt detector -> one self-describing ONNX file, checked against torch before it is accepted.

The file computes :class:`~sorting.models.belt_detector.ExportedDetector` (per cell: the centre classes'
probabilities, then the expected log width and height) on one frame ``[1, 3, H, W]`` (RGB, (x - 127) / 128),
and carries what the serving side needs to read it in its metadata (``belt_detector``: a JSON object with the
architecture, the kinds, the stride and where it was trained). The serving side
(:mod:`sorting.serving.learned_detector`) needs onnxruntime only.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from sorting.errors import ModelFileError
from sorting.models.belt_detector import (
    KINDS,
    STRIDE,
    BeltDetectorNet,
    ExportedDetector,
)

log = logging.getLogger(__name__)

METADATA_KEY = "belt_detector"
INPUT = "frame"
OUTPUT = "cells"
FORMAT_VERSION = 1
ATOL = 1e-4


def detector_metadata(net: BeltDetectorNet, **info: Any) -> dict[str, Any]:
    """What the serving side reads from the file, plus ``info`` (run, training data, metrics)."""
    return {"format": FORMAT_VERSION, "arch": net.arch.to_dict(), "kinds": list(KINDS), "stride": STRIDE,
            "input": "BGR frame resized to input_width x input_height (INTER_AREA), as RGB, (x - 127) / 128, NCHW",
            "output": "per cell: probabilities of kinds, then expected log width and log height (input pixels)",
            **info}


def export_belt_detector(net: BeltDetectorNet, out_path: str | Path, **info: Any) -> Path:
    """Write ``net`` as ONNX with its metadata at ``out_path`` and check onnxruntime against torch."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportedDetector(net.eval()).eval()
    example = torch.zeros(1, 3, net.arch.input_height, net.arch.input_width)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice (see models/export.py)
                torch.onnx.export(wrapper, (example,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
                                  opset_version=18, dynamo=False)
        except Exception as exc:  # exporter failures come in many types; report them as one model-file error
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelFileError(f"ONNX export of the belt detector failed: {first}") from None
        proto = onnx.load(str(raw))
    proto.graph.doc_string = f"textile-sorter belt detector: input '{INPUT}' float32 {list(example.shape)}"
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(detector_metadata(net, **info), default=float))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))
    _check(out_path, wrapper, example.shape)
    return out_path


def _check(path: Path, wrapper: ExportedDetector, shape: torch.Size) -> None:
    """onnxruntime and torch agree on a random frame, or the file is removed and ModelFileError raised."""
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, tuple(shape)).astype(np.float32)
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {INPUT: x})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= ATOL:
        path.unlink(missing_ok=True)
        raise ModelFileError(f"exported belt detector differs from torch by {diff:.2e} (> {ATOL:g}): not written")
    log.info("exported %s (max |diff| to torch %.1e)", path, diff)
