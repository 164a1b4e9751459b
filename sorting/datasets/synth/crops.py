"""Labelled crop dataset rendered exactly as the sorter will see garments on the belt.

Every sample is one garment rendered by the conveyor renderer (same scale, belt,
vignette, lighting variation, sensor noise) at a random place in a 640x480 frame,
optionally passed through JPEG compression (the video path is compressed too), and
cut out as the garment's bounding box plus a 10% margin (``grow_box``), exactly as the
sorter cuts its crops. The crop keeps its aspect ratio; its longer side is scaled to ``size``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sorting.datasets.manifest import ManifestRow, write_manifest
from sorting.datasets.preprocess import grow_box
from sorting.datasets.synth.colours import check_colours
from sorting.datasets.synth.garments import GARMENTS
from sorting.datasets.synth.scene import ItemSpec, Scene, render_sprite, random_lighting
from sorting.datasets.synth.textures import check_fibres
from sorting.errors import ConfigError
from sorting.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

FRAME_SIZE = (640, 480)
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SOURCE = "synth"


@dataclass(frozen=True)
class CropJob:
    index: int
    spec: ItemSpec
    split: str
    sample_seed: int


def crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x, y, w, h) of a boolean mask grown as the sorter grows its crops."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty mask")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    return grow_box((x0, y0, x1 - x0, y1 - y0))


def render_crop(scene: Scene, spec: ItemSpec, sample_seed: int, size: int) -> np.ndarray:
    """Render one garment on the belt and return its crop (uint8 BGR, longer side ``size``)."""
    rng = np.random.default_rng(sample_seed)
    sprite = render_sprite(spec)
    sw, sh = sprite.size
    fx = int(rng.integers(0, max(1, scene.width - sw)))
    fy = int(rng.integers(scene.belt_top, max(scene.belt_top + 1, scene.height - sh)))
    bx, by, bw, bh = crop_box(sprite.mask())
    canvas = scene.belt_region(fx + bx, fy + by, bw, bh, float(rng.uniform(0, scene.belt_period)))
    Scene.paste(canvas, sprite, -bx, -by)
    crop = scene.finish(canvas, fx + bx, fy + by, random_lighting(rng), int(rng.integers(1 << 30)))
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])
        crop = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    scale = size / max(crop.shape[:2])
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                      interpolation=interp)


def _composition(fibre: str) -> str:
    if fibre == "polycotton":
        return "65% polyester, 35% cotton"
    return "" if fibre == "other" else f"100% {fibre}"


def _spread_splits(m: int) -> list[str]:
    """Split names for ``m`` members of one class: 70/15/15, each split spread evenly over the list."""
    counts = {name: int(round(frac * m)) for name, frac in SPLIT_FRACTIONS.items() if name != "train"}
    if m >= 3:
        counts = {name: max(1, c) for name, c in counts.items()}
    counts["train"] = m - sum(counts.values())
    slots = [((j + 0.5) / c, name) for name, c in counts.items() for j in range(c)]
    return [name for _, name in sorted(slots)]


def _plan(n: int, seed: int, taxonomy: Taxonomy) -> list[CropJob]:
    """Balanced fibre and colour labels, random garments, splits stratified by fibre (spread over colours)."""
    rng = np.random.default_rng([seed, 1])
    fibres, colours = taxonomy.fibre, taxonomy.colour
    fibre_idx = rng.permutation(np.resize(np.arange(len(fibres)), n))
    colour_idx = rng.permutation(np.resize(np.arange(len(colours)), n))
    splits = [""] * n
    for f in range(len(fibres)):
        members = sorted((i for i in range(n) if fibre_idx[i] == f), key=lambda i: colour_idx[i])
        for i, split in zip(members, _spread_splits(len(members))):
            splits[i] = split
    jobs = []
    for i in range(n):
        spec = ItemSpec(fibres[fibre_idx[i]], colours[colour_idx[i]], GARMENTS[int(rng.integers(len(GARMENTS)))],
                        int(rng.integers(2**31 - 1)))
        jobs.append(CropJob(i, spec, splits[i], int(rng.integers(2**31 - 1))))
    return jobs


def _render_chunk(args: tuple[list[CropJob], int, int, str]) -> list[tuple[int, str, str, int, int]]:
    jobs, size, seed, out_dir = args
    cv2.setNumThreads(1)
    scene = Scene(*FRAME_SIZE, seed=seed)
    rows = []
    for job in jobs:
        crop = render_crop(scene, job.spec, job.sample_seed, size)
        rel = f"images/{job.split}/{job.index:05d}_{job.spec.fibre}_{job.spec.colour}.png"
        ok, buf = cv2.imencode(".png", crop)
        data = buf.tobytes()
        (Path(out_dir) / rel).write_bytes(data)
        rows.append((job.index, rel, hashlib.sha1(data).hexdigest(), crop.shape[1], crop.shape[0]))
    return rows


def _chunks(jobs: list[CropJob], k: int) -> Iterator[list[CropJob]]:
    for start in range(0, len(jobs), k):
        yield jobs[start : start + k]


def make_crop_dataset(
    out_dir: str | Path,
    *,
    n: int = 2000,
    size: int = 128,
    seed: int = 0,
    taxonomy: Taxonomy | None = None,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Render ``n`` labelled garment crops into ``out_dir`` and return the manifest path.

    Fibre and colour classes are balanced and independent; splits are 70/15/15
    train/val/test within each fibre class. The same ``seed`` gives identical files
    whatever ``workers`` is.
    """
    if n < 1 or size < 16:
        raise ConfigError(f"need n >= 1 and size >= 16 (got n={n}, size={size})")
    taxonomy = taxonomy or load_taxonomy()
    check_fibres(taxonomy.fibre)
    check_colours(taxonomy.colour)
    out = Path(out_dir)
    for split in ("train", "val", "test"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
    jobs = _plan(n, seed, taxonomy)
    chunk = max(8, min(100, -(-n // (2 * max(1, workers)))))  # each chunk builds one Scene
    tasks = [(c, size, seed, str(out)) for c in _chunks(jobs, chunk)]
    results: dict[int, tuple[str, str, int, int]] = {}
    with tqdm(total=n, desc="synth crops", unit="img", disable=not progress) as bar:
        if workers > 1:
            with get_context("spawn").Pool(workers) as pool:
                for rows in pool.imap_unordered(_render_chunk, tasks):
                    results.update({r[0]: r[1:] for r in rows})
                    bar.update(len(rows))
        else:
            for task in tasks:
                rows = _render_chunk(task)
                results.update({r[0]: r[1:] for r in rows})
                bar.update(len(rows))
    rows = []
    for job in jobs:
        rel, sha1, w, h = results[job.index]
        s = job.spec
        rows.append(ManifestRow(rel, s.fibre, s.colour, s.garment, _composition(s.fibre) or None,
                                f"{SOURCE}:seed={seed}", job.split, sha1, w, h))
    manifest = write_manifest(rows, out / "manifest.csv")
    log.info("wrote %d crops and %s", n, manifest)
    return manifest
