"""Static INT8 post-training quantization of an exported model with onnxruntime's tools.

Recipe (default): ``quant_pre_process`` (shape inference + graph cleanup), then ``quantize_static``
in QDQ format with per-channel symmetric INT8 weights and asymmetric UINT8 activations,
calibrated with MinMax on a few hundred images preprocessed with the model's *own* metadata.

Why these choices (measured on the 2-core AVX2 EPYC box, see models/BENCHMARKS.md):
- UINT8 activations x INT8 weights is what onnxruntime's x86 kernels run fastest (DQ->Conv->Q
  fuses into QLinearConv/QGemm); symmetric INT8 activations ran ~2x slower here.
- QDQ had equal or higher batch throughput than QOperator on all four backbones, so it is the
  default; ``format="qoperator"`` stays selectable.
- ``reduce_range`` (7-bit weights) is on by default: without VNNI, u8 x s8 products are summed
  in int16 and can saturate; it improved INT8 top-1 on the EfficientNet-Lite0 probe.
- The stem (first 3 convs) and the classifier heads stay FP32 (:func:`float_nodes`).
Dynamic quantization is deliberately not offered: it leaves convolution activations in float
and is known to collapse CNN accuracy.

The INT8 file keeps every metadata_prop of the FP32 model plus ``quantization`` (the recipe),
so serving loads it exactly like the FP32 one.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from sorting.datasets.preprocess import PreprocessConfig, preprocess_batch
from sorting.errors import DataError, ModelFileError
from sorting.models.evaluation import evaluate_onnx
from sorting.models.onnx_model import INPUT_NAME, OnnxClassifier, read_metadata
from sorting.models.speed import measure_speed

log = logging.getLogger(__name__)

_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize. Defaults are the measured best speed/accuracy trade-off on x86 CPUs."""

    format: Literal["qdq", "qoperator"] = "qdq"
    calibration: Literal["minmax", "percentile", "entropy"] = "percentile"  # 99.999th percentile: on the catalogue colour model -0.8 vs -1.9 points for minmax
    per_channel: bool = True
    reduce_range: bool = True
    float_first_convs: int = 3
    float_heads: bool = True
    n_calib: int = 300
    batch_size: int = 16
    seed: int = 0


@dataclass
class QuantizeResult:
    path: Path
    n_calib_images: int
    fp32_bytes: int
    int8_bytes: int


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed batches of calibration images to onnxruntime's calibrator."""

    def __init__(self, image_paths: Sequence[Path], preprocess: PreprocessConfig, batch_size: int) -> None:
        self._paths = list(image_paths)
        self._preprocess = preprocess
        self._batch_size = batch_size
        self._batches = self._iterate()
        self._bar = tqdm(total=len(self._paths), desc="calibrating", unit="img", leave=False)

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        from sorting.datasets.images import load_image

        for start in range(0, len(self._paths), self._batch_size):
            chunk = self._paths[start : start + self._batch_size]
            batch = preprocess_batch([load_image(p) for p in chunk], self._preprocess, input_order="BGR")
            self._bar.update(len(chunk))
            yield {INPUT_NAME: batch}

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            self._bar.close()
        return batch

    def rewind(self) -> None:
        self._batches = self._iterate()


def calibration_images(manifest_path: str | Path, n: int, *, seed: int = 0, split: str | None = None) -> list[Path]:
    """A deterministic sample of ``n`` image paths from a manifest (optionally one split)."""
    from sorting.datasets.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    rows = manifest.rows if split is None else manifest.subset(split)
    if not rows:
        raise DataError(f"{manifest_path}: no rows{f' in split {split!r}' if split else ''} for calibration")
    idx = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [manifest.image_path(rows[i]) for i in sorted(idx)]


