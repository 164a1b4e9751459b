"""How a line set up from some scenes of a belt does on scenes it never saw, inside the development photos only.

The development photos of benchmarks/belt_split.json are cut into ``--folds`` parts by scene group (image number
// 10, as the split itself). For each part, the line is set up as ``benchmarks/belt_benchmark.py`` sets up
``serving/line-real-belt.yaml`` (``calibrate --belt`` from 8 of the other parts' photos, then ``fit-textile-check
--write-line`` on all of them), and scored with ``evaluate-detection`` on the part. The pooled figures say what the
set-up generalises to; settings can be compared on them without the held-out photos (which this never reads).

    python benchmarks/belt_cross_validation.py [--folds 3] [--blocked] [--partitions N] [--set KEY=VALUE ...]
        [--reuse] [--setup-share S] [--setup-frames N]

``--reuse`` scores each fold's line from an earlier run in ``--out`` again, without setting it up, when it was set
up on the same photos with the same arguments: a ``--set`` setting (which acts at scoring only) is then compared in
about a minute for 4 partitions instead of several. It knows the photos and arguments, not the code: after a change
to what sets a line up (``calibrate --belt``, ``fit-textile-check``), run without it.

``--setup-share S`` sets each fold up on a seeded draw of S of its set-up scene groups only (the test part is the
same): run it at a few shares, each into its own ``--out``, for the learning curve of the whole line (how much more
labelled scenes would give).

``--setup-frames N`` sets each fold's belt model and typical item up from N of its set-up photos (``calibrate --belt
--frames N``; 8 without it).

``--partitions N`` repeats it over N partitions of the scene groups (the first the usual round-robin one, the others
shuffled by seeds 1 .. N-1) and prints their mean, and the missed garments a partition by cause: run two settings
with the same N to compare them on the same partitions, less at the mercy of one draw of folds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from belt_errors import tally_by_scene_kind  # a script beside this one

from sorting.datasets.box_labels import photo_group
from sorting.serving.detection_eval import scene_interval

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "benchmarks" / "belt_split.json"
LABELS = ROOT / "benchmarks" / "belt_non_garment_boxes.csv"
TEMPLATE = ROOT / "serving" / "line-colour-6bin.yaml"
RECIPE = ROOT / "training" / "belt-detector.yaml"


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sorting", *args], cwd=ROOT, check=True, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return done.stdout


def fold_of_groups(groups: list[int], folds: int, *, blocked: bool = False, partition: int = 0) -> dict[int, int]:
    """Scene groups dealt round-robin to folds, in order (neighbouring scenes apart); ``blocked``: each fold a run
    of consecutive groups instead, so that a held-back scene's neighbours (often the same garments, moved) are held
    back with it and a fold may hold a kind of scene the set-up never saw (the busy photos are the last groups).
    ``partition`` > 0: the groups shuffled by that seed before they are dealt round-robin (another partition, so
    that two settings can be compared over several)."""
    ordered = sorted(set(groups))
    if blocked:
        return {g: i * folds // len(ordered) for i, g in enumerate(ordered)}
    if partition:
        ordered = [ordered[i] for i in np.random.default_rng(partition).permutation(len(ordered))]
    return {g: i % folds for i, g in enumerate(ordered)}


def share_of_scenes(photos: list[str], groups: dict[str, int], share: float, seed: int) -> list[str]:
    """The photos of a seeded draw of ``share`` of the scene groups among ``photos`` (at least one group), in their
    order: a set-up on fewer labelled scenes, whole scenes kept together."""
    if share >= 1.0:
        return list(photos)
    present = sorted({groups[n] for n in photos})
    keep = max(1, round(share * len(present)))
    kept = set(np.random.default_rng(seed).permutation(present)[:keep].tolist())
    return [n for n in photos if groups[n] in kept]


def fold_detector(folder: Path, seed: int, recipe: list[str]) -> Path:
    """The learned detector trained on the fold's set-up photos (``train-belt-detector``: the recipe with these
    ``KEY=VALUE`` overrides), kept in the fold's folder and reused while its set-up list, the recipe's settings and
    the overrides are the same."""
    tag = "-" + hashlib.sha1("\n".join(recipe).encode()).hexdigest()[:8] if recipe else ""
    onnx = folder / f"detector-seed{seed}{tag}.onnx"
    setup = folder / "setup.txt"
    stamp = onnx.with_suffix(".setup.txt")
    wanted = (setup.read_text() + "".join(f"# {r}\n" for r in recipe)
              + f"# recipe settings: {_settings_digest(RECIPE)}\n")
    if not (onnx.is_file() and stamp.is_file() and stamp.read_text() == wanted):
        _cli("train-belt-detector", "--config", str(RECIPE), "--out", str(onnx),
             f"data.subset={setup}", f"seed={seed}", f"output_dir={folder / 'detector-runs'}", "progress=false",
             *recipe)
        stamp.write_text(wanted)
    return onnx


def _settings_digest(recipe: Path) -> str:
    """A digest of the recipe's settings, not its bytes: an edited comment does not train every fold's detector
    again."""
    return hashlib.sha1(json.dumps(yaml.safe_load(recipe.read_text()), sort_keys=True).encode()).hexdigest()


def run_fold(k: int, setup: list[str], test: list[str], data: Path, out: Path, overrides: list[str],
             fit_args: list[str], detector: str | None = None, seed: int = 0, recipe: list[str] | None = None,
             int8: bool = False, check_model: Path | None = None, reuse: bool = False,
             head_on_detector: bool = False, setup_frames: int | None = None) -> dict:
    """Set up a line on the fold's set-up photos (calibrate --belt, fit-textile-check with ``fit_args``) and
    score it on its test photos; with ``reuse``, the fold's line from an earlier run is scored again when it was
    set up on the same photos with the same arguments (the set-up is deterministic). With ``detector``, the line
    scored has the fold's detector; with ``head_on_detector`` too, a textile-check head fitted on the crops of that
    line (:func:`detector_line`)."""
    folder = out / f"fold{k}"
    line = folder / "line.yaml"
    stamp = "\n".join([*setup, *fit_args, f"int8={int8}", f"check_model={check_model}"]
                      + ([f"setup_frames={setup_frames}"] if setup_frames is not None else [])) + "\n"
    if not (reuse and line.is_file() and _read(folder / "setup-args.txt") == stamp):
        (folder / "setup-args.txt").unlink(missing_ok=True)  # a set-up cut short is never reused
        _set_up_fold(folder, setup, data, fit_args, int8, check_model, setup_frames)
        (folder / "setup-args.txt").write_text(stamp)
    (folder / "test.txt").write_text("\n".join(test) + "\n")
    if detector is not None:  # the fold's own detector, with these settings (e.g. "min_score: 0.4")
        model = fold_detector(folder, seed, recipe or []).resolve()
        if head_on_detector:
            network = _network(folder, int8, check_model)
            line = detector_line(folder, line, model, detector, data, [*fit_args, *network])
        else:
            overrides = [*overrides, f"segmentation.detector={{model: {model}, {detector}}}"]
    sets = [arg for o in overrides for arg in ("--set", o)]
    print(_cli("evaluate-detection", "--line", str(line), str(data / "images"), "--boxes", str(data / "boxes.csv"),
               "--labels", str(LABELS), "--subset", str(folder / "test.txt"), "--out", str(folder / "eval"),
               "--no-progress", *sets).splitlines()[1])
    return json.loads((folder / "eval" / "summary.json").read_text())


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _set_up_fold(folder: Path, setup: list[str], data: Path, fit_args: list[str], int8: bool,
                 check_model: Path | None, setup_frames: int | None = None) -> None:
    """``calibrate --belt`` (from ``setup_frames`` of the set-up photos, or its default) and ``fit-textile-check
    --write-line`` on the fold's set-up photos, into ``folder/line.yaml``."""
    shutil.rmtree(folder / "setup-images", ignore_errors=True)
    (folder / "setup-images").mkdir(parents=True)
    for name in setup:
        (folder / "setup-images" / Path(name).name).symlink_to((data / name).resolve())
    (folder / "setup.txt").write_text("\n".join(setup) + "\n")
    line = folder / "line.yaml"
    for old in (line, line.with_name("line.yaml.bak")):
        old.unlink(missing_ok=True)
    _cli("calibrate", "--belt", "--line", str(line), "--template", str(TEMPLATE), "--source",
         str(folder / "setup-images"), "--camera", str((data / "images").resolve()),
         *(["--frames", str(setup_frames)] if setup_frames is not None else []))
    network = _network(folder, int8, check_model)
    if int8:  # the INT8 check, calibrated on the fold's set-up photos; the head fitted on it
        _cli("export-textile-check", "--out", network[1], "--int8", str(folder / "setup-images"))
    _fit_head(line, folder / "head.json", folder, data, [*fit_args, *network])


