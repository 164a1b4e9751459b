"""``textile-sorter train-belt-detector``: a recipe -> a learned detector of garments, hands and objects (ONNX);
``textile-sorter export-textile-check``: the ImageNet check "is it cloth?" as an ONNX file (no training);
``textile-sorter fit-textile-check``: a linear head for that check, fitted to a line's labelled photos;
``textile-sorter propose-labels``: the line's detections as a boxes CSV to correct, the labels the head needs;
``textile-sorter label-boxes``: that CSV corrected in the browser (:mod:`sorting.apps.labeller`).

Registered from :mod:`sorting.cli.serve` next to ``calibrate --belt`` and ``evaluate-detection``, the other
steps of setting a real belt up.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from sorting.cli.common import add_command
from sorting.errors import ConfigError
from sorting.serving.sources import photos_of

EXAMPLES = """
  textile-sorter train-belt-detector --config training/belt-detector.yaml --out runs/belt-detector.onnx
  textile-sorter train-belt-detector --config training/belt-detector.yaml optim.epochs=10 threads=2
then in the line config (serving/): segmentation.detector: {model: ../runs/belt-detector.onnx}; score it with
evaluate-detection --set 'segmentation.detector={model: ../runs/belt-detector.onnx}' (serving/REAL_BELT.md)
"""


def _train_belt_detector(args: argparse.Namespace) -> int:
    from sorting.training.belt_detector import fit_belt_detector
    from sorting.training.belt_detector_config import load_belt_detector_config

    config = load_belt_detector_config(args.config, args.overrides)
    result = fit_belt_detector(config)
    m = result.metrics
    heads = ", ".join(f"{h} macro-F1 {m[f'val/{h}/macro_f1']:.3f}" for h in ("centre", "width", "height")
                      if f"val/{h}/macro_f1" in m)
    print(f"trained in {result.seconds:.0f} s; " + (f"validation cells: {heads}" if heads else
                                                     "no validation frames (data.val_share 0)"))
    onnx_path = result.onnx_path
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        onnx_path = Path(shutil.copyfile(result.onnx_path, args.out))
    print(f"belt detector: {onnx_path} (run folder {result.run_dir})")
    return 0


TEXTILE_EXAMPLES = """
  textile-sorter export-textile-check --out runs/textile-check.onnx
then in the line config: segmentation.textile_check: {model: ../runs/textile-check.onnx}. Without --out the file
goes to the cache folder that `segmentation.textile_check: {}` reads ($TEXTILE_SORTER_CACHE or
~/.cache/textile-sorter), e.g. to prepare a line computer before it goes offline.
  textile-sorter export-textile-check --out runs/textile-check.int8.onnx --int8 ../shared/data/conveyor-photos/images
  textile-sorter fit-textile-check --line LINE PHOTOS --boxes boxes.csv --out runs/head.json \\
      --check-model runs/textile-check.int8.onnx --write-line
the INT8 check (about twice as fast on one core), calibrated on crops of the belt's photos; a fitted head is
fitted on it again (its inputs move), and --write-line points the line at both.
"""


def _export_textile_check(args: argparse.Namespace) -> int:
    from sorting.models.efficientnet_lite import VARIANTS
    from sorting.models.textile_check_export import export_textile_check
    from sorting.serving.textile_check import CACHE_NAME, cache_dir

    if args.backbone != "lite0" and (not args.out or args.int8 is not None):
        raise ConfigError(f"--backbone {args.backbone} needs --out and no --int8: the cache folder and the INT8 "
                          "recipe hold the Lite0 check the lines use by default")
    if args.int8 is None:
        out = export_textile_check(Path(args.out) if args.out else cache_dir() / CACHE_NAME,
                                   variant=VARIANTS[f"efficientnet_{args.backbone}"])
        print(f"textile check: {out} ({args.backbone})")
        return 0
    from sorting.datasets.box_labels import read_subset
    from sorting.models.textile_check_quantize import quantize_textile_check
    from sorting.serving.textile_check import default_model

    if not args.out:
        raise ConfigError("--int8 needs --out: the INT8 check is named in the line config (textile_check.model), "
                          "the cache folder holds the FP32 one")
    photos = photos_of(Path(args.int8), read_subset(args.subset) if args.subset else None)
    result = quantize_textile_check(default_model(), Path(args.out), photos)
    print("\n".join(result.lines()))
    return 0


HEAD_EXAMPLES = """
  textile-sorter fit-textile-check --line serving/line-real-belt.yaml ../shared/data/conveyor-photos/images \\
      --boxes ../shared/data/conveyor-photos/boxes.csv --labels benchmarks/belt_non_garment_boxes.csv \\
      --subset benchmarks/belt_split.json:dev --out runs/textile-head.json
