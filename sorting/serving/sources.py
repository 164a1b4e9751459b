"""Frame sources: cameras, streams, video files, image folders and the synthetic conveyor.

Every source implements :class:`FrameSource`: ``read(timeout_s)`` returns the next
:class:`Frame` or ``None``. ``None`` means "no frame right now" for a live source (the
loop keeps the belt logic running and reports it) and "end of stream" once
``source.exhausted`` is true. ``Frame.t`` is seconds on the *source* clock (frame index /
fps for files, ``time.monotonic()`` at grab time for live capture) so tracking and ejector timing do not
depend on how fast the loop runs.

Live sources (device, RTSP/HTTP, GStreamer) run a grabber thread that keeps only the newest
frame: OpenCV's internal buffer otherwise hands out stale frames and adds latency. A
dropped-frame counter says how many frames the loop never saw. A capture that fails or
disconnects is reopened with exponential back-off while ``read`` keeps returning ``None``
within its timeout, so the loop never blocks forever.

Video files are decoded ``read_ahead`` frames ahead on their own thread (every frame is
still delivered, in order): decoding then overlaps segmentation and inference instead of
adding to them, as a camera's capture pipeline would. ``stats.decode_s`` keeps the decode
time either way, so benchmarks can still compare the loop with decode + inference.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from sorting.datasets.synth.conveyor import ConveyorConfig, iter_conveyor_frames
from sorting.errors import DataError
from sorting.logs import mask_credentials
from sorting.serving.backoff import Backoff

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (by suffix), in sorted name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def photos_of(folder: Path, names: set[str] | None = None) -> list[Path]:
    """:func:`image_files` of ``folder``, only those whose file name is one of ``names`` (``images/x.jpg`` or
    ``x.jpg``) if given; DataError when ``folder`` is no folder or holds none of them."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of photos")
    found = image_files(folder)
    if names is not None:
        wanted = {Path(name).name for name in names}
        found = [p for p in found if p.name in wanted]
    if not found:
        raise DataError(f"{folder}: no photos (.jpg, .png, ...)" + (" of the subset" if names is not None else ""))
    return found


@dataclass(frozen=True)
class Frame:
    """One camera frame: running index, time in seconds on the source clock, BGR uint8 image."""

    index: int
    t: float
    image: np.ndarray