def _network(folder: Path, int8: bool, check_model: Path | None) -> list[str]:
    """fit-textile-check's --check-model for the fold: its INT8 check, another network, or none (the line's)."""
    if int8:
        return ["--check-model", str(folder / "check.int8.onnx")]
    return ["--check-model", str(check_model.resolve())] if check_model is not None else []


def _fit_head(line: Path, head: Path, folder: Path, data: Path, fit_args: list[str]) -> None:
    """``fit-textile-check --write-line``: a head fitted on the crops of ``line`` on the fold's set-up photos."""
    _cli("fit-textile-check", "--line", str(line), str(data / "images"), "--boxes", str(data / "boxes.csv"),
         "--labels", str(LABELS), "--subset", str(folder / "setup.txt"), "--out", str(head), "--write-line",
         "--no-progress", *fit_args)


def detector_line(folder: Path, line: Path, model: Path, settings: str, data: Path, fit_args: list[str]) -> Path:
    """The fold's line with its detector (``settings``: the keys besides ``model``) and a textile-check head fitted
    on that line's own crops of the set-up photos: the fold's head learned what the classical blobs look like, the
    detector cuts things otherwise. Kept while the line, the detector, the settings and ``fit_args`` are the same."""
    text = line.read_text()
    key = "\n".join([text, model.with_suffix(".setup.txt").read_text(), str(model), settings, *fit_args])
    tag = hashlib.sha1(key.encode()).hexdigest()[:8]
    out, done = folder / f"line-detector-{tag}.yaml", folder / f"line-detector-{tag}.done"
    if not done.is_file():
        config = yaml.safe_load(text)
        config["segmentation"]["detector"] = {"model": str(model), **(yaml.safe_load("{" + settings + "}") or {})}
        out.write_text(yaml.safe_dump(config, sort_keys=False))
        _fit_head(out, folder / f"head-detector-{tag}.json", folder, data, fit_args)
        done.write_text(key)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conveyor-photos")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "belt-cv")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="line overrides for the scoring, e.g. segmentation.textile_check.carve=null")
    parser.add_argument("--keep", type=float, help="fit-textile-check --keep (share of garments the head passes)")
    parser.add_argument("--floor-share", type=float, help="fit-textile-check --floor-share (where the class floor is set)")
    parser.add_argument("--detector", metavar="SETTINGS",
                        help="train the learned detector on each fold's set-up photos and score with it, e.g. "
                             "'box: outline' (segmentation.detector keys besides model)")
    parser.add_argument("--seed", type=int, default=0, help="the detector's training seed")
    parser.add_argument("--detector-recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides of training/belt-detector.yaml for the fold detectors, e.g. "
                             "optim.epochs=40 (each set of overrides trains and keeps its own)")
    parser.add_argument("--head-on-detector", action="store_true",
                        help="with --detector: fit each fold's textile-check head on the crops of its line with the "
                             "detector (the default: the head fitted on the classical line's crops)")
    parser.add_argument("--input-size", type=int, help="fit-textile-check --input-size (the head's crop side)")
    parser.add_argument("--blocked", action="store_true",
                        help="folds of consecutive scene groups, not dealt round-robin (a harder, scene-shift test)")
    parser.add_argument("--context", type=float, help="fit-textile-check --context (the crop: the box grown by this)")
    parser.add_argument("--int8", action="store_true", help="the INT8 textile check (export-textile-check --int8 on "
                        "each fold's set-up photos), the head fitted on it")
    parser.add_argument("--check-model", type=Path, help="fit each fold's head on this network (export-textile-check "
                        "--backbone ...) and score with it")
    parser.add_argument("--inputs", choices=("logprobs", "features"),
                        help="fit-textile-check --inputs (what the head reads of each crop)")
    parser.add_argument("--mirrors", action="store_true",
                        help="fit-textile-check --mirrors (the head fitted on, and scoring, each crop's mirror images too)")
    parser.add_argument("--reuse", action="store_true",
                        help="score each fold's line from an earlier run in --out again when its set-up photos and "
                        "arguments are the same (fast comparisons of --set settings, which act at scoring only)")
    parser.add_argument("--setup-share", type=float, default=1.0,
                        help="set each fold up on this share of its set-up scene groups (a seeded draw; the learning "
                        "curve of the whole line), into its own --out")
    parser.add_argument("--setup-frames", type=int,
                        help="calibrate --belt --frames: how many of each fold's set-up photos the belt model is set up "
                        "from (calibrate's default: 8)")
    parser.add_argument("--partitions", type=int, default=1,
                        help="repeat over this many partitions of the scene groups and print their mean")
    args = parser.parse_args()
    fit_args = [arg for flag, value in (("--keep", args.keep), ("--input-size", args.input_size),
                                        ("--context", args.context), ("--inputs", args.inputs),
                                        ("--floor-share", args.floor_share)) if value is not None
                for arg in (flag, str(value))] + (["--mirrors"] if args.mirrors else [])
    if args.int8 and args.check_model:
        parser.error("--int8 makes its own network per fold: give it or --check-model, not both")
    if args.head_on_detector and args.detector is None:
        parser.error("--head-on-detector needs --detector")
    if not 0 < args.setup_share <= 1:
        parser.error("--setup-share must be in (0, 1]")
    if args.blocked and args.partitions > 1:
        parser.error("--blocked has one partition only (consecutive groups)")
    split = json.loads(SPLIT.read_text())
    dev, size = split["dev"], split["group_size"]
    groups = {n: photo_group(n, size) for n in dev}
    figures = []
    for partition in range(args.partitions):
        out = args.out if partition == 0 else args.out / f"partition{partition}"
        fold = fold_of_groups(list(groups.values()), args.folds, blocked=args.blocked, partition=partition)
        summaries = []
        for k in range(args.folds):
            test = [n for n in dev if fold[groups[n]] == k]
            setup = share_of_scenes([n for n in dev if fold[groups[n]] != k], groups, args.setup_share,
                                    seed=100 * partition + k)
            summaries.append(run_fold(k, setup, test, args.data, out, args.set, fit_args, args.detector, args.seed,
                                      args.detector_recipe, args.int8, args.check_model, args.reuse,
                                      args.head_on_detector, args.setup_frames))
        figures.append(report(summaries, out, args.folds, size, partition))
    if args.partitions > 1:
        print("\n".join(mean_lines(figures)))


