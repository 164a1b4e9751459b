"""Crops of one garment and of touching garments, cut from the synthetic conveyor as the sorter cuts them.

The layout head (``sorting.training.layout``) learns from these whether a blob shows one garment
or several. Touching garments merge into one blob on the belt; a colour-block garment also shows
two colour regions, so colour and shape rules alone confuse the two. The samples come from
conveyor worlds with the highest share of touching pairs: singles are whole normal garments (with
whatever bits of neighbours fall inside the grown box, as on the belt), "several" is the grown
union box of a touching pair, each at the middle frame in which the whole garment (pair) is in view.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from multiprocessing import get_context

import cv2
import numpy as np
from tqdm import tqdm

from sorting.datasets.preprocess import garment_crop
from sorting.datasets.synth.conveyor import ConveyorConfig, ConveyorWorld
from sorting.errors import ConfigError

log = logging.getLogger(__name__)

SINGLE, SEVERAL = 0, 1
EDGE_GAP_PX = 2  # a box this close to the frame edge counts as cut by it
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LayoutSample:
    """One crop (uint8 BGR) with its layout label and the world it came from (for grouped splits)."""

    image: np.ndarray
    label: int  # SINGLE or SEVERAL
    world: int
    description: str  # e.g. "tshirt:red" or "sock+towel"


def _box_at(item: dict, frame: int) -> Box | None:
    for k, x, y in item["track"]:
        if k == frame:
            w, h = item["size"]
            return x - w / 2, y - h / 2, w, h
    return None


def _union(a: Box, b: Box) -> Box:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    return x0, y0, max(a[0] + a[2], b[0] + b[2]) - x0, max(a[1] + a[3], b[1] + b[3]) - y0


def _wanted_views(gt: dict) -> dict[int, list[tuple[int, str, Box]]]:
    """frame -> [(label, description, box)]: each normal garment and each touching pair once, mid-view."""
    width, height = gt["width"], gt["height"]
    items = {it["id"]: it for it in gt["items"]}

    def whole(box: Box | None) -> bool:
        return box is not None and box[0] >= EDGE_GAP_PX and box[1] >= EDGE_GAP_PX \
            and box[0] + box[2] <= width - EDGE_GAP_PX and box[1] + box[3] <= height - EDGE_GAP_PX

    wanted: dict[int, list[tuple[int, str, Box]]] = {}
    pairs_done: set[tuple[int, int]] = set()
    for it in items.values():
        frames = range(it["entry_frame"], it["exit_frame"] + 1)
        if it["hard_reason"] is None:
            good = [f for f in frames if whole(_box_at(it, f))]
            if good:
                f = good[len(good) // 2]
                wanted.setdefault(f, []).append((SINGLE, f"{it['garment']}:{it['colour']}", _box_at(it, f)))
            continue
        for other_id in it["touching_ids"]:
            key = (min(it["id"], other_id), max(it["id"], other_id))
            if key in pairs_done or other_id not in items:
                continue
            other = items[other_id]
            good = [f for f in frames if whole(_box_at(it, f)) and whole(_box_at(other, f))]
            if good:
                pairs_done.add(key)
                f = good[len(good) // 2]
                box = _union(_box_at(it, f), _box_at(other, f))
                wanted.setdefault(f, []).append((SEVERAL, f"{it['garment']}+{other['garment']}", box))
    return wanted


def _render_world(args: tuple[int, int]) -> list[LayoutSample]:
    seed, n_items = args
    cv2.setNumThreads(1)
    # a fast belt: fewer frames to render per garment, the same views
    cfg = ConveyorConfig(n_items=n_items, seed=seed, belt_speed_px_s=900.0, hard_fraction=0.5, colour_cast=False,
                         stains=0)
    world = ConveyorWorld(cfg)
    wanted = _wanted_views(world.ground_truth())
    if not wanted:
        return []
    samples = []
    for index, _, frame in world.frames(min(wanted), max(wanted) + 1, only=wanted):
        for label, description, box in wanted.get(index, []):
            bbox = tuple(int(round(v)) for v in box)
            samples.append(LayoutSample(garment_crop(frame, bbox).copy(), label, seed, description))
    return samples


def render_layout_samples(*, worlds: int = 8, items_per_world: int = 200, seed: int = 0, workers: int = 2,
                          progress: bool = True) -> list[LayoutSample]:
    """Single-garment and touching-pair crops from ``worlds`` synthetic conveyors (about 1 pair in 3).

    The same ``seed`` gives the same samples whatever ``workers`` is.
    """
    if worlds < 2 or items_per_world < 20:
        raise ConfigError(f"need at least 2 worlds of 20 items for a layout set (got {worlds} x {items_per_world})")
    tasks = [(seed * 1000 + 1 + k, items_per_world) for k in range(worlds)]
    by_world: dict[int, list[LayoutSample]] = {}
    with tqdm(total=worlds, desc="layout crops", unit="world", disable=not progress) as bar:
        if workers > 1:
            with get_context("spawn").Pool(workers) as pool:
                for samples in pool.imap_unordered(_render_world, tasks):
                    if samples:
                        by_world[samples[0].world] = samples
                    bar.update(1)
        else:
            for task in tasks:
                samples = _render_world(task)
                if samples:
                    by_world[samples[0].world] = samples
                bar.update(1)
    out = [s for world in sorted(by_world) for s in by_world[world]]
    n_several = sum(s.label == SEVERAL for s in out)
    log.info("layout set: %d crops from %d worlds (%d touching pairs)", len(out), worlds, n_several)
    return out
