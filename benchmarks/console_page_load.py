"""Page-load times of the operator's console on a generated decision log, while the log is written at
full rate, frames are put into the live slot at 30 frames/s and a viewer pulls the camera view.

    PYTHONPATH=. python benchmarks/console_page_load.py                 # 5,000 rows over an 8-hour shift
    PYTHONPATH=. python benchmarks/console_page_load.py --rows 50000 --no-writer

Prints median / p95 / max milliseconds per page (a fresh HTTP connection per request, as a browser
opening the page) and the writer's rows/s meanwhile; writes ``page_load.json`` under ``--out``.
Also times the loop's side of the seams (``FrameSlot.put``, ``LiveFeed.on_item_decision``).
Target (issue 16): every page under 500 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from sorting.apps.console import start_console
from sorting.serving.decision_log import DecisionLog, DecisionLogConfig
from sorting.serving.live import LiveFeed
from sorting.serving.policy import Decision, ItemEvidence
from sorting.serving.telemetry import Telemetry, TelemetryConfig

LABELS = {"fibre": ["cotton", "polyester", "wool"], "colour": ["white", "black", "red"]}
BINS = {0: "reject", 1: "white", 2: "black", 3: "red"}
PLAN = [(1, "rule:white"), (2, "rule:black"), (0, "low_confidence:fibre"), (3, "rule:red"), (0, "ood"),
        (1, "rule:white"), (0, "overlap"), (2, "rule:black"), (3, "rule:red"), (0, "cut_off")]
PAGES = ("live", "api/live", "history", "history.csv", "relabel", "crop")


def _item(log: DecisionLog, i: int, rng: np.random.Generator, wall: float | None = None) -> Decision:
    bin_id, reason = PLAN[i % len(PLAN)]
    probs = {"fibre": rng.dirichlet(np.ones(3)), "colour": rng.dirichlet(np.ones(3))}
    decision = Decision(bin_id, BINS[bin_id], reason, "cotton", "white", {"fibre": 0.6, "colour": 0.9})
    crop = rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)
    log.record(ItemEvidence(i, probs, LABELS), decision, latency_ms=float(rng.uniform(4, 12)), crop=crop,
               wall_time=wall)
    return decision


def make_log(path: Path, rows: int, shift_h: float) -> None:
    """``rows`` decisions spread over a shift, crops of the rejected ones (4 in 10)."""
    rng = np.random.default_rng(0)
    t0 = time.time() - shift_h * 3600
    with DecisionLog(DecisionLogConfig(path=path), reject_bin=0, session="shift") as log:
        for i in range(rows):
            _item(log, i, rng, t0 + i * shift_h * 3600 / rows)


class Load:
    """A line at work around the console: full-rate log writer, 30 frames/s into the slot, one viewer."""

    def __init__(self, path: Path, feed: LiveFeed, telemetry: Telemetry, url: str, writer: bool) -> None:
        self.stop = threading.Event()
        self.rows = 0
        self.viewed = 0
        self.threads = [threading.Thread(target=self._frames, args=(feed, telemetry), daemon=True),
                        threading.Thread(target=self._viewer, args=(url,), daemon=True)]
        if writer:
            self.threads.append(threading.Thread(target=self._writer, args=(path, feed, telemetry), daemon=True))

    def _writer(self, path: Path, feed: LiveFeed, telemetry: Telemetry) -> None:
        rng = np.random.default_rng(1)
        with DecisionLog(DecisionLogConfig(path=path), reject_bin=0, session="live") as log:
            while not self.stop.is_set():
                telemetry.on_decision(_item(log, self.rows, rng))
                feed.recent.add(6.0)
                self.rows += 1

    def _frames(self, feed: LiveFeed, telemetry: Telemetry) -> None:
        frame = np.random.default_rng(2).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        while not self.stop.wait(1 / 30):
            feed.slot.put(frame.copy())
            telemetry.on_frame(time.monotonic())

    def _viewer(self, url: str) -> None:
        seq = 0
        while not self.stop.is_set():
            with urllib.request.urlopen(f"{url}frame.jpg?after={seq}", timeout=5) as resp:
                seq = int(resp.headers.get("X-Frame-Seq", seq))
                resp.read()
                self.viewed += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def time_pages(url: str, crop_uid: str, repeat: int) -> dict[str, dict[str, float]]:
    out = {}
    for page in PAGES:
        target = f"{url}crop/{crop_uid}" if page == "crop" else f"{url}{page}?session=shift"
        ms = []
        for _ in range(repeat):
            tic = time.perf_counter()
            with urllib.request.urlopen(target, timeout=30) as resp:
                resp.read()
            ms.append((time.perf_counter() - tic) * 1e3)
        out[page] = {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "max_ms": max(ms)}
    return out


def seam_cost(n: int = 200_000) -> dict[str, float]:
    """Nanoseconds per call of what the loop calls per frame / per item (no viewer)."""
    feed = LiveFeed(line_name="bench", bins=BINS, reject_bin=0)
    frame, item = np.zeros((480, 640, 3), np.uint8), SimpleNamespace(latency_ms=6.0)
    tic = time.perf_counter()
    for _ in range(n):
        feed.slot.put(frame)
    put_ns = (time.perf_counter() - tic) / n * 1e9
    tic = time.perf_counter()
    for _ in range(n):
        feed.on_item_decision(item)
    return {"slot_put_ns": put_ns, "on_item_decision_ns": (time.perf_counter() - tic) / n * 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5000, help="decisions in the generated log (5000)")
    ap.add_argument("--shift-hours", type=float, default=8.0)
    ap.add_argument("--repeat", type=int, default=20, help="requests per page (20)")
    ap.add_argument("--no-writer", dest="writer", action="store_false", help="no concurrent log writer")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-console"))
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    db = args.out / "decisions.sqlite"
    tic = time.perf_counter()
    make_log(db, args.rows, args.shift_hours)
    print(f"log: {args.rows} rows in {time.perf_counter() - tic:.1f} s -> {db}")
    telemetry = Telemetry(TelemetryConfig(), bin_names=BINS, reject_bin=0)
    feed = LiveFeed(line_name="bench", bins=BINS, reject_bin=0, registry=telemetry.registry)
    console = start_console(feed, db, port=0)
    try:
        with Load(db, feed, telemetry, console.url, args.writer) as load:
            time.sleep(1.0)
            tic = time.perf_counter()
            pages = time_pages(console.url, "shift-2", args.repeat)
            wall = time.perf_counter() - tic
            rows, viewed = load.rows, load.viewed
    finally:
        console.close()
    seams = seam_cost()
    print(f"{'page':<12} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    for page, t in pages.items():
        print(f"{page:<12} {t['median_ms']:>10.1f} {t['p95_ms']:>8.1f} {t['max_ms']:>8.1f}")
    print(f"meanwhile: log writer {rows / wall:.0f} rows/s, viewer {viewed / wall:.1f} frames/s (capped at 5)")
    print(f"loop side: slot.put {seams['slot_put_ns']:.0f} ns, on_item_decision {seams['on_item_decision_ns']:.0f} ns")
    report = {"rows": args.rows, "writer": args.writer, "pages": pages, "writer_rows_per_s": rows / wall,
              "viewer_frames_per_s": viewed / wall, **seams}
    (args.out / "page_load.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
