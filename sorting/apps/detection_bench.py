"""``evaluate-detection``: the line's segmentation on labelled frames, scored box by box.

Photos (a folder and a boxes CSV) or a video with its ground truth (a synthetic clip) go through
:class:`~sorting.serving.line_segmentation.LineSegmentation`, built from the line config exactly as
``serve`` builds its segmentation, one frame after the other in the order ``serve`` reads them.
Each frame is scored by :mod:`sorting.serving.detection_eval`; the run writes an overlay PNG per
scored frame (green: matched, red: missed, orange: false, grey: cut at the entry/exit edge,
magenta: a non-garment detection, cyan: a non-garment label, yellow: the belt region, blue tint:
the foreground mask) and a summary
(``summary.md``, ``summary.json``, ``frames.json``). Timing is per frame on ``threads`` OpenCV threads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sorting.apps.detection_data import (
    LabelledFrame,
    fit_to_frame,
    ground_truth_boxes,
    iter_photos,
    merge_box_files,
    photo_frames,
    read_boxes_csv,
)
from sorting.apps.scoring import load_ground_truth
from sorting.datasets.box_labels import photo_group, read_subset
from sorting.errors import DataError
from sorting.serving.colour_foreground import FrameError
from sorting.serving.detection_eval import (
    DetectionSummary,
    FrameScore,
    SceneInterval,
    ScoredDetection,
    corners,
    scene_interval,
    score_frame,
    summarise,
)
from sorting.serving.line_config import LineConfig, load_line_config
from sorting.serving.line_segmentation import LineSegmentation
from sorting.serving.segmentation import Detection

log = logging.getLogger(__name__)

GREEN, RED, ORANGE, GREY, MAGENTA, CYAN, YELLOW = ((60, 200, 60), (40, 40, 230), (0, 150, 255), (160, 160, 160),
                                                  (200, 60, 200), (230, 200, 40), (0, 230, 230))
VIDEO_OVERLAYS = 40


@dataclass
class DetectionBenchConfig:
    """What to score and where to write (see ``textile-sorter evaluate-detection --help``)."""

    line: Path
    source: Path  # a folder of photos (with ``boxes``) or a video (with ``ground_truth``)
    boxes: Path | None = None
    ground_truth: Path | None = None
    extra_labels: Path | None = None  # more labels of the same photos (non-garments: image,x0,y0,x1,y1,kind)
    subset: str | None = None  # FILE (names, one a line) or FILE.json:KEY
    out_dir: Path = Path("runs/evaluate-detection")
    overrides: list[str] = field(default_factory=list)
    one_by_one: bool = False  # a fresh segmentation per frame (still photos with the per-pixel belt model)
    every: int = 1  # video: score every n-th frame (all frames are segmented, as serve does)
    max_overlays: int | None = None  # default: every photo, VIDEO_OVERLAYS video frames
    overlay_scale: float = 0.5
    threads: int = 1
    repeat: int = 1  # time each frame this many times (segmentation and crops), keep the fastest
    # photos numbered alike (number // this) show one scene: the unit the interval of recall and precision draws
    group_size: int = 10
    progress: bool = True


@dataclass
class DetectionBenchReport:
    summary: DetectionSummary
    frames: list[FrameScore]
    problems: list[str]  # label rows or images that could not be used
    skipped: list[str]  # frames the segmentation could not use (size, black, saturated)
    out_dir: Path
    line: str
    interval: SceneInterval | None = None  # photos only: recall and precision at IoU 0.5 over other such scenes


def _scored(det: Detection, entry_edges: frozenset[str], region: np.ndarray | None) -> ScoredDetection:
    on_belt = None
    if region is not None:
        on_belt = cv2.pointPolygonTest(region, (float(det.centroid[0]), float(det.centroid[1])), False) >= 0
    return ScoredDetection(corners(det.bbox), det.kind, at_entry_edge=bool(det.edges & entry_edges),
                           on_belt=on_belt, not_cloth=det.not_cloth)


def _video_frames(cfg: DetectionBenchConfig) -> Iterator[tuple[LabelledFrame | None, str]]:
    assert cfg.ground_truth is not None
    boxes = ground_truth_boxes(load_ground_truth(cfg.ground_truth))
    cap = cv2.VideoCapture(str(cfg.source))
    if not cap.isOpened():
        raise DataError(f"cannot open video {cfg.source}")
    try:
        index = 0
        while True:
            ok, image = cap.read()
            if not ok:
                break
            yield LabelledFrame(f"frame{index:06d}", index, image, boxes.get(index, [])), ""
            index += 1
    finally:
        cap.release()


def _photo_frames(cfg: DetectionBenchConfig, problems: list[str]) -> tuple[Iterator[tuple[LabelledFrame | None, str]], int]:
    assert cfg.boxes is not None
    boxes = read_boxes_csv(cfg.boxes)
    if cfg.extra_labels is not None:
        boxes = merge_box_files(boxes, read_boxes_csv(cfg.extra_labels))
    problems.extend(boxes.problems)
    found, missing = photo_frames(cfg.source, boxes, cfg.boxes, subset=read_subset(cfg.subset) if cfg.subset else None)
    problems.extend(missing)
    return iter_photos(found, boxes), len(found)


def run_detection_bench(cfg: DetectionBenchConfig) -> DetectionBenchReport:
    """Segment and score every labelled frame; write overlays and the summary under ``cfg.out_dir``."""
    if (cfg.boxes is None) == (cfg.ground_truth is None):
        raise DataError("give either boxes (photos) or a ground truth (video)")
    line = load_line_config(cfg.line, cfg.overrides)
    cv2.setNumThreads(cfg.threads)
    problems: list[str] = []
    if cfg.boxes is not None:
        frames, total = _photo_frames(cfg, problems)
        every, max_overlays = 1, cfg.max_overlays
    else:
        frames, total = _video_frames(cfg), None
        every, max_overlays = max(1, cfg.every), VIDEO_OVERLAYS if cfg.max_overlays is None else cfg.max_overlays
    overlays = cfg.out_dir / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    runner = _Runner(line, cfg)
    scores: list[FrameScore] = []
    skipped: list[str] = []
    for frame, why in tqdm(frames, total=total, desc="evaluate-detection", unit="frame", disable=not cfg.progress):
        if frame is None:
            problems.append(why)
            continue
        score = runner.score(frame, score_it=frame.index % every == 0, problems=problems, skipped=skipped)
        if score is None:
            continue
        scores.append(score)
        if max_overlays is None or len(scores) <= max_overlays:
            image = draw_overlay(frame.image, score, runner.region, cfg.overlay_scale, runner.seg.segmenter.last_mask)
            cv2.imwrite(str(overlays / f"{Path(frame.name).stem}.png"), image)
    if not scores:
        raise DataError(f"no frame could be scored ({len(skipped)} skipped: {skipped[:1]})")
    for line_text in problems + skipped:
        log.warning("%s", line_text)
    interval = None
    if cfg.boxes is not None:  # a video is one scene
        interval = scene_interval([len(f.garment_labels) for f in scores], [len(f.matches[0.5]) for f in scores],
                                  [len(f.false(0.5)) for f in scores],
                                  [photo_group(f.name, cfg.group_size) for f in scores])
    report = DetectionBenchReport(summarise(scores), scores, problems, skipped, cfg.out_dir, str(cfg.line), interval)
    write_report(report)
    return report


class _Runner:
    """The line's segmentation over frames in order, timed, each frame scored."""

    def __init__(self, line: LineConfig, cfg: DetectionBenchConfig) -> None:
        self.line, self.cfg = line, cfg
        self.seg = LineSegmentation(line)
        along = self.seg.along_axis
        self.entry_edges = frozenset(("left", "right") if along == 0 else ("top", "bottom"))
        polygon = line.segmentation.belt_region
        self.region = None if polygon is None else np.asarray(polygon, np.float32).reshape(-1, 1, 2)

    def score(self, frame: LabelledFrame, *, score_it: bool, problems: list[str],
              skipped: list[str]) -> FrameScore | None:
        if self.cfg.one_by_one:
            self.seg = LineSegmentation(self.line)
        try:
            detections, seconds = self._timed(frame.image)
        except FrameError as exc:
            skipped.append(f"{frame.name}: {exc}")
            return None
        if not score_it:
            return None
        height, width = frame.image.shape[:2]
        labels, bad = fit_to_frame(frame.name, frame.labels, (width, height))
        problems.extend(bad)
        score = score_frame(frame.name, labels, [_scored(d, self.entry_edges, self.region) for d in detections])
        score.seconds = seconds
        return score

    def _timed(self, image: np.ndarray) -> tuple[list[Detection], dict[str, float]]:
        """Detections of ``image`` and the fastest of ``repeat`` timings of segmenting it and cropping them
        (only where the belt model has no memory across frames; the per-pixel one is timed once): wall
        time, and this thread's CPU time (what it costs one core, whatever else the machine runs), and the wall
        time of each stage of the segmentation (``segment: belt model``, ``textile check``, ``carve``)."""
        best: dict[str, float] = {}
        detections: list[Detection] = []
        repeat = max(1, self.cfg.repeat) if self.line.segmentation.belt_model == "colour" else 1
        for k in range(repeat):
            if k:
                self.seg.segmenter.rewind()
            t0, c0 = time.perf_counter(), time.thread_time()
            detections = self.seg.segment(image)
            t1 = time.perf_counter()
            self.seg.crops(image, detections)
            t2, c2 = time.perf_counter(), time.thread_time()
            stages = [(f"segment: {name}", ms / 1e3) for name, ms in self.seg.timer.frame_ms.items()]
            for key, value in (("segment", t1 - t0), *stages, ("crops", t2 - t1), ("segment+crops", t2 - t0),
                               ("segment+crops cpu", c2 - c0)):
                best[key] = min(best.get(key, value), value)
        return detections, best


