"""``textile-sorter demo``: the whole pipeline on the synthetic world, offline, in minutes.

Steps: train a small fibre+colour model on synthetic crops (or reuse the one a previous demo
trained), export it to ONNX (self-checked), render a synthetic conveyor video of a few hundred
garments, sort it with the real serving loop (simulated ejectors), score every decision against
the ground truth, and write an annotated video, the decision log, plots and a report.

Where the real NIR spectra are (or a previous demo made its spectral model from them), the line also has
the simulated spectrometer (:mod:`sorting.apps.demo_nir`): the report then gives the fibre x colour bins with
and without it, and the video marks the spots and the garment each one reads.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sorting.apps.demo_nir import DemoSpectrometer, demo_spectrometer
from sorting.apps.nir_scoring import NirScore, score_nir, sim_spectrometer_overrides
from sorting.apps.scoring import DecisionPoint, SortScore, load_ground_truth, score_run
from sorting.config import load_config
from sorting.datasets.synth.conveyor import WORLD_VERSION, render_conveyor_clip
from sorting.models.export import export_checkpoint
from sorting.models.onnx_model import read_metadata
from sorting.paths import project_root
from sorting.serving.line_config import load_line_config
from sorting.serving.policy import Policy, load_policy_config
from sorting.serving.records import ItemDecision
from sorting.serving.runner import ServeSummary, serve_line
from sorting.serving.spectrometer_config import SimSpectraConfig
from sorting.serving.spectrometer_sim import SpectraPool
from sorting.taxonomy import load_taxonomy
from sorting.training.config import TrainConfig
from sorting.training.plots import plot_counts, plot_histogram
from sorting.training.tracking import MlflowTracker
from sorting.training.trainer import fit

log = logging.getLogger(__name__)

DEMO_RECIPE = "training/synthetic-quick.yaml"
DEMO_LINE = "serving/line-colour-6bin.yaml"
DEMO_BINS = "serving/bins-fibre-colour.yaml"
# A fast, dense belt (30 px per frame at 30 fps) so a few hundred garments pass in ~1,500 frames.
DEMO_BELT_PX_S = 900.0


@dataclass
class DemoConfig:
    """What the demo does; the defaults are what ``make demo`` runs."""

    out_dir: Path = Path("runs/demo")
    items: int = 300
    seed: int = 1
    retrain: bool = False
    train_overrides: list[str] = field(default_factory=list)
    line: Path | None = None  # default: serving/line-colour-6bin.yaml with the fibre x colour bins
    bins: Path | None = None
    belt_speed_px_s: float = DEMO_BELT_PX_S
    video: bool = True
    progress: bool = True
    spectrometer: bool = True  # the simulated spectrometer, when there is a spectral model or the data to make one


@dataclass
class DemoReport:
    """What the demo produced and measured."""

    model_path: Path
    checkpoint_path: Path
    trained_now: bool
    serve: ServeSummary
    score: SortScore
    latency_ms: dict[str, float]
    report_path: Path
    plots: list[Path]
    video_path: Path | None
    nir: NirScore | None = None
    nir_note: str = ""

    def summary_lines(self) -> list[str]:
        s, sc = self.serve, self.score
        bins = ", ".join(f"{name}: {n}" for name, n in sorted(sc.per_bin.items()))
        return [
            f"model            {self.model_path} ({'trained now' if self.trained_now else 'reused'})",
            f"items            {sc.gt_items} on the belt, {sc.decisions} decisions "
            f"(lost {sc.lost}, duplicated {sc.duplicated}, phantom {sc.phantom})",
            f"correct bin      {sc.correct_rate:.1%} of {sc.non_hard_total} normal items; "
            f"hard items safe {sc.hard_safe_rate:.1%} of {sc.hard_items}",
            f"reject rate      {sc.reject_rate:.1%}",
            *self._nir_lines(),
            f"per bin          {bins}",
            f"speed            {s.fps:.1f} frames/s over {s.frames} frames ({s.wall_s:.1f} s)",
            f"decision latency p50 {self.latency_ms['p50']:.1f} ms, p99 {self.latency_ms['p99']:.1f} ms",
            f"report           {self.report_path}",
            *([f"annotated video  {self.video_path}"] if self.video_path else []),
        ]


    def _nir_lines(self) -> list[str]:
        if self.nir is None:
            return [f"spectrometer     {self.nir_note}"] if self.nir_note else []
        g, own, other = self.nir.total(), self.nir.groups["own"], self.nir.groups["stand-in"]
        return [f"spectrometer     {self.nir_note}",
                f"  right bin      {g.right_nir}/{g.normal} with NIR, {g.right_camera}/{g.normal} camera alone; "
                f"wrong product bin {g.wrong_nir} with NIR, {g.wrong_camera} camera alone",
                f"  by fibre       own spectra {own.right_nir}/{own.normal} (camera alone {own.right_camera}), "
                f"stand-in {other.right_nir}/{other.normal} (camera alone {other.right_camera}); read by NIR {g.read}"]


def train_overrides(cfg: DemoConfig) -> list[str]:
    """Overrides of the demo recipe: the run folder, no progress bars with ``--no-progress``, then the user's."""
    return [f"output_dir={cfg.out_dir / 'train'}", *([] if cfg.progress else ["progress=false"]),
            *cfg.train_overrides]