@dataclass
class SourceStats:
    """Counters an operator watches: frames delivered/dropped, reconnects, connection state."""

    frames: int = 0
    dropped: int = 0
    unreadable: int = 0  # frames skipped: not decoded (a damaged file, an image), or not usable by the segmentation
    reconnects: int = 0
    connected: bool = True
    decode_s: float = 0.0  # seconds spent decoding frames (files; on the decoder thread if any)


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` the sources use (a fake one in tests)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def release(self) -> None: ...
    def set(self, prop: int, value: float) -> bool: ...
    def get(self, prop: int) -> float: ...


CaptureFactory = Callable[[], Capture]


class FrameSource(ABC):
    """A stream of frames; use as a context manager so live capture threads stop.

    ``live``: a camera or stream (it may pause and come back; frames nobody read are dropped).
    ``paced``: frames arrive at the pace of the world and are stamped with ``time.monotonic()``
    (a live camera, or a recording played at its frame rate); otherwise frame times are the
    source's own clock and frames come as fast as they are read (see :mod:`sorting.serving.clock`).
    """

    live: bool = False

    def __init__(self) -> None:
        self.stats = SourceStats()
        self.exhausted = False

    @abstractmethod
    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """Next frame, or ``None`` (no frame within ``timeout_s``, or end when ``exhausted``)."""

    def close(self) -> None:
        """Release the device/file; idempotent."""

    @property
    def fps(self) -> float | None:
        """Nominal frame rate if known."""
        return None

    @property
    def paced(self) -> bool:
        return self.live

    def __iter__(self) -> Iterator[Frame]:
        """Frames until the end of a finite source (``None`` gaps of live sources are skipped)."""
        while True:
            frame = self.read()
            if frame is not None:
                yield frame
            elif self.exhausted:
                return

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveCaptureSource(FrameSource):
    """Camera / RTSP / HTTP / GStreamer capture with a newest-frame-only grabber thread."""

    live = True

    def __init__(
        self,
        target: int | str,
        *,
        backend: int = cv2.CAP_ANY,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        backoff: Backoff = Backoff(),
        capture_factory: CaptureFactory | None = None,
    ) -> None:
        super().__init__()
        self.target = target
        self.name = mask_credentials(str(target))  # for logs and thread names: never the password
        self._width, self._height, self._fps = width, height, fps
        self._backoff = backoff
        self._factory = capture_factory or (lambda: cv2.VideoCapture(target, backend))
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._delivered_index = -1
        self._stop = threading.Event()
        self.stats.connected = False
        self._thread = threading.Thread(target=self._grab_loop, name=f"grabber-{self.name}", daemon=True)
        self._thread.start()

    @property
    def fps(self) -> float | None:
        return self._fps

    def _open(self) -> Capture | None:
        try:
            cap = self._factory()
        except Exception as exc:  # a driver/back-end error must not kill the grabber
            log.warning("camera %s: open failed: %s", self.name, exc)
            return None
        if not cap.isOpened():
            cap.release()
            return None
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self._width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._width)
        if self._height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._height)
        if self._fps:
            cap.set(cv2.CAP_PROP_FPS, self._fps)
        return cap

    def _grab_loop(self) -> None:
        attempt = 0
        index = 0
        ever_connected = False
        while not self._stop.is_set():
            cap = self._open()
            if cap is None:
                delay = self._backoff.delay(attempt)
                log.warning("camera %s: not available, retry in %.2f s", self.name, delay)
                attempt += 1
                self._stop.wait(delay)
                continue
            if ever_connected:
                self.stats.reconnects += 1
                log.info("camera %s: reconnected", self.name)
            ever_connected = True
            attempt = 0
            self.stats.connected = True
            while not self._stop.is_set():
                try:
                    ok, image = cap.read()
                except Exception as exc:
                    log.warning("camera %s: read raised %s", self.name, exc)
                    ok, image = False, None
                if not ok or image is None:
                    break
                frame = Frame(index, time.monotonic(), image)
                with self._cond:
                    if self._latest is not None and self._latest.index > self._delivered_index:
                        self.stats.dropped += 1
                    self._latest = frame
                    self._cond.notify_all()
                index += 1
            cap.release()
            self.stats.connected = False
            if not self._stop.is_set():
                log.warning("camera %s: lost (disconnect or end of stream), reopening", self.name)

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self._stop.is_set():
            return None
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._latest is None or self._latest.index <= self._delivered_index:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(remaining)
            frame = self._latest
            self._delivered_index = frame.index
        self.stats.frames += 1
        return frame

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        self.exhausted = True


class VideoFileSource(FrameSource):
    """Every frame of a video file, as fast as possible or paced at the file's frame rate.

    ``read_ahead`` > 0 decodes up to that many frames ahead on a decoder thread (bounded
    memory); 0 decodes in :meth:`read`.

    A damaged stretch (garbage in the middle of the file) stops the decoder before the file's
    last frame: the file is reopened past it, the frames lost are counted in ``stats.unreadable``
    and reported, and sorting goes on with the frame's true index and time (the belt moved on).
    When nothing after the damage decodes, the source says how far it got.
    """

    def __init__(self, path: str | Path, *, realtime: bool = False, fps: float | None = None,
                 read_ahead: int = 4) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"video file not found: {self.path}")
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise DataError(f"cannot open video file {self.path} (not a video, or codec not supported)")
        file_fps = self._cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(fps or (file_fps if file_fps and file_fps > 0 else 30.0))
        self._total = int(max(0.0, self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        self._realtime = realtime
        self._pos = 0  # index of the next frame the decoder reads
        self._start: float | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[tuple[int, np.ndarray] | None] | None = None
        self._decoder: threading.Thread | None = None
        if read_ahead > 0:
            self._queue = queue.Queue(maxsize=read_ahead)
            self._decoder = threading.Thread(target=self._decode_loop, name=f"decoder-{self.path.name}", daemon=True)
            self._decoder.start()

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def paced(self) -> bool:
        return self._realtime

    def _read_one(self) -> np.ndarray | None:
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:  # a corrupt stream must not kill the loop
            log.debug("%s: decoder raised at frame %d: %s", self.path, self._pos, exc)
            ok, image = False, None
        return image if ok and image is not None else None

    def _decode(self) -> tuple[int, np.ndarray] | None:
        """The next decodable frame with its index in the file, or None at the end."""
        tic = time.perf_counter()
        image = self._read_one()
        if image is None and self._pos < self._total:
            image = self._skip_damage()
        self.stats.decode_s += time.perf_counter() - tic
        if image is None:
            return None
        self._pos += 1
        return self._pos - 1, image

    def _skip_damage(self) -> np.ndarray | None:
        """Reopen the file further and further past a damaged frame until one decodes (None: none does)."""
        first, step = self._pos, 1
        while first + step < self._total and not self._stop.is_set():
            self._cap.release()
            self._cap = cv2.VideoCapture(str(self.path))
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, first + step)
            image = self._read_one()
            if image is not None:
                self._pos = first + step
                self.stats.unreadable += step
                log.warning("%s: frames %d-%d of %d are damaged and cannot be decoded: skipped", self.path, first,
                            first + step - 1, self._total)
                return image
            step *= 2
        self.stats.unreadable += self._total - first
        log.warning("%s: the file is damaged or truncated after frame %d of %d: it ends here (%d frames lost)",
                    self.path, first, self._total, self._total - first)
        return None

    def _decode_loop(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            item = self._decode()
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item is None:
                return

    def _next_image(self) -> tuple[int, np.ndarray] | None:
        if self._queue is None:
            return self._decode()
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self.exhausted:
            return None
        item = self._next_image()
        if item is None:
            self.exhausted = True
            return None
        index, image = item
        t = index / self._fps
        if self._realtime:  # released at the file's pace, stamped on the monotonic clock
            now = time.monotonic()
            self._start = now if self._start is None else self._start
            t += self._start
            if t > now:
                time.sleep(t - now)
        self.stats.frames += 1
        return Frame(index, t, image)

    def close(self) -> None:
        self._stop.set()
        if self._decoder is not None:
            self._decoder.join()  # before release: the decoder may be inside cap.read()
        self._cap.release()
        self.exhausted = True


class FolderSource(FrameSource):
    """Images of a folder in sorted name order, timed at ``fps``; unreadable files are skipped."""

    def __init__(self, folder: str | Path, *, fps: float = 30.0) -> None:
        super().__init__()
        folder = Path(folder)
        self._paths = image_files(folder)
        if not self._paths:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
        self._fps = float(fps)
        self._pos = 0
        self._index = 0

    @property
    def fps(self) -> float:
        return self._fps

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        while self._pos < len(self._paths):
            path = self._paths[self._pos]
            self._pos += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("skipping unreadable image %s", path)
                self.stats.unreadable += 1
                continue
            frame = Frame(self._index, self._index / self._fps, image)
            self._index += 1
            self.stats.frames += 1
            return frame
        self.exhausted = True
        return None


class SyntheticSource(FrameSource):
    """The synthetic conveyor world (same frames for the same config); ends after the last garment,
    or after ``n_frames``."""

    def __init__(self, world: ConveyorConfig, *, n_frames: int | None = None) -> None:
        super().__init__()
        self._fps = float(world.fps)
        self._frames = iter_conveyor_frames(world, stop=n_frames)

    @property
    def fps(self) -> float:
        return self._fps

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self.exhausted:
            return None
        try:
            index, t, image = next(self._frames)
        except StopIteration:
            self.exhausted = True
            return None
        self.stats.frames += 1
        return Frame(int(index), float(t), image)

    def close(self) -> None:
        self._frames.close()
        self.exhausted = True


def open_source(
    spec: str | int,
    *,
    realtime: bool = False,
    fps: float | None = None,
    width: int | None = None,
    height: int | None = None,
    backoff: Backoff = Backoff(),
    max_frames: int | None = None,
) -> FrameSource:
    """Open a source from a string: ``0`` device, ``rtsp://``/``http(s)://`` stream, a GStreamer
    pipeline (contains ``!``), an image folder, a video file, or ``synthetic[:seed]``."""
    text = str(spec).strip()
    live = dict(width=width, height=height, fps=fps, backoff=backoff)
    if text.isdigit():
        return LiveCaptureSource(int(text), **live)
    if text.lower().startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return LiveCaptureSource(text, backend=cv2.CAP_FFMPEG, **live)
    if "!" in text:
        return LiveCaptureSource(text, backend=cv2.CAP_GSTREAMER, **live)
    if text == "synthetic" or text.startswith("synthetic:"):
        seed_text = text.partition(":")[2] or "0"
        if not seed_text.isdigit():
            raise DataError(f"bad synthetic source '{text}': expected synthetic or synthetic:<seed>")
        world = ConveyorConfig(seed=int(seed_text), width=width or 640, height=height or 480, fps=fps or 30.0)
        return SyntheticSource(world, n_frames=max_frames)
    path = Path(text).expanduser()
    if path.is_dir():
        return FolderSource(path, fps=fps or 30.0)
    if path.is_file():
        return VideoFileSource(path, realtime=realtime, fps=fps)
    raise DataError(f"source '{mask_credentials(text)}' is not a device index, URL, GStreamer pipeline, folder, "
                    "video file or synthetic[:seed]")
