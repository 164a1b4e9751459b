"""The real-belt figures of issue 14, from scratch: set a line up from development photos, score it.

1. ``runs/belt/dev-images/``: links to the development photos of benchmarks/belt_split.json (never copies).
2. ``textile-sorter calibrate --belt`` makes ``serving/line-real-belt.yaml`` from 8 of them, starting from the
   synthetic colour line's config (bins, model, ejectors), and is timed: what an integrator types; then
   ``textile-sorter fit-textile-check --write-line`` fits the textile check's head on the development photos
   (``serving/line-real-belt-textile-head.json``).
3. ``textile-sorter evaluate-detection`` on the development part, the held-out part and all photos, with the
   non-garment labels of benchmarks/belt_non_garment_boxes.csv; each frame timed on one OpenCV thread, the
   fastest of ``--repeat`` runs (the machine is shared). Summaries under ``runs/belt/<part>/``.
4. ``--refit-all``: the head fitted again on all the labelled photos (``runs/belt/textile-head-all.json``) and
   scored on all of them (``runs/belt/refit-all``: in-sample, the head saw them), then the line put back as it was,
   with the development head. A trial of whether the shipped line should learn from every labelled
   photo (serving/REAL_BELT.md, "Is it cloth?": it should not, yet).
5. ``--video``: the video case on the synthetic conveyor: a line set up by ``calibrate --belt`` from 8 frames
   of one clip (seed 3), scored on another (seed 12, 40 garments) next to the hand-made colour line.
6. ``--detector ONNX``: the same line with the learned detector (``segmentation.detector``), scored on the same
   parts plus the development photos that validated it (``dev-val``: the detector never trained on them; none
   with the recipe's ``data.val_share`` 0, where every development photo trains);
   ``--train-detector`` first trains it (``textile-sorter train-belt-detector --config training/belt-detector.yaml``,
   development photos only) and writes it to ``runs/belt/belt-detector.onnx``.
7. ``--int8``: the same set-up with the INT8 textile check (``export-textile-check --int8`` calibrated on the
   development photos, the head fitted on it), written to ``runs/belt/line-real-belt-int8.yaml``: the shipped line
   is left as it is.
8. ``--name NAME --fit "ARGS"``: the same set-up with these ``fit-textile-check`` arguments (e.g. ``--inputs
   features --input-size 160``), written to ``runs/belt/line-real-belt-NAME.yaml``: the shipped line is left as it
   is (with ``--int8`` too, the INT8 check's line takes that name).

    python benchmarks/belt_benchmark.py --data ../shared/data/conveyor-photos [--repeat 5] [--keep-line] [--video]
    python benchmarks/belt_benchmark.py --keep-line --train-detector [--detector-parts dev-val dev]
    python benchmarks/belt_benchmark.py --name features --fit="--inputs features"
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from belt_errors import tally_by_scene_kind  # a script beside this one

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "benchmarks" / "belt_split.json"
LABELS = ROOT / "benchmarks" / "belt_non_garment_boxes.csv"
LINE = ROOT / "serving" / "line-real-belt.yaml"
HEAD = ROOT / "serving" / "line-real-belt-textile-head.json"
TEMPLATE = ROOT / "serving" / "line-colour-6bin.yaml"


def _cli(*args: str, show_log: bool = False) -> subprocess.CompletedProcess:
    """Run a textile-sorter command; its output is returned (its log passes through with ``show_log``)."""
    cmd = [sys.executable, "-m", "sorting", *args]
    print("$ textile-sorter " + " ".join(args), flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, text=True, stdout=subprocess.PIPE,
                          stderr=None if show_log else subprocess.PIPE)


def _relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (what calibrate writes into the line's header)."""
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


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


def train_detector(out: Path) -> Path:
    """Train the belt detector on the development photos; its ONNX file and run folder under ``out``."""
    onnx = out / "belt-detector.onnx"
    t0 = time.perf_counter()
    done = _cli("train-belt-detector", "--config", "training/belt-detector.yaml", "--out", str(onnx),
                f"output_dir={out / 'detector-runs'}", "progress=false", show_log=True)
    print(done.stdout.strip() + f"\ntraining took {time.perf_counter() - t0:.0f} s")
    run = max((out / "detector-runs").glob("*/frames.json"), key=lambda f: f.stat().st_mtime)  # this run's
    shutil.copyfile(run, frames_of(onnx))
    return onnx


def frames_of(onnx: Path) -> Path:
    """Where the benchmark keeps the names of the photos a detector trained and validated on."""
    return onnx.with_name(onnx.stem + "-frames.json")


