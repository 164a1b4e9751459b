"""Instrument shift of a spectral recipe: train on one session, score another instrument's session, and how much
the mean-spectrum offset transfer (a few standards scanned on both) and the preprocessing choice win back.

    python benchmarks/nir_instrument_shift.py --train runs/data/nir-swatches.csv --other runs/data/nir-single.csv \
        --recipe training/nir-linear.yaml --standards 10 -o runs/bench/nir-shift

The first ``--standards`` scans (file-name order) of each class of the other session are the transfer standards;
every figure is measured on the remaining scans, with and without the transfer, for the recipe's preprocessing
and for the variants listed in PREPROCESS_VARIANTS (a study: the shipped preprocessing is chosen by grouped CV).
Writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sorting.datasets.spectra_transfer import MeanOffsetTransfer
from sorting.models.spectral_onnx import SpectralMetadata
from sorting.training.spectral import (
    label_list,
    load_training_set,
    train_spectral_model,
)
from sorting.training.spectral_config import load_spectral_config
from sorting.training.spectral_eval import TorchSpectralPredictor

PREPROCESS_VARIANTS = {
    "raw absorbance": {"snv": False, "savgol_window": 0, "derivative": 0},
    "SNV": {"snv": True, "savgol_window": 0, "derivative": 0},
    "SNV + SG 1st derivative (11)": {"snv": True, "savgol_window": 11, "savgol_polyorder": 2, "derivative": 1},
    "SNV + SG 2nd derivative (15)": {"snv": True, "savgol_window": 15, "savgol_polyorder": 3, "derivative": 2},
}


def _accuracy(pred: list[str], truth: np.ndarray) -> dict[str, float]:
    out = {str(c): float(np.mean(np.array(pred)[truth == c] == c)) for c in sorted(set(truth))}
    out["mean"] = float(np.mean(list(out.values())))
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    config = load_spectral_config(args.recipe, ["composition=null", "progress=false"])
    train = load_training_set([args.train], None)
    other = load_training_set([args.other], None)
    order = np.argsort([r.path for r in other.rows], kind="stable")
    truth = np.array([r.fibre for r in other.rows])
    is_standard = np.zeros(len(other), dtype=bool)
    for cls in set(truth):
        is_standard[[i for i in order if truth[i] == cls][: args.standards]] = True
    train_truth = np.array([r.fibre for r in train.rows])
    transfer = MeanOffsetTransfer.fit(train.absorbance, other.absorbance[is_standard], ref_labels=list(train_truth),
                                      new_labels=list(truth[is_standard]))
    test = ~is_standard
    results = {}
    variants = {"recipe": config.preprocess.model_dump(), **PREPROCESS_VARIANTS}
    for name, pre in variants.items():
        cfg = config.model_copy(update={"preprocess": config.preprocess.model_validate(pre)})
        labels = label_list(list(train_truth), cfg.data.taxonomy)
        trained = train_spectral_model(train, labels, cfg, seed=config.seed)
        meta = SpectralMetadata(cfg.name, "shift", labels, train.grid, {}, "bench", trained.temperature, trained.ood)
        predictor = TorchSpectralPredictor(trained.model, meta)
        plain = predictor.predict(other.absorbance[test])
        moved = predictor.predict(transfer.apply(other.absorbance[test]))
        results[name] = {"preprocess": pre, "plain": _accuracy(plain.top1(), truth[test]),
                         "transfer": _accuracy(moved.top1(), truth[test]),
                         "ood_plain": float(plain.ood.mean()), "ood_transfer": float(moved.ood.mean())}
        print(f"{name:<32} plain {results[name]['plain']['mean']:.1%}, transfer {results[name]['transfer']['mean']:.1%}",
              flush=True)
    return {"recipe": args.recipe, "train": args.train, "other": args.other, "standards_per_class": args.standards,
            "n_test": int(test.sum()), "results": results}


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    classes = [c for c in next(iter(report["results"].values()))["plain"] if c != "mean"]
    lines = [f"Trained on `{report['train']}`, scored on `{report['other']}` ({report['n_test']} scans; "
             f"{report['standards_per_class']} per class used as transfer standards)", "",
             "| preprocessing | " + " | ".join(classes) + " | mean | with mean-offset transfer: " + " / ".join(classes)
             + " | mean |", "|---|" + "---:|" * (len(classes) + 3)]
    for name, r in report["results"].items():
        plain = " | ".join(f"{r['plain'][c]:.1%}" for c in classes)
        moved = " / ".join(f"{r['transfer'][c]:.1%}" for c in classes)
        lines.append(f"| {name} | {plain} | {r['plain']['mean']:.1%} | {moved} | {r['transfer']['mean']:.1%} |")
    Path(str(out) + ".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="spectral manifest of the training session")
    parser.add_argument("--other", required=True, help="spectral manifest of the other instrument/session")
    parser.add_argument("--recipe", default="training/nir-linear.yaml")
    parser.add_argument("--standards", type=int, default=10, help="transfer standards per class (10)")
    parser.add_argument("-o", "--out", type=Path, default=Path("runs/bench/nir-shift"))
    args = parser.parse_args()
    write(run(args), args.out)


if __name__ == "__main__":
    main()
