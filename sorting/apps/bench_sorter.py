"""``bench-sorter``: sort a synthetic conveyor video offline as fast as it goes and measure it.

The clip is a 640x480 MP4 rendered by the synthetic conveyor world (dense: a fast belt, so
several garments are in view at once) and decoded by OpenCV, so decoding is part of the
loop, as on a line fed by a camera. Figures, against the issue's targets:

* frames/s and items/s over the run (wall clock), p50/p99 frame-to-decision latency;
* loop time per frame against (decode + model inference on that frame's crops) from the
  same run: ``ratio = wall per frame / (decode + classify)`` (with the simulated spectrometer: its own
  time is left out of the loop's, and the spectral model's inference counts as inference). The file is decoded a few frames
  ahead on its own thread (as a camera pipeline decodes while the loop works), so the loop's
  ``read`` stage is only the wait for a decoded frame; the decode time itself is measured on
  the decoder thread (``SourceStats.decode_s``);
* correctness item by item (:mod:`sorting.apps.scoring`);
* resident memory (``/proc/self/statm``) over time: growth after warm-up.

Classifiers: an ONNX model, the *GT oracle* (probabilities from the ground-truth labels of
the garment under the detection: isolates segmentation/tracking errors from model errors),
or both (``oracle=True`` with a model: the model runs on every batch so its cost is
measured, the oracle's probabilities decide). ``minutes`` loops the clip for a fixed time
(the ground truth repeats with shifted frame numbers) for the memory-flat check.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sorting.apps.nir_scoring import (
    NirScore,
    ScanRecord,
    score_nir,
    sim_spectrometer_overrides,
)
from sorting.apps.scoring import DecisionPoint, SortScore, load_ground_truth, score_run
from sorting.datasets.synth.belt_truth import BeltTruth
from sorting.datasets.synth.conveyor import WORLD_VERSION, render_conveyor_clip
from sorting.errors import ConfigError
from sorting.serving.actuators import SimulatedActuator
from sorting.serving.annotate import annotate_frame
from sorting.serving.builder import build_sorter
from sorting.serving.classifier import (
    Classifier,
    ClassScores,
    CropBatch,
    ModelClassifier,
)
from sorting.serving.ejector import FixedSpeed
from sorting.serving.line_config import LineConfig, load_line_config
from sorting.serving.live import LiveFeed, live_feed_for_line
from sorting.serving.loop import SorterLoop
from sorting.serving.records import FrameResult, ItemDecision
from sorting.serving.runner import attach_feed
from sorting.serving.segmentation import Detection
from sorting.serving.sources import Frame, FrameSource, VideoFileSource
from sorting.serving.spectrometer_sim import SimulatedSpectrometer, open_simulated
from sorting.taxonomy import (
    HEADS,
    LAYOUT_HEAD,
    LAYOUT_LABELS,
    SEVERAL_LABEL,
    SINGLE_LABEL,
    load_taxonomy,
)

log = logging.getLogger(__name__)

TARGETS = {"fps": 60.0, "items_per_s": 10.0, "latency_p99_ms": 50.0, "loop_ratio": 1.3, "correct_rate": 0.98,
           "rss_growth": 0.05}
DENSE_BELT_PX_S = 900.0  # 30 px/frame at 30 fps: ~0.2 new garments per frame


@dataclass
class BenchConfig:
    """What to sort and how (see :func:`run_bench`)."""

    line: Path
    out_dir: Path
    model: Path | None = None
    oracle: bool = True
    items: int = 300
    minutes: float | None = None
    threads: int | None = 1
    seed: int = 7
    belt_speed_px_s: float = DENSE_BELT_PX_S
    hard_fraction: float = 0.12
    oracle_layout: bool = False  # the oracle also answers a layout head: touching garments are "several"
    console: bool = False  # the operator's console attached, with a viewer watching its camera stream
    overrides: list[str] = field(default_factory=list)
    progress: bool = True
    spectrometer: str | None = None  # "sim": the simulated spectrometer (sorting.apps.nir_scoring.SIM_SPOTS)
    nir_model: Path = Path("runs/models/nir-line.onnx")  # the line's spectral model (training/nir-line.yaml)
    nir_spectra: Path = Path("runs/data/nir-line.csv")  # the simulator's spectra (its split 'test')
    bins: Path | None = None  # another bins file than the line's


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class LoopingVideoSource(FrameSource):
    """A video file played again and again (frame numbers and times keep counting) until
    ``seconds`` of wall clock have passed; ``seconds=None`` plays it once."""

    def __init__(self, path: Path, *, seconds: float | None = None) -> None:
        super().__init__()
        self.path = path
        self._seconds = seconds
        self._inner = VideoFileSource(path)
        self._offset = 0
        self._decoded_before = 0.0  # decode seconds of the passes already played
        self._clip_frames = 0
        self._deadline: float | None = None
        self.passes = 1
        self.last_index = -1

    @property
    def fps(self) -> float:
        return self._inner.fps

    @property
    def clip_frames(self) -> int:
        return self._clip_frames

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._deadline is None and self._seconds is not None:
            self._deadline = time.perf_counter() + self._seconds
        frame = self._inner.read(timeout_s)
        if frame is None and self._deadline is not None and time.perf_counter() < self._deadline:
            self._offset += self._inner.stats.frames
            self._clip_frames = self._inner.stats.frames
            self._inner.close()
            self._decoded_before += self._inner.stats.decode_s
            self._inner = VideoFileSource(self.path)
            self.passes += 1
            frame = self._inner.read(timeout_s)
        if frame is None:
            self._clip_frames = self._clip_frames or self._inner.stats.frames
            self.exhausted = True
            return None
        index = frame.index + self._offset
        self.last_index = index
        self.stats.frames += 1
        self.stats.decode_s = self._decoded_before + self._inner.stats.decode_s
        return Frame(index, index / self.fps, frame.image)

    def close(self) -> None:
        self._inner.close()
        self.exhausted = True


class GtOracle:
    """A classifier that reads the ground truth: each crop gets one-hot probabilities of the
    GT garment whose track point lies in its detection box (nearest the blob centroid), or
    flat, out-of-distribution probabilities if there is none (a stain). Asked for a layout head,
    it calls a touching garment's blob "several" and any other "single".

    It implements :class:`~sorting.serving.classifier.Classifier`: the batch says which frame and
    which detections the crops come from. ``clip_frames`` is the clip's length once known (the
    benchmark may loop the clip, frame numbers keep counting). With a ``model``, the model also
    runs on the crops (its time is what a real line pays).
    """

    model_id = "gt-oracle"

    def __init__(self, gt: dict[str, Any], labels: dict[str, list[str]], *, clip_frames: Callable[[], int],
                 model: Classifier | None = None):
        self.labels = labels
        self.model = model
        self._clip_frames = clip_frames
        self._by_frame: dict[int, list[tuple[float, float, dict[str, Any]]]] = {}
        for it in gt["items"]:
            for f, x, y in it["track"]:
                self._by_frame.setdefault(int(f), []).append((float(x), float(y), it))

    def use_ood_quantile(self, quantile: float) -> None:
        """The oracle's OOD flags come from the ground truth (a stain); a line's quantile changes nothing."""

    def _item_at(self, frame: int, det: Detection) -> dict[str, Any] | None:
        x, y, w, h = det.bbox
        cx, cy = det.centroid
        inside = [(np.hypot(px - cx, py - cy), it) for px, py, it in self._by_frame.get(frame, [])
                  if x - 10 <= px <= x + w + 10 and y - 10 <= py <= y + h + 10]
        return min(inside, key=lambda c: c[0])[1] if inside else None

    def classify(self, batch: CropBatch) -> ClassScores:
        if self.model is not None:
            self.model.classify(batch)
        period = self._clip_frames()
        local = batch.frame % period if period else batch.frame
        n = len(batch.crops)
        probs = {h: np.zeros((n, len(v)), np.float32) for h, v in self.labels.items()}
        ood = {h: np.zeros(n, bool) for h in self.labels}
        for row, det in enumerate(batch.detections):
            item = self._item_at(local, det)
            if item is not None:  # the layout truth: a touching garment shares its blob
                item = {**item, LAYOUT_HEAD: SEVERAL_LABEL if item.get("hard_reason") == "touching" else SINGLE_LABEL}
            for head, names in self.labels.items():
                if item is None or item.get(head) not in names:
                    probs[head][row] = 1.0 / len(names)
                    ood[head][row] = True
                else:
                    probs[head][row, names.index(item[head])] = 1.0
        return ClassScores(probs, ood)


@dataclass
class BenchResult:
    """Everything ``bench-sorter`` measured (``to_dict`` for JSON)."""

    config: dict[str, Any]
    frames: int
    wall_s: float
    fps: float
    items: int
    items_per_s: float
    latency_ms_p50: float
    latency_ms_p99: float
    loop_ms_per_frame: float
    read_ms_per_frame: float
    decode_ms_per_frame: float
    classify_ms_per_frame: float
    loop_ratio: float | None
    stage_ms: dict[str, float]
    rss_mb: list[tuple[float, float]]
    rss_growth: float
    score: SortScore
    load_avg: tuple[float, float, float]
    passes: int
    nir: NirScore | None = None
    simulator_ms_per_frame: float = 0.0  # the simulated spectrometer's own time, left out of loop_ms_per_frame
    decisions: list[ItemDecision] = field(default_factory=list, repr=False)  # every item's decision (not in JSON)

    def checks(self) -> dict[str, bool | None]:
        """Each target: met (True), missed (False) or not measurable in this run (None)."""
        s = self.score
        return {
            "fps >= 60": self.fps >= TARGETS["fps"],
            "items/s >= 10": self.items_per_s >= TARGETS["items_per_s"],
            "p99 latency < 50 ms": self.latency_ms_p99 < TARGETS["latency_p99_ms"],
            "loop <= 1.3x (decode + inference)": None if self.loop_ratio is None
            else self.loop_ratio <= TARGETS["loop_ratio"],
            "one decision per item": s.one_decision_each,
            "non-hard correct >= 98%": s.correct_rate >= TARGETS["correct_rate"],
            "hard items reject-or-correct": s.hard_safe == s.hard_items,
            "RSS growth < 5%": None if len(self.rss_mb) < 3 else self.rss_growth < TARGETS["rss_growth"],
        }

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("score", "nir", "decisions")}
        out["score"] = self.score.to_dict()
        out["nir"] = self.nir.to_dict() if self.nir is not None else None
        out["checks"] = self.checks()
        return out

    def markdown(self) -> str:
        s = self.score
        lines = [
            "# bench-sorter", "",
            f"config: `{json.dumps(self.config)}`", "",
            f"load average at end: {self.load_avg[0]:.1f} {self.load_avg[1]:.1f} {self.load_avg[2]:.1f} "
            f"(2 shared cores: speeds are noisy)", "",
            "| figure | value | target |", "|---|---|---|",
            f"| frames/s | {self.fps:.1f} | >= 60 |",
            f"| items/s | {self.items_per_s:.2f} | >= 10 |",
            f"| latency p50 / p99 ms | {self.latency_ms_p50:.1f} / {self.latency_ms_p99:.1f} | p99 < 50 |",
            f"| loop ms/frame (decode {self.decode_ms_per_frame:.2f} + classify {self.classify_ms_per_frame:.2f}) "
            f"| {self.loop_ms_per_frame:.2f} (ratio {'n/a' if self.loop_ratio is None else f'{self.loop_ratio:.2f}'})"
            " | <= 1.3x |",
            f"| GT items / decisions | {s.gt_items} / {s.decisions} | |",
            f"| lost / duplicated / phantom / shared pair | {s.lost} / {s.duplicated} / {s.phantom} / {s.shared} "
            "| 0 / 0 / - / - |",
            f"| non-hard correct bin | {s.correct_rate:.1%} ({s.non_hard_correct}/{s.non_hard_total}) | >= 98% |",
            f"| hard items reject-or-correct | {s.hard_safe}/{s.hard_items} | all |",
            f"| reject rate | {s.reject_rate:.1%} | |",
            f"| RSS growth after warm-up | {self.rss_growth:+.1%} ({len(self.rss_mb)} samples, "
            f"{self.rss_mb[-1][1] if self.rss_mb else 0:.0f} MB) | < 5% |", "",
            "stage ms/frame: " + ", ".join(f"{k} {v:.2f}" for k, v in self.stage_ms.items()), "",
            "per bin: " + ", ".join(f"{k}={v}" for k, v in s.per_bin.items()), "",
            "reasons: " + ", ".join(f"{k}={v}" for k, v in s.per_reason.items()), "",
        ]
        if self.nir is not None:
            lines += [f"loop time excludes the simulated spectrometer's own {self.simulator_ms_per_frame:.2f} ms/frame "
                      "(the instrument's work, not the line's)", "", *self.nir.markdown()]
        if s.errors:
            lines += ["## items not in their correct bin (first 30)", "", "| id | garment | colour | hard | "
                      "expected | got | reason | extra |", "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {e['id']} | {e['garment']} | {e['colour']} | {e['hard']} | {e['expected_bin']} | "
                      f"{e['bin']} | {e['reason']} | {e['extra_decisions']} |" for e in s.errors[:30]]
        return "\n".join(lines) + "\n"


def _repeat_ground_truth(gt: dict[str, Any], clip_frames: int, passes: int) -> dict[str, Any]:
    """The ground truth of a clip played ``passes`` times back to back."""
    items = []
    for p in range(passes):
        for it in gt["items"]:
            shifted = dict(it, id=it["id"] + p * 1_000_000,
                           touching_ids=[t + p * 1_000_000 for t in it.get("touching_ids", [])],
                           track=[[f + p * clip_frames, x, y] for f, x, y in it["track"]])
            items.append(shifted)
    return dict(gt, items=items)


def _oracle_labels(model: ModelClassifier | None, layout: bool) -> dict[str, list[str]]:
    """The heads the oracle answers: fibre and colour (the model's label sets if there is one), and the layout."""
    tax = load_taxonomy()
    labels = {h: list(v) for h, v in model.labels.items() if h in HEADS} if model is not None else \
        {"fibre": list(tax.fibre), "colour": list(tax.colour)}
    if layout:
        labels[LAYOUT_HEAD] = list(LAYOUT_LABELS)
    return labels


def _line_config(bench: BenchConfig, video: Path, speed_px_s: float) -> LineConfig:
    overrides = [f"camera.source={video}", f"log.path={bench.out_dir / 'decisions.sqlite'}",
                 f"belt.speed_px_s={speed_px_s}", "model.hot_reload=false", "telemetry.port=0"]
    if bench.bins is not None:
        overrides.append(f"policy.bins={bench.bins.resolve()}")
    if bench.spectrometer is not None:
        if bench.spectrometer != "sim":
            raise ConfigError(f"bench-sorter --spectrometer {bench.spectrometer}: only 'sim' (the synthetic world's)")
        overrides += sim_spectrometer_overrides(bench.nir_model, bench.nir_spectra)
    overrides += bench.overrides
    if bench.threads is not None:
        overrides.append(f"model.threads={bench.threads}")
    return load_line_config(bench.line, overrides)


def render_bench_clip(bench: BenchConfig) -> tuple[Path, Path]:
    """Render (or reuse) the dense clip for ``bench``; returns (video, ground truth)."""
    name = f"clip-w{WORLD_VERSION}-n{bench.items}-s{bench.seed}-v{bench.belt_speed_px_s:g}-h{bench.hard_fraction:g}"
    folder = bench.out_dir.parent / "clips" / name
    video, gt = folder / "conveyor.mp4", folder / "conveyor_gt.json"
    if not (video.is_file() and gt.is_file()):
        clip = render_conveyor_clip(folder, n_items=bench.items, seed=bench.seed, belt_speed_px_s=bench.belt_speed_px_s,
                                    hard_fraction=bench.hard_fraction, progress=bench.progress)
        video, gt = clip.video_path, clip.ground_truth_path
    return video, gt


@dataclass
class _Run:
    """What the benchmark collected while the loop ran."""

    decisions: list[ItemDecision] = field(default_factory=list)
    frame_ms: list[float] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)
    scans: list[ScanRecord] = field(default_factory=list)
    wall_s: float = 0.0


