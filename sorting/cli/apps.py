"""Application commands: ``demo`` (the end-to-end demo) and ``bench-sorter`` (the sorter's benchmark)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sorting.cli.common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``demo``, ``bench-sorter`` and ``bench-faults``."""
    _register_demo(sub)
    _register_bench_sorter(sub)
    _register_bench_faults(sub)


def _bench_faults(args: argparse.Namespace) -> int:
    from sorting.apps.fault_soak import SoakConfig, run_fault_soak

    report = run_fault_soak(SoakConfig(line=args.line, model=args.model, out_dir=args.out, bins=args.bins,
                                       minutes=args.minutes, seed=args.seed, period_s=args.period,
                                       plc_port=args.plc_port, progress=not args.no_progress))
    print(report.markdown())
    print(f"report: {args.out / 'faults.md'}")
    return 0 if all(report.checks.values()) else 1


def _register_bench_faults(sub: argparse._SubParsersAction) -> None:
    f = add_command(
        sub, "bench-faults", "Soak the whole line at its real pace (loopback PLC, hot-reloaded model, decision log) "
        "with camera, PLC, log and model faults on a schedule; account for every garment.",
        """
  textile-sorter bench-faults --model runs/demo/model.onnx --bins serving/bins-fibre-colour.yaml   # 10 minutes
  textile-sorter bench-faults --model runs/demo/model.onnx --bins serving/bins-fibre-colour.yaml --minutes 2
Exit status 1 when a check fails (a garment lost or decided twice, a row missing, a product row neither
fired nor marked missed, metrics that disagree with the log).""",
    )
    f.add_argument("--model", type=Path, required=True, help="ONNX model (copied: the soak overwrites the copy)")
    f.add_argument("--line", type=Path, default=Path("serving/line-colour-6bin.yaml"), help="line config YAML")
    f.add_argument("--bins", type=Path, help="bins file (default: the line's)")
    f.add_argument("--minutes", type=float, default=10.0, help="length of the soak (10)")
    f.add_argument("--period", type=float, default=30.0, help="seconds per cycle of the four faults (30)")
    f.add_argument("--seed", type=int, default=31, help="seed of the synthetic belt (31)")
    f.add_argument("--plc-port", type=int, default=15020, help="loopback port of the simulated PLC (15020)")
    f.add_argument("--out", type=Path, default=Path("runs/bench-faults"), help="output folder")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=_bench_faults)


def _demo(args: argparse.Namespace) -> int:
    from sorting.apps.demo import DemoConfig, run_demo

    report = run_demo(DemoConfig(out_dir=Path(args.out), items=args.items, seed=args.seed, retrain=args.retrain,
                                 train_overrides=args.train_set, video=not args.no_video,
                                 progress=not args.no_progress, spectrometer=not args.no_spectrometer))
    print("\n".join(report.summary_lines()))
    return 0


