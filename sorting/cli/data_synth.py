"""``textile-sorter data synth``: render the synthetic crop dataset and conveyor video."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sorting.cli.common import add_command
from sorting.datasets.synth import make_crop_dataset, render_conveyor_clip
from sorting.taxonomy import load_taxonomy


def _synth(args: argparse.Namespace) -> int:
    out = Path(args.out)
    taxonomy = load_taxonomy(args.taxonomy)
    if args.crops > 0:
        started = time.perf_counter()
        manifest = make_crop_dataset(out / "crops", n=args.crops, size=args.size, seed=args.seed,
                                     taxonomy=taxonomy, workers=args.workers)
        print(f"{args.crops} crops ({args.size} px) + manifest -> {manifest} "
              f"in {time.perf_counter() - started:.1f} s")
    if not args.no_video:
        started = time.perf_counter()
        clip = render_conveyor_clip(
            out / "video", n_items=args.video_items, seed=args.seed, width=args.width, height=args.height,
            fps=args.fps, belt_speed_px_s=args.belt_speed, direction=args.direction,
            hard_fraction=args.hard_fraction, taxonomy=taxonomy,
        )
        seconds = time.perf_counter() - started
        print(f"video: {clip.n_items} garments, {clip.n_frames} frames ({clip.n_frames / clip.fps:.0f} s at "
              f"{clip.fps:g} fps, belt {clip.belt_speed_px_s:g} px/s {clip.direction}) -> {clip.video_path}")
        print(f"ground truth -> {clip.ground_truth_path}; rendered in {seconds:.1f} s "
              f"({clip.n_frames / clip.fps / seconds:.1f}x real time)")
    return 0


def register(group: argparse._SubParsersAction) -> None:
    """Add ``data synth`` to the ``data`` command group."""
    p = add_command(
        group, "synth", "Render synthetic garments: a labelled crop dataset and a conveyor video with ground truth.",
        """
  textile-sorter data synth --out runs/synth                      # 2000 crops + 300-garment video
  textile-sorter data synth --out runs/synth --crops 5000 --size 160 --seed 1 --no-video
  textile-sorter data synth --out runs/synth --crops 0 --video-items 40 --belt-speed 300
  # writes <out>/crops/manifest.csv (+ images/) and <out>/video/conveyor.mp4 + conveyor_gt.json
""",
    )
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--crops", type=int, default=2000, help="number of labelled crops, 0 for none (default: %(default)s)")
    p.add_argument("--size", type=int, default=128, help="longer side of each crop in px (default: %(default)s)")
    p.add_argument("--video-items", type=int, default=300, help="garments in the video (default: %(default)s)")
    p.add_argument("--no-video", action="store_true", help="skip the conveyor video")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: %(default)s)")
    p.add_argument("--width", type=int, default=640, help="video frame width (default: %(default)s)")
    p.add_argument("--height", type=int, default=480, help="video frame height (default: %(default)s)")
    p.add_argument("--fps", type=float, default=30.0, help="video frame rate (default: %(default)s)")
    p.add_argument("--belt-speed", type=float, default=200.0, help="belt speed in px/s (default: %(default)s)")
    p.add_argument("--direction", choices=("+x", "+y"), default="+x",
                   help="belt motion in the image: +x left-to-right, +y top-to-bottom (default: %(default)s)")
    p.add_argument("--hard-fraction", type=float, default=0.12,
                   help="share of garments placed as hard cases, touching or cut off (default: %(default)s)")
    p.add_argument("--taxonomy", help="taxonomy YAML (default datasets/taxonomy.yaml)")
    p.add_argument("--workers", type=int, default=2, help="processes rendering crops (default: %(default)s)")
    p.set_defaults(func=_synth)
