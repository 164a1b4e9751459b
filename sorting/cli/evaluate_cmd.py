"""``textile-sorter evaluate MODEL MANIFEST``: score a checkpoint or ONNX model, write metrics + plots.

Registered by :mod:`sorting.cli.train` (``register(sub)``); the work is
:func:`sorting.training.evaluate.evaluate_model`, tracking is
:meth:`sorting.training.tracking.MlflowTracker.log_report`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sorting.cli.common import add_command, add_no_track
from sorting.datasets.manifest import SPLITS
from sorting.paths import runs_dir

EXAMPLES = """
  textile-sorter evaluate runs/train/fibre-photos/best.pt datasets/fibre-photos/manifest.csv --split test
  textile-sorter evaluate model.onnx ../shared/data/colour/manifest.csv --split test --tta --out runs/eval/colour
  textile-sorter evaluate best.pt manifest.csv --no-track --threads 2     # no MLflow run
  mlflow ui --backend-store-uri sqlite:///runs/mlflow.db                  # browse tracked runs
  textile-sorter evaluate models/nir.onnx runs/data/nir-single.csv        # a spectral model on spectra
"""


def _evaluate(args: argparse.Namespace) -> int:
    from sorting.datasets.spectra_store import is_spectral_manifest

    if is_spectral_manifest(args.manifest):  # spectral dispatch: spectra beside the manifest
        from sorting.cli import spectral

        return spectral.evaluate(args)
    from sorting.training.evaluate import evaluate_model

    out = Path(args.out) if args.out else runs_dir() / "eval" / f"{Path(args.model).stem}-{args.split or 'all'}"
    report = evaluate_model(
        args.model, args.manifest, out_dir=out, split=args.split, tta=args.tta,
        batch_size=args.batch_size, threads=args.threads,
    )
    print(report.summary_markdown(), end="")
    print(f"\nwritten: {report.metrics_path}, {report.summary_path} (+ PNGs) in {report.out_dir}")
    if args.track:
        from sorting.training.tracking import MlflowTracker

        tracker = MlflowTracker(experiment=args.experiment)
        run_id = tracker.log_report(report)
        if run_id:
            print(f"MLflow run {run_id} in {tracker.tracking_uri}")
        else:
            print("MLflow logging failed (see the warning above); results are on disk")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command."""
    parser = add_command(
        sub, "evaluate",
        "Evaluate a checkpoint (.pt) or ONNX model on a manifest: accuracy, macro-F1, calibration, purity vs. reject.",
        EXAMPLES,
    )
    parser.add_argument("model", metavar="CHECKPOINT_OR_ONNX", help="a training checkpoint (.pt) or exported .onnx")
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest CSV of labelled images")
    parser.add_argument("--split", choices=SPLITS, help="evaluate only this split (default: every row)")
    parser.add_argument("--out", "-o", help="output folder (default: <runs>/eval/<model>-<split>)")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: average logits over flips")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--threads", type=int, help="CPU threads for inference (default: library default)")
    add_no_track(parser, "the evaluation")
    parser.add_argument("--experiment", default="textile-sorter", help="MLflow experiment name")
    parser.set_defaults(func=_evaluate)
