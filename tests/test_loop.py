"""The sorter loop end to end with a fake classifier: one decision per item, fail-safe routing,
decision persisted before the actuator hears of it, graceful stop, hot reload."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from sorting.config import build_config
from sorting.errors import ConfigError
from sorting.serving.actuators import SimulatedActuator
from sorting.serving.annotate import VideoWriter, annotate_frame, decision_text
from sorting.serving.builder import build_sorter
from sorting.serving.classifier import ClassScores, CropBatch, ModelWatcher
from sorting.serving.ejector import FixedSpeed
from sorting.serving.line_config import LineConfig
from sorting.serving.loop import STAGES, SorterLoop
from sorting.serving.textile_check import TextileCheckConfig
from sorting.serving.sources import Frame, FrameSource
from sorting.taxonomy import load_taxonomy
from test_segmentation import FPS, PALETTE, PATCH, SPEED, ClipItem, make_belt_clip

REPO = Path(__file__).resolve().parent.parent
COLOURS = list(load_taxonomy().colour)
NAME = {"red": "red", "blue": "blue", "yellow": "yellow_orange", "white": "white"}
EXPECTED_BIN = {"red": "red_pink_purple", "blue": "blue_green", "yellow": "yellow_brown", "white": "white"}


class ListSource(FrameSource):
    """Frames from a list, timed at FPS (a recorded clip)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__()
        self._frames = frames
        self._i = 0

    @property
    def fps(self) -> float:
        return FPS

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._i >= len(self._frames):
            self.exhausted = True
            return None
        frame = Frame(self._i, self._i / FPS, self._frames[self._i])
        self._i += 1
        return frame


class _TimedList(ListSource):
    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        super().__init__(frames)
        self._fps = fps

    @property
    def fps(self) -> float:
        return self._fps

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        frame = super().read(timeout_s)
        return None if frame is None else Frame(frame.index, frame.index / self._fps, frame.image)


