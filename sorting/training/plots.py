"""PNG plots for evaluation and training runs (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    """Import pyplot on the headless Agg backend (lazy: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_confusion_matrix(cm: Any, labels: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Row-normalised confusion matrix (recall per true class) with counts in each cell."""
    plt = _pyplot()
    counts = np.asarray(cm, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    n = len(labels)
    size = max(4.0, 0.55 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{norm[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center",
                            fontsize=7, color=colour)
    ax.set_title(title or "confusion matrix (row-normalised)")
    return _save(fig, path)


def plot_purity_reject(
    reject_rate: Any,
    purity: Any,
    path: str | Path,
    *,
    title: str = "",
    marks: Mapping[float, Mapping[str, float]] | None = None,
) -> Path:
    """Bin purity (accuracy of accepted items) vs. reject rate as the threshold rises.

    ``marks`` is the :func:`sorting.training.metrics.purity_at_reject` table; its points
    are highlighted on the curve.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.step(np.asarray(reject_rate) * 100, np.asarray(purity) * 100, where="post", lw=1.5, label="purity")
    for rate, row in (marks or {}).items():
        if np.isfinite(row["purity"]):
            ax.plot(row["reject_rate"] * 100, row["purity"] * 100, "o", color="C3")
            ax.annotate(f"{row['purity'] * 100:.1f}% @ {rate * 100:.0f}%",
                        (row["reject_rate"] * 100, row["purity"] * 100),
                        textcoords="offset points", xytext=(5, -12), fontsize=8)
    ax.set_xlabel("reject rate (%)")
    ax.set_ylabel("bin purity = accuracy of accepted items (%)")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title or "purity vs. reject rate")
    return _save(fig, path)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Per-epoch losses (left) and other metrics (right) from a list of metric dicts.

    Each dict is one epoch (``epoch`` key optional); keys containing ``loss`` go on the
    loss panel, every other numeric key on the metric panel.
    """
    plt = _pyplot()
    if not history:
        raise ValueError("no epochs to plot")
    epochs = [float(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    keys = sorted({k for h in history for k, v in h.items()
                   if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    loss_keys = [k for k in keys if "loss" in k]
    metric_keys = [k for k in keys if "loss" not in k and k != "lr"]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group in ((ax_loss, loss_keys), (ax_metric, metric_keys)):
        for key in group:
            xs = [e for e, h in zip(epochs, history) if key in h]
            ys = [float(h[key]) for h in history if key in h]
            ax.plot(xs, ys, marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
    ax_loss.set_title("loss")
    ax_metric.set_title("metrics")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_counts(counts: Mapping[str, int], path: str | Path, *, title: str = "", ylabel: str = "items") -> Path:
    """Bar chart of named counts (e.g. items per bin), names sorted."""
    plt = _pyplot()
    names = sorted(counts)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, [counts[n] for n in names], color="#4c72b0")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return _save(fig, path)


def plot_histogram(values: Sequence[float], path: str | Path, *, title: str = "", xlabel: str = "") -> Path:
    """Histogram of values (e.g. decision latencies)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(list(values) or [0.0], bins=40, color="#55a868")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return _save(fig, path)
