"""Commands `export`, `quantize` and `bench`: checkpoint -> ONNX -> INT8, and the model benchmark."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from pathlib import Path

from sorting.cli.common import add_command, add_no_track, track_onnx

EXPORT_HELP = "Export a training checkpoint to one self-describing ONNX file (checked against torch)."
EXPORT_EXAMPLES = """
  textile-sorter export runs/train/best.pt -o models/sorter.onnx
  textile-sorter export best.pt -o sorter.onnx --check-manifest data/synth/manifest.csv
  textile-sorter export runs/train/nir-linear-<time>/best.pt -o models/nir.onnx --check-manifest runs/data/nir-swatches.csv
"""

QUANTIZE_HELP = "Static INT8 quantization (QDQ, per-channel) of an exported model, calibrated on a manifest."
QUANTIZE_EXAMPLES = """
  textile-sorter quantize sorter.onnx --calib data/synth/manifest.csv -o sorter.int8.onnx
  textile-sorter quantize sorter.onnx --calib train.csv --calib-split val --eval test.csv --eval-split test -o s.int8.onnx
"""

BENCH_HELP = "Benchmark models (registry names and/or .onnx files, FP32 and INT8): accuracy, size, latency, throughput."
BENCH_EXAMPLES = """
  textile-sorter bench mobilenet_v3_small resnet18 --manifest synth/manifest.csv:test --calib synth/manifest.csv:val -o runs/bench/table
  textile-sorter bench sorter.onnx --manifest synth/manifest.csv:test --manifest catalogue/manifest.csv:val --threads 2
  textile-sorter bench sorter.onnx sorter.int8.onnx --manifest test.csv:test -o runs/bench/mine
  textile-sorter bench tiny --manifest data/synth/manifest.csv --quick -o /tmp/bench
  textile-sorter bench models/nir.onnx --manifest runs/data/nir-single.csv -o runs/bench/nir   # spectral models
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Register this module's subcommands."""
    _register_export(sub)
    _register_quantize(sub)
    _register_bench(sub)


def _register_export(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", EXPORT_HELP, EXPORT_EXAMPLES)
    p.add_argument("checkpoint", type=Path, help="checkpoint (.pt) written by `textile-sorter train`")
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--check-manifest", type=Path, help="manifest whose images verify the export (default: synthetic)")
    p.add_argument("--n-check", type=int, default=16, help="images used for the torch/onnxruntime check (16)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (18)")
    p.add_argument("--dynamo", action="store_true", help="use torch's torch.export-based exporter (slower)")
    add_no_track(p)
    p.set_defaults(func=_export_command)


def _tracked(write_onnx: Callable[[argparse.Namespace], Path]) -> Callable[[argparse.Namespace], int]:
    """A command that writes an ONNX file, which then goes to MLflow unless ``--no-track``."""

    def command(args: argparse.Namespace) -> int:
        path = write_onnx(args)
        if args.track:
            track_onnx(path)
        return 0

    return command


def _export_command(args: argparse.Namespace) -> int:
    """``export``: a spectral checkpoint goes to the spectral exporter (it logs its own model)."""
    from sorting.models.spectral_checkpoint import is_spectral_checkpoint

    if is_spectral_checkpoint(args.checkpoint):  # spectral dispatch
        from sorting.cli import spectral

        return spectral.export(args)
    return _tracked(_export)(args)


def _export(args: argparse.Namespace) -> Path:
    from sorting.models.export import export_checkpoint

    result = export_checkpoint(
        args.checkpoint, args.output, check_manifest=args.check_manifest, n_check=args.n_check,
        opset=args.opset, dynamo=args.dynamo,
    )
    meta = result.metadata
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB): {meta.model_name}, heads "
          + ", ".join(f"{h} ({len(meta.labels[h])} classes)" for h in meta.heads))
    print(f"check passed: {result.check.summary()}")
    return result.path


def _register_quantize(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "quantize", QUANTIZE_HELP, QUANTIZE_EXAMPLES)
    p.add_argument("model", type=Path, help="FP32 ONNX model from `textile-sorter export`")
    p.add_argument("--calib", type=Path, required=True, help="manifest of calibration images")
    p.add_argument("--calib-split", help="use only this split of --calib (e.g. val)")
    p.add_argument("-o", "--output", type=Path, required=True, help="INT8 ONNX file to write")
    p.add_argument("--n-calib", type=int, default=300, help="calibration images (300)")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="percentile",
                   help="activation range calibration (percentile: robust to outlier activations)")
    p.add_argument("--format", choices=["qdq", "qoperator"], default="qdq", help="quantized graph format (qdq)")
    p.add_argument("--no-reduce-range", dest="reduce_range", action="store_false",
                   help="full 8-bit weights (default 7-bit: avoids u8s8 saturation on CPUs without VNNI)")
    p.add_argument("--float-first-convs", type=int, default=3, help="leading Conv layers kept in FP32 (3)")
    p.add_argument("--quantize-heads", dest="float_heads", action="store_false",
                   help="quantize the classifier heads too (default: kept in FP32)")
    p.add_argument("--eval", type=Path, help="held-out manifest: report accuracy before/after and the speed-up")
    p.add_argument("--eval-split", help="split of --eval to score (default: all rows)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the speed comparison (1)")
    add_no_track(p)
    p.set_defaults(func=_tracked(_quantize))