def score(part: str, data: Path, out: Path, repeat: int, overrides: list[str], frames: Path | None = None, *,
          line: Path = LINE) -> None:
    """``evaluate-detection`` of the line on one part of the photos (dev, heldout, all; dev-val from ``frames``)."""
    if part == "dev-val":
        if frames is None:
            raise SystemExit("dev-val needs the detector's run folder (its frames.json): train it with --train-detector")
        subset = ["--subset", f"{frames}:val"]
    else:
        subset = [] if part == "all" else ["--subset", f"{SPLIT.relative_to(ROOT)}:{part}"]
    sets = [a for o in overrides for a in ("--set", o)]
    done = _cli("evaluate-detection", "--line", _relative(line), str(data / "images"),
                "--boxes", str(data / "boxes.csv"), "--labels", str(LABELS.relative_to(ROOT)), *subset, *sets,
                "--out", str(out), "--repeat", str(repeat), "--no-progress")
    print(f"== {part}{' (' + ', '.join(overrides) + ')' if overrides else ''}\n" + done.stdout.strip())


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def table(rows: list[tuple[str, str, Path]]) -> list[str]:
    """One Markdown row per scored run (from its summary.json): recall/precision at IoU 0.5 and 0.3, merged and
    split items, non-garment labels found as such, CPU ms per frame (segmentation + crops, one thread)."""
    head = ("| part | segmentation | frames | garments | R@0.5 | P@0.5 | R@0.3 | P@0.3 | merged | split "
            "| hands/objects found | CPU ms mean / p95 |")
    out = [head, "|" + "---|" * 12]
    for part, name, folder in rows:
        s = json.loads((folder / "summary.json").read_text())
        others = sum(v for k, v in s["labels_by_kind"].items() if not k.startswith("garment"))
        ms = s["ms"].get("segment+crops cpu") or {"mean": float("nan"), "p95": float("nan")}
        out.append(f"| {part} | {name} | {s['frames']} | {s['garments']} | {_pct(s['recall']['0.5'])} "
                   f"| {_pct(s['precision']['0.5'])} | {_pct(s['recall']['0.3'])} | {_pct(s['precision']['0.3'])} "
                   f"| {_pct(s['merged_rate'])} | {_pct(s['split_rate'])} | {s['other_found']} of {others} "
                   f"| {ms['mean']:.1f} / {ms['p95']:.1f} |")
    return out


def by_scene_kind(rows: list[tuple[str, str, Path]]) -> list[str]:
    """Recall and precision at IoU 0.5 of each scored run by scene kind, from its frames.json: photos of garments
    alone, and cluttered ones (phones, tape, hands among the garments), which are much harder and whose share
    differs between the parts."""
    out = ["| part | segmentation | scenes | photos | garments | R@0.5 | P@0.5 |", "|" + "---|" * 7]
    for part, name, folder in rows:
        for kind, t in tally_by_scene_kind(json.loads((folder / "frames.json").read_text())).items():
            found = t["matched"] + t["false"]
            out.append(f"| {part} | {name} | {kind} | {t['photos']} | {t['garments']} "
                       f"| {_pct(t['matched'] / t['garments'] if t['garments'] else None)} "
                       f"| {_pct(t['matched'] / found if found else None)} |")
    return out


def set_up(args: argparse.Namespace, line: Path, network: list[str]) -> None:
    """``calibrate --belt`` from 8 development photos into ``line`` (timed); with ``network`` (``--check-model
    FILE``, the INT8 check) that network is exported from them too."""
    dev_images = _link_dev_images(args.data, args.out)
    for path in (line, line.with_name(line.name + ".bak")):
        path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    done = _cli("calibrate", "--belt", "--line", _relative(line), "--template",
                str(TEMPLATE.relative_to(ROOT)), "--source", _relative(dev_images), "--camera",
                "../shared/data/conveyor-photos/images", "--overlay", str(args.out / "line-real-belt-belt.png"))
    print(done.stdout.strip())
    print(f"set-up took {time.perf_counter() - t0:.1f} s (one command, nothing typed into the config)")
    if network:
        print(_cli("export-textile-check", "--out", network[1], "--int8", _relative(dev_images)).stdout.strip())


def fit_head(args: argparse.Namespace, line: Path, head: Path, network: list[str], *, part: str) -> None:
    """``fit-textile-check --write-line`` (and ``--fit``'s arguments): the head of ``line`` fitted on one part of the
    photos (dev, all)."""
    subset = [] if part == "all" else ["--subset", f"{SPLIT.relative_to(ROOT)}:{part}"]
    t0 = time.perf_counter()
    done = _cli("fit-textile-check", "--line", _relative(line), str(args.data / "images"), "--boxes",
                str(args.data / "boxes.csv"), "--labels", str(LABELS.relative_to(ROOT)), *subset,
                "--out", _relative(head), "--write-line", "--no-progress", *network, *shlex.split(args.fit))
    print(done.stdout.strip() + f"\ntextile head fitted on the {part} photos in {time.perf_counter() - t0:.1f} s")
    line.with_name(line.name + ".bak").unlink(missing_ok=True)