then in the line config: segmentation.textile_check: {head: ../runs/textile-head.json} (its threshold comes with it),
or add --write-line to have it written there
"""


def _fit_textile_check(args: argparse.Namespace) -> int:
    from sorting.apps.textile_head import (
        HeadFitConfig,
        fit_textile_head,
        mistakes_path,
        write_head_into_line,
    )

    head = fit_textile_head(HeadFitConfig(
        line=Path(args.line), photos=Path(args.photos), boxes=Path(args.boxes), out=Path(args.out),
        extra_labels=Path(args.labels) if args.labels else None, subset=args.subset, keep=args.keep,
        group_size=args.group_size, input_size=args.input_size, context=args.context,
        check_model=Path(args.check_model) if args.check_model else None, inputs=args.inputs,
        floor_share=args.floor_share, mirrors=args.mirrors, progress=not args.no_progress))
    fitted, cv = head.info["fitted_on"], head.info["cross_validation"]
    print(f"{fitted['crops']} garment detections ({fitted['garments']} garments) in {fitted['photos']} photos; out of "
          f"fold ({cv['folds']} folds of scenes): area under the curve {cv['auc']:.3f}, at min_score "
          f"{head.min_score:.3f} {cv['garments_kept']:.1%} of garments kept, {cv['others_removed']:.1%} of the rest "
          f"removed; class floor {head.info['class_floor']['value']:.4f} (below it: "
          f"{head.info['class_floor']['garments_below']:.0%} of garments, {head.info['class_floor']['others_below']:.0%} "
          f"of the rest); labelled in the photos: {fitted['labels_by_kind']}\ntextile head: {args.out} (its scores: "
          f"{Path(args.out).with_suffix('.png')})")
    sheet = mistakes_path(args.out)
    if sheet.is_file():
        print(f"the crops it gets wrong out of fold: {sheet} (look there for a garment box drawn loosely, a piece of a "
              "garment or a garment merged with an object: a label or the segmentation fixes those, not the head)")
    if args.write_line:
        line = write_head_into_line(args.line, args.out, check_model=args.check_model)
        print(f"segmentation.textile_check.head{' and .model' if args.check_model else ''} written into {line} "
              "(previous file: .bak)")
    return 0


PROPOSE_EXAMPLES = """
  textile-sorter propose-labels --line serving/line-my-belt.yaml setup-photos/ --out runs/labels
then correct runs/labels/boxes.csv in the browser (textile-sorter label-boxes runs/labels/boxes.csv), or by hand with
the numbered sheets in runs/labels/sheets/ beside it (a kind changed, a row that is belt or a piece of a garment
deleted, a missed item added), and fit the head on it:
  textile-sorter fit-textile-check --line serving/line-my-belt.yaml setup-photos/ --boxes runs/labels/boxes.csv \\
      --out serving/line-my-belt-head.json --write-line
"""


def _propose_labels(args: argparse.Namespace) -> int:
    from sorting.apps.label_proposals import propose_labels

    result = propose_labels(args.line, args.photos, args.out, subset=args.subset, progress=not args.no_progress)
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(result.boxes.items())) or "nothing"
    print(f"{result.photos} photos: {kinds} -> {result.csv_path} (numbered sheets: {result.sheets})"
          + "".join(f"\n{why}" for why in result.skipped))
    print(f"correct the boxes file (kinds, rows that are no item, missed items: textile-sorter label-boxes "
          f"{result.csv_path}), then fit the head on it: "
          f"textile-sorter fit-textile-check --line {args.line} {args.photos} --boxes {result.csv_path} --out HEAD.json "
          "--write-line")
    return 0


LABEL_EXAMPLES = """
  textile-sorter label-boxes runs/labels/boxes.csv      # correct what propose-labels proposed
  textile-sorter label-boxes new-boxes.csv --photos setup-photos/   # start a file from a folder of photos
