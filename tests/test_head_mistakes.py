"""The sheet of a textile-check head's out-of-fold mistakes (``fit-textile-check`` writes it beside the head)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sorting.apps.head_mistakes import CAPTION_PX, COLUMNS, TILE, mistakes, mistakes_sheet


def test_mistakes_are_garments_below_and_the_rest_at_or_above_the_threshold_worst_first():
    scores = np.array([0.1, 0.9, 0.3, 0.5, 0.8, 0.2, 0.5])
    garment = np.array([1, 1, 1, 0, 0, 0, 1])
    low, high = mistakes(scores, garment, threshold=0.5, most=5)
    assert low.tolist() == [0, 2]  # garments under 0.5, lowest first; 0.5 itself passes
    assert high.tolist() == [4, 3]  # the rest at 0.5 or more, highest first; 0.2 is rightly removed
    low, high = mistakes(scores, garment, threshold=0.5, most=1)
    assert low.tolist() == [0] and high.tolist() == [4]


def _photo(path: Path, bgr: tuple[int, int, int]) -> Path:
    cv2.imwrite(str(path), np.full((60, 80, 3), bgr, np.uint8))
    return path


def test_the_sheet_shows_each_mistake_cut_from_its_photo(tmp_path: Path):
    red, green = _photo(tmp_path / "red.png", (0, 0, 255)), _photo(tmp_path / "green.png", (0, 255, 0))
    where = [(red, (0, 0, 40, 30)), (green, (10, 10, 50, 40)), (tmp_path / "gone.png", (0, 0, 10, 10))]
    # the red crop: a garment the head would drop; green: not a garment, passed; the unreadable photo: a garment kept
    out = mistakes_sheet(where, np.array([0.2, 0.9, 0.95]), np.array([1, 0, 1]), 0.5, tmp_path / "sheet.png")
    assert out == tmp_path / "sheet.png"
    sheet = cv2.imread(str(out))
    title = 26
    assert sheet.shape == (2 * (title + TILE + CAPTION_PX), COLUMNS * TILE, 3)
    assert sheet[title + TILE // 2, TILE // 2].tolist() == [0, 0, 255]  # first block: the red garment
    second = 2 * title + TILE + CAPTION_PX
    assert sheet[second + TILE // 2, TILE // 2].tolist() == [0, 255, 0]  # second block: the green non-garment
    assert sheet[title + TILE // 2, TILE + TILE // 2].tolist() == [40, 40, 40]  # padding: one mistake a block


def test_an_unreadable_photo_leaves_a_grey_tile_and_no_mistake_no_sheet(tmp_path: Path):
    where = [(tmp_path / "gone.png", (0, 0, 10, 10))]
    out = mistakes_sheet(where, np.array([0.1]), np.array([1]), 0.5, tmp_path / "sheet.png")
    assert cv2.imread(str(out))[26 + TILE // 2, TILE // 2].tolist() == [128, 128, 128]
    assert mistakes_sheet(where, np.array([0.9]), np.array([1]), 0.5, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
