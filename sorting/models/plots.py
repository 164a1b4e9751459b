"""PNG plots of a model's evaluation: confusion matrix, purity vs. reject (matplotlib, headless Agg backend).

:func:`pyplot` and :func:`save_figure` are shared with the training plots (:mod:`sorting.training.plots`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """Import pyplot on the headless Agg backend (lazy: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_confusion_matrix(cm: Any, labels: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Row-normalised confusion matrix (recall per true class) with counts in each cell."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_purity_reject(
    reject_rate: Any,
    purity: Any,
    path: str | Path,
    *,
    title: str = "",
    marks: Mapping[float, Mapping[str, float]] | None = None,
) -> Path:
    """Bin purity (accuracy of accepted items) vs. reject rate as the threshold rises.

    ``marks`` is the :func:`sorting.models.metrics.purity_at_reject` table; its points
    are highlighted on the curve.
    """
    plt = pyplot()
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
    return save_figure(fig, path)
