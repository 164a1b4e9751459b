"""Sorter commands: ``serve``, ``calibrate``, ``evaluate-detection`` (with ``train-belt-detector``) and ``pulse``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sorting.cli import belt_detector
from sorting.cli.common import add_command
from sorting.cli.console import add_console_flags, start_line_console
from sorting.paths import check_output_path
from sorting.serving.colour_calibration import calibrate_line
from sorting.serving.line_config import check_outputs, load_line_config
from sorting.serving.runner import serve_line


def _serve(args: argparse.Namespace) -> int:
    cfg = load_line_config(args.line, args.set)
    if args.source:
        cfg.camera.source = args.source
    if args.model:
        cfg.model.path = Path(args.model).resolve()
    if args.realtime:
        cfg.camera.realtime = True
    check_outputs(cfg)
    if args.video_out:
        check_output_path(args.video_out, "--video-out")
    console = start_line_console(args, cfg)
    try:
        summary = serve_line(cfg, max_frames=args.max_frames, video_out=args.video_out, progress=not args.no_progress,
                             feed=console[1] if console else None)
    finally:
        if console is not None:
            console[0].close()
    log = summary.log
    print(f"frames {summary.frames}  items {summary.items}  {summary.fps:.1f} frames/s  ({summary.wall_s:.1f} s)")
    print("per bin: " + ", ".join(f"{k}={v}" for k, v in dict(log.get("per_bin", {})).items()))
    print("reasons: " + ", ".join(f"{k}={v}" for k, v in dict(log.get("per_reason", {})).items()))
    if "reject_rate" in log:
        print(f"reject rate {float(log['reject_rate']):.1%}  missed firings {log.get('missed', 0)}")
    if "latency_ms_p50" in log:
        print(f"decision latency p50 {float(log['latency_ms_p50']):.1f} ms  p99 {float(log['latency_ms_p99']):.1f} ms")
    print("stage ms/frame: " + "  ".join(f"{k} {v:.2f}" for k, v in summary.stage_ms.items()))
    if summary.no_frame_events or summary.camera_reconnects or summary.dropped_frames:
        print(f"camera: {summary.no_frame_events} no-frame waits, {summary.dropped_frames} dropped frames, "
              f"{summary.camera_reconnects} reconnects")
    if summary.unreadable_frames:
        print(f"WARNING: {summary.unreadable_frames} frame(s) of the source were skipped: not decoded (a damaged "
              "file?) or not usable (black, saturated, another size); see the warnings above")
    if summary.video is not None:
        print(f"annotated video: {summary.video}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    if args.belt:
        return _calibrate_belt(args)
    if args.template or args.camera or args.overlay or args.scene:
        print("--template, --camera, --overlay and --scene go with --belt", file=sys.stderr)
        return 2
    gains = calibrate_line(args.line, source=args.source, n_frames=args.frames or 30)
    wb = ", ".join(f"{g:.3f}" for g in gains.white_balance)
    print(f"patch BGR {gains.patch_bgr} over {gains.n_frames} usable frames -> white balance (B,G,R) [{wb}], "
          f"exposure {gains.exposure:.3f}; written to {args.line}")
    return 0


def _calibrate_belt(args: argparse.Namespace) -> int:
    from sorting.serving.belt_calibration import calibrate_belt

    setup = calibrate_belt(args.line, source=args.source, n_frames=args.frames or 8, template=args.template,
                           camera=args.camera, overlay_path=args.overlay, scene=args.scene)
    print(setup.summary())
    print(f"segmentation written to {args.line} (previous file: {args.line}.bak if there was one); "
          f"check the belt region and what was found in {setup.overlay_path}")
    return 0


def _evaluate_detection(args: argparse.Namespace) -> int:
    from sorting.apps.detection_bench import (
        DetectionBenchConfig,
        run_detection_bench,
        summary_lines,
    )

    source = Path(args.source)
    out = args.out or Path("runs") / "evaluate-detection" / Path(args.line).stem
    cfg = DetectionBenchConfig(line=Path(args.line), source=source, boxes=args.boxes, ground_truth=args.ground_truth,
                               extra_labels=args.labels, subset=args.subset, out_dir=out, overrides=args.set,
                               one_by_one=args.one_by_one, every=args.every, max_overlays=args.overlays,
                               threads=args.threads, repeat=args.repeat, group_size=args.group_size,
                               progress=not args.no_progress)
    report = run_detection_bench(cfg)
    for line in report.problems + report.skipped:
        print(f"not used: {line}")
    print("\n".join(summary_lines(report)))
    print(f"summary: {out / 'summary.md'}, overlays: {out / 'overlays'}")
    return 0


def _pulse(args: argparse.Namespace) -> int:
    from sorting.serving.commissioning import pulse_bins

    cfg = load_line_config(args.line, args.set)
    check_outputs(cfg)
    act = cfg.actuator
    target = f"the PLC at {act.host}:{act.port}" if act.kind == "modbus" else f"the {act.kind} actuator"
    if act.kind == "simulated":
        print("actuator.kind is 'simulated': nothing physical will move (use --set actuator.kind=modbus)")
    elif not args.yes:
        if not sys.stdin.isatty():
            print(f"refusing to fire the ejectors through {target} without --yes", file=sys.stderr)
            return 2
        answer = input(f"Fire the ejectors of {'bins ' + str(args.bin) if args.bin else 'every bin'} through "
                       f"{target}? Keep hands off the belt. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing fired")
            return 1
    checks = pulse_bins(cfg, args.bin, pulse_ms=args.pulse_ms, interval_s=args.interval)
    for c in checks:
        status = "sent" if c.sent else f"MISSED ({c.reason})"
        print(f"bin {c.bin:2d} {c.name:<20} address {c.address:3d}  {c.pulse_ms:.0f} ms  {status}")
    failed = sum(not c.sent for c in checks)
    print(f"{len(checks) - failed}/{len(checks)} pulses sent through {target}")
    return 1 if failed else 0


def _register_evaluate_detection(sub: argparse._SubParsersAction) -> None:
    e = add_command(
        sub, "evaluate-detection", "Score the line's segmentation, run as serve runs it, against labelled boxes: "
        "recall/precision at IoU 0.5 and 0.3, merged, split, off the belt, non-garments, ms per frame.",
        """
  textile-sorter evaluate-detection --line serving/line-real-belt.yaml ../shared/data/conveyor-photos/images \\
      --boxes ../shared/data/conveyor-photos/boxes.csv --labels benchmarks/belt_non_garment_boxes.csv
  textile-sorter evaluate-detection --line serving/line-real-belt.yaml PHOTOS --boxes boxes.csv \\
      --subset benchmarks/belt_split.json:heldout --repeat 5
  textile-sorter evaluate-detection --line serving/line-colour-6bin.yaml runs/clip/conveyor.mp4 \\
      --ground-truth runs/clip/conveyor_gt.json --every 5
