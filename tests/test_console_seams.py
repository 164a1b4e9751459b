"""The loop-to-console seams (sorting/serving/live.py), driven without a loop."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from sorting.serving.line_config import load_line_config
from sorting.serving.live import AlarmBoard, FrameSlot, LineStatus, ModelInfo, RecentDecisions, live_feed_for_line


def frame(value: int) -> np.ndarray:
    return np.full((48, 64, 3), value, np.uint8)


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_slot_keeps_only_the_newest_frame_and_encodes_on_the_reader() -> None:
    rendered: list[str] = []
    slot = FrameSlot(max_fps=1000, render=lambda f: (rendered.append(threading.current_thread().name), frame(f))[1])
    assert slot.jpeg(after=0, timeout_s=0.05) is None  # nothing yet
    for v in (10, 20, 200):
        slot.put(v)  # the loop hands references; nothing is rendered on put
    assert rendered == [] and slot.seq == 3
    seq, data = slot.jpeg(after=0)
    assert seq == 3 and abs(int(decode(data).mean()) - 200) <= 2  # drop-oldest: the newest only
    assert rendered == [threading.current_thread().name]
    assert slot.jpeg(after=3, timeout_s=0.05) is None  # nothing newer


def test_slot_wakes_a_waiting_viewer() -> None:
    slot = FrameSlot(max_fps=1000)
    got = []
    viewer = threading.Thread(target=lambda: got.append(slot.jpeg(after=0, timeout_s=5.0)))
    viewer.start()
    time.sleep(0.05)
    slot.put(frame(128))
    viewer.join(5.0)
    assert got and got[0] is not None and got[0][0] == 1


def test_slot_caps_encoding_rate_over_all_viewers() -> None:
    slot = FrameSlot(max_fps=10)
    stop = threading.Event()

    def producer() -> None:
        v = 0
        while not stop.is_set():
            slot.put(frame(v % 255))
            v += 1
            time.sleep(0.002)

    def viewer(seen: list[int]) -> None:
        after = 0
        while not stop.is_set():
            got = slot.jpeg(after=after, timeout_s=0.5)
            if got:
                after = got[0]
                seen.append(after)

    seen_a: list[int] = []
    seen_b: list[int] = []
    threads = [threading.Thread(target=producer), threading.Thread(target=viewer, args=(seen_a,)),
               threading.Thread(target=viewer, args=(seen_b,))]
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(5.0)
    elapsed = time.monotonic() - start
    assert slot.seq > 100  # the producer was never held back
    assert 3 <= slot.frames_encoded <= 10 * elapsed + 2  # two viewers, one capped encoder
    assert seen_a and seen_b and seen_a == sorted(set(seen_a))


def test_slot_downscales_wide_frames_and_survives_a_bad_one() -> None:
    slot = FrameSlot(max_fps=1000, max_width=320)
    slot.put(np.zeros((480, 1280, 3), np.uint8))
    _, data = slot.jpeg()
    assert decode(data).shape == (120, 320, 3)
    slot.put("not an image")
    assert slot.jpeg(after=1, timeout_s=0.1) is None  # logged, no exception
    assert slot.age_s() is not None and slot.age_s() < 5


def test_alarm_stays_until_acknowledged_after_it_clears() -> None:
    board = AlarmBoard()
    board.raise_("camera", "camera reconnecting", severity="critical")
    board.raise_("camera", "camera reconnecting (attempt 2)", severity="critical")  # same condition
    [a] = board.snapshot()
    assert a.active and not a.acknowledged and a.count == 1 and a.message.endswith("attempt 2)")
    board.clear("camera")
    [a] = board.snapshot()
    assert not a.active and a.state == "cleared, not acknowledged"  # cleared but still shown
    assert board.acknowledge("camera", by="op")
    assert board.snapshot() == []


def test_acknowledged_active_alarm_leaves_when_cleared_and_returns_when_raised_again() -> None:
    board = AlarmBoard()
    board.raise_("plc", "PLC unreachable")
    board.acknowledge("plc")
    [a] = board.snapshot()
    assert a.active and a.acknowledged and a.state == "active, acknowledged"
    board.clear("plc")
    assert board.snapshot() == []
    board.raise_("plc", "PLC unreachable")
    board.clear("plc")
    board.raise_("plc", "PLC unreachable again")  # re-occurrence before acknowledgement: counted
    [a] = board.snapshot()
    assert a.count == 2 and a.active and not a.acknowledged
    assert board.acknowledge("nope") is False


def test_events_count_and_sort_by_activity_and_severity() -> None:
    board = AlarmBoard()
    board.event("missed_firings", "2 firings missed (late)", n=2)
    board.event("missed_firings", "1 firing missed (late)")
    board.raise_("disk", "disk 95% full", severity="warning")
    board.raise_("camera", "no frames", severity="critical")
    keys = [a.key for a in board.snapshot()]
    assert keys == ["camera", "disk", "missed_firings"]
    missed = board.snapshot()[-1]
    assert missed.count == 3 and not missed.active
    assert board.acknowledge_all(by="op") == 3
    assert [a.key for a in board.snapshot()] == ["camera", "disk"]  # still active, now acknowledged


def test_alarm_board_is_thread_safe_and_bounded() -> None:
    board = AlarmBoard(max_alarms=8)

    def worker(k: int) -> None:
        for i in range(200):
            board.raise_(f"k{i % 4}", f"worker {k}")
            board.clear(f"k{i % 4}")
            board.event(f"e{k}", "event")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alarms = {a.key: a for a in board.snapshot()}
    assert len(alarms) == 8
    assert all(alarms[f"e{k}"].count == 200 for k in range(4))


def test_line_status_tracks_model_loads_and_rejected_reloads() -> None:
    status = LineStatus(line_name="L", bins={1: "white", 0: "reject"}, reject_bin=0)
    assert status.model is None and list(status.bins) == [0, 1]
    info = ModelInfo.from_classifier(SimpleNamespace(labels={"colour": ["white", "black"]}, model_id="tiny:r1"))
    status.model_loaded(info)
    status.model_rejected("m.onnx", "labels do not fit the bins file")
    status.model_loaded(ModelInfo(path="m.onnx", model_id="tiny:r2", name="tiny"))
    assert status.reloads == 1 and status.model.model_id == "tiny:r2"
    events = status.events()
    assert [e.ok for e in events] == [True, False, True] and events[-1].message == "start-up"
    assert info.classes == {"colour": ("white", "black")} and not info.quantized


def test_recent_decisions_window() -> None:
    recent = RecentDecisions(window_s=300)
    now = 1000.0
    for i in range(100):
        recent.add(float(i), t=now - 200 + i)  # 100 items over 200..101 s ago
    recent.add(None, t=now - 10)
    recent.add(5.0, t=now - 400)  # outside the window: dropped
    s = recent.stats(now)
    assert s.items == 101 and s.items_per_min == 1  # only the None-latency one in the last minute
    assert s.latency_ms_p50 == pytest.approx(49.5) and s.latency_ms_p99 == pytest.approx(98.01)
    assert RecentDecisions().stats().latency_ms_p50 is None


def test_live_feed_for_a_line_config(repo_root) -> None:
    cfg = load_line_config(repo_root / "serving" / "line-colour-6bin.yaml", [])
    feed = live_feed_for_line(cfg)
    assert feed.status.line_name == cfg.name and feed.status.bins[feed.status.reject_bin] == "reject"
    feed.on_item_decision(SimpleNamespace(latency_ms=7.0))
    assert feed.recent.stats().latency_ms_p50 == 7.0
