"""``textile-sorter bench`` for spectral ONNX models: latency of one spectrum, throughput of a batch, accuracy.

One scan per garment is what a line asks of the model, so the latency of a batch of 1 (p50 / p95 over
``repeats`` runs after a warm-up) is the figure; the throughput of ``batch`` spectra shows the headroom.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sorting.models.spectral_onnx import SpectralClassifier


def _timed(clf: SpectralClassifier, batch: np.ndarray, repeats: int) -> np.ndarray:
    for _ in range(5):
        clf.predict(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        clf.predict(batch)
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def bench_spectral(models: list[Path], manifests: list[str], *, threads: int = 1, batch: int = 16, repeats: int = 60,
                   output: Path | None = None) -> list[str]:
    """Bench every model (on each ``PATH[:SPLIT]`` manifest's spectra when given); writes ``<output>.json``."""
    from sorting.datasets.spectra_store import load_spectral_set
    from sorting.models.spectral_scores import score_spectra

    results, lines = [], []
    for path in models:
        clf = SpectralClassifier.load(path, threads=threads)
        points = clf.metadata.grid.points
        spectra = np.random.default_rng(0).normal(0.3, 0.05, (batch, points))
        one = _timed(clf, spectra[:1], repeats) * 1e3
        many = _timed(clf, spectra, max(5, repeats // 4))
        row = {"model": str(path), "size_kb": path.stat().st_size / 1e3, "latency_p50_ms": float(np.median(one)),
               "latency_p95_ms": float(np.percentile(one, 95)), "throughput_spectra_s": float(batch / np.median(many)),
               "threads": threads, "accuracy": {}}
        for spec in manifests:
            manifest, _, split = spec.partition(":")
            data = load_spectral_set(manifest, split=split or None, all_rows=not split)
            scores = score_spectra([r.fibre or "" for r in data.rows], clf.predict(data.absorbance))
            row["accuracy"][spec] = scores.get("accuracy")
        results.append(row)
        acc = "; ".join(f"{k}: {v:.1%}" for k, v in row["accuracy"].items() if v is not None)
        lines.append(f"{path.name:<30} {row['size_kb']:6.0f} kB  one spectrum p50 {row['latency_p50_ms']:.3f} ms "
                     f"(p95 {row['latency_p95_ms']:.3f})  {row['throughput_spectra_s']:,.0f} spectra/s in batches of "
                     f"{batch}" + (f"  accuracy {acc}" if acc else ""))
    if output is not None:
        out = Path(str(output) + ".json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        lines.append(f"wrote {out}")
    return lines
