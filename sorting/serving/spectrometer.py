"""Spectrometer sources: what reads NIR spectra of the belt and hands them to the loop as :class:`Scan`.

Every source has one interface (:class:`Spectrometer`): ``poll(now)`` returns the scans that arrived since
the last call and never blocks (a spectrometer that stops sending gives empty lists: the loop goes on and
the items are decided without it); scans carry their time on the line's clock (:mod:`.clock`). Sources:

* :class:`FolderSpectrometer` (``folder:<dir>``): spectrum files the vendor's software writes into a folder,
  read as they appear (files already there at start-up are history, not scans) with the readers of
  :mod:`sorting.datasets.spectra_readers` (the NIRscan Nano CSV, two-column text). A file is read once it has
  not changed for ``settle_s``; its scan time is its modification time, less ``file_delay_s``, on the line's
  clock. A file named ``..._spot<k>...`` is spot ``k`` (else spot 0). A foreign, truncated or mislabelled file
  (another instrument's serial number, a spot the line does not have) is one warning and nothing else.
* :class:`SeabreezeSpectrometer` (``seabreeze[:<serial>]``): an Ocean Insight spectrometer through the optional
  ``seabreeze`` package (``pip install 'textile-sorter[seabreeze]'``), read continuously on its own thread;
  absorbance ``-log10((sample - dark) / (reference - dark))``. One spot.
* the simulated spectrometer of the synthetic world: :mod:`.spectrometer_sim`.

Both threads stamp scans with the line's clock, so the folder and device sources need a line on wall time
(a live camera, or a recording played at its pace).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sorting.datasets.spectra_readers import SpectrumError, read_spectrum
from sorting.errors import ConfigError, DataError
from sorting.serving.backoff import Backoff
from sorting.serving.spectrometer_config import SpectrometerConfig

log = logging.getLogger(__name__)

SPOT_IN_NAME = re.compile(r"spot[_-]?(\d+)", re.IGNORECASE)
SPECTRUM_SUFFIXES = (".csv", ".txt", ".dat")
MAX_QUEUED = 4096  # scans a source holds for the loop; beyond it the oldest are dropped (and counted)


@dataclass(frozen=True)
class Scan:
    """One spectrum of the belt: its time on the line's clock (the middle of the scan), wavelengths and
    absorbance, the spot that read it, the instrument, and for simulated scans what lay under the spot
    (``truth``: a garment id, ``background``, ``two:<a>,<b>`` or ``edge:<id>``; None on a real line)."""

    t: float
    wavelength_nm: np.ndarray
    absorbance: np.ndarray
    spot: int = 0
    instrument: str = ""
    truth: str | None = None
    name: str = ""  # where it came from (a file name), for messages


@dataclass
class SpectrometerStats:
    """What a source has done: scans handed over, inputs it could not use, scans dropped from a full queue."""

    scans: int = 0
    unreadable: int = 0
    dropped: int = 0


class Spectrometer(Protocol):
    """What the loop needs of a spectrometer (see the module docstring)."""

    name: str
    stats: SpectrometerStats

    @property
    def wavelength_nm(self) -> np.ndarray | None:
        """The sensor's wavelengths when known up front (checked against the model at start-up), else None."""
        ...

    def poll(self, now: float) -> list[Scan]:
        """Scans that arrived since the last call (never blocks)."""
        ...

    def close(self) -> None: ...


class _Queue:
    """Scans handed from a reader thread to the loop: bounded, oldest dropped first."""

    def __init__(self, stats: SpectrometerStats) -> None:
        self._items: deque[Scan] = deque()
        self._lock = threading.Lock()
        self._stats = stats

    def put(self, scan: Scan) -> None:
        with self._lock:
            if len(self._items) >= MAX_QUEUED:
                self._items.popleft()
                self._stats.dropped += 1
            self._items.append(scan)

    def drain(self) -> list[Scan]:
        with self._lock:
            out = list(self._items)
            self._items.clear()
        self._stats.scans += len(out)
        return out


