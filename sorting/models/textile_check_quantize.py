"""INT8 textile check: the ImageNet network of "is it cloth?" quantized with the project's recipe, about twice as fast.

The check runs EfficientNet-Lite0 on every garment crop of a still photo and, for the carving of clumps, on the
belt region; on one core it is the costliest stage of the real-belt segmentation (serving/REAL_BELT.md). Static INT8
(:func:`sorting.models.quantize.quantize_with_recipe`: QDQ, per-channel 7-bit weights, UINT8 activations) is
calibrated here on square crops of the line's own photos, taken at random places and sizes: no labels, the same
kind of pixels the check will see. The stem convolutions and the ImageNet classifier stay FP32: the stem as in the
classifiers' recipe, the classifier because the carving map reads its weights by name (``classifier`` in the
metadata) and a 1,000-way softmax is where the head's inputs come from.

A head fitted on the FP32 network's log-probabilities does not fit the INT8 one's: fit it again on the INT8 file
(``fit-textile-check --check-model``); the head file records which network it was fitted on.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization.shape_inference import quant_pre_process

from sorting.errors import DataError, ModelFileError
from sorting.models.quantize import QuantizeOptions, copy_metadata, float_nodes, quantize_with_recipe
from sorting.models.textile_check_format import INPUT, METADATA_KEY, OUTPUT

log = logging.getLogger(__name__)

# the crops' side as a share of the photo's shorter side: from a sock to a towel on the conveyor photos
CROP_SHARES = (0.18, 0.6)
# the recipe: as the classifiers', calibrated by min/max (the percentile calibrator's histograms of a 224 px network
# take minutes and gigabytes; min/max was what scene cross-validation measured, serving/REAL_BELT.md)
RECIPE = QuantizeOptions(calibration="minmax", float_heads=False, batch_size=8)


@dataclass(frozen=True)
class CheckQuantizeResult:
    """The INT8 file and how it compares with the FP32 one on other crops of the same photos."""

    path: Path
    calibration_crops: int
    compared_crops: int
    top1_agreement: float  # share of crops whose most likely ImageNet class is the same
    class_sum_mean_abs_diff: float  # mean |difference| of the summed textile-class probability
    ms_per_crop: tuple[float, float]  # FP32, INT8: one thread, batches of 4, fastest of 10

    def lines(self) -> list[str]:
        fp32, int8 = self.ms_per_crop
        return [f"INT8 textile check: {self.path} (calibrated on {self.calibration_crops} crops)",
                f"  against FP32 on {self.compared_crops} other crops: same top ImageNet class "
                f"{self.top1_agreement:.0%}, textile-class sum off by {self.class_sum_mean_abs_diff:.3f} on average",
                f"  one thread: {fp32:.1f} -> {int8:.1f} ms a crop ({fp32 / int8:.1f}x)",
                "  a fitted head must be fitted again on this file: fit-textile-check --check-model FILE"]


def random_crops(photos: Sequence[Path], size: int, per_photo: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two sets of ``per_photo`` square crops of each photo at random places and sizes (drawn with ``seed`` and
    ``seed + 1``; each photo read once), as the check's input (``(1, 3, size, size)`` float32, RGB, (x - 127) / 128):
    one to calibrate on, one to compare the two networks on. Unreadable photos are skipped with a warning."""
    draws = (np.random.default_rng(seed), np.random.default_rng(seed + 1))
    sets: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for path in photos:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("%s: not a readable image, left out of the calibration", path)
            continue
        height, width = image.shape[:2]
        for rng, out in zip(draws, sets):
            for _ in range(per_photo):
                side = int(rng.uniform(*CROP_SHARES) * min(height, width))
                x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
                crop = cv2.resize(image[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
                out.append(((crop[..., ::-1].astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1)[None])
    return sets


class CropReader(CalibrationDataReader):
    """Batches of :func:`random_crops` for onnxruntime's calibrator."""

    def __init__(self, crops: list[np.ndarray], batch_size: int) -> None:
        self.batches = [np.concatenate(crops[i:i + batch_size]) for i in range(0, len(crops), batch_size)]
        self._next = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._next, None)
        return None if batch is None else {INPUT: batch}

    def rewind(self) -> None:
        self._next = iter(self.batches)


def quantize_textile_check(fp32_path: str | Path, out_path: str | Path, photos: Sequence[Path], *,
                           crops_per_photo: int = 2, seed: int = 0) -> CheckQuantizeResult:
    """Quantize the FP32 textile check at ``fp32_path`` into ``out_path``, calibrated on crops of ``photos``;
    compared with the FP32 one on as many other crops of the same photos."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    source = onnx.load(str(fp32_path), load_external_data=False)
    props = {p.key: p.value for p in source.metadata_props}
    if METADATA_KEY not in props:
        raise ModelFileError(f"{fp32_path} is not a textile check (no '{METADATA_KEY}' metadata)")
    if "quantization" in props:
        raise ModelFileError(f"{fp32_path} is already quantized")
    meta = json.loads(props[METADATA_KEY])
    size = int(meta["input_size"])
    calibration, compared = random_crops(photos, size, crops_per_photo, seed)
    if len(calibration) < RECIPE.batch_size:
        raise DataError(f"{len(calibration)} calibration crops from {len(photos)} photos: give at least "
                        f"{RECIPE.batch_size // crops_per_photo} readable photos of the belt")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        classifier = set(meta.get("classifier", {}).values())
        excluded = float_nodes(model, RECIPE.float_first_convs, heads=False)
        excluded += [n.name for n in model.graph.node if classifier & set(n.input)]
        partial = out_path.with_name(out_path.name + ".partial")
        quantize_with_recipe(prepared, partial, CropReader(calibration, RECIPE.batch_size), RECIPE, "minmax",
                             excluded)
    copy_metadata(fp32_path, partial, {**asdict(RECIPE), "n_calib": len(calibration), "calib_source": "random crops",
                                       "source_model": fp32_path.name})
    names = {init.name for init in onnx.load(str(partial)).graph.initializer}
    if not classifier <= names:
        partial.unlink(missing_ok=True)
        raise ModelFileError(f"quantizing {fp32_path} renamed its classifier weights {sorted(classifier)}: not written")
    partial.replace(out_path)
    return _compare(fp32_path, out_path, np.concatenate(compared), [int(i) for i in meta["textile_indices"]],
                    len(calibration))


def _compare(fp32: Path, int8: Path, crops: np.ndarray, textile: list[int], n_calibration: int) -> CheckQuantizeResult:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    out, speed = [], []
    for path in (fp32, int8):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out.append(np.concatenate([session.run([OUTPUT], {INPUT: crops[i:i + 16]})[0]
                                   for i in range(0, len(crops), 16)]))
        batch = crops[:4]
        times = []
        for _ in range(10):
            start = time.perf_counter()
            session.run([OUTPUT], {INPUT: batch})
            times.append(time.perf_counter() - start)
        speed.append(1000.0 * min(times) / len(batch))
    a, b = out
    sums = [np.exp(x[:, textile]).sum(axis=1) for x in (a, b)]
    return CheckQuantizeResult(int8, n_calibration, len(crops), float((a.argmax(1) == b.argmax(1)).mean()),
                               float(np.abs(sums[0] - sums[1]).mean()), (speed[0], speed[1]))