def _quantize(args: argparse.Namespace) -> Path:
    from sorting.models.quantize import QuantizeOptions, calibration_images, compare_models, quantize_model

    options = QuantizeOptions(format=args.format, calibration=args.method, reduce_range=args.reduce_range,
                              float_first_convs=args.float_first_convs, float_heads=args.float_heads,
                              n_calib=args.n_calib)
    images = calibration_images(args.calib, args.n_calib, split=args.calib_split)
    result = quantize_model(args.model, args.output, images, options, calib_source=str(args.calib))
    print(f"wrote {result.path}: {result.int8_bytes / 1e6:.1f} MB (FP32 {result.fp32_bytes / 1e6:.1f} MB), "
          f"calibrated on {result.n_calib_images} images ({args.format}, per-channel, {args.method})")
    if args.eval:
        cmp = compare_models(args.model, args.output, args.eval, split=args.eval_split, threads=args.threads)
        for line in cmp.lines():
            print(line)
    return result.path


def _register_bench(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "bench", BENCH_HELP, BENCH_EXAMPLES)
    p.add_argument("models", nargs="+", help="registry names (e.g. mobilenet_v3_small) and/or .onnx files")
    p.add_argument("--manifest", action="append", default=[], metavar="PATH[:SPLIT]",
                   help="evaluation manifest, optionally one split of it (repeatable)")
    p.add_argument("--split", help="split used for every --manifest given without one (default: all rows)")
    p.add_argument("--calib", metavar="PATH[:SPLIT]",
                   help="INT8 calibration images (default: the first --manifest's val split, else all its rows)")
    p.add_argument("--no-int8", dest="int8", action="store_false",
                   help="skip the INT8 variants of registry models (.onnx files are always measured as given)")
    p.add_argument("--n-calib", type=int, default=200, help="INT8 calibration images (200)")
    p.add_argument("--int8-format", choices=["qdq", "qoperator"], default="qdq", help="INT8 graph format (qdq)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (1)")
    p.add_argument("--batch", type=int, default=16, help="batch size for the throughput figure (16)")
    p.add_argument("--repeats", type=int, default=60, help="timed single-image runs per model (60)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds over all models (3)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="build registry models with random weights")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench-work"), help="exported/quantized models go here")
    p.add_argument("--note", default="", help="text placed above the Markdown table")
    p.add_argument("--quick", action="store_true", help="few repeats and images (tests, smoke runs)")
    p.add_argument("-o", "--output", type=Path, default=Path("runs/bench/benchmark"),
                   help="output prefix: writes PREFIX.md, PREFIX.csv, PREFIX.json")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from sorting.cli import spectral

    if all(spectral.is_spectral_onnx(m) for m in args.models):  # spectral dispatch
        return spectral.bench(args)
    from sorting.models.bench import BenchConfig, EvalSet, run_benchmark, write_report

    cfg = BenchConfig(
        models=args.models, manifests=[EvalSet.parse(m, args.split) for m in args.manifest], int8=args.int8,
        calib=EvalSet.parse(args.calib) if args.calib else None, int8_format=args.int8_format,
        n_calib=args.n_calib, threads=args.threads, batch=args.batch, repeats=args.repeats, rounds=args.rounds,
        pretrained=args.pretrained, work_dir=args.work_dir, quick=args.quick,
    )
    result = run_benchmark(cfg)
    paths = write_report(result, args.output, command=_bench_command(args), note=args.note)
    for row in result["rows"]:
        print(f"{row['model']:<40} {row['variant']:<5} p50 {row['latency_p50_ms']:7.2f} ms  "
              f"{row['throughput_img_s']:8.1f} img/s  x{row['rel_throughput']:.2f}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _bench_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this table (recorded in the Markdown)."""
    parts = ["textile-sorter", "bench", *args.models]
    parts += [a for m in args.manifest for a in ("--manifest", str(m))]
    options = [("--split", args.split), ("--calib", args.calib), ("--threads", args.threads),
               ("--batch", args.batch), ("--repeats", args.repeats), ("--rounds", args.rounds), ("--n-calib", args.n_calib),
               ("--int8-format", args.int8_format),
               ("-o", args.output)]
    parts += [a for flag, value in options if value is not None for a in (flag, str(value))]
    parts += [flag for flag, on in (("--no-int8", not args.int8), ("--no-pretrained", not args.pretrained),
                                    ("--quick", args.quick)) if on]
    return " ".join(shlex.quote(p) for p in parts)
