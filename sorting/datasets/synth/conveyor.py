"""A conveyor belt camera: garments enter on the left, cross the frame at a known speed.

:class:`ConveyorWorld` plans the whole clip up front from a seed (which garment, where,
when; which ones are hard cases) and renders frames on demand. Each garment's sprite is
rendered once when it enters and only pasted at a shifted position afterwards, so
rendering runs well above real time. The video writer (:func:`render_conveyor_clip`) and
the serving synthetic source (:func:`iter_conveyor_frames`) share this class, so a seed
means the same frames everywhere.

Hard cases (flagged in the ground truth): pairs of garments that touch
(``hard_reason="touching"``), garments partly outside the frame along the belt's lower
side (``"cut_off"``). Conditions that are not items: a colour-cast period (global
illuminant shift, see ``colour_cast``) and dirt stains on the belt (``distractors``).
A neutral reference strip along the top edge (``reference_roi``) is never covered, so a
sorter can white-balance every frame.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tqdm import tqdm

from sorting.datasets.synth.colours import check_colours
from sorting.datasets.synth.garments import GARMENTS, Silhouette, make_silhouette
from sorting.datasets.synth.scene import (
    ItemSpec,
    Lighting,
    Scene,
    Sprite,
    colour_temperature_gains,
    render_sprite,
)
from sorting.datasets.synth.textures import check_fibres, smooth_noise
from sorting.errors import ConfigError, DataError
from sorting.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

MIN_GAP_PX = 10  # clear belt between non-touching garments (mask to mask)
# A whole garment keeps this clear of the frame's side edge: the camera sees the full belt width,
# so one that touches the edge is indistinguishable from one cut by it (that is the cut_off case).
EDGE_CLEARANCE_PX = 6
WORLD_VERSION = 2  # bump when the same config renders a different clip (names of cached clips)
CAST_GAINS_BGR = (0.72, 1.04, 1.3)  # strong warm/orange cast (e.g. a sodium lamp switched on)


@dataclass(frozen=True)
class ConveyorConfig:
    """Everything that defines a clip; the same config gives the same frames."""

    n_items: int = 300
    seed: int = 0
    width: int = 640
    height: int = 480
    fps: float = 30.0
    belt_speed_px_s: float = 200.0
    direction: Literal["+x", "+y"] = "+x"
    hard_fraction: float = 0.12  # share of garments placed as hard cases (half touching, half cut off)
    colour_cast: bool = True
    stains: int = 2

    def validate(self) -> None:
        if self.n_items < 1:
            raise ConfigError(f"n_items must be >= 1 (got {self.n_items})")
        if self.width < 320 or self.height < 240:
            raise ConfigError(f"frame must be at least 320x240 (got {self.width}x{self.height})")
        if self.fps <= 0 or self.belt_speed_px_s <= 0:
            raise ConfigError("fps and belt_speed_px_s must be positive")
        if self.belt_speed_px_s / self.fps > 60:
            raise ConfigError("belt moves more than 60 px per frame; lower belt_speed_px_s or raise fps")
        if not 0.0 <= self.hard_fraction <= 0.5:
            raise ConfigError(f"hard_fraction must be in [0, 0.5] (got {self.hard_fraction})")
        if self.direction not in ("+x", "+y"):
            raise ConfigError(f"direction must be '+x' or '+y' (got {self.direction!r})")


@dataclass
class PlannedItem:
    """A garment (or a belt stain) placed on the belt; positions in the +x world frame."""

    id: int
    spec: ItemSpec
    silhouette: Silhouette
    x0: int  # sprite left edge at frame 0 (negative: still upstream)
    y0: int  # sprite top edge
    box: tuple[int, int, int, int]  # mask bbox inside the sprite: x, y, w, h
    hard_reason: str | None = None
    is_stain: bool = False
    touching: list[int] = field(default_factory=list)

    def world_box(self) -> tuple[int, int, int, int]:
        bx, by, bw, bh = self.box
        return self.x0 + bx, self.y0 + by, bw, bh


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _stain_sprite(spec: ItemSpec) -> Sprite:
    """A dark, soft-edged dirt patch on the belt (not a garment)."""
    rng = np.random.default_rng(spec.seed)
    sil = make_silhouette("sock", rng)  # only its size and pose are used
    h, w = sil.size[1], sil.size[0]
    blob = smooth_noise(h, w, 14, rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
    shape = np.clip((0.75 - r + 0.35 * blob) * 4.0, 0.0, 1.0)
    alpha = cv2.GaussianBlur(shape, (0, 0), 2.0) * float(rng.uniform(0.6, 0.75))
    bgr = np.empty((h, w, 3), np.float32)
    bgr[:] = (24.0, 32.0, 40.0)  # oily brown-black
    return Sprite.build(spec, sil, bgr, alpha.astype(np.float32), np.zeros_like(alpha))


class ConveyorWorld:
    """A planned conveyor clip: item layout, hard cases, lighting timeline, frames on demand."""

    def __init__(self, config: ConveyorConfig, taxonomy: Taxonomy | None = None) -> None:
        config.validate()
        self.config = config
        self.taxonomy = taxonomy or load_taxonomy()
        check_fibres(self.taxonomy.fibre)
        check_colours(self.taxonomy.colour)
        # The world is always simulated with the belt moving along +x; "+y" transposes frames.
        transposed = config.direction == "+y"
        self.world_w, self.world_h = (config.height, config.width) if transposed else (config.width, config.height)
        self.step_px = config.belt_speed_px_s / config.fps
        self.scene = Scene(self.world_w, self.world_h, seed=config.seed)
        self.items = self._plan(np.random.default_rng([config.seed, 2]))
        last_exit = max(self._visible_frames(it)[1] for it in self.items)
        self.n_frames = last_exit + int(config.fps // 3) + 1
        self.cast_frames = self._cast_window()

    # --- planning -----------------------------------------------------------------------
    def _shift(self, frame: int) -> int:
        """Belt displacement in whole pixels at ``frame`` (shared by belt texture and items)."""
        return int(np.floor(self.step_px * frame + 0.5))

    def _visible_frames(self, item: PlannedItem) -> tuple[int, int]:
        mx, _, mw, _ = item.world_box()
        entry = int(np.ceil((-(mx + mw) + 1 - 0.5) / self.step_px))
        while self._shift(entry) + mx + mw <= 0:
            entry += 1
        while entry > 0 and self._shift(entry - 1) + mx + mw > 0:
            entry -= 1
        exit_ = int(np.floor((self.world_w - mx - 0.5) / self.step_px))
        while self._shift(exit_ + 1) + mx < self.world_w:
            exit_ += 1
        while self._shift(exit_) + mx >= self.world_w:
            exit_ -= 1
        return max(entry, 0), exit_

    def _conflicts(self, box: tuple[int, int, int, int], placed: list[PlannedItem], ignore: int | None) -> int:
        """Largest mask right edge that keeps MIN_GAP_PX to every placed item overlapping ``box`` across the belt."""
        x, y, w, h = box
        bound = 10**9
        for other in placed:
            if other.id == ignore:
                continue
            ox, oy, ow, oh = other.world_box()
            if y < oy + oh + MIN_GAP_PX and oy < y + h + MIN_GAP_PX:
                bound = min(bound, ox - MIN_GAP_PX)
        return bound

    def _plan(self, rng: np.random.Generator) -> list[PlannedItem]:
        cfg = self.config
        top, bottom = self.scene.belt_top, self.world_h
        fibres, colours = self.taxonomy.fibre, self.taxonomy.colour
        n_hard = int(round(cfg.n_items * cfg.hard_fraction))
        kinds = ["normal"] * cfg.n_items
        hard_slots = rng.choice(np.arange(2, cfg.n_items), size=min(n_hard, max(0, cfg.n_items - 2)), replace=False)
        for k, slot in enumerate(hard_slots):
            kinds[int(slot)] = "touching" if k % 2 == 0 else "cut_off"
        stain_slots = set(np.linspace(0, cfg.n_items, cfg.stains + 2)[1:-1].astype(int).tolist()) if cfg.stains else set()
        placed: list[PlannedItem] = []
        cursor = 0  # mask right edge of the next garment at frame 0: every garment enters from the left
        next_id = 0
        for slot in range(cfg.n_items):
            if slot in stain_slots:
                spec = ItemSpec("", "", "stain", int(rng.integers(2**31 - 1)))
                sil = _stain_sprite(spec).silhouette
                stain = self._place(next_id, spec, sil, rng, placed, cursor, top, bottom)
                stain.is_stain = True
                placed.append(stain)
                next_id += 1
                cursor = stain.world_box()[0] - int(rng.uniform(20, 80))
            spec = ItemSpec(fibres[int(rng.integers(len(fibres)))], colours[int(rng.integers(len(colours)))],
                            GARMENTS[int(rng.integers(len(GARMENTS)))], int(rng.integers(2**31 - 1)))
            sil = make_silhouette(spec.garment, np.random.default_rng(spec.seed))
            item = None
            if kinds[slot] == "touching":
                item = self._place_touching(next_id, spec, sil, rng, placed, top, bottom)
            elif kinds[slot] == "cut_off":
                item = self._place(next_id, spec, sil, rng, placed, cursor, top, bottom, cut_off=True)
            if item is None:
                item = self._place(next_id, spec, sil, rng, placed, cursor, top, bottom)
            placed.append(item)
            next_id += 1
            # The next garment may start beside this one (another lane) when there is room across the belt.
            ix, _, iw, _ = item.world_box()
            cursor = min(cursor, ix + iw // 2) - int(rng.uniform(0, 50))
        return placed

    def _place(self, item_id: int, spec: ItemSpec, sil: Silhouette, rng: np.random.Generator,
               placed: list[PlannedItem], cursor: int, top: int, bottom: int, *, cut_off: bool = False) -> PlannedItem:
        """Put the garment as far downstream as the cursor and the clear gap to its neighbours allow."""
        box = _mask_box(sil.posed_mask() > 127)
        bx, by, bw, bh = box
        if cut_off:
            y_mask = bottom - int(bh * rng.uniform(0.55, 0.8))
        else:
            y_mask = int(rng.integers(top, max(top + 1, bottom - bh - EDGE_CLEARANCE_PX)))
        x_mask1 = min(cursor, self._conflicts((0, y_mask, bw, bh), placed, None))
        return PlannedItem(item_id, spec, sil, x_mask1 - bw - bx, y_mask - by, box,
                           hard_reason="cut_off" if cut_off else None)

    def _place_touching(self, item_id: int, spec: ItemSpec, sil: Silhouette, rng: np.random.Generator,
                        placed: list[PlannedItem], top: int, bottom: int) -> PlannedItem | None:
        """Put the garment against the last normal garment so that their masks touch."""
        partner = next((p for p in reversed(placed) if not p.is_stain and p.hard_reason is None), None)
        if partner is None:
            return None
        mask = sil.posed_mask() > 127
        box = _mask_box(mask)
        bx, by, bw, bh = box
        _, py, _, ph = partner.world_box()
        pmask = partner.silhouette.posed_mask() > 127
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        for _ in range(8):  # a few vertical offsets; keep the first that touches only the partner
            y_mask = int(np.clip(py + ph / 2 - bh / 2 + rng.uniform(-0.35, 0.35) * ph, top,
                                 max(top, bottom - bh - EDGE_CLEARANCE_PX)))
            x_mask1 = self._touch_position(grown, box, y_mask, partner, pmask)
            if x_mask1 is not None and x_mask1 <= self._conflicts((0, y_mask, bw, bh), placed, ignore=partner.id):
                break
        else:
            return None
        item = PlannedItem(item_id, spec, sil, x_mask1 - bw - bx, y_mask - by, box, hard_reason="touching")
        item.touching.append(partner.id)
        partner.touching.append(item_id)
        partner.hard_reason = "touching"
        return item

    def _touch_position(self, grown: np.ndarray, box: tuple[int, int, int, int], y_mask: int,
                        partner: PlannedItem, pmask: np.ndarray) -> int | None:
        """Mask right edge that puts the garment just against ``partner`` (upstream of it), or None."""
        bx, by, bw, _ = box
        x_mask1 = partner.world_box()[0]  # boxes just touching; slide downstream until the masks meet
        for _ in range(bw // 2):
            if self._masks_meet(grown, x_mask1 - bw - bx, y_mask - by, pmask, partner.x0, partner.y0):
                return x_mask1 + 2  # a small overlap: garments lying against each other
            x_mask1 += 2
        return None

    @staticmethod
    def _masks_meet(a: np.ndarray, ax: int, ay: int, b: np.ndarray, bx: int, by: int) -> bool:
        x0, y0 = max(ax, bx), max(ay, by)
        x1, y1 = min(ax + a.shape[1], bx + b.shape[1]), min(ay + a.shape[0], by + b.shape[0])
        if x0 >= x1 or y0 >= y1:
            return False
        return bool(np.any(a[y0 - ay : y1 - ay, x0 - ax : x1 - ax] & b[y0 - by : y1 - by, x0 - bx : x1 - bx]))

    def _cast_window(self) -> tuple[int, int] | None:
        if not self.config.colour_cast or self.n_frames < 60:
            return None
        start = int(self.n_frames * 0.45)
        return start, start + max(30, int(self.n_frames * 0.12))

    # --- rendering ----------------------------------------------------------------------
    def lighting(self, frame: int) -> Lighting:
        """Illuminant at ``frame``: slow drift of intensity and colour temperature, plus the cast."""
        t = frame / self.config.fps
        intensity = 1.0 + 0.04 * np.sin(2 * np.pi * t / 17.0)
        gains = np.asarray(colour_temperature_gains(0.15 * np.sin(2 * np.pi * t / 29.0 + 1.0)))
        if self.cast_frames is not None:
            start, end = self.cast_frames
            ramp = int(self.config.fps // 2)
            weight = np.clip(min(frame - start, end - frame) / ramp, 0.0, 1.0)
            gains = gains * (1.0 + weight * (np.asarray(CAST_GAINS_BGR) - 1.0))
        return Lighting(float(intensity), tuple(float(g) for g in gains))

    def _render(self, item: PlannedItem) -> Sprite:
        return _stain_sprite(item.spec) if item.is_stain else render_sprite(item.spec)

    def frames(self, start: int = 0, stop: int | None = None, *,
               only: Container[int] | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yield ``(index, t_seconds, frame_bgr)`` for frames ``start..stop-1`` (with ``only``: just those
        indices, pixel for pixel as in the full run, without composing the others)."""
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        # Sprites are pasted in entry order; stains never overlap garments (see _plan).
        order = sorted(((self._visible_frames(it), it) for it in self.items), key=lambda w: w[0][0])
        active: dict[int, tuple[int, PlannedItem, Sprite]] = {}
        pointer = 0
        transposed = self.config.direction == "+y"
        for k in range(start, stop):
            while pointer < len(order) and order[pointer][0][0] <= k:
                (_, exit_), item = order[pointer]
                if exit_ >= k:
                    active[item.id] = (exit_, item, self._render(item))
                pointer += 1
            for item_id in [i for i, (exit_, _, _) in active.items() if exit_ < k]:
                del active[item_id]
            if only is not None and k not in only:
                continue
            shift = self._shift(k)
            canvas = self.scene.belt_region(0, 0, self.world_w, self.world_h, shift)
            for _, item, sprite in active.values():
                Scene.paste(canvas, sprite, item.x0 + shift, item.y0)
            frame = self.scene.finish(canvas, 0, 0, self.lighting(k), k)
            if transposed:
                frame = np.ascontiguousarray(frame.transpose(1, 0, 2))
            yield k, k / self.config.fps, frame

    # --- ground truth ---------------------------------------------------------------------
    def _xy(self, x: float, y: float) -> list[float]:
        return [round(y, 1), round(x, 1)] if self.config.direction == "+y" else [round(x, 1), round(y, 1)]

    def ground_truth(self) -> dict:
        """The ground-truth document (schema in docs/contracts: fps, items, tracks, hard cases)."""
        cfg = self.config
        items, distractors = [], []
        for item in self.items:
            entry, exit_ = self._visible_frames(item)
            mx, my, mw, mh = item.world_box()
            track = [[k, *self._xy(mx + self._shift(k) + mw / 2, my + mh / 2)] for k in range(entry, exit_ + 1)]
            size = [mh, mw] if cfg.direction == "+y" else [mw, mh]
            if item.is_stain:
                distractors.append({"kind": "stain", "entry_frame": entry, "exit_frame": exit_, "size": size,
                                    "track": track})
                continue
            items.append({
                "id": item.id, "entry_frame": entry, "exit_frame": exit_,
                "fibre": item.spec.fibre, "colour": item.spec.colour, "garment": item.spec.garment,
                "hard": item.hard_reason is not None, "hard_reason": item.hard_reason,
                "touching_ids": sorted(item.touching), "size": size, "track": track,
            })
        x, y, w, h = self.scene.reference_roi
        roi = [y, x, h, w] if cfg.direction == "+y" else [x, y, w, h]
        cast = None
        if self.cast_frames is not None:
            cast = {"start_frame": self.cast_frames[0], "end_frame": self.cast_frames[1],
                    "gains_bgr": list(CAST_GAINS_BGR)}
        return {
            "fps": cfg.fps, "width": cfg.width, "height": cfg.height, "n_frames": self.n_frames,
            "belt_speed_px_s": cfg.belt_speed_px_s, "direction": cfg.direction, "seed": cfg.seed,
            "taxonomy_version": self.taxonomy.version, "reference_roi": roi, "colour_cast": cast,
            "track_point": "centre of the garment mask bounding box (may lie outside the frame for cut_off items)",
            "items": items, "distractors": distractors,
        }