@dataclass(frozen=True)
class PartitionFigures:
    """One partition's pooled figures at IoU 0.5."""

    recall: float
    precision: float
    taken: int  # hands and objects taken for a garment
    found: int  # hands and objects found as such
    missed: Counter[str]  # missed garments by cause (MISSED_CAUSES of sorting.serving.detection_eval)


def mean_lines(figures: list[PartitionFigures]) -> list[str]:
    """The mean over partitions: recall, precision, hands and objects; then the missed garments a partition by
    cause, most first (which part of the line to work on)."""
    n = len(figures)
    missed = sum((f.missed for f in figures), Counter())
    return [f"mean over {n} partitions: IoU 0.5 recall {np.mean([f.recall for f in figures]):.1%}, precision "
            f"{np.mean([f.precision for f in figures]):.1%}; hands and objects taken for a garment "
            f"{np.mean([f.taken for f in figures]):.1f}, found as such {np.mean([f.found for f in figures]):.1f}",
            "missed a partition: " + ", ".join(f"{cause} {count / n:.1f}" for cause, count in missed.most_common())]


def report(summaries: list[dict], out: Path, folds: int, group_size: int, partition: int) -> PartitionFigures:
    """Print one partition's pooled figures, by scene kind and with a scene-bootstrap interval; return them."""
    totals = {key: sum(s[key]["0.5"] if isinstance(s[key], dict) else s[key] for s in summaries)
              for key in ("matched", "garments", "garment_detections", "false", "merged", "other_as_garment",
                        "other_unlabelled", "other_found")}
    others = sum(n for s in summaries for kind, n in s["labels_by_kind"].items() if kind != "garment")
    recall = totals["matched"] / totals["garments"]
    precision = 1 - totals["false"] / max(1, totals["garment_detections"])
    print(f"{f'partition {partition}: ' if partition else ''}pooled over {folds} folds of scenes "
          f"({totals['garments']} garments): IoU 0.5 recall {recall:.1%}, precision {precision:.1%}; merged "
          f"{totals['merged']}; hands and objects taken for a garment {totals['other_as_garment']}, found as such "
          f"{totals['other_found']} of {others}; hand or object detections on nothing labelled "
          f"{totals['other_unlabelled']}")
    causes = {key: sum((Counter(s.get(key, {})) for s in summaries), Counter()) for key in ("missed_by_cause",
                                                                                         "false_by_cause")}
    print("at IoU 0.5, missed: " + ", ".join(f"{c} {n}" for c, n in causes["missed_by_cause"].most_common())
          + "; false: " + ", ".join(f"{c} {n}" for c, n in causes["false_by_cause"].most_common()))
    frames = [row for k in range(folds) for row in json.loads((out / f"fold{k}" / "eval" / "frames.json").read_text())]
    print("by scene kind: " + "; ".join(
        f"{kind} {t['matched']}/{t['garments']} found, {t['false']} false"
        for kind, t in tally_by_scene_kind(frames).items()))
    interval = scene_interval([r["garments"] for r in frames], [r["matched"] for r in frames],
                              [r["false"] for r in frames], [photo_group(r["name"], group_size) for r in frames])
    if interval is not None and interval.precision is not None:
        print(f"{interval.level:.0%} interval over {interval.scenes} scenes (bootstrap): recall "
              f"{interval.recall[0]:.1%}-{interval.recall[1]:.1%}, precision {interval.precision[0]:.1%}-"
              f"{interval.precision[1]:.1%} (how far other scenes like these could put it)")
    return PartitionFigures(recall, precision, totals["other_as_garment"], totals["other_found"],
                            causes["missed_by_cause"])


if __name__ == "__main__":
    main()