Writes summary.md, summary.json, frames.json and an overlay PNG per frame (green matched, red missed,
orange false, grey cut at the entry/exit edge, magenta non-garment, blue tint the foreground).""",
    )
    e.add_argument("--line", required=True, help="line config YAML")
    e.add_argument("source", help="folder of photos (with --boxes) or a video (with --ground-truth)")
    e.add_argument("--boxes", type=Path, help="boxes CSV: image,x0,y0,x1,y1 (image paths relative to the CSV)")
    e.add_argument("--ground-truth", type=Path, help="a synthetic clip's conveyor_gt.json")
    e.add_argument("--labels", type=Path, help="more labels of the same photos: image,x0,y0,x1,y1,kind (hand, object)")
    e.add_argument("--subset", help="score only these photos: FILE (a name a line) or FILE.json:KEY")
    e.add_argument("--out", type=Path, help="output folder (default runs/evaluate-detection/<line>)")
    e.add_argument("--one-by-one", action="store_true", help="a fresh segmentation for each frame (still photos "
                                                             "with the per-pixel belt model)")
    e.add_argument("--every", type=int, default=1, help="video: score every n-th frame (all are segmented)")
    e.add_argument("--overlays", type=int, help="at most this many overlay PNGs (default: every photo, 40 video "
                                                "frames)")
    e.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1: the one-core budget)")
    e.add_argument("--repeat", type=int, default=1, help="time each frame this many times, keep the fastest "
                                                         "(a shared machine)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a line config key")
    e.add_argument("--group-size", type=int, default=10,
                   help="photos numbered alike (number // this) are one scene: the unit of the bootstrap interval")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_evaluate_detection)


def _register_pulse(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "pulse", "Commissioning: fire each bin's ejector once through the line's actuator (wiring check).",
        """
  textile-sorter pulse --line serving/line-fibre-colour.yaml               # every bin, 1 s apart (asks first)
  textile-sorter pulse --line serving/line-fibre-colour.yaml --bin 3 --bin 4 --pulse-ms 200 --yes