@dataclass(frozen=True)
class ConveyorClip:
    """A rendered clip on disk."""

    video_path: Path
    ground_truth_path: Path
    fps: float
    belt_speed_px_s: float
    direction: str
    n_frames: int
    n_items: int


def _config(n_items: int, seed: int, width: int, height: int, fps: float, belt_speed_px_s: float, direction: str,
            hard_fraction: float, colour_cast: bool, stains: int) -> ConveyorConfig:
    return ConveyorConfig(n_items=n_items, seed=seed, width=width, height=height, fps=fps,
                          belt_speed_px_s=belt_speed_px_s, direction=direction, hard_fraction=hard_fraction,
                          colour_cast=colour_cast, stains=stains)


def iter_conveyor_frames(config: ConveyorConfig, taxonomy: Taxonomy | None = None, *, start: int = 0,
                         stop: int | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, t_seconds, frame_bgr)``; identical to the video of the same config."""
    yield from ConveyorWorld(config, taxonomy).frames(start, stop)


def render_conveyor_clip(
    out_dir: str | Path,
    *,
    n_items: int = 300,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
    fps: float = 30.0,
    belt_speed_px_s: float = 200.0,
    direction: Literal["+x", "+y"] = "+x",
    hard_fraction: float = 0.12,
    colour_cast: bool = True,
    stains: int = 2,
    taxonomy: Taxonomy | None = None,
    progress: bool = True,
) -> ConveyorClip:
    """Write ``conveyor.mp4`` (mp4v) and ``conveyor_gt.json`` into ``out_dir``."""
    cfg = _config(n_items, seed, width, height, fps, belt_speed_px_s, direction, hard_fraction, colour_cast, stains)
    world = ConveyorWorld(cfg, taxonomy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video_path, gt_path = out / "conveyor.mp4", out / "conveyor_gt.json"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise DataError(f"cannot open a video writer for {video_path} (OpenCV without mp4v support?)")
    try:
        for _, _, frame in tqdm(world.frames(), total=world.n_frames, desc="synth video", unit="frame", disable=not progress):
            writer.write(frame)
    finally:
        writer.release()
    gt_path.write_text(json.dumps(world.ground_truth(), separators=(",", ":")))
    log.info("wrote %s (%d frames) and %s", video_path, world.n_frames, gt_path)
    return ConveyorClip(video_path, gt_path, fps, belt_speed_px_s, direction, world.n_frames,
                        sum(not it.is_stain for it in world.items))
