"""`textile-sorter bench`: speed and accuracy of several models, FP32 and INT8, in one table.

Models are registry names (built, exported on the fly into a work folder; weights: ImageNet
when available offline, else random, which is fine for speed) and/or ``.onnx`` files. With
``int8`` every registry model also gets a static INT8 variant (:mod:`sorting.models.quantize`)
calibrated on ``calib`` (default: the first manifest's val split). ``.onnx`` files are measured as
given: quantize trained models with `textile-sorter quantize` on their own training data and
pass both files, so each is calibrated on its own domain.

Speed: onnxruntime on ``threads`` intra-op threads, warm-up runs excluded; latency p50/p99 over
``repeats`` single-image runs, throughput from the median of repeated ``batch``-image runs, and
each model's throughput relative to the fastest (:mod:`sorting.models.speed`). Accuracy and macro-F1 per head come
from :func:`sorting.models.evaluation.evaluate_onnx` (shared metrics), only for ``.onnx`` files:
registry-built models are untrained here, their accuracy would mean nothing.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from sorting.errors import ConfigError, DataError, ModelFileError
from sorting.models.evaluation import evaluate_onnx
from sorting.models.onnx_model import read_metadata
from sorting.models.quantize import QuantizeOptions, calibration_images, quantize_model
from sorting.models.speed import SpeedMeter

log = logging.getLogger(__name__)


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class EvalSet:
    """A manifest, optionally restricted to one split: written ``PATH`` or ``PATH:SPLIT``."""

    path: Path
    split: str | None = None

    @classmethod
    def parse(cls, text: str | Path, default_split: str | None = None) -> "EvalSet":
        head, sep, tail = str(text).rpartition(":")
        if sep and tail in SPLITS:
            return cls(Path(head), tail)
        return cls(Path(text), default_split)

    @property
    def label(self) -> str:
        name = self.path.parent.name if self.path.stem == "manifest" else f"{self.path.parent.name}/{self.path.stem}"
        return f"{name}[{self.split}]" if self.split else name

    def __str__(self) -> str:
        return f"{self.path}:{self.split}" if self.split else str(self.path)


@dataclass
class BenchConfig:
    """What to benchmark and how. ``quick`` shrinks every count for tests."""

    models: list[str]
    manifests: list[EvalSet] = field(default_factory=list)
    int8: bool = True
    calib: EvalSet | None = None
    int8_format: str = "qdq"
    n_calib: int = 200
    threads: int = 1
    batch: int = 16
    repeats: int = 60
    rounds: int = 3
    warmup: int = 5
    pretrained: bool = True
    work_dir: Path = Path("runs/bench-work")
    max_eval_images: int | None = None
    quick: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("bench needs at least one model (registry name or .onnx file)")
        if self.threads < 1 or self.batch < 1 or self.rounds < 1 or self.repeats < 2 * self.rounds:
            raise ConfigError("threads, batch and rounds must be >= 1 and repeats >= 2 x rounds")
        if self.quick:
            self.repeats, self.warmup, self.batch, self.rounds = min(self.repeats, 6), 1, min(self.batch, 4), 2
            self.n_calib = min(self.n_calib, 16)
            self.max_eval_images = min(self.max_eval_images or 32, 32)


@dataclass
class BenchModel:
    """One ONNX file to measure, and where it came from."""

    name: str
    variant: str  # "fp32" | "int8"
    path: Path
    weights: str  # "imagenet" | "random" (registry builds) | "file" (given .onnx)
    evaluate: bool


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, core count and library versions, recorded with every table."""
    import onnxruntime

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def count_params(path: Path) -> int:
    """Weight count of an ONNX file: elements of its initializers, quantization scales/zero-points excluded."""
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        if init.name.endswith(("_scale", "_zero_point")):
            continue
        total += int(np.prod(init.dims)) if init.dims else 1
    return total