Watch each valve or pusher: the bin printed as 'sent' should move, and only that one.""",
    )
    p.add_argument("--line", required=True, help="line config YAML (its bins file gives names and addresses)")
    p.add_argument("--bin", type=int, action="append", help="bin id to pulse (repeatable; default: every bin)")
    p.add_argument("--pulse-ms", type=float, help="pulse length (default: the bin's pulse_ms, else ejector.pulse_ms)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between two bins (default 1)")
    p.add_argument("--yes", action="store_true", help="do not ask before firing (scripts)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a line config key")
    p.set_defaults(func=_pulse)


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``serve``, ``calibrate``, ``evaluate-detection`` and ``pulse``."""
    p = add_command(
        sub, "serve", "Run a sorting line: camera -> segment -> track -> classify -> bins, until stopped.",
        """
  textile-sorter serve --line serving/line-colour-6bin.yaml --model runs/demo/model.onnx
  textile-sorter serve --line serving/line-colour-6bin.yaml --source clip.mp4 --video-out runs/serve/annotated.mp4
  textile-sorter serve --line serving/line-fibre-colour.yaml --source 0 --set actuator.kind=jsonl
  textile-sorter serve --line serving/line-colour-6bin.yaml --console      # operator's console on :8088
Ctrl-C or SIGTERM stops after the current frame: items in flight go to reject ('shutdown'), the log is closed.""",
    )
    p.add_argument("--line", required=True, help="line config YAML (serving/line-*.yaml)")
    p.add_argument("--source", help="override camera.source: device index, rtsp/http URL, GStreamer pipeline "
                                    "(contains '!'), video file, image folder, synthetic[:seed]")
    p.add_argument("--model", help="override model.path (.onnx)")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--video-out", help="write an annotated MP4 (boxes, ids, labels, bins)")
    p.add_argument("--realtime", action="store_true", help="play a video file at its frame rate")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a line config key")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--console", action="store_true", help="serve the operator's console (live view, history, "
                                                          "relabelling) on --console-host:--console-port")
    add_console_flags(p, prefix="console-")
    p.set_defaults(func=_serve)

    c = add_command(
        sub, "calibrate", "Measure white balance + exposure from the reference patch, or (--belt) set the belt up "
        "from its own frames; write them into the line config.",
        """
  textile-sorter calibrate --line serving/line-colour-6bin.yaml
  textile-sorter calibrate --line serving/line-fibre-colour.yaml --source 0 --frames 60
  textile-sorter calibrate --belt --line serving/line-real-belt.yaml --template serving/line-colour-6bin.yaml \\
      --source setup-photos/ --camera rtsp://camera/stream      # a new line from 8 frames of its belt
  textile-sorter calibrate --belt --line serving/line-real-belt.yaml   # again, from the line's camera
--belt finds the belt region, the belt's colour and the item size; look at the overlay PNG it writes.""",
    )
    c.add_argument("--line", required=True, help="line config YAML to update (a .bak copy is kept)")
    c.add_argument("--source", help="frames to measure: camera, video, folder of photos (default camera.source)")
    c.add_argument("--frames", type=int, help="frames to use (white balance: 30, median over them; --belt: 8, "
                                              "spread over the source)")
    c.add_argument("--belt", action="store_true", help="set up the segmentation: belt region, belt colour, item size")
    c.add_argument("--template", help="--belt, new line: the line config to start from (bins, model, ejectors)")
    c.add_argument("--camera", help="--belt, new line: camera.source to write (default --source)")
    c.add_argument("--overlay", help="--belt: where to write the overlay PNG (default <line>-belt.png beside it)")
    c.add_argument("--scene", choices=("still", "belt"),
                   help="--belt: tracking.scene to write (default: still for a camera.source that is a folder of "
                        "photos, belt for a camera or video; an existing line keeps the scene it sets)")
    c.set_defaults(func=_calibrate)
    _register_evaluate_detection(sub)
    belt_detector.register(sub)  # train-belt-detector: the learned option of a real belt's segmentation
    _register_pulse(sub)