class _ThreadedSource:
    """What the folder and device sources share: a reader thread filling a bounded queue the loop drains."""

    def __init__(self) -> None:
        self.stats = SpectrometerStats()
        self._queue = _Queue(self.stats)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self, target: Callable[[], None], name: str) -> None:
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def poll(self, now: float) -> list[Scan]:
        return self._queue.drain()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)


class FolderSpectrometer(_ThreadedSource):
    """Spectrum files written into ``folder`` by the vendor's software (see the module docstring)."""

    def __init__(self, folder: str | Path, *, clock: Callable[[], float], spots: int = 1, serial: str | None = None,
                 file_delay_s: float = 0.0, settle_s: float = 0.05, poll_s: float = 0.02, keep_s: float = 30.0,
                 wall: Callable[[], float] = time.time, start: bool = True) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"spectrometer folder {self.folder} does not exist (source folder:<dir>)")
        super().__init__()
        self.name = f"folder:{self.folder}"
        self._clock, self._wall = clock, wall
        self._spots, self._serial = spots, serial
        self._delay, self._settle, self._poll_s, self._keep = file_delay_s, settle_s, poll_s, keep_s
        self._seen: dict[str, float] = {}  # file name -> mtime, for files newer than the horizon
        self._horizon = wall()  # files older than this were there before us (or are long done)
        if start:
            self._start(self._watch, "spectrometer-folder")

    @property
    def wavelength_nm(self) -> np.ndarray | None:
        return None  # known per file

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.scan_folder()
            except OSError as exc:  # the folder vanished or is unreadable for a while: keep trying
                log.warning("spectrometer folder %s: %s", self.folder, exc)

    def scan_folder(self) -> int:
        """Read the files that appeared and settled since the last call; returns how many were read."""
        wall = self._wall()
        read = 0
        for entry in sorted(os.scandir(self.folder), key=lambda e: e.name):
            if not entry.name.lower().endswith(SPECTRUM_SUFFIXES) or entry.name in self._seen:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                mtime = entry.stat().st_mtime
            except OSError:
                continue
            if mtime < self._horizon or wall - mtime < self._settle:
                continue  # history, or still being written
            self._seen[entry.name] = mtime
            read += 1
            scan = self._read(Path(entry.path), mtime, wall)
            if scan is not None:
                self._queue.put(scan)
        self._forget(wall)
        return read

    def _forget(self, wall: float) -> None:
        """Forget files older than ``keep_s`` (a folder that fills all day must not fill memory)."""
        horizon = wall - self._keep
        if horizon > self._horizon:
            self._horizon = horizon
            self._seen = {n: m for n, m in self._seen.items() if m >= horizon}

    def _read(self, path: Path, mtime: float, wall: float) -> Scan | None:
        try:
            spectrum = read_spectrum(path)
            spot = self._spot_of(path.name)
            serial = spectrum.meta.get("Serial Number", "")
            if self._serial is not None and serial and serial != self._serial:
                raise SpectrumError("another instrument", f"serial number {serial}, the line's is {self._serial}")
        except SpectrumError as exc:
            self.stats.unreadable += 1
            log.warning("spectrometer: %s skipped: %s", path.name, exc)
            return None
        t = self._clock() - (wall - mtime) - self._delay
        return Scan(t, spectrum.wavelength_nm, spectrum.absorbance, spot, serial, name=path.name)

    def _spot_of(self, name: str) -> int:
        match = SPOT_IN_NAME.search(name)
        spot = int(match.group(1)) if match else 0
        if spot >= self._spots:
            raise SpectrumError("unknown spot", f"spot {spot} in the name, the line has spots 0..{self._spots - 1}")
        return spot


