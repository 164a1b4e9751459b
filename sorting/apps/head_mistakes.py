"""What a fitted textile-check head gets wrong, out of fold: a sheet of crops for the integrator to look at.

``fit-textile-check`` sets the head's threshold out of fold, so it knows which of the labelled crops the head would
get wrong on a scene it never saw: garments it would call not cloth, and hands, objects or belt it would pass as
garments. On the conveyor's development photos most of the first are black garments and garments merged with a
phone or tape into one blob, and most of the second are pieces of a garment, a cloth no box covers, or a crop
matched to the wrong box (serving/REAL_BELT.md). A head cannot fix those; a label (a box redrawn, a missed item
added) or the segmentation can. So the sheet shows each such crop with its photo and out-of-fold score.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from sorting.serving.annotate import tile_grid

log = logging.getLogger(__name__)

TILE = 128  # px, the side of one crop on the sheet
COLUMNS = 8
CAPTION_PX = 18
BACKGROUND = 40  # grey of the caption bands and the padding


def mistakes(scores: np.ndarray, garment: np.ndarray, threshold: float, most: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the garments scored below ``threshold`` (lowest first) and of the rest scored at or above it
    (highest first), at most ``most`` of each."""
    low = np.flatnonzero((garment == 1) & (scores < threshold))
    high = np.flatnonzero((garment == 0) & (scores >= threshold))
    return low[np.argsort(scores[low], kind="stable")][:most], high[np.argsort(-scores[high], kind="stable")][:most]


def mistakes_sheet(where: list[tuple[Path, tuple[int, int, int, int]]], scores: np.ndarray, garment: np.ndarray,
                   threshold: float, path: str | Path, *, most: int = 24) -> Path | None:
    """Write the sheet of the head's out-of-fold mistakes to ``path``: a row block of garments it would call not cloth,
    then one of the rest it would pass, each crop (``where``: its photo and ``(x0, y0, x1, y1)`` region) captioned
    with its photo's name and score. None (and nothing written) when it makes none; a photo that cannot be read
    again leaves a grey tile."""
    low, high = mistakes(scores, garment, threshold, most)
    if not len(low) and not len(high):
        return None
    images = {photo: cv2.imread(str(photo), cv2.IMREAD_COLOR) for photo in {where[i][0] for i in (*low, *high)}}
    blocks = []
    for title, rows in ((f"garments the head calls not cloth ({len(low)} shown)", low),
                        (f"not garments it passes as cloth ({len(high)} shown)", high)):
        if len(rows):
            tiles = [_tile(images[where[i][0]], where[i], scores[i]) for i in rows]
            blocks += [_title(title), tile_grid(tiles, COLUMNS, fill=BACKGROUND)]
    sheet = np.vstack(blocks)
    out = Path(path)
    if not cv2.imwrite(str(out), sheet):
        log.warning("cannot write %s", out)
        return None
    return out


def _tile(image: np.ndarray | None, where: tuple[Path, tuple[int, int, int, int]], score: float) -> np.ndarray:
    """One crop of ``image`` (None: unreadable) at ``TILE`` px with its photo's name and score under it."""
    photo, (x0, y0, x1, y1) = where
    crop = image[y0:y1, x0:x1] if image is not None else np.zeros((0, 0, 3), np.uint8)
    tile = np.full((TILE + CAPTION_PX, TILE, 3), BACKGROUND, np.uint8)
    if crop.size:
        tile[:TILE] = cv2.resize(crop, (TILE, TILE), interpolation=cv2.INTER_AREA)
    else:
        tile[:TILE] = 128
    cv2.putText(tile, f"{photo.stem[-16:]} {score:.2f}", (3, TILE + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _title(text: str) -> np.ndarray:
    """A dark band across the sheet with ``text``."""
    band = np.zeros((26, TILE * COLUMNS, 3), np.uint8)
    cv2.putText(band, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return band
