"""Sorter commands: ``serve`` (run a line) and ``calibrate`` (white balance from the reference patch)."""

from __future__ import annotations

import argparse

from sorting.cli.common import add_command
from sorting.serving.colour_calibration import calibrate_line
from sorting.serving.line_config import load_line_config
from sorting.serving.loop import serve_line


def _serve(args: argparse.Namespace) -> int:
    cfg = load_line_config(args.line, args.set)
    if args.realtime:
        cfg.camera.realtime = True
    summary = serve_line(cfg, source=args.source, model=args.model, max_frames=args.max_frames,
                         video_out=args.video_out, progress=not args.no_progress)
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
    if summary.video is not None:
        print(f"annotated video: {summary.video}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    gains = calibrate_line(args.line, source=args.source, n_frames=args.frames)
    wb = ", ".join(f"{g:.3f}" for g in gains.white_balance)
    print(f"patch BGR {gains.patch_bgr} over {gains.n_frames} usable frames -> white balance (B,G,R) [{wb}], "
          f"exposure {gains.exposure:.3f}; written to {args.line}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` and ``calibrate``."""
    p = add_command(
        sub, "serve", "Run a sorting line: camera -> segment -> track -> classify -> bins, until stopped.",
        """
  textile-sorter serve --line serving/line-colour-6bin.yaml --model runs/demo/model.onnx
  textile-sorter serve --line serving/line-colour-6bin.yaml --source clip.mp4 --video-out runs/serve/annotated.mp4
  textile-sorter serve --line serving/line-fibre-colour.yaml --source 0 --set actuator.kind=jsonl
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