def _train_and_export(cfg: DemoConfig, root: Path) -> tuple[Path, Path, bool]:
    """Return (onnx, checkpoint, trained_now); reuse an earlier demo model unless ``retrain``."""
    onnx_path, ckpt_path = cfg.out_dir / "model.onnx", cfg.out_dir / "model.pt"
    if onnx_path.is_file() and ckpt_path.is_file() and not cfg.retrain:
        log.info("reusing the demo model %s (pass --retrain to train a new one)", onnx_path)
        return onnx_path, ckpt_path, False
    train_cfg = load_config(TrainConfig, root / DEMO_RECIPE, train_overrides(cfg))
    log.info("training the demo model (%s)", DEMO_RECIPE)
    result = fit(train_cfg)
    shutil.copyfile(result.best_checkpoint, ckpt_path)
    export_checkpoint(ckpt_path, onnx_path)
    if train_cfg.tracking.enabled:
        MlflowTracker(train_cfg.tracking).log_onnx(onnx_path)  # into the demo model's training run
    return onnx_path, ckpt_path, True


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0}
    arr = np.asarray(values)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}


def _plots(out_dir: Path, score: SortScore, latencies: list[float]) -> list[Path]:
    return [
        plot_counts(score.per_bin, out_dir / "bins.png", title="items per bin"),
        plot_histogram(latencies, out_dir / "latency.png", title="decision latency",
                       xlabel="frame-to-decision latency (ms)"),
    ]


def run_demo(cfg: DemoConfig) -> DemoReport:
    """Run the end-to-end demo; see the module docstring."""
    root = project_root()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, ckpt_path, trained_now = _train_and_export(cfg, root)

    clip_dir = cfg.out_dir / f"clip-w{WORLD_VERSION}-n{cfg.items}-s{cfg.seed}"
    gt_path = clip_dir / "conveyor_gt.json"
    if not gt_path.is_file():
        render_conveyor_clip(clip_dir, n_items=cfg.items, seed=cfg.seed, belt_speed_px_s=cfg.belt_speed_px_s,
                             progress=cfg.progress)
    video_in = clip_dir / "conveyor.mp4"

    db_path = cfg.out_dir / "decisions.sqlite"
    for stale in cfg.out_dir.glob("decisions.sqlite*"):
        stale.unlink()
    bins = (cfg.bins or root / DEMO_BINS).resolve()
    nir = demo_spectrometer(cfg.out_dir, retrain=cfg.retrain, progress=cfg.progress) if cfg.spectrometer else None
    line = load_line_config(cfg.line or root / DEMO_LINE, [
        f"camera.source={video_in}", f"belt.speed_px_s={cfg.belt_speed_px_s}", "belt.speed_m_s=null",
        f"model.path={onnx_path.resolve()}", "model.hot_reload=false", f"policy.bins={bins}",
        f"log.path={db_path.resolve()}", "telemetry.port=0", f"name=demo-{bins.stem}",
        *(sim_spectrometer_overrides(nir.model, nir.spectra) if nir is not None else []),
    ])
    decisions: list[ItemDecision] = []
    video_out = cfg.out_dir / "annotated.mp4" if cfg.video else None
    serve = serve_line(line, video_out=video_out, progress=cfg.progress, on_decision=decisions.append)

    policy = Policy(load_policy_config(bins), _labels_of(onnx_path))
    gt = load_ground_truth(gt_path)
    score = score_run([DecisionPoint.from_item_decision(d) for d in decisions], gt, policy)
    latencies = [d.latency_ms for d in decisions]
    latency = _percentiles(latencies)
    plots = _plots(cfg.out_dir, score, latencies)
    report = DemoReport(model_path=onnx_path, checkpoint_path=ckpt_path, trained_now=trained_now, serve=serve,
                        score=score, latency_ms=latency, report_path=cfg.out_dir / "report.md", plots=plots,
                        video_path=video_out, nir=_nir_score(nir, decisions, gt, policy, score),
                        nir_note=_nir_note(nir, cfg))
    _write_report(report, cfg)
    return report


def _nir_score(nir: DemoSpectrometer | None, decisions: list[ItemDecision], gt: dict[str, Any], policy: Policy,
               score: SortScore) -> NirScore | None:
    """Fibre-correct bins with and without the spectrometer (the same run), by the simulator's spectra."""
    if nir is None:
        return None
    pool = SpectraPool.load(SimSpectraConfig(spectra=nir.spectra))
    own = {f for f in load_taxonomy().fibre if pool.source_class(f) == f}
    return score_nir(decisions, gt, policy, [], own, score=score)


def _nir_note(nir: DemoSpectrometer | None, cfg: DemoConfig) -> str:
    if not cfg.spectrometer:
        return ""
    if nir is None:
        return "none (no NIR data: see sorting/apps/demo_nir.py)"
    return f"simulated, model {nir.model} ({'trained now' if nir.made_now else 'reused'})"


def _labels_of(onnx_path: Path) -> dict[str, list[str]]:
    """Label names from the model's metadata (no second inference session)."""
    return {h: list(v) for h, v in read_metadata(onnx_path).labels.items()}


def _write_report(report: DemoReport, cfg: DemoConfig) -> None:
    data: dict[str, Any] = {
        "score": report.score.to_dict(),
        "latency_ms": report.latency_ms,
        "fps": report.serve.fps,
        "frames": report.serve.frames,
        "stage_ms": report.serve.stage_ms,
        "model": str(report.model_path),
        "items": cfg.items,
        "seed": cfg.seed,
        "nir": report.nir.to_dict() if report.nir is not None else None,
    }
    (cfg.out_dir / "report.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    lines = ["# textile-sorter demo report", "", "```", *report.summary_lines(), "```", ""]
    lines += [f"![{p.stem}]({p.name})" for p in report.plots]
    stages = ", ".join(f"{k} {v:.2f} ms" for k, v in report.serve.stage_ms.items())
    lines += ["", f"Per-stage mean time per frame: {stages}.", ""]
    report.report_path.write_text("\n".join(lines), encoding="utf-8")
