"""PNG plots of training runs and the sorter's figures (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sorting.models.plots import pyplot, save_figure


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Per-epoch losses (left) and other metrics (right) from a list of metric dicts.

    Each dict is one epoch (``epoch`` key optional); keys containing ``loss`` go on the
    loss panel, every other numeric key on the metric panel.
    """
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_counts(counts: Mapping[str, int], path: str | Path, *, title: str = "", ylabel: str = "items") -> Path:
    """Bar chart of named counts (e.g. items per bin), names sorted."""
    plt = pyplot()
    names = sorted(counts)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, [counts[n] for n in names], color="#4c72b0")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return save_figure(fig, path)


def plot_histogram(values: Sequence[float], path: str | Path, *, title: str = "", xlabel: str = "") -> Path:
    """Histogram of values (e.g. decision latencies)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(list(values) or [0.0], bins=40, color="#55a868")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return save_figure(fig, path)
