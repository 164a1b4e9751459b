"""Load any image file as BGR uint8 (the layout OpenCV and the serving loop use).

Decoding goes through Pillow rather than ``cv2.imdecode`` because Pillow *raises* on a
truncated file where OpenCV may return a partly grey image, and because it exposes the
pixel mode, so every format is converted on purpose:

- greyscale / 1-bit        -> replicated to three channels
- alpha (RGBA, LA, PA, palette with transparency) -> composited onto white
  (catalogue cut-outs are shot on white, so white is the honest background)
- 16-bit (``I;16``, ``I``)  -> scaled to 8 bits (value / 257, full range kept)
- CMYK / YCbCr / LAB       -> converted to RGB by Pillow
- EXIF orientation         -> applied, as ``cv2.imread`` does

Images with more than ``max_pixels`` (default 50 MP) are *rejected* ("too large"),
not decoded reduced: nothing in this project needs more than a few megapixels, and a
huge file in a dataset is more often a mistake (scan, panorama) than a sample.

Only regular files are read (a FIFO named ``.jpg`` would block forever, a link to
``/dev/zero`` would fill the memory): anything else is "not a regular file", and a file
over ``max_bytes`` (default 50 MB) is "too large" before a byte of it is read.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sorting.errors import DataError

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 50_000_000
_WHITE = (255, 255, 255)
_PLAIN_MODES = frozenset({"RGB", "L", "1", "P", "RGBA", "LA", "CMYK"})  # convert() cannot fail on these


class ImageError(DataError):
    """An image file cannot be used; ``reason`` is a short fixed phrase for reports."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class ImageInfo:
    """What an import records about a decoded image."""

    width: int
    height: int
    sha1: str


def _to_rgb_array(img: Image.Image, path: str | Path) -> np.ndarray:
    """Convert any Pillow mode to an RGB uint8 array (see the module docstring)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(img).astype(np.float32)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(path, "unsupported pixel format", f"{mode} values outside 0..65535")
        grey = np.rint(values / 257.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageError(path, "unsupported pixel format", "floating-point image")
    if mode in ("1", "L"):
        grey = np.asarray(img.convert("L"))
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def _open_decoded(data: bytes, path: str | Path, max_pixels: int) -> Image.Image:
    """Open and fully decode (so truncation raises) with EXIF orientation applied."""
    if not data:
        raise ImageError(path, "empty file", "0 bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(path, "not an image", "unrecognised file format") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, "too large", str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(path, "corrupt image", str(exc)) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(path, "corrupt image", f"size {width}x{height}")
    if width * height > max_pixels:
        megapixels = f"{width * height / 1e6:.0f} MP > {max_pixels / 1e6:g} MP"
        raise ImageError(path, "too large", f"{width}x{height} = {megapixels}")
    try:
        img.load()
    except OSError as exc:
        reason = "truncated image" if "truncated" in str(exc) else "corrupt image"
        raise ImageError(path, reason, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - decoders of hostile bytes raise anything (struct.error, ...)
        raise ImageError(path, "corrupt image", f"{type(exc).__name__}: {exc}") from None
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        pass  # a broken EXIF block only loses the orientation hint, not the pixels
    return img


def decode_image(data: bytes, *, path: str | Path = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to BGR uint8 HxWx3; raises :class:`ImageError` with a reason."""
    rgb = _to_rgb_array(_open_decoded(data, path, max_pixels), path)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _check_regular(path: Path, st: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, "not a file", "is a directory")
    if not stat.S_ISREG(st.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "device" if stat.S_ISCHR(st.st_mode) or \
            stat.S_ISBLK(st.st_mode) else "socket or other special file"
        raise ImageError(path, "not a regular file", kind)
    if st.st_size > max_bytes:
        raise ImageError(path, "too large", f"{st.st_size} bytes > {max_bytes} bytes")


def read_file_bytes(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (links followed); :class:`ImageError` otherwise.

    The type and size are checked before opening (opening a device can have effects) and again on the
    open file, which is opened non-blocking so that a FIFO swapped in meanwhile cannot hang the read.
    """
    try:
        _check_regular(path, path.stat(), max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageError(path, "missing file") from None
    except OSError as exc:
        raise ImageError(path, "unreadable file", exc.strerror or str(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        _check_regular(path, os.fstat(fd), max_bytes)
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(path, "unreadable file", exc.strerror or str(exc)) from None
    if len(data) > max_bytes:
        raise ImageError(path, "too large", f"more than {max_bytes} bytes")
    return data


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
               ) -> np.ndarray:
    """Load an image file as BGR uint8 HxWx3 (any common format; see module docstring)."""
    path = Path(path)
    return decode_image(read_file_bytes(path, max_bytes), path=path, max_pixels=max_pixels)


def inspect_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
                  ) -> ImageInfo:
    """Fully decode an image (so truncation is caught) and return its size and SHA-1."""
    path = Path(path)
    data = read_file_bytes(path, max_bytes)
    img = _open_decoded(data, path, max_pixels)
    if img.mode not in _PLAIN_MODES:
        _to_rgb_array(img, path)  # unusual modes: make sure the conversion works too
    return ImageInfo(width=img.size[0], height=img.size[1], sha1=hashlib.sha1(data).hexdigest())