def _drive(loop: SorterLoop, bench: BenchConfig, total: int | None, feed: LiveFeed | None = None) -> _Run:
    """Run the loop to the end, timing each frame and sampling the resident memory."""
    run = _Run()
    start = time.perf_counter()
    next_rss = start
    it = loop.run()
    with tqdm(total=total, desc="bench-sorter", unit="frame", disable=not bench.progress) as bar:
        while True:
            tic = time.perf_counter()
            try:
                result = next(it)
            except StopIteration:
                break
            toc = time.perf_counter()
            if result.index >= 0:
                run.frame_ms.append((toc - tic) * 1e3)
                bar.update(1)
            run.decisions += result.decisions
            if feed is not None:
                _feed(feed, result)
            run.scans += [ScanRecord.of(o) for o in result.scans]
            if toc >= next_rss:
                run.rss.append((toc - start, rss_bytes() / 2**20))
                next_rss = toc + (10.0 if bench.minutes else 1.0)
    run.wall_s = time.perf_counter() - start
    run.rss.append((run.wall_s, rss_bytes() / 2**20))
    return run


def _simulator(bench: BenchConfig, cfg: LineConfig, gt: dict[str, Any]) -> SimulatedSpectrometer | None:
    """The simulated spectrometer over the clip's world (a looped clip starts over every pass)."""
    if cfg.spectrometer is None or cfg.spectrometer.sim is None:
        return None
    period = int(gt["n_frames"]) / float(gt["fps"]) if bench.minutes else None
    return open_simulated(cfg.spectrometer.sim, cfg.spot_geometry(), axis=0 if cfg.belt.direction[1] == "x" else 1,
                          rate_hz=cfg.spectrometer.rate_hz, truth=BeltTruth.from_ground_truth(gt), period_s=period)


