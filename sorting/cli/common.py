"""Helpers shared by the command modules: one-line argument errors, examples in --help."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as a single line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def add_command(sub: argparse._SubParsersAction, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    """Add a subcommand whose --help ends with an Examples section."""
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog="examples:\n" + examples.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_no_track(parser: argparse.ArgumentParser, what: str = "the model (into its training run when known)") -> None:
    """``--no-track``: skip MLflow for this command (``args.track`` is False)."""
    parser.add_argument("--no-track", dest="track", action="store_false",
                        help=f"do not log {what} to MLflow ($MLFLOW_TRACKING_URI or <runs>/mlflow.db)")


def track_onnx(path: Path) -> None:
    """Log an exported or quantized ONNX file to MLflow (its training run when that is in the store) and say where."""
    from sorting.training.tracking import MlflowTracker

    tracker = MlflowTracker()
    run_id = tracker.log_onnx(path)
    if run_id:
        print(f"MLflow: {path.name} logged to run {run_id}, registered version {tracker.model_version} "
              f"({tracker.tracking_uri})")
    else:
        print("MLflow logging failed (see the warning above); the model file is written")