class SeabreezeSpectrometer(_ThreadedSource):
    """An Ocean Insight spectrometer via ``seabreeze`` (see the module docstring), read on its own thread.

    ``device`` is an opened ``seabreeze.spectrometers.Spectrometer`` (or a test's fake with ``wavelengths()``,
    ``intensities()``, ``integration_time_micros(us)``, ``close()``); :func:`open_spectrometer` opens the real one.
    A read that fails is logged and retried after a back-off: the loop never waits for the device.
    """

    def __init__(self, device: Any, *, clock: Callable[[], float], reference: np.ndarray, dark: np.ndarray | None,
                 scan_ms: float, serial: str = "", backoff: Backoff = Backoff(), start: bool = True) -> None:
        super().__init__()
        self.device = device
        self.name = f"seabreeze:{serial}" if serial else "seabreeze"
        self._clock = clock
        self._scan_s = scan_ms / 1000.0
        self._serial = serial
        self._backoff = backoff
        device.integration_time_micros(int(round(scan_ms * 1000)))
        self._wl = np.asarray(device.wavelengths(), dtype=np.float64)
        self._dark = np.zeros_like(self._wl) if dark is None else np.asarray(dark, dtype=np.float64)
        white = np.asarray(reference, dtype=np.float64)
        if white.shape != self._wl.shape or self._dark.shape != self._wl.shape:
            raise ConfigError(f"spectrometer: the reference / dark spectra have {white.size} / {self._dark.size} "
                              f"points, the device {self._wl.size}")
        self._span = white - self._dark
        if np.any(self._span <= 0):
            raise ConfigError("spectrometer: the white reference is not above the dark counts everywhere")
        if start:
            self._start(self._run, "spectrometer-seabreeze")

    @property
    def wavelength_nm(self) -> np.ndarray:
        return self._wl

    def read_once(self) -> Scan:
        """One scan from the device (blocks for the integration time; the reader thread calls it)."""
        counts = np.asarray(self.device.intensities(), dtype=np.float64)
        t = self._clock() - self._scan_s / 2
        ratio = np.clip((counts - self._dark) / self._span, 1e-6, None)
        return Scan(t, self._wl, -np.log10(ratio), 0, self._serial)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._queue.put(self.read_once())
                failures = 0
            except Exception as exc:  # the device's own errors (SeaBreezeError, USB): back off and retry
                self.stats.unreadable += 1
                delay = self._backoff.delay(failures)
                failures += 1
                log.warning("spectrometer %s: read failed (%s); retrying in %.1f s", self.name, exc, delay)
                self._stop.wait(delay)

    def close(self) -> None:
        super().close()
        try:
            self.device.close()
        except Exception as exc:  # closing a device that is already gone
            log.debug("spectrometer close: %s", exc)


def _two_column(path: Path, what: str) -> np.ndarray:
    try:
        return read_spectrum(path).absorbance  # the second column (intensities here), in wavelength order
    except DataError as exc:
        raise ConfigError(f"spectrometer.{what} {path}: {exc}") from None


def open_seabreeze(cfg: SpectrometerConfig, *, clock: Callable[[], float]) -> SeabreezeSpectrometer:
    """The ``seabreeze[:<serial>]`` source (ConfigError when the optional package or the device is missing)."""
    try:
        from seabreeze.spectrometers import Spectrometer as Device  # optional extra
    except ImportError:
        raise ConfigError("spectrometer.source seabreeze needs the optional package: "
                          "pip install 'textile-sorter[seabreeze]'") from None
    serial = cfg.argument or cfg.serial
    try:
        device = Device.from_serial_number(serial) if serial else Device.from_first_available()
    except Exception as exc:  # seabreeze raises its own error types when no device answers
        raise ConfigError(f"spectrometer {cfg.source}: no device ({exc})") from None
    assert cfg.reference is not None  # the config requires it for seabreeze
    dark = _two_column(cfg.dark, "dark") if cfg.dark is not None else None
    return SeabreezeSpectrometer(device, clock=clock, reference=_two_column(cfg.reference, "reference"), dark=dark,
                                 scan_ms=cfg.scan_ms, serial=serial or "")


def open_spectrometer(cfg: SpectrometerConfig, *, clock: Callable[[], float]) -> Spectrometer:
    """A folder or device source for ``cfg`` (the simulated one is made by :mod:`.spectrometer_sim`)."""
    if cfg.kind == "folder":
        return FolderSpectrometer(cfg.argument, clock=clock, spots=len(cfg.across_px), serial=cfg.serial,
                                  file_delay_s=cfg.file_delay_s, settle_s=cfg.settle_s)
    if cfg.kind == "seabreeze":
        return open_seabreeze(cfg, clock=clock)
    raise ConfigError(f"spectrometer.source {cfg.source}: open it with the synthetic world (spectrometer_sim)")