then open http://127.0.0.1:8090/ (drag to draw a box; click one, then g / h / o for its kind or Del, or drag its
edges; Ctrl+Z takes a change back; arrow keys move between photos); every change is written to the file at once (the
file as it was: .bak beside it). Ctrl-C stops it.
"""


def _label_boxes(args: argparse.Namespace) -> int:
    from sorting.apps.labeller import BoxFile, start_labeller

    boxes = BoxFile(args.boxes, photos_dir=args.photos)
    handle = start_labeller(boxes, port=args.port)
    print(f"{len(boxes.photos)} photos, {sum(len(p.boxes) for p in boxes.photos)} boxes in {boxes.path}: open "
          f"{handle.url} (Ctrl-C to stop)", flush=True)
    handle.serve_until_interrupted()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "label-boxes", "Correct a boxes CSV in the browser, photo by photo: change a box's kind "
                    "(garment, hand, object), delete it, or draw a missed one; each change is written at once.",
                    LABEL_EXAMPLES)
    p.add_argument("boxes", help="boxes CSV (image,x0,y0,x1,y1[,kind]; image names relative to its folder), e.g. "
                   "propose-labels' boxes.csv; a new one with --photos")
    p.add_argument("--photos", help="folder of photos: those not in the file yet are added without boxes")
    p.add_argument("--port", type=int, default=8090, help="port on 127.0.0.1 (default 8090)")
    p.set_defaults(func=_label_boxes)
    p = add_command(sub, "propose-labels", "Write the line's detections on a folder of photos as a boxes CSV with "
                    "kinds (garment, hand, object) and numbered sheets: labels to correct for fit-textile-check, "
                    "instead of boxes to draw.", PROPOSE_EXAMPLES)
    p.add_argument("--line", required=True, help="line config whose segmentation proposes the boxes")
    p.add_argument("photos", help="folder of photos of the belt")
    p.add_argument("--out", "-o", required=True, help="folder for boxes.csv and sheets/")
    p.add_argument("--subset", help="only these photos: FILE (names, one a line) or FILE.json:KEY")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_propose_labels)
    p = add_command(sub, "fit-textile-check", "Fit a linear head on the textile check's ImageNet outputs to a line's "
                    "labelled photos (segmentation.textile_check.head): the line's garment detections matched to "
                    "the boxes teach it what is cloth there.", HEAD_EXAMPLES)
    p.add_argument("--line", required=True, help="line config whose segmentation makes the crops")
    p.add_argument("photos", help="folder of the labelled photos")
    p.add_argument("--boxes", required=True, help="boxes CSV: image,x0,y0,x1,y1[,kind] (without kind: garments; "
                   "propose-labels writes one with kinds to correct)")
    p.add_argument("--labels", help="non-garment labels: image,x0,y0,x1,y1,kind")
    p.add_argument("--subset", help="only these photos: FILE (names, one a line) or FILE.json:KEY")
    p.add_argument("--out", "-o", required=True,
                   help="head file to write (JSON); beside it a plot of its out-of-fold scores (.png) and a sheet of "
                        "the crops it gets wrong out of fold (-mistakes.png)")
    p.add_argument("--keep", type=float, default=0.95, help="share of garments the threshold keeps, out of fold")
    p.add_argument("--group-size", type=int, default=10,
                   help="photos numbered alike (number // this) are one scene and stay in one fold")
    p.add_argument("--input-size", type=int, default=224,
                   help="crop side in px (the network's native 224; 128 costs a third, see serving/REAL_BELT.md)")
    p.add_argument("--context", type=float, default=1.2,
                   help="each crop is the detection's box grown by this about its centre (1.2: chosen by scene "
                   "cross-validation on the conveyor photos; 1 crops the box alone); kept in the head file")
    p.add_argument("--check-model", help="the check's network to fit on, e.g. an INT8 file from export-textile-check "
                   "--int8 (default: the line's); with --write-line the line's textile_check.model points at it too")
    p.add_argument("--inputs", choices=("logprobs", "features"), default="logprobs",
                   help="what the head reads of each crop: the 1,000 ImageNet log-probabilities, or the network's "
                   "last feature map averaged over its cells (1,280 values, standardised); kept in the head file")
    p.add_argument("--floor-share", type=float, default=0.005,
                   help="the class floor is set where this share of the labelled garment crops falls below it "
                   "(below the floor, ImageNet's textile classes see no cloth, whatever the head says)")
    p.add_argument("--mirrors", action="store_true",
                   help="fit the head on each crop and its left-right and top-bottom mirror images too, and have the "
                   "line score their mean where the crop alone is near a threshold (about 1.6 times the line's time "
                   "per photo)")
    p.add_argument("--write-line", action="store_true", help="point the line's textile_check.head at the new head")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_fit_textile_check)
    p = add_command(sub, "export-textile-check", "Write the textile check (ImageNet EfficientNet-Lite0 from its "
                    "PyPI package: is a detection's crop cloth?) as ONNX for segmentation.textile_check.",
                    TEXTILE_EXAMPLES)
    p.add_argument("--out", "-o", help="ONNX file to write (default: the cache folder the line reads)")
    p.add_argument("--int8", metavar="PHOTOS", help="write an INT8 check instead (about twice as fast on a CPU), "
                   "calibrated on random crops of this folder's photos of the belt (no labels needed)")
    p.add_argument("--subset", help="with --int8: only these photos, FILE (names, one a line) or FILE.json:KEY")
    p.add_argument("--backbone", choices=("lite0", "lite1", "lite2"), default="lite0",
                   help="the ImageNet network (default Lite0; Lite1 and Lite2 scored lower in scene cross-validation "
                   "on the conveyor photos, serving/REAL_BELT.md); a head is fitted on it with fit-textile-check "
                   "--check-model")
    p.set_defaults(func=_export_textile_check)
    p = add_command(sub, "train-belt-detector", "Train the learned detector of garments, hands and objects on a belt "
                    "(segmentation.detector) from labelled photos and/or synthetic frames; writes an ONNX file.",
                    EXAMPLES)
    p.add_argument("--config", "-c", help="recipe YAML (training/belt-detector.yaml); omit to give every key as KEY=VALUE")
    p.add_argument("--out", "-o", help="copy the ONNX file here too (default: only in the run folder)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. optim.epochs=10")
    p.set_defaults(func=_train_belt_detector)
