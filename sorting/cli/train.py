"""``textile-sorter train``: recipe YAML + ``key=value`` overrides -> a calibrated checkpoint.

The ``evaluate`` command lives in :mod:`sorting.cli.evaluate_cmd` (registered below).
"""

from __future__ import annotations

import argparse

from sorting.cli.common import add_command

TRAIN_EXAMPLES = """
  textile-sorter train --config training/synthetic-quick.yaml
  textile-sorter train --config training/fibre-photos.yaml optim.epochs=20 batch_size=16
  textile-sorter train --config training/joint.yaml resume=runs/train/joint-20260101-120000/last.pt
  torchrun --nproc_per_node=2 -m sorting train --config training/joint.yaml   # DDP
"""


def _train(args: argparse.Namespace) -> int:
    from sorting.training.config import load_train_config
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


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` (and ``evaluate`` from its own module)."""
    parser = add_command(sub, "train", "Train a fibre/colour classifier from a recipe (DDP under torchrun).", TRAIN_EXAMPLES)
    parser.add_argument("--config", "-c", help="training recipe YAML (see training/README.md); omit to give every key as KEY=VALUE")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-4 model.backbone=resnet18")
    parser.set_defaults(func=_train)

    # --- evaluate: owned by the evaluation engineer, registered from sorting/cli/evaluate_cmd.py ---
    from sorting.cli.evaluate_cmd import register as register_evaluate

    register_evaluate(sub)
