"""Noisy red / blue swatches labelled by colour: the smallest data a colour head can learn."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sorting.datasets.manifest import ManifestRow, write_manifest


def red_blue_manifest(folder: Path, n: int) -> Path:
    """``n`` 24-px swatches alternating blue / red (colour head only), every 4th in val."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        colour, bgr = ("red", (0, 0, 230)) if i % 2 else ("blue", (230, 40, 0))
        img = np.clip(np.full((24, 24, 3), bgr, np.int32) + rng.integers(-15, 15, (24, 24, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "img" / f"{i}.png"), img)
        rows.append(ManifestRow(f"img/{i}.png", colour=colour, split="val" if i % 4 == 0 else "train"))
    return write_manifest(rows, folder / "manifest.csv")
