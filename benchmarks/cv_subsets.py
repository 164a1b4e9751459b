"""Out-of-fold accuracy of a ``textile-sorter cross-validate`` run on the subsets issue 15 scores.

``cross-validate`` reports every head over all its images; the fabric-closeups targets are set on subsets: fibre
over cotton / polyester / other (wool and mixed apart, too few samples), colour over the colours labelled on at
least 3 samples. This reads the fold models' predictions (``<cv>/fold-*/eval/predictions.csv``: each image once,
by the model that never saw it) and prints, per subset, accuracy and bin purity at 20% reject (threshold on the
pooled confidences), then the recall of each class.

    PYTHONPATH=. python benchmarks/cv_subsets.py runs/cv/fabric-closeups-fibre closeups-fibre
    PYTHONPATH=. python benchmarks/cv_subsets.py runs/cv/fabric-closeups-colour closeups-colour
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from benchmarks.tasks import CLOSEUP_FIBRE_SUBSETS, MIN_SAMPLES, TASKS, Task, frequent_colours
from sorting.datasets.manifest import read_manifest

REJECT = 0.2


def read_predictions(cv_dir: Path, head: str) -> list[dict[str, str]]:
    """Every fold's test predictions of ``head``."""
    files = sorted(cv_dir.glob("fold-*/eval/predictions.csv"))
    if not files:
        raise FileNotFoundError(f"no {cv_dir}/fold-*/eval/predictions.csv (run textile-sorter cross-validate)")
    rows = []
    for path in files:
        with open(path, newline="", encoding="utf-8") as fh:
            rows += [r for r in csv.DictReader(fh) if r["head"] == head]
    return rows


def subsets(task: Task) -> dict[str, list[str]]:
    """Subset name -> its true classes."""
    if task.name == "closeups-fibre":
        return {"all": list(task.classes), **CLOSEUP_FIBRE_SUBSETS}
    if task.name != "closeups-colour":
        return {"all": list(task.classes)}
    rows = read_manifest(task.manifest).rows
    frequent = frequent_colours(np.array([r.colour or "" for r in rows]), np.array([r.garment or "" for r in rows]))
    return {"all": list(task.classes), f"colours with >= {MIN_SAMPLES} samples": frequent}


def purity_at_reject(correct: np.ndarray, confidence: np.ndarray, rate: float = REJECT) -> float:
    """Accuracy of the most confident ``1 - rate`` of the rows."""
    keep = np.argsort(-confidence, kind="stable")[: int(round(len(correct) * (1 - rate)))]
    return float(correct[keep].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("task", choices=sorted(TASKS))
    args = parser.parse_args()
    task = TASKS[args.task]
    rows = read_predictions(args.cv_dir, task.head)
    true = np.array([r["true"] for r in rows])
    correct = np.array([r["correct"] == "1" for r in rows])
    confidence = np.array([float(r["confidence"]) for r in rows])
    print(f"## {args.cv_dir}: {task.head}, out-of-fold predictions of {len(rows)} images\n")
    print(f"| subset | images | accuracy | purity @ {REJECT:.0%} reject |\n|---|---:|---:|---:|")
    for name, classes in subsets(task).items():
        m = np.isin(true, classes)
        if m.any():
            print(f"| {name} ({', '.join(classes)}) | {int(m.sum())} | {correct[m].mean():.1%} | "
                  f"{purity_at_reject(correct[m], confidence[m]):.1%} |")
    print("\n| class | images | recall |\n|---|---:|---:|")
    for c in task.classes:
        m = true == c
        if m.any():
            print(f"| {c} | {int(m.sum())} | {correct[m].mean():.1%} |")


if __name__ == "__main__":
    main()