def _rect(img: np.ndarray, box: tuple[float, ...], colour: tuple[int, int, int], s: float, thick: int) -> None:
    x0, y0, x1, y1 = (round(v * s) for v in box)
    cv2.rectangle(img, (x0, y0), (x1, y1), colour, thick, cv2.LINE_AA)


def _text(img: np.ndarray, text: str, at: tuple[float, float], colour: tuple[int, int, int], s: float) -> None:
    x, y = int(at[0] * s) + 2, max(12, int(at[1] * s) - 4)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def draw_overlay(image: np.ndarray, score: FrameScore, region: np.ndarray | None, scale: float = 0.5,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """The frame with the scoring drawn on it (colours in the module docstring), at ``scale``; the
    segmentation's foreground ``mask`` (any scale) tinted blue."""
    img = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1 else image.copy()
    if mask is not None:
        fg = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        img[fg] = (0.6 * img[fg] + 0.4 * np.array([255, 120, 0])).astype(np.uint8)
    if region is not None:
        cv2.polylines(img, [np.round(region * scale).astype(np.int32)], True, YELLOW, 1, cv2.LINE_AA)
    matched = dict(score.matches[0.5])
    used = set(matched.values())
    for i, lb in enumerate(score.labels):
        if lb.kind != "garment":
            _rect(img, lb.box, CYAN, scale, 1)
            _text(img, lb.kind, lb.box[:2], CYAN, scale)
        elif i not in matched and not lb.partial:
            _rect(img, lb.box, RED, scale, 2)
        tags = [t for t, idx in (("merged", score.merged), ("split", score.split)) if i in idx]
        if tags:
            _text(img, "+".join(tags), (lb.box[0], lb.box[3] + 14 / scale), RED, scale)
    false, cut = set(score.false(0.5)), set(score.cut)
    for j, det in enumerate(score.detections):
        if det.kind != "garment":
            _rect(img, det.box, MAGENTA, scale, 2)
            _text(img, det.kind, det.box[:2], MAGENTA, scale)
        else:
            colour = GREEN if j in used else GREY if j in cut else ORANGE if j in false else GREY
            _rect(img, det.box, colour, scale, 2)
    ms = score.seconds.get("segment+crops", 0.0) * 1e3
    head = (f"{score.name}  garments {len(score.garment_labels)}  matched {len(score.matches[0.5])}  "
            f"false {len(false)}  {ms:.1f} ms")
    _text(img, head, (4, 18 / scale), (255, 255, 255), scale)
    return img


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def summary_lines(report: DetectionBenchReport) -> list[str]:
    """The headline figures, one per line (CLI and Markdown)."""
    s = report.summary
    lines = [f"{s.frames} frames, {s.garments} garments, {s.garment_detections} garment detections"]
    for t in s.recall:
        lines.append(f"IoU {t}: recall {_pct(s.recall[t])} ({s.matched[t]}/{s.garments}), precision "
                     f"{_pct(s.precision[t])} ({s.false[t]} false; strict, cut ones false: {_pct(s.precision_strict[t])})")
    if report.interval is not None:
        i = report.interval
        lines.append(f"IoU 0.5, {i.level:.0%} interval over {i.scenes} scenes (bootstrap, scenes drawn): recall "
                     f"{_pct(i.recall[0])}-{_pct(i.recall[1])}, precision "
                     + ("n/a" if i.precision is None else f"{_pct(i.precision[0])}-{_pct(i.precision[1])}"))
    lines.append(f"merged {s.merged} ({_pct(s.merged_rate)}), split {s.split} ({_pct(s.split_rate)}), "
                 f"cut at the entry/exit edge {s.cut}, off the belt {'n/a' if s.off_belt is None else s.off_belt}")
    others = {k: v for k, v in s.detections_by_kind.items() if k != "garment"}
    labelled = {k: v for k, v in s.labels_by_kind.items() if not k.startswith("garment")}
    lines.append(f"non-garment detections {others or 0} ({s.other_unlabelled} on nothing labelled); garments called "
                 f"non-garment {s.garment_called_other}"
                 + (f"; non-garment labels {labelled}: found {s.other_found}, taken for a garment "
                    f"{s.other_as_garment}" if labelled else ""))
    if s.missed_by_cause or s.false_by_cause:
        lines.append("at IoU 0.5, missed: " + (", ".join(f"{k} {v}" for k, v in s.missed_by_cause.items()) or "none")
                     + "; false: " + (", ".join(f"{k} {v}" for k, v in s.false_by_cause.items()) or "none"))
    lines.append("ms per frame: " + "; ".join(f"{k} mean {v['mean']:.2f} p50 {v['p50']:.2f} p95 {v['p95']:.2f} "
                                               f"max {v['max']:.2f}" for k, v in s.ms.items() if v))
    return lines


def _frame_rows(frames: list[FrameScore]) -> list[dict[str, object]]:
    return [{"name": f.name, "garments": len(f.garment_labels), "matched": len(f.matches[0.5]),
             "missed": len(f.missed(0.5)), "false": len(f.false(0.5)), "cut": len(f.cut), "merged": len(f.merged),
             "split": len(f.split), "non_garment": sum(d.kind != "garment" for d in f.detections),
             "ms": round(f.seconds.get("segment+crops", 0.0) * 1e3, 2)} for f in frames]


def write_report(report: DetectionBenchReport) -> None:
    """summary.json, frames.json and summary.md under the report's folder."""
    out = report.out_dir
    data = {"line": report.line, **report.summary.to_dict(),
            "interval_0.5": None if report.interval is None else report.interval.to_dict(),
            "problems": report.problems, "skipped": report.skipped}
    (out / "summary.json").write_text(json.dumps(data, indent=1) + "\n")
    rows = _frame_rows(report.frames)
    (out / "frames.json").write_text(json.dumps(rows, indent=1) + "\n")
    worst = sorted(rows, key=lambda r: -(int(r["missed"]) + int(r["false"]) + int(r["merged"]) + int(r["split"])))
    md = [f"# Detection benchmark: {report.line}", "", *[f"- {line}" for line in summary_lines(report)], ""]
    if report.problems or report.skipped:
        md += ["## Not used", "", *[f"- {p}" for p in report.problems + report.skipped], ""]
    header = "| frame | garments | matched | missed | false | merged | split | cut | non-garment | ms |"
    md += ["## Frames with errors (IoU 0.5)", "", header, "|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['garments']} | {r['matched']} | {r['missed']} | {r['false']} | {r['merged']} | "
           f"{r['split']} | {r['cut']} | {r['non_garment']} | {r['ms']} |" for r in worst
           if int(r["missed"]) + int(r["false"]) + int(r["merged"]) + int(r["split"]) > 0]
    (out / "summary.md").write_text("\n".join(md) + "\n")
