"""The spectral side of ``train``, ``cross-validate``, ``evaluate``, ``export`` and ``bench`` (issue 13).

The generic commands hand over here (one ``if`` each, marked ``spectral dispatch``): ``train`` /
``cross-validate`` when the recipe says ``task: spectral``, ``evaluate`` when the manifest has spectra beside it,
``export`` for a spectral checkpoint, ``bench`` when every model is a spectral ONNX file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def train(args: argparse.Namespace) -> int:
    from sorting.training.spectral import fit_spectral
    from sorting.training.spectral_config import load_spectral_config

    result = fit_spectral(load_spectral_config(args.config, args.overrides))
    m = result.metrics
    print(f"trained {m['n_train']} spectra of {m['n_swatches']} swatches in {result.seconds:.0f} s; out-of-fold "
          f"(grouped by swatch) accuracy {m['oof/accuracy']:.3f} ({m['oof/accuracy_seen_classes']:.3f} on classes with "
          f"another swatch to learn from), T {m['temperature']:.2f}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"run folder: {result.run_dir}")
    return 0


def cross_validate(args: argparse.Namespace) -> int:
    from sorting.paths import runs_dir
    from sorting.training.spectral_config import load_spectral_config
    from sorting.training.spectral_cv import cross_validate_spectral

    config = load_spectral_config(args.config, args.overrides)
    out = Path(args.out) if args.out else runs_dir() / "cv" / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = cross_validate_spectral(config, args.manifest, folds=args.folds, seed=args.seed,
                                     group_by=args.group_by or "garment", out_dir=out)
    print(report.summary_markdown(), end="")
    print(f"\nwritten: {out / 'cv.md'}, {out / 'cv.json'}, {out / 'confusion_fibre.png'}, {out / 'predictions.csv'}")
    if config.tracking.enabled:
        from sorting.training.tracking import MlflowTracker

        tracker = MlflowTracker(config.tracking)
        run_id = tracker.log_cross_validation(report)  # type: ignore[arg-type]
        if run_id:
            print(f"MLflow run {run_id} in {tracker.tracking_uri}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from sorting.paths import runs_dir
    from sorting.training.spectral_eval import evaluate_spectral

    out = Path(args.out) if args.out else runs_dir() / "eval" / f"{Path(args.model).stem}-{args.split or 'all'}"
    report = evaluate_spectral(args.model, args.manifest, out_dir=out, split=args.split, threads=args.threads)
    print(report.summary_markdown(), end="")
    print(f"\nwritten: {report.metrics_path}, {report.summary_path}, predictions.csv, confusion.png in {out}")
    if args.track:
        from sorting.training.tracking import MlflowTracker

        tracker = MlflowTracker(experiment=args.experiment)
        run_id = tracker.log_evaluation(report)  # type: ignore[arg-type]
        print(f"MLflow run {run_id} in {tracker.tracking_uri}" if run_id else
              "MLflow logging failed (see the warning above); results are on disk")
    return 0


def export(args: argparse.Namespace) -> int:
    from sorting.models.spectral_export import export_spectral_checkpoint

    spectra, source = None, "synthetic"
    if args.check_manifest:
        from sorting.datasets.spectra_store import load_spectral_set

        spectra, source = load_spectral_set(args.check_manifest).absorbance[: args.n_check], "manifest"
    path, check, meta = export_spectral_checkpoint(args.checkpoint, args.output, check_spectra=spectra,
                                                   check_source=source, opset=args.opset)
    extra = ", cotton share head" if meta.composition else ""
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): {meta.model_name} {meta.model_version}, "
          f"{len(meta.labels)} classes on grid {meta.grid.spec()}{extra}")
    print(f"check passed: {check.summary()}")
    if args.track:
        from sorting.training.spectral_tracking import log_spectral_onnx

        run_id = log_spectral_onnx(path)
        print(f"MLflow: {path.name} logged to run {run_id}" if run_id else
              "MLflow logging failed (see the warning above); the model file is written")
    return 0


def bench(args: argparse.Namespace) -> int:
    from sorting.models.spectral_bench import bench_spectral

    lines = bench_spectral([Path(m) for m in args.models], [m for m in args.manifest], threads=args.threads,
                           batch=args.batch, repeats=args.repeats, output=args.output)
    for line in lines:
        print(line)
    return 0


def is_spectral_onnx(path: str) -> bool:
    """True for an ONNX file carrying spectral metadata (cheap: reads the metadata only)."""
    if not path.lower().endswith(".onnx") or not Path(path).is_file():
        return False
    import onnx

    from sorting.models.spectral_onnx import SPECTRAL_SCHEMA_KEY

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # not ONNX: the image bench reports it
        return False
    return any(p.key == SPECTRAL_SCHEMA_KEY for p in proto.metadata_props)
