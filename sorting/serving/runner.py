"""Running a line until it is stopped: :func:`serve_line` (what ``textile-sorter serve`` does).

It builds the sorter from the line config (:func:`~sorting.serving.builder.build_sorter`), turns
SIGINT/SIGTERM into a graceful stop (finish the frame, drain the items in flight to reject, close
the log), draws the annotated video if asked, and returns a :class:`ServeSummary`.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from sorting.serving.annotate import VideoWriter, annotate_frame
from sorting.serving.builder import build_sorter
from sorting.serving.line_config import LineConfig
from sorting.serving.live import LiveFeed
from sorting.serving.loop import SorterLoop
from sorting.serving.records import FrameResult, ItemDecision

log = logging.getLogger(__name__)


@dataclass
class ServeSummary:
    """What a serve run did: frames, items, bins, reject rate, speed and latency."""

    frames: int
    items: int
    wall_s: float
    fps: float
    stage_ms: dict[str, float]
    log: dict[str, object]
    no_frame_events: int
    dropped_frames: int
    unreadable_frames: int
    camera_reconnects: int
    video: Path | None = None


def serve_line(
    cfg: LineConfig,
    *,
    max_frames: int | None = None,
    video_out: str | Path | None = None,
    progress: bool = True,
    on_decision: Callable[[ItemDecision], None] | None = None,
    feed: LiveFeed | None = None,
) -> ServeSummary:
    """Run a line until the source ends, ``max_frames``, or SIGINT/SIGTERM (graceful drain).

    ``on_decision`` sees every item decision (the demo scores them against ground truth); ``feed``
    (the operator's console) gets the frames, decisions, alarms and model changes of the line.
    """
    loop = build_sorter(cfg, max_frames=max_frames, keep_images=video_out is not None or feed is not None)
    axis = 0 if cfg.belt.direction[1] == "x" else 1
    spots = cfg.spot_geometry() if cfg.spectrometer is not None else None
    draw = partial(annotate_frame, decision_line_px=cfg.tracking.decision_line_px, axis=axis, spots=spots)
    if feed is not None:
        attach_feed(feed, loop, draw)
    writer = VideoWriter(video_out, loop.source.fps or cfg.camera.fps or 30.0) if video_out else None
    restore = install_stop_handlers(loop)
    no_frames = 0
    start = time.perf_counter()
    bar = tqdm(desc=f"sorting {cfg.name}", unit="frame", disable=not progress, total=max_frames)
    try:
        for result in loop.run(max_frames):
            for item in result.decisions:
                if on_decision is not None:
                    on_decision(item)
                if feed is not None:
                    feed.on_item_decision(item)
            if result.no_frame:
                no_frames += 1
                bar.set_postfix_str("NO CAMERA FRAMES", refresh=True)
                continue
            if result.index < 0:
                continue  # the shutdown drain: decisions only
            bar.update(1)
            if result.index % 30 == 0:
                bar.set_postfix(items=result.items_decided, fps=f"{result.fps:.0f}")
            if feed is not None:
                feed.slot.put(result)  # drawn and encoded on the console's thread, when a viewer asks
            if writer is not None:
                writer.write(draw(result))
    finally:
        bar.close()
        restore()
        loop.close()
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - start
    return ServeSummary(
        frames=loop.frames_done, items=loop.items_decided, wall_s=wall,
        fps=loop.frames_done / wall if wall > 0 else 0.0, stage_ms=loop.stage_means_ms(), log=loop.log_summary,
        no_frame_events=no_frames, dropped_frames=loop.source.stats.dropped,
        unreadable_frames=loop.source.stats.unreadable,
        camera_reconnects=loop.source.stats.reconnects, video=Path(video_out) if video_out else None,
    )


def attach_feed(feed: LiveFeed, loop: SorterLoop, draw: Callable[[FrameResult], object]) -> None:
    """Connect the console's feed to a built line: its metrics, session, model, alarms and drawing."""
    feed.registry = loop.telemetry.registry
    feed.status.session = loop.decision_log.session
    feed.slot.render = draw
    feed.model_loaded(loop.classifier)
    for key in loop.telemetry.active_alarms():
        feed.alarm(key, True, "raised before the console attached")
    loop.telemetry.listeners.append(feed)


def install_stop_handlers(loop: SorterLoop) -> Callable[[], None]:
    """SIGINT/SIGTERM -> graceful :meth:`SorterLoop.stop` (a second Ctrl-C aborts); returns an undo."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: object) -> None:
        if loop.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("signal %d: stopping after this frame, draining items in flight", signum)
        loop.stop()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
