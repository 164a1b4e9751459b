"""Sorter commands: ``serve``, ``calibrate`` and ``pulse``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
        print(f"WARNING: {summary.unreadable_frames} frame(s) of the source could not be decoded and were skipped "
              "(damaged file?); see the warnings above")
    if summary.video is not None:
        print(f"annotated video: {summary.video}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    gains = calibrate_line(args.line, source=args.source, n_frames=args.frames)
    wb = ", ".join(f"{g:.3f}" for g in gains.white_balance)
    print(f"patch BGR {gains.patch_bgr} over {gains.n_frames} usable frames -> white balance (B,G,R) [{wb}], "
          f"exposure {gains.exposure:.3f}; written to {args.line}")
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
    """Register ``serve``, ``calibrate`` and ``pulse``."""
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
        sub, "calibrate", "Measure white balance + exposure from the reference patch; write them into the line config.",
        """
  textile-sorter calibrate --line serving/line-colour-6bin.yaml
  textile-sorter calibrate --line serving/line-fibre-colour.yaml --source 0 --frames 60""",
    )
    c.add_argument("--line", required=True, help="line config YAML to update (a .bak copy is kept)")
    c.add_argument("--source", help="override camera.source")
    c.add_argument("--frames", type=int, default=30, help="frames to measure (median over them; default 30)")
    c.set_defaults(func=_calibrate)
    _register_pulse(sub)
