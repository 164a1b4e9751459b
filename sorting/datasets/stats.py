"""What is in a manifest: class counts per head and split, imbalance, image sizes, a bar chart."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sorting.datasets.manifest import SPLITS, Manifest, read_manifest
from sorting.errors import ConfigError
from sorting.taxonomy import HEADS

UNSPLIT = "unsplit"


@dataclass(frozen=True)
class SizeStats:
    """min / median / max of one image dimension in pixels."""

    min: int
    median: float
    max: int


@dataclass
class ManifestStats:
    """Counts per head -> split -> class (``UNSPLIT`` for rows without a split)."""

    n_rows: int
    counts: dict[str, dict[str, Counter[str]]]
    width: SizeStats | None
    height: SizeStats | None
    n_without_size: int

    def totals(self, head: str) -> Counter[str]:
        """Class counts of one head over all splits."""
        total: Counter[str] = Counter()
        for per_split in self.counts[head].values():
            total.update(per_split)
        return total

    def imbalance(self, head: str) -> float | None:
        """Largest over smallest class count (None when the head has no labels)."""
        totals = self.totals(head)
        return max(totals.values()) / min(totals.values()) if totals else None

    def splits(self) -> list[str]:
        present = {s for head in self.counts.values() for s, c in head.items() if c}
        return [s for s in (*SPLITS, UNSPLIT) if s in present]

    def format(self) -> str:
        """Plain-text table for the CLI."""
        splits = self.splits()
        lines = [f"{self.n_rows} images"]
        for head in HEADS:
            totals = self.totals(head)
            if not totals:
                lines.append(f"{head}: no labels")
                continue
            lines.append(f"{head}: {len(totals)} classes, imbalance max/min {self.imbalance(head):.1f}")
            width = max(len(name) for name in totals)
            lines.append("  " + " " * width + "".join(f"{s:>9}" for s in splits) + f"{'total':>9}")
            for name in sorted(totals, key=lambda n: (-totals[n], n)):
                cells = "".join(f"{self.counts[head][s][name]:>9}" for s in splits)
                lines.append(f"  {name:<{width}}{cells}{totals[name]:>9}")
        if self.width and self.height:
            lines.append(
                f"size px: width {self.width.min}/{self.width.median:g}/{self.width.max}, "
                f"height {self.height.min}/{self.height.median:g}/{self.height.max} (min/median/max)"
            )
        if self.n_without_size:
            lines.append(f"{self.n_without_size} rows without width/height")
        return "\n".join(lines)


def _size_stats(values: list[int]) -> SizeStats | None:
    return SizeStats(min(values), float(statistics.median(values)), max(values)) if values else None


def compute_stats(manifest: Manifest) -> ManifestStats:
    """Count classes per head and split and summarise recorded image sizes."""
    counts: dict[str, dict[str, Counter[str]]] = {h: {s: Counter() for s in (*SPLITS, UNSPLIT)} for h in HEADS}
    for head in HEADS:
        for row in manifest.labelled(head):
            counts[head][row.split or UNSPLIT][getattr(row, head)] += 1
    sized = [row for row in manifest.rows if row.width and row.height]
    return ManifestStats(
        n_rows=len(manifest.rows),
        counts=counts,
        width=_size_stats([row.width for row in sized]),  # type: ignore[misc]
        height=_size_stats([row.height for row in sized]),  # type: ignore[misc]
        n_without_size=len(manifest.rows) - len(sized),
    )


def check_chart_path(path: str | Path) -> Path:
    """``path`` if matplotlib can write a chart in its format (by suffix), else one :class:`ConfigError`."""
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in FigureCanvasAgg.get_supported_filetypes():
        raise ConfigError(f"chart {path}: give an image file name ending in .png, .svg or .pdf "
                          f"(not '{path.suffix}'); the counts are printed, not written")
    return path


def plot_stats(stats: ManifestStats, out_path: str | Path, *, title: str = "") -> Path:
    """Bar chart of class counts per head, stacked by split; written as PNG."""
    heads = [h for h in HEADS if stats.totals(h)] or [HEADS[0]]
    fig = Figure(figsize=(10, 3.6 * len(heads)), layout="constrained")
    FigureCanvasAgg(fig)
    splits = stats.splits()
    for ax, head in zip(fig.subplots(len(heads), 1, squeeze=False)[:, 0], heads):
        totals = stats.totals(head)
        names = sorted(totals, key=lambda n: (-totals[n], n))
        bottom = [0] * len(names)
        for split in splits:
            values = [stats.counts[head][split][n] for n in names]
            ax.bar(names, values, bottom=bottom, label=split)
            bottom = [b + v for b, v in zip(bottom, values)]
        imbalance = stats.imbalance(head)
        ax.set_title(f"{head} ({sum(totals.values())} labelled"
                     + (f", imbalance {imbalance:.1f}" if imbalance else "") + ")")
        ax.set_ylabel("images")
        ax.tick_params(axis="x", labelrotation=45)
        if splits:
            ax.legend()
    if title:
        fig.suptitle(title)
    out_path = check_chart_path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    return out_path


def default_stats_png(manifest_path: str | Path) -> Path:
    """``foo.csv`` -> ``foo.stats.png`` next to it."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(f"{manifest_path.stem}.stats.png")


def manifest_stats(manifest_path: str | Path, out_png: str | Path | None = None) -> tuple[ManifestStats, Path]:
    """Read a manifest, compute its stats and write the chart (default next to the manifest)."""
    if out_png is not None:
        check_chart_path(out_png)
    stats = compute_stats(read_manifest(manifest_path))
    png = plot_stats(stats, out_png or default_stats_png(manifest_path), title=Path(manifest_path).name)
    return stats, png
