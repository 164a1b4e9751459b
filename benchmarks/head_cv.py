"""Grouped CV of the *trainer's* linear head on cached features: which optimiser settings reach the probe.

The product recipes train the head with ``textile-sorter train`` (AdamW, decoupled weight decay, cosine
schedule, label smoothing, dropout, class weights), not with a logistic-regression solver. This script
trains exactly that head on the features of ``benchmarks/cache_features.py`` (standardised on the fold's
training rows, as the frozen backbones' buffers are; features averaged over the backbone's in-graph views),
with the trainer's optimiser, schedule (``sorting.training.trainer.lr_factor``) and loss, on the folds of ``textile-sorter cross-validate``. It answers what of
the shipped recipe (weight decay 1.0, 60 epochs, dropout 0.5, label smoothing 0.1, loss weights, 8 texture
views) holds the head back, and which settings the product recipes should use.

    PYTHONPATH=. python benchmarks/head_cv.py fibre4 efficientnet_lite2 260 --features multistage --views mirror \\
        --wd 0.01 0.1 1.0 --epochs 60
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from torch import nn

from benchmarks.probe_cv import FEATURE_SETS, VIEW_SETS
from benchmarks.research import SCORE_HEADER, cv_folds, encode, load_features, scores
from benchmarks.tasks import TASKS
from sorting.training.data import balanced_loss_weights
from sorting.training.engine import lr_factor


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, *, wd: float, lr: float, epochs: int, dropout: float,
               smoothing: float, balance: str, batch: int, seed: int = 0) -> nn.Module:
    """The trainer's head on cached rows ``x`` (V, N, D): each epoch draws one cached view per image.

    The same steps as ``textile-sorter train`` on cached features (AdamW with weight decay on the weights only,
    linear warm-up for one epoch then cosine to 1% (``sorting.training.trainer.lr_factor``), shuffled batches,
    the last incomplete batch dropped, cross-entropy with label smoothing and the recipe's class weights), written as a plain tensor loop: the DataLoader of the trainer costs more than the head here."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(x.shape[2], n_classes))
    decay = [p for p in head.parameters() if p.ndim > 1]
    no_decay = [p for p in head.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": wd, "lr": lr},
                                   {"params": no_decay, "weight_decay": 0.0, "lr": lr}])
    rows, targets = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    n = len(y)
    steps = n // batch if n > batch else 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total_steps=steps * epochs, warmup_steps=steps, schedule="cosine", min_ratio=0.01))
    weight = None
    if balance != "none":
        w = balanced_loss_weights(np.bincount(y, minlength=n_classes))
        if balance == "sqrt_loss_weights":
            w = np.sqrt(w) / np.sqrt(w).mean()
        weight = torch.tensor(w, dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        views = torch.randint(rows.shape[0], (n,), generator=gen)
        for step in range(steps):
            idx = order[step * batch: (step + 1) * batch]
            loss = loss_fn(head(rows[views[idx], idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return _Heads(head).eval()


class _Heads(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fibre": self.head(x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("backbone")
    parser.add_argument("size", type=int)
    parser.add_argument("--features", default="multistage", choices=sorted(FEATURE_SETS))
    parser.add_argument("--views", default="mirror", choices=sorted(VIEW_SETS), help="averaged in-graph")
    parser.add_argument("--train-views", nargs="*", default=[],
                        help="extra cached views drawn as training rows (e.g. texture1 texture2 texture3)")
    parser.add_argument("--wd", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    parser.add_argument("--lr", nargs="+", type=float, default=[1e-3])
    parser.add_argument("--epochs", nargs="+", type=int, default=[60])
    parser.add_argument("--dropout", nargs="+", type=float, default=[0.0])
    parser.add_argument("--smoothing", nargs="+", type=float, default=[0.0])
    parser.add_argument("--balance", choices=["none", "loss_weights", "sqrt_loss_weights"], default="none",
                        help="class weights of the loss, as the recipe key `balance`")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--confusion", action="store_true", help="print each setting's pooled confusion matrix")
    parser.add_argument("--fold-seeds", nargs="+", type=int, default=[0],
                        help="fold assignments (cross-validate --seed); more than one adds their pooled accuracies")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two on a loaded machine
    task = TASKS[args.task]
    data = load_features(task.manifest, args.backbone, args.size, task.resize)
    fold_sets = [cv_folds(task.manifest, task.folds, seed=seed, group_by=task.group_by) for seed in args.fold_seeds]
    y = encode(data.fibre if task.head == "fibre" else data.colour, task.classes)
    names = FEATURE_SETS[args.features]
    x = data.block(names, VIEW_SETS[args.views]).mean(0, keepdims=True)
    if args.train_views:
        x_extra = data.block(names, args.train_views)
        x_train_all = np.concatenate([x, x_extra])
    else:
        x_train_all = x
    print(f"## {task.name}, {args.backbone} {args.size} px, {args.features} averaged over {args.views}; training views: "
          f"{['avg', *args.train_views]}; balance {args.balance}; batch {args.batch}\n")
    extra = [name for name, _ in task.subsets(data)]
    if len(fold_sets) > 1:
        extra.append(f"pooled acc, fold seeds {' / '.join(map(str, args.fold_seeds))} (mean)")
    print(f"| wd | lr | epochs | dropout | smoothing | {SCORE_HEADER} | " + " | ".join(extra) + " |\n"
          + "|---:" * (10 + len(extra)) + "|")
    n_classes = len(task.classes)
    for wd, lr, epochs, dropout, smoothing in itertools.product(args.wd, args.lr, args.epochs, args.dropout, args.smoothing):
        settings = {"wd": wd, "lr": lr, "epochs": epochs, "dropout": dropout, "smoothing": smoothing,
                    "balance": args.balance, "batch": args.batch}
        runs = [oof_head_logits(x, x_train_all, y, folds, n_classes, settings) for folds in fold_sets]
        s = scores(runs[0], y, fold_sets[0], n_classes)
        parts = [f"{scores(runs[0], y, fold_sets[0], n_classes, mask=m).accuracy:.1%}" for _, m in task.subsets(data)]
        if len(runs) > 1:
            accs = [scores(z, y, f, n_classes).accuracy for z, f in zip(runs, fold_sets)]
            parts.append(" / ".join(f"{a:.1%}" for a in accs) + f" ({np.mean(accs):.1%})")
        print(f"| {wd:g} | {lr:g} | {epochs} | {dropout:g} | {smoothing:g} | {s.row()} | " + " | ".join(parts) + " |",
              flush=True)
        if args.confusion:
            print(confusion_table(runs[0], y, task.classes), flush=True)


def confusion_table(logits: np.ndarray, y: np.ndarray, classes: list[str]) -> str:
    """Pooled out-of-fold confusion (rows: true class, columns: predicted) over the classes that occur."""
    keep = y >= 0
    pred = logits[keep].argmax(1)
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(cm, (y[keep], pred), 1)
    used = [i for i in range(len(classes)) if cm[i].sum() or cm[:, i].sum()]
    lines = ["", "| true \\ predicted | " + " | ".join(classes[i] for i in used) + " |",
             "|---" + "|---:" * len(used) + "|"]
    lines += [f"| {classes[i]} | " + " | ".join(str(cm[i, j]) for j in used) + " |" for i in used]
    return "\n".join(lines) + "\n"


def oof_head_logits(x: np.ndarray, x_train: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int,
                    settings: dict) -> np.ndarray:
    """Out-of-fold logits of :func:`train_head` (``x``: test views averaged; ``x_train``: the training views)."""
    logits = np.zeros((len(y), n_classes))
    for k in np.unique(folds):
        train = (folds != k) & (y >= 0)
        logits[folds == k] = fit_predict(x_train[:, train], y[train], x[0, folds == k], n_classes, settings)
    return logits


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, settings: dict) -> np.ndarray:
    """Standardise on the training rows' view 0 (as the frozen backbones' buffers), train the head, predict."""
    mean = x_train[0].mean(0)
    std = np.maximum(x_train[0].std(0, ddof=1), 1e-3)
    model = train_head((x_train - mean) / std, y_train, n_classes, **settings)
    with torch.no_grad():
        return model(torch.from_numpy((x_test - mean) / std).float())["fibre"].numpy()


if __name__ == "__main__":
    main()