class ColourFakeClassifier:
    """Stands in for a model: colour probabilities from the crop's central colour."""

    model_id = "fake:colour"

    def __init__(self) -> None:
        self.labels: dict[str, list[str]] = {"colour": COLOURS}
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.quantiles: list[float] = []

    def use_ood_quantile(self, quantile: float) -> None:
        self.quantiles.append(quantile)

    def classify(self, batch: CropBatch) -> ClassScores:
        crops = batch.crops
        assert len(batch.detections) == len(crops)
        self.calls += 1
        self.batch_sizes.append(len(crops))
        probs = np.full((len(crops), len(COLOURS)), 0.02 / (len(COLOURS) - 1), np.float32)
        for i, crop in enumerate(crops):
            h, w = crop.shape[:2]
            centre = np.median(crop[h // 3 : 2 * h // 3 + 1, w // 3 : 2 * w // 3 + 1].reshape(-1, 3), axis=0)
            name = min(PALETTE, key=lambda k: float(np.sum((np.asarray(PALETTE[k]) - centre) ** 2)))
            probs[i, COLOURS.index(NAME[name])] = 0.98
        return ClassScores({"colour": probs}, {"colour": np.zeros(len(crops), bool)})


def line_config(tmp_path: Path) -> LineConfig:
    return build_config(LineConfig, {
        "calibration": {"reference_roi": list(PATCH)},
        "belt": {"speed_px_s": SPEED, "px_per_m": 500},
        "segmentation": {"min_area_px": 400, "morph_kernel_px": 5, "static_s": 1.0},
        "tracking": {"decision_line_px": 200, "max_match_px": 25},
        "policy": {"bins": str(REPO / "serving" / "bins-colour-6.yaml")},
        "log": {"path": str(tmp_path / "decisions.sqlite")},
    }, "test line")


def make_loop(tmp_path: Path, frames: list[np.ndarray], cfg: LineConfig | None = None,
              clf: ColourFakeClassifier | None = None) -> tuple[SorterLoop, SimulatedActuator, ColourFakeClassifier]:
    clf = clf or ColourFakeClassifier()
    actuator = SimulatedActuator()
    loop = build_sorter(cfg or line_config(tmp_path), source=ListSource(frames), classifier=clf, actuator=actuator,
                        speed=FixedSpeed(SPEED, "px"))
    return loop, actuator, clf


def match_items(results, items: list[ClipItem]) -> dict[int, set[int]]:
    """GT item id -> ids of the confirmed tracks whose box held its centre (majority per frame)."""
    owners: dict[int, list[int]] = {it.id: [] for it in items}
    for res in results:
        if res.index < 0:
            continue
        for it in items:
            point = next(((x, y) for f, x, y in it.track if f == res.index), None)
            if point is None:
                continue
            for tv in res.tracks:
                x, y, w, h = tv.bbox
                if tv.confirmed and x <= point[0] <= x + w and y <= point[1] <= y + h:
                    owners[it.id].append(tv.track_id)
    out = {}
    for gid, ids in owners.items():
        counts = {tid: ids.count(tid) for tid in set(ids)}
        out[gid] = {tid for tid, n in counts.items() if n >= 3}
    return out


def test_every_item_gets_one_decision_and_hard_items_fail_safe(tmp_path):
    frames, items = make_belt_clip(hard=True, n_frames=150)
    loop, actuator, clf = make_loop(tmp_path, frames)
    results = list(loop.run())
    decisions = [d for r in results for d in r.decisions]
    by_track = {d.track_id: d for d in decisions}
    assert len(by_track) == len(decisions), "an item was decided twice"
    owners = match_items(results, items)
    decided_tracks = set()
    for it in items:
        tracks = owners[it.id] & set(by_track)
        assert len(tracks) == 1, f"GT item {it.id} ({it.hard}) -> decided tracks {tracks}"
        decision = by_track[next(iter(tracks))]
        decided_tracks |= tracks
        if it.hard is None:
            assert decision.bin_name == EXPECTED_BIN[it.colour], (it, decision.decision)
        else:
            assert decision.bin_name in ("reject", EXPECTED_BIN[it.colour]), (it, decision.decision)
    assert decided_tracks == set(by_track), "a decision belongs to no ground-truth item"
    assert all(d.ended == "line" for d in decisions)
    # one batched model call per frame at most, never an empty one, and each item classified a few times only
    max_views = loop.cfg.tracking.max_views
    assert clf.calls <= len(frames) and min(clf.batch_sizes) >= 1
    assert all(d.summary.n_views <= max_views for d in decisions)
    assert all(d.summary.n_views >= 1 for d in decisions if d.bin != d.reject_bin)
    # persisted: one row per decision; product-bin decisions fired once each (offline clip flushed)
    with sqlite3.connect(tmp_path / "decisions.sqlite") as db:
        rows = db.execute("SELECT item_id, bin FROM decisions").fetchall()
    assert sorted(int(i) for i, _ in rows) == sorted(by_track)
    product = sorted(d.track_id for d in decisions if d.bin != d.reject_bin)
    assert sorted(int(f.item_id) for f in actuator.firings) == product
    assert set(loop.stage_means_ms()) == set(STAGES)


def test_a_line_with_a_textile_check_reports_the_segment_stages_parts(tmp_path):
    from test_textile_check import _fake_check

    frames, _ = make_belt_clip(hard=False, n_frames=40)
    cfg = line_config(tmp_path)
    cfg.segmentation.textile_check = TextileCheckConfig(model=_fake_check(tmp_path / "check.onnx"), min_score=0.0)
    loop, _, _ = make_loop(tmp_path, frames, cfg)
    list(loop.run())
    stages = list(loop.stage_means_ms())
    at = stages.index("segment")
    assert stages[at + 1:at + 3] == ["segment: belt model", "segment: textile check"]  # right after it, no carving
    means = loop.stage_means_ms()
    assert 0 < means["segment: belt model"] + means["segment: textile check"] <= means["segment"]
    assert set(stages) - {"segment: belt model", "segment: textile check"} == set(STAGES)


def test_the_segmentation_is_told_how_far_the_belt_moved_since_the_last_usable_frame(tmp_path):
    """The textile check finds last frame's garments where the belt carried them (the tracker's belt speed times the
    time since the last frame the segmentation could use); a frame it cannot use does not count as one."""
    from test_textile_check import _fake_check

    frames, _ = make_belt_clip(hard=False, n_frames=12)
    frames[5] = np.zeros_like(frames[5])  # a black frame: unusable, skipped
    cfg = line_config(tmp_path)
    cfg.segmentation.textile_check = TextileCheckConfig(model=_fake_check(tmp_path / "check.onnx"), min_score=0.0)
    loop, _, _ = make_loop(tmp_path, frames, cfg)
    moved: list[float] = []
    segment = loop.stage.segment

    def recording(image, **kwargs):
        moved.append(kwargs["moved_px"])
        return segment(image, **kwargs)

    loop.stage.segment = recording
    list(loop.run())
    step = SPEED / FPS
    assert moved[0] == 0.0 and moved[1:5] == pytest.approx([step] * 4)
    assert moved[6] == pytest.approx(2 * step)  # after the black frame: two frames' travel
    assert moved[7:] == pytest.approx([step] * (len(frames) - 7))


class CommitCheckingActuator(SimulatedActuator):
    """Looks up the decision row through a second, read-only connection each time it is told to fire."""

    def __init__(self, db_path: Path) -> None:
        super().__init__()
        self.db_path = db_path
        self.unlogged: list[object] = []

    def fire(self, bin: int, at_time: float, pulse_s: float, *, item_id: int | str | None = None) -> None:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT bin FROM decisions WHERE item_id = ?", (str(item_id),)).fetchone()
        finally:
            db.close()
        if row is None or row[0] != bin:
            self.unlogged.append(item_id)
        super().fire(bin, at_time, pulse_s, item_id=item_id)


def test_a_decision_is_committed_before_the_actuator_hears_of_it(tmp_path):
    """With a dispatch horizon longer than the belt, each firing reaches the actuator in the very frame
    its item is decided: the row must already be committed (visible to another connection) by then."""
    frames, _ = make_belt_clip(hard=False, n_frames=150)
    cfg = line_config(tmp_path)
    cfg.ejector.dispatch_horizon_ms = 100_000
    actuator = CommitCheckingActuator(tmp_path / "decisions.sqlite")
    loop = build_sorter(cfg, source=ListSource(frames), classifier=ColourFakeClassifier(), actuator=actuator,
                        speed=FixedSpeed(SPEED, "px"))
    decided = {r.index: [d.track_id for d in r.decisions if d.bin != d.reject_bin] for r in loop.run()}
    fired = [int(f.item_id) for f in actuator.firings]
    assert len(fired) >= 3 and actuator.unlogged == []
    assert fired == [i for index in sorted(decided) if index >= 0 for i in decided[index]]


def test_stop_drains_in_flight_items_as_shutdown(tmp_path):
    frames, _ = make_belt_clip(hard=False, n_frames=150)
    loop, _, _ = make_loop(tmp_path, frames)
    results = []
    for res in loop.run():
        results.append(res)
        if res.index == 62:  # item 1 decided (frame ~55), items 2..4 upstream of the line
            loop.stop()
    decisions = [d for r in results for d in r.decisions]
    assert {d.ended for d in decisions} == {"line", "shutdown"}
    assert all(d.bin_name == "reject" for d in decisions if d.ended == "shutdown")
    assert len({d.track_id for d in decisions}) == len(decisions)
    with sqlite3.connect(tmp_path / "decisions.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == len(decisions)


def test_annotated_video_is_written(tmp_path):
    frames, _ = make_belt_clip(hard=False, n_frames=60)
    loop, _, _ = make_loop(tmp_path, frames)
    out = tmp_path / "annotated.mp4"
    decided = []
    with VideoWriter(out, FPS) as writer:
        for res in loop.run():
            decided.extend(res.decisions)
            if res.image is not None:
                writer.write(annotate_frame(res, decision_line_px=200))
    assert out.is_file() and out.stat().st_size > 1000
    # a reject says why on the video (a phone goes to reject as not_a_garment, not as a garment of some colour)
    for d in decided:
        text = decision_text(d)
        assert text.endswith(f"-> {d.bin_name} ({d.decision.kind})" if d.bin == d.reject_bin else f"-> {d.bin_name}")
    assert decided and any(d.bin == d.reject_bin for d in decided) and any(d.bin != d.reject_bin for d in decided)


def test_hot_reload_swaps_only_a_model_that_passes_self_check(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"v1")
    good = {"value": True}

    def load(p: Path) -> ColourFakeClassifier:
        if not good["value"]:
            raise RuntimeError("broken model: self-check failed")
        return ColourFakeClassifier()

    watcher = ModelWatcher(path, poll_s=0.01, loader=load)
    assert watcher.poll() is None  # unchanged file
    for ok in (False, True):
        good["value"] = ok
        path.write_bytes(b"v2" if ok else b"bad")
        stamp = time.time() + (2 if ok else 1)
        os.utime(path, (stamp, stamp))
        time.sleep(0.02)
        assert watcher.poll() is None  # load starts in the background
        watcher.join()
        new = watcher.poll()
        assert (new is not None) == ok


class _ReloadedFake(ColourFakeClassifier):
    """The colour fake as a hot reload delivers it, with or without a layout head (every crop one garment)."""

    def __init__(self, layout: bool) -> None:
        super().__init__()
        self.labels = {"colour": COLOURS, **({"layout": ["single", "several"]} if layout else {})}
        self.model_id = f"fake:{'layout' if layout else 'plain'}"

    def classify(self, batch: CropBatch) -> ClassScores:
        scores = super().classify(batch)
        if "layout" not in self.labels:
            return scores
        n = len(batch.crops)
        return ClassScores({**scores.probs, "layout": np.tile(np.array([[0.9, 0.1]], np.float32), (n, 1))},
                           {**scores.ood, "layout": np.zeros(n, bool)})


class _OneModelWatcher:
    """Hands over one model once; refuses no file."""

    path, rejected, last_error = Path("model.onnx"), 0, ""

    def __init__(self, model) -> None:
        self.model = model

    def poll(self):
        model, self.model = self.model, None
        return model


def test_the_bins_files_ood_quantile_reaches_the_model_and_a_model_without_it_is_refused(tmp_path):
    bins = yaml.safe_load((REPO / "serving" / "bins-colour-6.yaml").read_text())
    (tmp_path / "bins.yaml").write_text(yaml.safe_dump({**bins, "ood_quantile": 0.995}))
    cfg = line_config(tmp_path)
    cfg.policy.bins = tmp_path / "bins.yaml"
    loop, _, clf = make_loop(tmp_path, [], cfg)
    assert clf.quantiles == [0.995]

    def lacks_table(quantile):
        raise ConfigError("no OOD threshold at quantile 0.995; retrain")

    new = _ReloadedFake(layout=False)
    new.use_ood_quantile = lacks_table
    loop.watcher = _OneModelWatcher(new)
    loop._maybe_reload()
    assert loop.classifier is clf  # refused: the old model keeps serving
    loop.close()


def test_two_colour_check_follows_the_model_across_a_hot_reload(tmp_path):
    """The segmenter looks for two colour regions only while the model has no layout head to judge them."""
    loop, _, _ = make_loop(tmp_path, [])
    assert loop.segmenter.check_colours
    loop.watcher = _OneModelWatcher(_ReloadedFake(layout=True))
    loop._maybe_reload()
    assert "layout" in loop.labels and not loop.segmenter.check_colours
    loop.watcher = _OneModelWatcher(_ReloadedFake(layout=False))
    loop._maybe_reload()
    assert loop.segmenter.check_colours
    loop.close()


@pytest.mark.slow
def test_synthetic_conveyor_clip_one_decision_per_garment(tmp_path):
    """The synth engineer's conveyor world (stains, reference strip, colour cast, hard cases)."""
    from sorting.datasets.synth.conveyor import ConveyorConfig, ConveyorWorld
    from sorting.serving.line_config import load_line_config

    world = ConveyorWorld(ConveyorConfig(n_items=10, seed=3, hard_fraction=0.2))
    gt = world.ground_truth()
    cfg = load_line_config(REPO / "serving" / "line-colour-6bin.yaml",
                           [f"log.path={tmp_path / 'd.sqlite'}", "telemetry.port=0"])
    frames = [img for _, _, img in world.frames()]
    loop = build_sorter(cfg, source=_TimedList(frames, gt["fps"]), classifier=ColourFakeClassifier(),
                        actuator=SimulatedActuator(), speed=FixedSpeed(200.0, "px"))
    results = list(loop.run())
    decisions = {d.track_id: d for r in results for d in r.decisions}
    owners: dict[int, dict[int, int]] = {it["id"]: {} for it in gt["items"]}
    by_frame: dict[int, list] = {}
    for it in gt["items"]:
        for f, x, y in it["track"]:
            by_frame.setdefault(f, []).append((it["id"], x, y))
    for res in results:
        for gid, x, y in by_frame.get(res.index, []):
            for tv in res.tracks:
                bx, by, bw, bh = tv.bbox
                if tv.confirmed and bx <= x <= bx + bw and by <= y <= by + bh:
                    owners[gid][tv.track_id] = owners[gid].get(tv.track_id, 0) + 1
    used = set()
    for it in gt["items"]:
        tracks = {t for t, n in owners[it["id"]].items() if n >= 3 and t in decisions}
        assert len(tracks) == 1, (it["id"], it["garment"], it["hard_reason"], tracks)
        used |= tracks
        if it["hard_reason"] == "cut_off":  # (touching pairs may share one decision; colours are fake here)
            assert decisions[next(iter(tracks))].bin_name == "reject"
    assert used == set(decisions), "decisions without a garment"


def test_demo_without_progress_trains_without_progress_bars():
    from sorting.config import load_config
    from sorting.apps.demo import DemoConfig, train_overrides
    from sorting.training.config import TrainConfig

    recipe = REPO / "training" / "synthetic-quick.yaml"
    quiet = load_config(TrainConfig, recipe, train_overrides(DemoConfig(progress=False, train_overrides=["optim.epochs=3"])))
    assert quiet.progress is False and quiet.optim.epochs == 3 and quiet.output_dir == str(Path("runs/demo/train"))
    assert load_config(TrainConfig, recipe, train_overrides(DemoConfig())).progress is True