def measure_interleaved(paths: list[Path], cfg: "BenchConfig") -> list[dict[str, float]]:
    """:func:`~sorting.models.speed.measure_speed` for several models in ``cfg.rounds`` interleaved rounds (all
    sessions kept open)."""
    meters = [SpeedMeter(p, threads=cfg.threads, batch=cfg.batch, warmup=cfg.warmup, seed=cfg.seed)
              for p in tqdm(paths, desc="loading + warm-up", unit="model", leave=False)]
    n_single = max(1, cfg.repeats // cfg.rounds)
    n_batch = max(1, max(3, cfg.repeats // 5) // cfg.rounds)
    with tqdm(total=cfg.rounds * len(meters), desc="timing", unit="model") as bar:
        for _ in range(cfg.rounds):
            for meter in meters:
                meter.sample(n_single, n_batch)
                bar.update(1)
    return [m.result() for m in meters]


def _build_registry_model(name: str, cfg: BenchConfig) -> BenchModel:
    """Build registry model ``name`` with taxonomy heads and export it into the work folder."""
    from sorting.models.export import export_model
    from sorting.models.multihead import build_multihead
    from sorting.models.onnx_model import ModelMetadata
    from sorting.taxonomy import HEADS, load_taxonomy

    taxonomy = load_taxonomy()
    labels = {h: list(taxonomy.classes(h)) for h in HEADS}
    weights = "imagenet" if cfg.pretrained else "random"
    try:
        model, preprocess = build_multihead(name, {h: len(v) for h, v in labels.items()}, pretrained=cfg.pretrained)
    except ModelFileError as exc:
        log.warning("%s: no pretrained weights offline (%s); benchmarking random weights (speed is the same)", name, exc)
        weights = "random"
        model, preprocess = build_multihead(name, {h: len(v) for h, v in labels.items()}, pretrained=False)
    path = cfg.work_dir / f"{name}-{weights}.onnx"
    metadata = ModelMetadata(model_name=name, heads=tuple(HEADS), labels=labels, preprocess=preprocess,
                             taxonomy_version=taxonomy.version)
    export_model(model, path, metadata, check_source="random")
    return BenchModel(name, "fp32", path, weights, evaluate=False)


def calibration_set(cfg: BenchConfig) -> EvalSet:
    """``cfg.calib``, else the first manifest's ``val`` split (never its test rows), else all its rows."""
    from sorting.datasets.manifest import read_manifest

    if cfg.calib is not None:
        return cfg.calib
    if not cfg.manifests:
        raise ConfigError("INT8 benchmarking needs calibration images: pass --calib MANIFEST or a --manifest")
    first = cfg.manifests[0].path
    return EvalSet(first, "val" if read_manifest(first).subset("val") else None)


def _int8_variant(fp32: BenchModel, cfg: BenchConfig, calib: EvalSet, images: list[Path]) -> BenchModel:
    path = cfg.work_dir / f"{fp32.path.stem}.int8.onnx"
    options = QuantizeOptions(format=cfg.int8_format, n_calib=cfg.n_calib)  # type: ignore[arg-type]
    quantize_model(fp32.path, path, images, options, calib_source=str(calib))
    return BenchModel(fp32.name, "int8", path, fp32.weights, fp32.evaluate)


def resolve_models(cfg: BenchConfig) -> list[BenchModel]:
    """Registry names -> FP32 ONNX files (+ INT8 variants when ``cfg.int8``); .onnx paths as given."""
    from sorting.models.registry import list_backbones

    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    known = list_backbones()
    built: list[BenchModel] = []
    files: list[BenchModel] = []
    for spec in cfg.models:
        if spec.endswith(".onnx"):
            path = Path(spec)
            meta = read_metadata(path)
            files.append(BenchModel(f"{meta.model_name} ({path.name})", "int8" if meta.quantization else "fp32",
                                    path, "file", evaluate=True))
        elif spec in known:
            built.append(_build_registry_model(spec, cfg))
        else:
            raise ConfigError(f"'{spec}' is neither an .onnx file nor a registered model ({', '.join(known)})")
    out = []
    if cfg.int8 and built:
        calib = calibration_set(cfg)
        images = calibration_images(calib.path, cfg.n_calib, seed=cfg.seed, split=calib.split)
    for model in built:
        out.append(model)
        if cfg.int8:
            out.append(_int8_variant(model, cfg, calib, images))
    return out + files


def _accuracy(model: BenchModel, data: EvalSet, cfg: BenchConfig) -> dict[str, float]:
    """``{"<head>_accuracy": .., "<head>_macro_f1": ..}`` on ``data`` ({} if no head matches)."""
    out_dir = cfg.work_dir / "eval" / f"{model.path.stem}-{data.label.replace('/', '-')}"
    target, split = data.path, data.split
    if cfg.max_eval_images:
        target, split = _subsample_manifest(data, cfg.max_eval_images, cfg.seed, out_dir), None
    try:
        report = evaluate_onnx(model.path, target, out_dir=out_dir, split=split, threads=cfg.threads,
                                progress=False)
    except DataError as exc:
        log.warning("%s on %s: no accuracy (%s)", model.name, data, exc)
        return {}
    return {f"{h}_{k}": r.metrics[k] for h, r in report.heads.items() for k in ("accuracy", "macro_f1")}


def _subsample_manifest(data: EvalSet, n: int, seed: int, out_dir: Path) -> Path:
    """A deterministic ``n``-row sample of ``data`` (quick mode), written into the work folder."""
    from sorting.datasets.manifest import read_manifest, write_manifest

    m = read_manifest(data.path)
    rows = m.rows if data.split is None else m.subset(data.split)
    idx = np.random.default_rng(seed).choice(len(rows), size=min(len(rows), n), replace=False)
    sample = [rows[i] for i in sorted(idx)]
    for row in sample:
        row.path = str(m.image_path(row).resolve())
    return write_manifest(sample, out_dir / "sample.csv")


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Measure every model; returns ``{"machine", "config", "rows"}`` (rows: one dict per model file)."""
    models = resolve_models(cfg)
    speeds = measure_interleaved([m.path for m in models], cfg)
    rows: list[dict[str, Any]] = []
    for model, speed in zip(models, speeds):
        row: dict[str, Any] = {
            "model": model.name,
            "variant": model.variant,
            "weights": model.weights,
            "params_m": count_params(model.path) / 1e6,
            "size_mb": model.path.stat().st_size / 1e6,
        }
        row.update(speed)
        if model.evaluate:
            for data in tqdm(cfg.manifests, desc=f"accuracy {model.name} {model.variant}", leave=False):
                for key, value in _accuracy(model, data, cfg).items():
                    row[f"{data.label}:{key}"] = value
        rows.append(row)
    fastest = max(r["throughput_img_s"] for r in rows)
    for r in rows:
        r["rel_throughput"] = r["throughput_img_s"] / fastest
    config = {
        "models": cfg.models, "manifests": [str(m) for m in cfg.manifests], "int8": cfg.int8,
        "calib": str(calibration_set(cfg)) if cfg.int8 and (cfg.calib or cfg.manifests) else None,
        "int8_format": cfg.int8_format, "threads": cfg.threads, "batch": cfg.batch, "repeats": cfg.repeats,
        "rounds": cfg.rounds, "warmup": cfg.warmup,
        "n_calib": cfg.n_calib, "quick": cfg.quick, "max_eval_images": cfg.max_eval_images,
    }
    return {"machine": machine_info(cfg.threads), "config": config, "rows": rows}


_COLUMNS = [
    ("model", "model", "{}"), ("variant", "variant", "{}"), ("weights", "weights", "{}"),
    ("params_m", "params (M)", "{:.2f}"), ("size_mb", "file (MB)", "{:.1f}"),
    ("latency_p50_ms", "p50 ms (b=1)", "{:.2f}"), ("latency_p99_ms", "p99 ms (b=1)", "{:.2f}"),
    ("throughput_img_s", "img/s (b={batch})", "{:.1f}"), ("rel_throughput", "vs fastest", "{:.2f}"),
]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    keys = [k for k, _, _ in _COLUMNS]
    for row in rows:
        keys += [k for k in row if k not in keys]
    return keys


def write_report(result: dict[str, Any], out_prefix: str | Path, *, command: str = "", note: str = "") -> list[Path]:
    """Write ``<prefix>.md``, ``.csv`` and ``.json``; returns the paths."""
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rows, machine, config = result["rows"], result["machine"], result["config"]
    keys = _columns(rows)
    paths = [prefix.with_suffix(".md"), prefix.with_suffix(".csv"), prefix.with_suffix(".json")]
    with paths[1].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    paths[2].write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths[0].write_text(_markdown(rows, keys, machine, config, command, note))
    return paths


def _markdown(rows: list[dict[str, Any]], keys: list[str], machine: dict, config: dict, command: str, note: str) -> str:
    titles = {k: t.format(batch=config["batch"]) for k, t, _ in _COLUMNS}
    formats = {k: f for k, _, f in _COLUMNS}

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "–"
        if key in formats:
            return formats[key].format(value)
        return f"{100 * value:.1f}" if isinstance(value, float) else str(value)

    lines = ["# Model benchmark", ""]
    if note:
        lines += [note, ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    lines += [
        f"Machine: {machine['cpu']}, {machine['cores']} cores; onnxruntime {machine['onnxruntime']} "
        f"(CPUExecutionProvider, graph optimisation ALL) on **{machine['threads']} thread(s)**.",
        f"Speed: latency over {config['repeats']} single-image runs after {config['warmup']} warm-up runs; "
        f"throughput = median of repeated batch-{config['batch']} runs; all models measured in "
        f"{config['rounds']} interleaved rounds so machine noise hits them alike. "
        f"INT8: static {config['int8_format'].upper()}, per-channel weights, percentile calibration (minmax where the histogram fails, e.g. untrained weights) on "
        f"up to {config['n_calib']} images "
        f"of {config['calib'] or '-'}.",
        f"Data (`PATH:SPLIT`): {', '.join(config['manifests']) or 'none'}. "
        "Accuracy / macro-F1 columns are percentages, only for trained `.onnx` files.",
        "",
        "| " + " | ".join(titles.get(k, k) for k in keys) + " |",
        "|" + "|".join("---" if k in ("model", "variant", "weights") else "---:" for k in keys) + "|",
    ]
    lines += ["| " + " | ".join(cell(r, k) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"
