"""Frame sources: live capture with reconnect and newest-frame-only, files, folders, factory."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from sorting.errors import DataError
from sorting.serving.backoff import Backoff
from sorting.serving.sources import (
    FolderSource,
    LiveCaptureSource,
    SyntheticSource,
    VideoFileSource,
    open_source,
)


class FakeCapture:
    """A camera that delivers ``n_ok`` frames, then fails (disconnect) or raises."""

    def __init__(self, n_ok: int, *, opened: bool = True, raises: bool = False, delay_s: float = 0.002) -> None:
        self.n_ok, self.opened, self.raises, self.delay_s = n_ok, opened, raises, delay_s
        self.reads = 0

    def isOpened(self) -> bool:  # noqa: N802
        return self.opened

    def read(self):
        time.sleep(self.delay_s)
        self.reads += 1
        if self.reads > self.n_ok:
            if self.raises:
                raise RuntimeError("USB cable pulled")
            return False, None
        return True, np.full((8, 8, 3), self.reads, np.uint8)

    def release(self) -> None:
        pass

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 0.0


def test_camera_is_reopened_with_backoff_and_loop_gets_no_frame_events():
    opens: list[float] = []
    script = iter([FakeCapture(3, raises=True), FakeCapture(0, opened=False), FakeCapture(0, opened=False),
                   FakeCapture(1000)])
    lock = threading.Lock()

    def factory():
        with lock:
            opens.append(time.monotonic())
            return next(script)

    src = LiveCaptureSource(0, backoff=Backoff(initial_s=0.05, factor=2.0, max_s=1.0), capture_factory=factory)
    try:
        got, nones = [], 0
        deadline = time.monotonic() + 5.0
        while src.stats.reconnects < 1 or len(got) < 6:
            assert time.monotonic() < deadline, "camera never came back"
            frame = src.read(timeout_s=0.02)  # never blocks longer than asked
            if frame is None:
                nones += 1
            else:
                got.append(frame)
        assert len(opens) == 4 and src.stats.reconnects == 1 and src.stats.connected
        gaps = np.diff(opens[1:])  # failed opens wait 0.05 s, then 0.1 s
        assert gaps[0] >= 0.04 and gaps[1] >= 0.09
        assert nones > 0 and not src.exhausted
        assert [f.index for f in got] == sorted({f.index for f in got})  # increasing, no repeats
    finally:
        src.close()
    assert src.read(0.01) is None


def test_live_source_keeps_only_the_newest_frame():
    src = LiveCaptureSource(0, capture_factory=lambda: FakeCapture(10_000, delay_s=0.001))
    try:
        first = src.read(1.0)
        time.sleep(0.1)  # the loop is busy: frames pile up in the camera, only the newest is kept
        second = src.read(1.0)
        assert first is not None and second is not None
        assert second.index > first.index + 5 and src.stats.dropped > 5
    finally:
        src.close()


def _write_video(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
    for i in range(n):
        writer.write(np.full((48, 64, 3), (i * 10) % 250, np.uint8))
    writer.release()


def test_video_file_plays_every_frame_with_file_clock(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, 12)
    with open_source(str(path)) as src:
        assert isinstance(src, VideoFileSource)
        frames = list(src)
    assert [f.index for f in frames] == list(range(12))
    assert frames[5].t == pytest.approx(5 / 25.0)
    assert src.exhausted


def test_read_ahead_delivers_every_frame_in_order_and_times_decoding(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, 15)
    with VideoFileSource(path, read_ahead=0) as inline:
        expected = [int(f.image[0, 0, 0]) for f in inline]
    with VideoFileSource(path, read_ahead=3) as ahead:
        got = [(f.index, int(f.image[0, 0, 0])) for f in ahead]
        assert ahead.stats.decode_s > 0.0
    assert [i for i, _ in got] == list(range(15))
    assert [v for _, v in got] == expected


def test_closing_mid_file_stops_the_decoder(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, 30)
    src = VideoFileSource(path, read_ahead=2)
    assert src.read() is not None
    time.sleep(0.05)  # the decoder is now blocked on a full queue
    src.close()
    assert src._decoder is not None and not src._decoder.is_alive()
    assert src.read() is None and src.exhausted


def test_realtime_video_is_paced(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, 6)
    start = time.monotonic()
    with VideoFileSource(path, realtime=True) as src:
        assert len(list(src)) == 6
    assert time.monotonic() - start >= 5 / 25.0 * 0.9


def test_folder_source_sorted_and_skips_bad_files(tmp_path):
    for name, value in (("b.png", 20), ("a.png", 10), ("c.jpg", 30)):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), value, np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    with open_source(str(tmp_path), fps=10) as src:
        assert isinstance(src, FolderSource)
        frames = list(src)
    assert [int(f.image[0, 0, 0]) for f in frames] == [10, 20, 30]
    assert frames[2].t == pytest.approx(0.2) and src.stats.unreadable == 1


def test_factory_dispatch_and_errors(tmp_path):
    with open_source("synthetic:3", max_frames=2, width=320, height=240) as src:
        assert isinstance(src, SyntheticSource)
        frames = list(src)
    assert len(frames) == 2 and frames[0].image.shape == (240, 320, 3)
    with pytest.raises(DataError):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(DataError):
        open_source("synthetic:abc")
    with pytest.raises(DataError):
        open_source(str(tmp_path))  # empty folder