def _register_demo(sub: argparse._SubParsersAction) -> None:
    d = add_command(
        sub, "demo", "End-to-end demo on the synthetic world: train (or reuse), export, sort a conveyor video, report.",
        """
  textile-sorter demo                      # what `make demo` runs; outputs under runs/demo/
  textile-sorter demo --items 100 --no-video
  textile-sorter demo --retrain --train-set optim.epochs=10""",
    )
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--items", type=int, default=300, help="garments on the synthetic belt (default 300)")
    d.add_argument("--seed", type=int, default=1, help="seed of the conveyor clip (default 1)")
    d.add_argument("--retrain", action="store_true", help="train a new model even if the demo has one")
    d.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of training/synthetic-quick.yaml")
    d.add_argument("--no-video", action="store_true", help="skip the annotated video")
    d.add_argument("--no-spectrometer", action="store_true", help="sort without the simulated NIR spectrometer "
                   "(by default it is on where ../shared/data/nir-spectra or a previous demo's spectral model is)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)


def _bench_sorter(args: argparse.Namespace) -> int:
    from sorting.apps.bench_sorter import BenchConfig, run_bench

    out = args.out or Path("runs") / "bench-sorter" / ("oracle" if args.model is None else Path(args.model).stem)
    bench = BenchConfig(line=args.line, out_dir=out, model=args.model, oracle=args.model is None or args.oracle,
                        items=args.items, minutes=args.minutes, threads=args.threads, seed=args.seed,
                        belt_speed_px_s=args.belt_speed, oracle_layout=args.oracle_layout, overrides=args.set,
                        console=args.console, progress=not args.no_progress, spectrometer=args.spectrometer,
                        nir_model=args.nir_model, nir_spectra=args.nir_spectra, bins=args.bins)
    r = run_bench(bench)
    s = r.score
    ratio = "n/a (no model)" if r.loop_ratio is None else f"{r.loop_ratio:.2f}x"
    print(f"{r.frames} frames in {r.wall_s:.1f} s: {r.fps:.1f} frames/s, {r.items_per_s:.2f} items/s, "
          f"latency p50 {r.latency_ms_p50:.1f} ms p99 {r.latency_ms_p99:.1f} ms (load {r.load_avg[0]:.1f})")
    print(f"loop {r.loop_ms_per_frame:.2f} ms/frame vs decode {r.decode_ms_per_frame:.2f} + classify "
          f"{r.classify_ms_per_frame:.2f}: {ratio}")
    print("stage ms/frame: " + "  ".join(f"{k} {v:.2f}" for k, v in r.stage_ms.items()))
    print(f"GT items {s.gt_items}, decisions {s.decisions}: lost {s.lost}, duplicated {s.duplicated}, "
          f"phantom {s.phantom}, shared pairs {s.shared}; non-hard correct {s.correct_rate:.1%} "
          f"({s.non_hard_correct}/{s.non_hard_total}); hard safe {s.hard_safe}/{s.hard_items}; "
          f"reject rate {s.reject_rate:.1%}")
    print(f"RSS {r.rss_mb[-1][1]:.0f} MB, growth after warm-up {r.rss_growth:+.1%} over {r.wall_s / 60:.1f} min")
    if r.nir is not None:
        g = r.nir.total()
        print(f"spectrometer: normal right bin {g.right_nir}/{g.normal} with NIR, {g.right_camera}/{g.normal} camera "
              f"alone (own spectra {r.nir.groups['own'].right_nir}/{r.nir.groups['own'].normal}, stand-in "
              f"{r.nir.groups['stand-in'].right_nir}/{r.nir.groups['stand-in'].normal}); hard safe {g.safe_nir}/{g.hard}"
              f"; assigned scans {', '.join(f'{k} {v}' for k, v in r.nir.association.items())}")
    print("targets: " + ", ".join(f"{k}: {'n/a' if ok is None else ('ok' if ok else 'MISSED')}"
                                  for k, ok in r.checks().items()))
    print(f"report: {bench.out_dir / 'bench.md'}")
    return 0


def _register_bench_sorter(sub: argparse._SubParsersAction) -> None:
    b = add_command(
        sub, "bench-sorter", "Sort a dense synthetic conveyor video offline as fast as it goes; speed, latency, "
        "loop overhead, item-by-item correctness and memory against the targets.",
        """
  textile-sorter bench-sorter                                   # GT-oracle classifier: segmentation/tracking only
  textile-sorter bench-sorter --model runs/demo/model.onnx --oracle   # model cost measured, oracle decides
  textile-sorter bench-sorter --model runs/demo/model.onnx --minutes 10   # memory-flat check
  textile-sorter bench-sorter --model runs/demo/model.onnx --bins serving/bins-fibre-colour.yaml --spectrometer sim""",
    )
    b.add_argument("--line", type=Path, default=Path("serving/line-colour-6bin.yaml"), help="line config YAML")
    b.add_argument("--model", type=Path, help="ONNX model (default: none, the GT oracle classifies)")
    b.add_argument("--oracle", action="store_true", help="with --model: decide from the GT oracle, "
                                                         "still running the model for its cost")
    b.add_argument("--oracle-layout", action="store_true", help="the oracle also answers a layout head "
                   "(touching garments are 'several'): what a perfect layout head would give")
    b.add_argument("--console", action="store_true", help="attach the operator's console (as serve --console) with a "
                   "viewer reading its camera stream: its cost on the loop")
    b.add_argument("--items", type=int, default=300, help="garments in the clip (300)")
    b.add_argument("--minutes", type=float, help="loop the clip for this long (memory check)")
    b.add_argument("--threads", type=int, default=1, help="onnxruntime threads (1)")
    b.add_argument("--seed", type=int, default=7, help="clip seed (7)")
    b.add_argument("--belt-speed", type=float, default=900.0, help="belt px/s of the clip (900: dense)")
    b.add_argument("--out", type=Path, help="output folder (default runs/bench-sorter/<model>)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a line config key")
    b.add_argument("--bins", type=Path, help="bins file (default: the line's), e.g. serving/bins-fibre-colour.yaml")
    b.add_argument("--spectrometer", choices=["sim"], help="add the synthetic world's simulated NIR spectrometer: "
                   "fibre-correct bins with and without it, and its association (models/NIR.md)")
    b.add_argument("--nir-model", type=Path, default=Path("runs/models/nir-line.onnx"),
                   help="the line's spectral model (training/nir-line.yaml; default runs/models/nir-line.onnx)")
    b.add_argument("--nir-spectra", type=Path, default=Path("runs/data/nir-line.csv"),
                   help="spectra the simulator draws from, split 'test' (default runs/data/nir-line.csv)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_bench_sorter)