def _feed(feed: LiveFeed, result: FrameResult) -> None:
    """What ``serve --console`` hands the console per frame."""
    if result.index >= 0:
        feed.slot.put(result)
    for item in result.decisions:
        feed.on_item_decision(item)


@contextmanager
def _watched_console(loop: SorterLoop) -> Iterator[LiveFeed]:
    """The operator's console on the line, as ``serve --console`` attaches it, with one viewer reading its
    MJPEG camera stream the whole time (what a browser on the Live page does)."""
    from sorting.apps.console import start_console

    cfg = loop.cfg
    feed = live_feed_for_line(cfg)
    attach_feed(feed, loop, partial(annotate_frame, decision_line_px=cfg.tracking.decision_line_px,
                                    axis=0 if cfg.belt.direction[1] == "x" else 1))
    console = start_console(feed, cfg.log.path, port=0)
    stop = threading.Event()

    def watch() -> None:
        with urllib.request.urlopen(console.url + "stream.mjpg", timeout=10) as stream:
            while not stop.is_set() and stream.read(65536):
                pass

    viewer = threading.Thread(target=watch, name="bench-viewer", daemon=True)
    viewer.start()
    try:
        yield feed
    finally:
        stop.set()
        console.close()
        viewer.join(5)
        log.info("console: %d frames encoded for the viewer", feed.slot.frames_encoded)


