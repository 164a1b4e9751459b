"""What is in a spectral dataset: spectra and swatches per class and the mean spectrum of each class (PNG)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sorting.datasets.spectra_store import SpectralSet, load_spectral_set


@dataclass
class SpectralStats:
    n: int
    grid: str
    spectra: Counter[str]
    swatches: Counter[str]
    sources: Counter[str]

    def format(self) -> str:
        lines = [f"{self.n} spectra on grid {self.grid} nm; sources: "
                 + ", ".join(f"{s} {n}" for s, n in sorted(self.sources.items())),
                 f"{'class':<14}{'spectra':>8}{'swatches':>10}"]
        lines += [f"{c:<14}{self.spectra[c]:>8}{self.swatches[c]:>10}" for c in sorted(self.spectra)]
        return "\n".join(lines)


def plot_class_means(data: SpectralSet, path: str | Path, *, title: str = "") -> Path:
    """Mean absorbance per class with a +-1 standard deviation band, one line per class."""
    fig = Figure(figsize=(9, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = data.grid.nm
    labels = np.array([r.fibre or "unlabelled" for r in data.rows])
    for name in sorted(set(labels)):
        block = data.absorbance[labels == name]
        mean, std = block.mean(axis=0), block.std(axis=0)
        (line,) = ax.plot(x, mean, label=f"{name} ({len(block)})", linewidth=1.4)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.12, linewidth=0)
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("absorbance (AU)")
    ax.set_title(title or "mean spectrum per class (band: +-1 std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def spectral_stats(manifest_path: str | Path, out_png: str | Path | None = None) -> tuple[SpectralStats, Path]:
    """Counts per class and the mean-spectrum chart (default ``<stem>.spectra.png`` beside the manifest)."""
    data = load_spectral_set(manifest_path)
    swatches: Counter[str] = Counter()
    for group in {(r.fibre or "unlabelled", r.garment or r.path) for r in data.rows}:
        swatches[group[0]] += 1
    stats = SpectralStats(len(data), data.grid.spec(), Counter(r.fibre or "unlabelled" for r in data.rows), swatches,
                          Counter(r.source or "" for r in data.rows))
    manifest_path = Path(manifest_path)
    png = Path(out_png) if out_png else manifest_path.with_name(manifest_path.stem + ".spectra.png")
    return stats, plot_class_means(data, png, title=f"{manifest_path.name}: mean spectrum per class (+-1 std)")