def head_fitted_on(line: Path) -> str:
    """Which photos the line's textile head was fitted on, from the head file (``dev``, ``all``; ``none``)."""
    check = (yaml.safe_load(line.read_text()).get("segmentation") or {}).get("textile_check") or {}
    if not check.get("head"):
        return "none"
    subset = json.loads((line.parent / check["head"]).read_text())["fitted_on"].get("subset")
    return "all" if subset is None else subset.rsplit(":", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conveyor-photos")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "belt")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep-line", action="store_true", help="score the existing line config, do not set it up")
    parser.add_argument("--refit-all", action="store_true",
                        help="also fit the head on all labelled photos and score it on them (in-sample); the line "
                             "keeps its development head")
    parser.add_argument("--video", action="store_true", help="also the video case on the synthetic conveyor")
    parser.add_argument("--parts", nargs="*", default=["dev", "heldout", "all"], help="parts scored for the line")
    parser.add_argument("--detector", type=Path, help="also score the line with this learned detector (ONNX)")
    parser.add_argument("--train-detector", action="store_true", help="train the detector first (dev photos only)")
    parser.add_argument("--detector-parts", nargs="*", default=["dev-val", "dev", "heldout", "all"])
    parser.add_argument("--detector-set", action="append", default=[], metavar="KEY=VALUE",
                        help="line overrides for the detector runs, e.g. segmentation.detector.min_score=0.4")
    parser.add_argument("--int8", action="store_true", help="the INT8 textile check, in a line of its own under --out")
    parser.add_argument("--fit", default="", metavar="ARGS",
                        help='more fit-textile-check arguments, e.g. --fit="--inputs features"; needs --name')
    parser.add_argument("--name", help="the line's name under --out (line-real-belt-NAME.yaml, folders NAME-PART); "
                        "default with --int8: int8")
    args = parser.parse_args()
    if args.fit and not args.name:
        parser.error("--fit sets up a line of its own: name it with --name")
    tag = args.name or ("int8" if args.int8 else None)
    line, head = LINE, HEAD
    if tag:
        line, head = args.out / f"line-real-belt-{tag}.yaml", args.out / f"line-real-belt-{tag}-textile-head.json"
    network = ["--check-model", _relative(args.out / "textile-check.int8.onnx")] if args.int8 else []
    if args.keep_line and not line.is_file():
        parser.error(f"--keep-line: {_relative(line)} is not there yet; run once without --keep-line to set it up")
    if not args.keep_line:
        set_up(args, line, network)
        fit_head(args, line, head, network, part="dev")
    detector = train_detector(args.out) if args.train_detector else args.detector
    frames = frames_of(detector) if detector is not None and frames_of(detector).is_file() else None
    detector_parts = args.detector_parts
    if frames is not None and not json.loads(frames.read_text())["val"]:  # trained on every dev photo: no dev-val
        frames = None
        detector_parts = [p for p in detector_parts if p != "dev-val"]
    line_parts = [*args.parts, *(["dev-val"] if frames is not None and "dev-val" not in args.parts else [])]
    rows = []
    name = f"classical{f', {tag}' if tag else ''}, head fitted on "
    for part in line_parts:
        folder = args.out / (f"{tag}-{part}" if tag else part)
        score(part, args.data, folder, args.repeat, [], frames, line=line)
        rows.append((part, name + head_fitted_on(line), folder))
    if detector is not None:
        sets = [f"segmentation.detector={{model: {detector.resolve()}}}", *args.detector_set]
        for part in detector_parts:
            score(part, args.data, args.out / f"detector-{part}", args.repeat, sets, frames, line=line)
            rows.append((part, f"detector, head fitted on {head_fitted_on(line)}", args.out / f"detector-{part}"))
    if args.refit_all:
        shipped = line.read_text()  # the head of all photos goes to a file of its own; the line is put back after
        fit_head(args, line, args.out / f"textile-head{f'-{tag}' if tag else ''}-all.json", network, part="all")
        folder = args.out / f"{f'{tag}-' if tag else ''}refit-all"
        score("all", args.data, folder, args.repeat, [], line=line)
        rows.append(("all (in-sample)", name + head_fitted_on(line), folder))
        line.write_text(shipped)
    print("\n".join(table(rows)))
    print("\n".join(by_scene_kind(rows)))
    if args.video:
        video_case(args.out)


if __name__ == "__main__":
    main()