def run_bench(bench: BenchConfig) -> BenchResult:
    """Render/reuse the clip, sort it (or loop it for ``minutes``), measure and score."""
    if bench.model is None and not bench.oracle:
        raise ConfigError("bench-sorter needs --model or the GT oracle")
    model = ModelClassifier.load(bench.model, threads=bench.threads) if bench.model is not None else None
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    video, gt_path = render_bench_clip(bench)
    gt = load_ground_truth(gt_path)
    cfg = _line_config(bench, video, float(gt["belt_speed_px_s"]))
    source = LoopingVideoSource(video, seconds=bench.minutes * 60 if bench.minutes else None)
    classifier: Classifier | None = model
    if bench.oracle:
        classifier = GtOracle(gt, _oracle_labels(model, bench.oracle_layout),
                              clip_frames=lambda: source.clip_frames or int(gt.get("n_frames", 0)), model=model)
    assert classifier is not None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cfg.log.path}{suffix}").unlink(missing_ok=True)
    sim = _simulator(bench, cfg, gt)
    loop = build_sorter(cfg, source=source, classifier=classifier, actuator=SimulatedActuator(),
                        speed=FixedSpeed(cfg.belt.pixels_per_second, "px"), keep_images=bench.console, spectrometer=sim)
    with _watched_console(loop) if bench.console else nullcontext() as feed:
        run = _drive(loop, bench, None if bench.minutes else int(gt.get("n_frames", 0)) or None, feed)
    passes = source.passes
    gt_run = _repeat_ground_truth(gt, source.clip_frames or int(gt["n_frames"]), passes) if passes > 1 else gt
    score = score_run([DecisionPoint.from_item_decision(d) for d in run.decisions], gt_run, loop.policy)
    nir = None if sim is None else score_nir(run.decisions, gt_run, loop.policy, run.scans, own=_own_fibres(sim),
                                             score=score)
    result = _result(bench, gt, video, loop, source, run, score, model is not None)
    result.nir, result.decisions = nir, run.decisions
    (bench.out_dir / "bench.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    (bench.out_dir / "bench.md").write_text(result.markdown())
    return result


def _own_fibres(sim: SimulatedSpectrometer) -> set[str]:
    """The taxonomy fibres the simulator has spectra of their own for."""
    tax = load_taxonomy()
    return {f for f in tax.fibre if sim.pool.source_class(f) == f}


def _result(bench: BenchConfig, gt: dict[str, Any], video: Path, loop: SorterLoop, source: LoopingVideoSource,
            run: _Run, score: SortScore, has_model: bool) -> BenchResult:
    stages = loop.stage_means_ms()
    wall = run.wall_s
    latencies = [d.latency_ms for d in run.decisions]
    warm = [mb for t, mb in run.rss if t >= 0.1 * wall] or [run.rss[-1][1]]
    frames = len(run.frame_ms)
    sim = loop.nir.source if loop.nir is not None else None
    sim_ms = getattr(sim, "busy_s", 0.0) * 1e3 / max(1, frames)
    nir_ms = loop.nir.infer_s * 1e3 / max(1, frames) if loop.nir is not None else 0.0  # the spectral model's inference
    loop_ms = float(np.mean(run.frame_ms)) - sim_ms if run.frame_ms else 0.0
    decode_ms = source.stats.decode_s * 1e3 / max(1, source.stats.frames)
    base = decode_ms + stages.get("classify", 0.0) + nir_ms
    return BenchResult(
        config={"line": str(bench.line), "model": str(bench.model) if bench.model else None, "oracle": bench.oracle,
                "items": bench.items, "minutes": bench.minutes, "threads": bench.threads, "seed": bench.seed,
                "belt_speed_px_s": gt["belt_speed_px_s"], "video": str(video), "overrides": bench.overrides,
                "spectrometer": bench.spectrometer, "bins": str(loop.cfg.policy.bins), "console": bench.console},
        frames=frames, wall_s=wall, fps=frames / wall if wall > 0 else 0.0, items=len(run.decisions),
        items_per_s=len(run.decisions) / wall if wall > 0 else 0.0,
        latency_ms_p50=float(np.percentile(latencies, 50)) if latencies else 0.0,
        latency_ms_p99=float(np.percentile(latencies, 99)) if latencies else 0.0,
        loop_ms_per_frame=loop_ms, read_ms_per_frame=stages.get("wait_frame", 0.0), decode_ms_per_frame=decode_ms,
        classify_ms_per_frame=stages.get("classify", 0.0) + nir_ms,
        loop_ratio=loop_ms / base if has_model and base > 0 else None,
        stage_ms=stages, rss_mb=run.rss, rss_growth=(warm[-1] - warm[0]) / warm[0], score=score,
        load_avg=os.getloadavg(), passes=source.passes, simulator_ms_per_frame=sim_ms,
    )
