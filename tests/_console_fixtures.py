"""Decision logs and a synthetic line feeding the console's seams (test_console_*, benchmarks/console_*)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np

from sorting.serving.decision_log import DecisionLog, DecisionLogConfig
from sorting.serving.live import LiveFeed
from sorting.serving.policy import Decision, ItemEvidence
from sorting.serving.telemetry import Telemetry, TelemetryConfig

LABELS = {"fibre": ["cotton", "polyester", "wool"], "colour": ["white", "black", "red"]}
BINS = {0: "reject", 1: "white", 2: "black", 3: "red"}
REJECT = 0
# (bin, reason) cycle: mostly sorted, some fail-safe rejects of each kind
_PLAN = [(1, "rule:white"), (2, "rule:black"), (0, "low_confidence:fibre"), (3, "rule:red"), (1, "rule:white"),
         (0, "ood"), (2, "rule:black"), (0, "overlap"), (3, "rule:red"), (0, "cut_off")]


def decision_for(i: int) -> tuple[ItemEvidence, Decision]:
    """Item ``i``'s evidence and decision (deterministic: a cycle over bins and reject reasons)."""
    bin_id, reason = _PLAN[i % len(_PLAN)]
    colour = LABELS["colour"][(i + (bin_id == 0)) % 3] if bin_id == 0 else BINS[bin_id]
    fibre = LABELS["fibre"][i % 3]
    conf = {"fibre": 0.55 if reason.startswith("low") else 0.93, "colour": 0.9}
    probs = {"fibre": np.roll([conf["fibre"], 1 - conf["fibre"], 0.0], i % 3),
             "colour": np.roll([0.9, 0.05, 0.05], LABELS["colour"].index(colour))}
    evidence = ItemEvidence(i, probs, LABELS, ood=reason == "ood", overlap=reason == "overlap",
                            cut_off=reason == "cut_off")
    return evidence, Decision(bin_id, BINS[bin_id], reason, fibre, colour, conf)


def crop_image(i: int) -> np.ndarray:
    """A small garment-like crop: a coloured blob on a grey belt."""
    img = np.full((72, 64, 3), 90, np.uint8)
    colour = [(235, 235, 235), (30, 30, 30), (40, 40, 210)][i % 3]
    cv2.ellipse(img, (32, 36), (22, 28), (i * 17) % 180, 0, 360, colour, -1)
    return img


def make_log(path: Path, n: int = 40, *, session: str = "s1", save_crops: str = "uncertain",
             t0: float | None = None, spacing_s: float = 1.0) -> list[str]:
    """A decision log of ``n`` items (crops of rejected ones), ``spacing_s`` apart from ``t0``; their uids."""
    t0 = time.time() - n * spacing_s if t0 is None else t0
    uids = []
    with DecisionLog(DecisionLogConfig(path=path, save_crops=save_crops), model_id="tiny:run-1", reject_bin=REJECT,
                     session=session) as log:
        for i in range(n):
            evidence, decision = decision_for(i)
            uids.append(log.record(evidence, decision, latency_ms=4.0 + i % 7, crop=crop_image(i),
                                   wall_time=t0 + i * spacing_s)[0])
    return uids


def belt_frame(k: int, width: int = 640, height: int = 480) -> np.ndarray:
    """A conveyor-like annotated frame: garments drifting right, boxes and ids drawn."""
    img = np.full((height, width, 3), (82, 86, 88), np.uint8)
    for j in range(4):
        x = (k * 12 + j * 170) % (width + 120) - 60
        y = 80 + (j * 97) % (height - 160)
        colour = [(230, 230, 230), (35, 35, 35), (40, 40, 200), (160, 90, 40)][j]
        cv2.ellipse(img, (x, y), (48, 34), 15 * j, 0, 360, colour, -1)
        cv2.rectangle(img, (x - 52, y - 38), (x + 52, y + 38), (60, 200, 60), 2)
        cv2.putText(img, f"#{k // 40 * 4 + j}", (x - 50, y - 42), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    cv2.line(img, (480, 0), (480, height - 1), (230, 200, 0), 1)
    return img


class SyntheticLine:
    """A stand-in for the sorter loop: frames into the slot, decisions into log, metrics and feed.

    Calls the seams the way the loop does: ``feed.slot.put`` per frame, ``DecisionLog.record`` then
    ``Telemetry.on_decision`` / ``observe_decision_latency`` and ``feed.on_item_decision`` per item.
    """

    def __init__(self, db_path: Path, *, fps: float = 20.0, every: int = 4, session: str = "live") -> None:
        self.telemetry = Telemetry(TelemetryConfig(), bin_names=BINS, reject_bin=REJECT)
        self.feed = LiveFeed(line_name="synthetic line", bins=BINS, reject_bin=REJECT,
                             registry=self.telemetry.registry)
        self.feed.status.session = session
        self.log = DecisionLog(DecisionLogConfig(path=db_path), model_id="tiny:run-1", reject_bin=REJECT,
                               session=session)
        self.fps, self.every = fps, every
        self.items = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="synthetic-line", daemon=True)

    def start(self) -> SyntheticLine:
        self._thread.start()
        return self

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            tic = time.perf_counter()
            self.feed.slot.put(belt_frame(k))
            self.telemetry.on_frame(time.monotonic())
            if k % self.every == 0:
                evidence, decision = decision_for(self.items)
                self.log.record(evidence, decision, latency_ms=6.0, crop=crop_image(self.items))
                self.telemetry.on_decision(decision)
                self.telemetry.observe_decision_latency(0.006)
                self.feed.recent.add(6.0)
                self.items += 1
            k += 1
            self._stop.wait(max(0.0, 1.0 / self.fps - (time.perf_counter() - tic)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.log.close()
