"""Grouped CV of the *trainer's* linear head on cached features: which optimiser settings reach the probe.

The product recipes train the head with ``textile-sorter train`` (AdamW, decoupled weight decay, cosine
schedule, label smoothing, dropout, class weights), not with a logistic-regression solver. This script
trains exactly that head on the features of ``benchmarks/cache_features.py`` (standardised on the fold's
training rows, as the frozen backbones' buffers are; features averaged over the backbone's in-graph views),
with the trainer's own loop (``sorting.training.loop.train_one_epoch``) and schedule
(``sorting.training.trainer.lr_factor``), on the folds of ``textile-sorter cross-validate``. It answers what of
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
from torch.utils.data import DataLoader

from benchmarks.probe_cv import FEATURE_SETS, VIEW_SETS
from benchmarks.research import SCORE_HEADER, cv_folds, encode, load_features, scores
from benchmarks.tasks import TASKS
from sorting.training.data import balanced_loss_weights
from sorting.training.feature_cache import CachedFeatures, FeatureDataset, PackedLayout
from sorting.training.loop import StepSettings, train_one_epoch
from sorting.training.trainer import lr_factor


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, *, wd: float, lr: float, epochs: int, dropout: float,
               smoothing: float, weighted: bool, batch: int, seed: int = 0) -> nn.Module:
    """The trainer's head on cached rows ``x`` (V, N, D): each epoch draws one cached view per image."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(x.shape[2], n_classes))
    model = _Heads(head)
    decay = [p for p in head.parameters() if p.ndim > 1]
    no_decay = [p for p in head.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": wd, "lr": lr},
                                   {"params": no_decay, "weight_decay": 0.0, "lr": lr}])
    cached = CachedFeatures(torch.from_numpy(x).float(), torch.from_numpy(y[:, None]), PackedLayout(((x.shape[2],),)))
    loader = DataLoader(FeatureDataset(cached, seed=seed), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=len(y) > batch)
    total = len(loader) * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total_steps=total, warmup_steps=len(loader), schedule="cosine", min_ratio=0.01))
    weight = None
    if weighted:
        weight = torch.tensor(balanced_loss_weights(np.bincount(y, minlength=n_classes)), dtype=torch.float32)
    criteria = {"fibre": nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)}
    settings = StepSettings(("fibre",), torch.device("cpu"))
    for epoch in range(epochs):
        train_one_epoch(model, loader, optimizer, scheduler, criteria, settings, epoch=epoch, progress=False)
    return model.eval()


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
    parser.add_argument("--weighted", action="store_true", help="inverse-frequency loss weights (balance: loss_weights)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    task = TASKS[args.task]
    data = load_features(task.manifest, args.backbone, args.size, task.resize)
    folds = cv_folds(task.manifest, task.folds, group_by=task.group_by)
    y = encode(data.fibre if task.head == "fibre" else data.colour, task.classes)
    names = FEATURE_SETS[args.features]
    x = data.block(names, VIEW_SETS[args.views]).mean(0, keepdims=True)
    if args.train_views:
        x_extra = data.block(names, args.train_views)
        x_train_all = np.concatenate([x, x_extra])
    else:
        x_train_all = x
    print(f"## {task.name}, {args.backbone} {args.size} px, {args.features} averaged over {args.views}; training views: "
          f"{['avg', *args.train_views]}; weighted {args.weighted}\n")
    extra = [name for name, _ in task.subsets(data)]
    print(f"| wd | lr | epochs | dropout | smoothing | {SCORE_HEADER} | " + " | ".join(extra) + " |\n"
          + "|---:" * (10 + len(extra)) + "|")
    n_classes = len(task.classes)
    for wd, lr, epochs, dropout, smoothing in itertools.product(args.wd, args.lr, args.epochs, args.dropout, args.smoothing):
        logits = np.zeros((len(y), n_classes))
        for k in np.unique(folds):
            train = (folds != k) & (y >= 0)
            mean = x[0, train].mean(0)
            std = np.maximum(x[0, train].std(0, ddof=1), 1e-3)
            model = train_head((x_train_all[:, train] - mean) / std, y[train], n_classes, wd=wd, lr=lr, epochs=epochs,
                               dropout=dropout, smoothing=smoothing, weighted=args.weighted, batch=args.batch)
            with torch.no_grad():
                test = torch.from_numpy((x[0, folds == k] - mean) / std).float()
                logits[folds == k] = model(test)["fibre"].numpy()
        s = scores(logits, y, folds, n_classes)
        parts = [f"{scores(logits, y, folds, n_classes, mask=m).accuracy:.1%}" for _, m in task.subsets(data)]
        print(f"| {wd:g} | {lr:g} | {epochs} | {dropout:g} | {smoothing:g} | {s.row()} | " + " | ".join(parts) + " |",
              flush=True)


if __name__ == "__main__":
    main()
