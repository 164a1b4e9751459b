"""Inference speed of an ONNX model on onnxruntime: latency (batch 1) and throughput (a batch), warm-up excluded.

Used by ``textile-sorter bench`` (:mod:`sorting.models.bench`, interleaved over several models) and by
``textile-sorter quantize --eval`` (:func:`sorting.models.quantize.compare_models`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sorting.models.onnx_model import INPUT_NAME, OnnxClassifier


class SpeedMeter:
    """Times one model; :meth:`sample` can be called in several rounds, interleaved with other models.

    Interleaving rounds across models spreads the noise of a shared machine over all of them
    instead of penalising whichever model ran during a busy moment.
    """

    def __init__(self, path: Path, *, threads: int, batch: int, warmup: int, seed: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._session = OnnxClassifier.load(path, threads=threads).session
        size = self._session.get_inputs()[0].shape[2]
        rng = np.random.default_rng(seed)
        self._single = {INPUT_NAME: rng.standard_normal((1, 3, size, size)).astype(np.float32)}
        self._many = {INPUT_NAME: rng.standard_normal((batch, 3, size, size)).astype(np.float32)}
        self.batch = batch
        self.latencies: list[float] = []
        self.batch_times: list[float] = []
        for _ in range(warmup):  # first runs allocate memory and pick kernels: excluded
            self._session.run(None, self._single)
        for _ in range(max(1, warmup // 2)):
            self._session.run(None, self._many)

    def sample(self, n_single: int, n_batch: int) -> None:
        for feed, store, n in ((self._single, self.latencies, n_single), (self._many, self.batch_times, n_batch)):
            for _ in range(n):
                start = self._clock()
                self._session.run(None, feed)
                store.append(self._clock() - start)

    def result(self) -> dict[str, float]:
        """Latency p50/p99 (ms, batch 1) and throughput (img/s at ``batch``, median run)."""
        lat = np.asarray(self.latencies) * 1000.0
        return {
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
            "throughput_img_s": float(self.batch / np.median(self.batch_times)),
        }


def measure_speed(path: Path, *, threads: int, batch: int, repeats: int, warmup: int, seed: int = 0) -> dict[str, float]:
    """Latency p50/p99 (ms, batch 1) over ``repeats`` runs and throughput at ``batch`` for one model."""
    meter = SpeedMeter(path, threads=threads, batch=batch, warmup=warmup, seed=seed)
    meter.sample(repeats, max(3, repeats // 5))
    return meter.result()