def quantize_model(
    fp32_path: str | Path,
    out_path: str | Path,
    calib_images: Sequence[Path],
    options: QuantizeOptions = QuantizeOptions(),
    *,
    calib_source: str = "",
) -> QuantizeResult:
    """Static INT8 quantization of ``fp32_path`` into ``out_path``; metadata copied, result self-checked."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    metadata = read_metadata(fp32_path)
    if metadata.quantization is not None:
        raise ModelFileError(f"{fp32_path} is already quantized ({metadata.quantization.get('format')})")
    if not calib_images:
        raise DataError("no calibration images given")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if len(calib_images) > options.batch_size:  # equal batches: the histogram calibrators need them
        calib_images = list(calib_images)[: len(calib_images) - len(calib_images) % options.batch_size]
    reader = ImageCalibrationReader(calib_images, metadata.preprocess, options.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            excluded = float_nodes(onnx.load(str(prepared)), options.float_first_convs, options.float_heads)
            try:
                quantize_with_recipe(prepared, out_path, reader, options, options.calibration, excluded)
            except ValueError as exc:
                if options.calibration == "minmax":
                    raise
                # Histogram calibrators fail on degenerate activation ranges (e.g. untrained weights).
                log.warning("%s calibration failed (%s); falling back to minmax", options.calibration, exc)
                reader.rewind()
                options = replace(options, calibration="minmax")
                quantize_with_recipe(prepared, out_path, reader, options, "minmax", excluded)
        except (DataError, ModelFileError):
            raise
        except Exception as exc:  # onnxruntime's quantizer raises many types for graphs it cannot handle
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelFileError(f"quantization of {fp32_path} failed: {first}") from None
    recipe = {**asdict(options), "n_calib": len(calib_images), "calib_source": calib_source, "source_model": fp32_path.name}
    copy_metadata(fp32_path, out_path, recipe)
    classifier = OnnxClassifier.load(out_path, threads=1)
    classifier.self_check()
    return QuantizeResult(out_path, len(calib_images), fp32_path.stat().st_size, out_path.stat().st_size)


COLOUR_FEATURE_SCOPE = "/backbone/colour/"  # ONNX node-name scope of ColourAwareBackbone.colour


def quantize_with_recipe(prepared: Path, out_path: Path, reader: CalibrationDataReader, options: QuantizeOptions,
                         method: str, excluded: list[str]) -> None:
    """onnxruntime's ``quantize_static`` with the recipe of ``options`` (the nodes ``excluded`` stay FP32)."""
    with _quiet_root_logger():
        quantize_static(
            str(prepared),
            str(out_path),
            reader,
            quant_format=_FORMATS[options.format],
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_METHODS[method],
            nodes_to_exclude=excluded,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )


def float_nodes(model: onnx.ModelProto, first_convs: int, heads: bool) -> list[str]:
    """Nodes left in FP32: the first ``first_convs`` Conv nodes and (``heads``) the classifier heads.

    The stem block sees raw normalised pixels and its errors propagate through the whole
    network; the heads are tiny (nothing to gain) and their biases make onnxruntime inflate
    the weight scale. On an EfficientNet-Lite0 linear probe (synthetic test set) keeping the
    first 3 convs and the heads in float moved INT8 fibre top-1 from -23 to -2 points vs FP32;
    the last conv made no difference (see models/BENCHMARKS.md).

    The hand-made colour statistics of ``ColourAwareBackbone`` (module ``colour``: Lab conversion,
    soft histograms) always stay FP32: a histogram bin has no useful int8 range, and quantizing
    that branch cost 9.5 points of colour top-1 on the catalogue validation split.
    """
    nodes = list(model.graph.node)
    names = [n.name for n in nodes if n.op_type == "Conv"][: max(0, first_convs)]
    names += [n.name for n in nodes if COLOUR_FEATURE_SCOPE in n.name]
    if heads:
        names += [n.name for n in nodes if any(o.endswith("_logits") for o in n.output)]
    return names


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs per-tensor INFO lines on the root logger; keep them out of the CLI."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(previous)


def copy_metadata(src: Path, dst: Path, recipe: dict) -> None:
    """Copy the FP32 model's metadata_props (+ ``quantization``) onto the quantized model."""
    import json

    source = onnx.load(str(src), load_external_data=False)
    target = onnx.load(str(dst))
    del target.metadata_props[:]
    for prop in source.metadata_props:
        if prop.key != "quantization":
            target.metadata_props.add(key=prop.key, value=prop.value)
    target.metadata_props.add(key="quantization", value=json.dumps(recipe, sort_keys=True))
    onnx.save(target, str(dst))


@dataclass
class Comparison:
    """FP32 vs INT8 on a held-out manifest: accuracy per head and throughput."""

    accuracy: dict[str, tuple[float, float]]  # head -> (fp32, int8)
    throughput: tuple[float, float]  # img/s (fp32, int8)
    threads: int

    @property
    def speedup(self) -> float:
        return self.throughput[1] / self.throughput[0]

    def lines(self) -> list[str]:
        out = [f"{h} top-1: FP32 {a:.1%} -> INT8 {b:.1%} ({100 * (b - a):+.1f} points)"
               for h, (a, b) in self.accuracy.items()]
        out.append(f"throughput ({self.threads} thread(s), batch 16): FP32 {self.throughput[0]:.1f} img/s -> "
                   f"INT8 {self.throughput[1]:.1f} img/s (x{self.speedup:.2f})")
        return out


def compare_models(
    fp32_path: str | Path, int8_path: str | Path, manifest: str | Path, *, split: str | None = None, threads: int = 1
) -> Comparison:
    """Score both models on ``manifest`` (shared evaluation code) and time them on the same settings."""
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate((fp32_path, int8_path)):
            reports.append(evaluate_onnx(path, manifest, out_dir=Path(tmp) / str(i), split=split, threads=threads))
    accuracy = {h: (reports[0].heads[h].metrics["accuracy"], reports[1].heads[h].metrics["accuracy"])
                for h in reports[0].heads if h in reports[1].heads}
    speeds = [measure_speed(Path(p), threads=threads, batch=16, repeats=20, warmup=3)["throughput_img_s"]
              for p in (fp32_path, int8_path)]
    return Comparison(accuracy, (speeds[0], speeds[1]), threads)
