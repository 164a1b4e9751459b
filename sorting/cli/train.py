"""``textile-sorter train``: recipe YAML + ``key=value`` overrides -> a calibrated checkpoint.

The ``evaluate`` command lives in :mod:`sorting.cli.evaluate_cmd` (registered below).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sorting.cli.common import add_command

TRAIN_EXAMPLES = """
  textile-sorter train --config training/synthetic-quick.yaml
  textile-sorter train --config training/fibre-photos.yaml optim.epochs=20 batch_size=16
  textile-sorter train --config training/joint.yaml resume=runs/train/joint-20260101-120000/last.pt
  torchrun --nproc_per_node=2 -m sorting train --config training/joint.yaml   # DDP
  textile-sorter train --config training/nir-linear.yaml     # a spectral model (task: spectral)
"""


def _image_or_spectral(args: argparse.Namespace, command: str) -> str:
    """The recipe's task for ``train`` / ``cross-validate``; a belt detector's recipe gets its own command."""
    from sorting.errors import ConfigError
    from sorting.training.belt_detector_config import BELT_DETECTOR_TASK
    from sorting.training.spectral_config import recipe_task

    task = recipe_task(args.config, args.overrides)
    if task == BELT_DETECTOR_TASK:
        raise ConfigError(f"{args.config} is a belt detector's recipe (task: {task}); {command} does not take it: "
                          f"textile-sorter train-belt-detector --config {args.config}")
    return task


def _train(args: argparse.Namespace) -> int:
    from sorting.training.config import load_train_config
    from sorting.training.spectral_config import SPECTRAL_TASK

    if _image_or_spectral(args, "train") == SPECTRAL_TASK:  # spectral dispatch
        from sorting.cli import spectral

        return spectral.train(args)
    from sorting.training.trainer import fit

    config = load_train_config(args.config, args.overrides)
    result = fit(config)
    if result.is_main:
        m = result.metrics
        heads = [k.split("/")[1] for k in m if k.startswith("val/") and k.endswith("/accuracy")]
        scores = ", ".join(f"{h} acc {m[f'val/{h}/accuracy']:.3f} macro-F1 {m[f'val/{h}/macro_f1']:.3f}" for h in heads)
        print(f"trained {result.epochs_run} epochs in {result.seconds:.0f} s (best epoch {result.best_epoch + 1}): val {scores}")
        print(f"checkpoint: {result.best_checkpoint}")
        print(f"run folder: {result.run_dir}")
    return 0


def _cross_validate(args: argparse.Namespace) -> int:
    from sorting.training.spectral_config import SPECTRAL_TASK

    if _image_or_spectral(args, "cross-validate") == SPECTRAL_TASK:  # spectral dispatch
        from sorting.cli import spectral

        return spectral.cross_validate(args)
    from sorting.paths import runs_dir
    from sorting.training.config import load_train_config
    from sorting.training.cross_validate import cross_validate

    config = load_train_config(args.config, args.overrides)
    out = Path(args.out) if args.out else runs_dir() / "cv" / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = cross_validate(config, args.manifest, folds=args.folds, seed=args.seed, group_by=args.group_by, out_dir=out)
    print(report.summary_markdown(), end="")
    print(f"\nwritten: {out / 'cv.md'}, {out / 'cv.json'}, pooled confusion matrices and one folder per fold in {out}")
    if config.tracking.enabled:
        from sorting.training.tracking import MlflowTracker

        tracker = MlflowTracker(config.tracking)
        run_id = tracker.log_report(report)
        if run_id:
            print(f"MLflow run {run_id} in {tracker.tracking_uri}")
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    import torch

    from sorting.training.throughput import training_throughput

    if args.threads:
        torch.set_num_threads(args.threads)
    for amp in ((False, True) if args.compare else (args.amp,)):
        r = training_throughput(args.backbone, batch=args.batch, input_size=args.input_size, steps=args.steps,
                                device=args.device, amp=amp, channels_last=amp)
        print(f"{r.backbone} on {r.device}, batch {r.batch} at {r.input_size} px, "
              f"{'bf16 + channels-last' if amp else 'FP32'}: {r.images_per_s:,.0f} train img/s ({r.steps} steps)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` (and ``evaluate`` from its own module)."""
    parser = add_command(sub, "train", "Train a fibre/colour classifier from a recipe (DDP under torchrun).", TRAIN_EXAMPLES)
    parser.add_argument("--config", "-c", help="training recipe YAML (see training/README.md); omit to give every key as KEY=VALUE")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-4 model.backbone=resnet18")
    parser.set_defaults(func=_train)

    cv = add_command(sub, "cross-validate",
                     "K-fold cross-validation of a recipe on one manifest: every image tested once; mean, spread, pooled.",
                     """
  textile-sorter cross-validate --manifest runs/data/fibre4.csv --config training/fibre-photos.yaml --folds 5
  textile-sorter cross-validate -m runs/data/colour.csv -c training/colour-catalogue.yaml --folds 3 optim.epochs=30
  textile-sorter cross-validate -m runs/data/nir-swatches.csv -c training/nir-linear.yaml --group-by garment
""")
    cv.add_argument("--manifest", "-m", required=True, help="manifest CSV of labelled images (its split column is ignored)")
    cv.add_argument("--config", "-c", required=True, help="training recipe YAML; its data.train is replaced per fold")
    cv.add_argument("--folds", type=int, default=5, help="number of folds (5)")
    cv.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (0)")
    cv.add_argument("--group-by", help="manifest column whose equal values stay in one fold (e.g. garment)")
    cv.add_argument("--out", "-o", help="output folder (default: <runs>/cv/<recipe name>-<time>)")
    cv.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, as for train")
    cv.set_defaults(func=_cross_validate)

    bench = add_command(sub, "bench-train", "Training throughput (images/s) of a backbone + heads, FP32 and mixed precision.",
                        """
  textile-sorter bench-train efficientnet_lite0 --batch 64                       # CPU or GPU (auto)
  textile-sorter bench-train efficientnet_lite0 --batch 256 --device cuda --compare   # FP32 vs bf16 + channels-last
""")
    bench.add_argument("backbone", help="registry backbone name")
    bench.add_argument("--batch", type=int, default=64, help="images per step (64)")
    bench.add_argument("--input-size", type=int, default=224, help="square input side in pixels (224)")
    bench.add_argument("--steps", type=int, default=30, help="timed steps after 3 warm-up steps (30)")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    bench.add_argument("--amp", action="store_true", help="bf16 autocast + channels-last (the trainer's CUDA setting)")
    bench.add_argument("--compare", action="store_true", help="measure FP32 and --amp one after the other")
    bench.add_argument("--threads", type=int, help="torch CPU threads")
    bench.set_defaults(func=_bench_train)

    # --- evaluate: owned by the evaluation engineer, registered from sorting/cli/evaluate_cmd.py ---
    from sorting.cli.evaluate_cmd import register as register_evaluate

    register_evaluate(sub)
