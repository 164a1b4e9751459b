"""The real-belt figures of issue 14, from scratch: set a line up from development photos, score it.

1. ``runs/belt/dev-images/``: links to the development photos of benchmarks/belt_split.json (never copies).
2. ``textile-sorter calibrate --belt`` makes ``serving/line-real-belt.yaml`` from 8 of them, starting from the
   synthetic colour line's config (bins, model, ejectors), and is timed: what an integrator types.
3. ``textile-sorter evaluate-detection`` on the development part, the held-out part and all photos, with the
   non-garment labels of benchmarks/belt_non_garment_boxes.csv; each frame timed on one OpenCV thread, the
   fastest of ``--repeat`` runs (the machine is shared). Summaries under ``runs/belt/<part>/``.
4. ``--video``: the video case on the synthetic conveyor: a line set up by ``calibrate --belt`` from 8 frames
   of one clip (seed 3), scored on another (seed 12, 40 garments) next to the hand-made colour line.

    python benchmarks/belt_benchmark.py --data ../shared/data/conveyor-photos [--repeat 5] [--keep-line] [--video]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "benchmarks" / "belt_split.json"
LABELS = ROOT / "benchmarks" / "belt_non_garment_boxes.csv"
LINE = ROOT / "serving" / "line-real-belt.yaml"
TEMPLATE = ROOT / "serving" / "line-colour-6bin.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sorting", *args]
    print("$ textile-sorter " + " ".join(args), flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, text=True, capture_output=True)


def _link_dev_images(data: Path, out: Path) -> Path:
    split = json.loads(SPLIT.read_text())
    folder = out / "dev-images"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in split["dev"]:
        (folder / Path(name).name).symlink_to((data / name).resolve())
    return folder


def video_case(out: Path) -> None:
    """Set a line up from a synthetic clip (a video of a moving grey belt) and score it on another clip."""
    for name, seed, items, speed in (("synth-setup", 3, 4, 900), ("synth-test", 12, 40, 400)):
        _cli("data", "synth", "--out", str(out / name), "--crops", "0", "--video-items", str(items), "--seed",
             str(seed), "--belt-speed", str(speed))
    line = out / "line-synth-belt.yaml"
    line.unlink(missing_ok=True)
    print(_cli("calibrate", "--belt", "--line", str(line), "--template", str(TEMPLATE.relative_to(ROOT)), "--source",
               str(out / "synth-setup" / "video" / "conveyor.mp4"), "--camera", "synthetic:3").stdout.strip())
    test = out / "synth-test" / "video"
    for name, config in (("set up from frames", line), ("hand-made colour line", TEMPLATE)):
        done = _cli("evaluate-detection", "--line", str(config), str(test / "conveyor.mp4"), "--ground-truth",
                    str(test / "conveyor_gt.json"), "--every", "3", "--out", str(out / f"synth-{config.stem}"),
                    "--no-progress")
        print(f"== synthetic clip, {name}\n" + done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conveyor-photos")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "belt")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep-line", action="store_true", help="score the existing line config, do not set it up")
    parser.add_argument("--video", action="store_true", help="also the video case on the synthetic conveyor")
    args = parser.parse_args()
    if not args.keep_line:
        dev_images = _link_dev_images(args.data, args.out)
        for path in (LINE, LINE.with_name(LINE.name + ".bak")):
            path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        done = _cli("calibrate", "--belt", "--line", str(LINE.relative_to(ROOT)), "--template",
                    str(TEMPLATE.relative_to(ROOT)), "--source", str(dev_images), "--camera",
                    "../shared/data/conveyor-photos/images", "--overlay", str(args.out / "line-real-belt-belt.png"))
        print(done.stdout.strip())
        print(f"set-up took {time.perf_counter() - t0:.1f} s (one command, nothing typed into the config)")
    for part in ("dev", "heldout", "all"):
        subset = [] if part == "all" else ["--subset", f"{SPLIT.relative_to(ROOT)}:{part}"]
        done = _cli("evaluate-detection", "--line", str(LINE.relative_to(ROOT)), str(args.data / "images"),
                    "--boxes", str(args.data / "boxes.csv"), "--labels", str(LABELS.relative_to(ROOT)), *subset,
                    "--out", str(args.out / part), "--repeat", str(args.repeat), "--no-progress")
        print(f"== {part}\n" + done.stdout.strip())
    if args.video:
        video_case(args.out)


if __name__ == "__main__":
    main()
