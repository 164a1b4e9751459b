"""Set a line's segmentation up from a few frames of its own belt: ``textile-sorter calibrate --belt``.

What an integrator would otherwise measure and type by hand, from frames of the empty or lightly
loaded belt (still photos, each a new scene, or frames spread over a clip of the moving belt):

1. a first belt colour from all pixels (the belt is the largest surface in view),
2. the belt region: the band where that colour is found in most frames, with its two edges fitted as
   straight lines and pulled in a little (rails, brackets, the calibration sticker and people beside
   the belt fall outside),
3. the belt colour again, from the band only; a belt whose colour is nearly grey cannot tell grey
   garments from itself by colour, so it keeps the per-pixel belt model (``median``) that learns the
   belt as it runs (a video of the moving belt, the synthetic conveyor),
4. the expected item size: the median area of what the new settings find in the frames (items on a
   lightly loaded belt), and the smallest item kept (``min_area_px``) as a tenth of it (from the
   belt's width when the frames show no item); on a coloured belt touching items are also cut at bridges
   narrower than a quarter of a typical item's side (``split_touching.neck_px``).

The result goes into the line config's ``segmentation`` section (every other key kept, a ``.bak``
copy written) and an overlay PNG shows the belt region and what is found in each frame.
"""

from __future__ import annotations

import logging
import os
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from sorting.config import read_yaml
from sorting.errors import ConfigError, DataError
from sorting.serving.annotate import tile_grid
from sorting.serving.belt_colour_model import (
    BeltColourConfig,
    BeltColourLookup,
    band_index,
    chromaticity,
    colour_from_grey,
    fit_belt_colour,
)
from sorting.serving.belt_region import belt_band, polygon_mask
from sorting.serving.blob_split import SplitConfig
from sorting.serving.colour_foreground import ColourForeground, FrameError, exposure_problem
from sorting.serving.non_garment import NonGarmentConfig
from sorting.serving.segmentation import BeltSegmenter, Detection, SegmentationConfig
from sorting.serving.textile_check import TextileCheckConfig

log = logging.getLogger(__name__)

PIXEL_STEP = 2  # every 2nd pixel of each frame (at the segmentation scale) goes into the colour fit
MIN_ITEM_SHARE = 0.12  # the smallest item looked for at first: (this share of the belt's width) squared ...
MIN_ITEM_SHARE_OF_TYPICAL = 0.1  # ... and kept: this share of the median item found in the frames
# touching items are cut where they narrow to a bridge thinner than 2 x this share of a typical item's side
# (sqrt of its area): neck_px 8 at the segmentation scale on the conveyor photos, chosen on their development part
NECK_SHARE_OF_ITEM = 0.125
# blobs lying wholly within this share of the belt's width of its region's edges are rail, bracket or shadow
# (belt_colour.edge_strip_px): 47 px on the conveyor photos; 24 / 32 / 48 / 64 px were compared by scene
# cross-validation on their development part (serving/REAL_BELT.md, "Rejects for nothing")
EDGE_STRIP_SHARE = 0.13
# two touching garments of two colours are cut apart even when one colour is scattered (a plain garment beside a
# striped one, whose stripes share its colour), if its largest region alone is this share of the blob
# (split_touching.region_share): chosen by scene cross-validation on the conveyor photos' development part, where
# 0.1-0.15 scored alike and off merged the most (serving/REAL_BELT.md, "Touching garments of two colours")
SPLIT_REGION_SHARE = 0.15
# a garment's box leaves out this share of its blob's pixels at each side (segmentation.box_trim): a blob's outermost
# pixels are often a string, a fringe or a shadow's tail, not the garment. Chosen by scene cross-validation on the
# conveyor photos' development part: 0.01 / 0.02 / 0.03 all gained on the outlines' own boxes, 0.02 and 0.03 alike;
# 0.05 cut into the garments (serving/REAL_BELT.md, "Garment boxes")
BOX_TRIM = 0.02
COLOURFUL_BELT = 0.06  # chromaticity this far from grey: the belt's colour tells garments from it (blue: 0.13)
FOLLOW_MIN_SHIFT_PX = 4.0  # smaller shifts of the belt's edges between frames are noise: the region stays fixed
FOLLOW_MAX_SHARE = 0.25  # of the belt's width: a frame's band further off than this is occluded, not moved
OVERLAY_COLUMNS = 4


@dataclass
class BeltSetup:
    """What ``calibrate --belt`` measured: the segmentation keys to write, and how it looks."""

    segmentation: dict[str, Any]
    frames: int
    frame_size: tuple[int, int]
    belt_width_px: float
    item_areas: list[float]
    overlay: np.ndarray
    overlay_path: Path | None = None
    scene: str | None = None  # the line's tracking.scene after the set-up

    def summary(self) -> str:
        items = (f"{len(self.item_areas)} items found, median area {np.median(self.item_areas):.0f} px"
                 if self.item_areas else "no items found (empty belt)")
        return (f"belt model {self.segmentation['belt_model']}, belt region {self.segmentation['belt_region']} "
                f"({self.belt_width_px:.0f} px wide) from "
                f"{self.frames} frames of {self.frame_size[0]}x{self.frame_size[1]}; {items}; "
                f"min_area_px {self.segmentation['min_area_px']}"
                + (f"; tracking.scene {self.scene}" if self.scene else ""))


def _small(frame: np.ndarray, scale: float) -> np.ndarray:
    return cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def _check_frames(frames: Sequence[np.ndarray]) -> tuple[int, int]:
    if not frames:
        raise DataError("no frames to set the belt up from")
    shapes = {f.shape[:2] for f in frames}
    if len(shapes) > 1:
        raise DataError(f"the frames differ in size ({sorted(shapes)}): one camera, one size")
    height, width = frames[0].shape[:2]
    return width, height


def _exposed(smalls: Sequence[np.ndarray]) -> list[int]:
    """Indices of the frames (given downscaled) that are neither black nor saturated; each one left out is said
    with a warning: a belt colour or region fitted to them would be nonsense."""
    kept = []
    for k, small in enumerate(smalls):
        problem = exposure_problem(small)
        if problem is None:
            kept.append(k)
        else:
            log.warning("set-up frame %d of %d is %s (mean level %.0f): left out", k + 1, len(smalls), *problem)
    if not kept:
        raise DataError(f"all {len(smalls)} set-up frames are black or saturated: check the camera's lens, light "
                        "and exposure")
    return kept


def _belt_masks(smalls: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per frame, where a first colour model (fitted to whole frames: the belt is the largest surface) is belt."""
    pixels = np.concatenate([s[::PIXEL_STEP, ::PIXEL_STEP].reshape(-1, 3) for s in smalls])
    rough = BeltColourLookup(fit_belt_colour(pixels))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    return [cv2.morphologyEx(cv2.threshold(rough.distance_map(s), rough.max_level, 1, cv2.THRESH_BINARY_INV)[1],
                             cv2.MORPH_OPEN, kernel).astype(np.float32) for s in smalls]


def _follow_px(masks: Sequence[np.ndarray], polygon: Sequence[tuple[int, int]], scale: float, along_axis: int) -> float:
    """How far the belt's edges move between the frames (camera poses, a wandering belt): the largest
    shift of a frame's own band corner from the common band, with a quarter more for safety; 0 if none.
    A frame whose own band is far off (a garment across a rail hides an edge) does not count."""
    across = np.asarray(polygon, np.float64)[:, 1 - along_axis]
    width = float(abs(across[3] - across[0]) + abs(across[2] - across[1])) / 2
    shifts = [0.0]
    for mask in masks:
        try:
            own = belt_band(mask, scale=scale, along_axis=along_axis)
        except DataError:
            continue
        shift = max(float(np.hypot(a[0] - b[0], a[1] - b[1])) for a, b in zip(own, polygon))
        if shift <= FOLLOW_MAX_SHARE * width:
            shifts.append(shift)
    largest = max(shifts)
    return round(1.25 * largest, 1) if largest > FOLLOW_MIN_SHIFT_PX else 0.0


def _local_sigma(model: BeltColourConfig, smalls: Sequence[np.ndarray], region: np.ndarray,
                 sigma_px: float) -> list[tuple[float, float]]:
    """Per brightness band, the robust spread of belt pixels' chromaticity around the belt beside them."""
    fg = ColourForeground(model, region, region, sigma_px=sigma_px)
    residuals, bands = [], []
    for small in smalls:
        _, _, belt = fg.mask(small)
        level = cv2.transform(small, np.full((1, 3), 1.0 / 3.0, np.float32))
        sure = cv2.threshold(fg.lookup.distance_map(small), fg.lookup.sure_level, 255, cv2.THRESH_BINARY_INV)[1]
        pick = (fg.bright_enough(cv2.bitwise_and(sure, region), level) > 0)
        brightness, chroma = chromaticity(small[pick])
        _, ref = chromaticity(belt[pick])
        residuals.append(chroma - ref)
        bands.append(band_index(model, brightness))
    res, band = np.concatenate(residuals), np.concatenate(bands)
    n = len(model.intensity_edges) - 1
    sigma = np.full((n, 2), np.nan)
    for k in range(n):
        x = res[band == k]
        if len(x) >= 200:
            sigma[k] = np.median(np.abs(x - np.median(x, axis=0)), axis=0) * 1.4826
    known = np.flatnonzero(~np.isnan(sigma[:, 0]))
    if not len(known):
        raise DataError("too few belt pixels to measure the belt's colour noise")
    for k in range(n):  # bands without belt pixels take the nearest measured band
        if np.isnan(sigma[k, 0]):
            sigma[k] = sigma[known[np.argmin(np.abs(known - k))]]
    return [(round(float(b), 5), round(float(r), 5)) for b, r in np.maximum(sigma, 1e-3)]


def set_up_belt(frames: Sequence[np.ndarray], base: SegmentationConfig, *, along_axis: int = 0) -> BeltSetup:
    """Measure the belt region, the belt colour and the item size from ``frames`` (full resolution, BGR); black
    and saturated frames are left out."""
    width, height = _check_frames(frames)
    scale = base.scale
    smalls = [_small(f, scale) for f in frames]
    kept = _exposed(smalls)
    frames, smalls = [frames[k] for k in kept], [smalls[k] for k in kept]
    masks = _belt_masks(smalls)
    polygon = belt_band(sum(masks) / len(masks), scale=scale, along_axis=along_axis)
    region = polygon_mask(polygon, smalls[0].shape[:2], scale)
    inside = region[::PIXEL_STEP, ::PIXEL_STEP] > 0
    colour = fit_belt_colour(np.concatenate([s[::PIXEL_STEP, ::PIXEL_STEP][inside] for s in smalls]))
    band = polygon_mask(polygon, (height, width)) > 0
    axis = 0 if along_axis == 0 else 1
    belt_width = float(np.median(band.sum(axis=axis)[band.any(axis=axis)]))
    section: dict[str, Any] = {"belt_model": "median", "belt_region": [list(p) for p in polygon],
                               "frame_size": [width, height], "min_area_px": round((MIN_ITEM_SHARE * belt_width) ** 2)}
    if colour_from_grey(colour) >= COLOURFUL_BELT:
        sigma_px = base.background_sigma_px * scale
        colour = colour.model_copy(update={"local_sigma": _local_sigma(colour, smalls, region, sigma_px),
                                           "edge_strip_px": round(EDGE_STRIP_SHARE * belt_width)})
        section.update(belt_model="colour", belt_colour=colour.model_dump(),
                       belt_region_follow_px=_follow_px(masks, polygon, scale, along_axis))
    else:
        log.info("the belt is nearly grey (chromaticity %.3f from grey): its colour cannot tell grey garments "
                 "from it, so the per-pixel belt model learns it as the belt runs", colour_from_grey(colour))
    cfg = SegmentationConfig.model_validate({**base.model_dump(), **section})
    found = []
    for frame in frames:
        try:
            found.append(BeltSegmenter(cfg, along_axis=along_axis).segment(frame))
        except FrameError as exc:
            log.warning("calibration frame not usable: %s", exc)
            found.append([])
    areas = [d.area for dets in found for d in dets if not d.edges]
    if areas:
        typical = float(np.median(areas))
        section.update(expected_item_area_px=round(typical), min_area_px=round(MIN_ITEM_SHARE_OF_TYPICAL * typical))
    overlay = setup_overlay(frames, found, polygon)
    return BeltSetup(section, len(frames), (width, height), belt_width, areas, overlay)


def setup_overlay(frames: Sequence[np.ndarray], found: Sequence[list[Detection]], polygon: Sequence[tuple[int, int]],
                  *, tile_width: int = 480) -> np.ndarray:
    """A grid of the frames with the belt region (yellow) and the detections (green; magenta with their
    kind: a hand or an object) drawn on them."""
    tiles = []
    for k, (frame, dets) in enumerate(zip(frames, found)):
        s = tile_width / frame.shape[1]
        tile = cv2.resize(frame, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        pts = np.round(np.asarray(polygon, np.float64) * s).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(tile, [pts], True, (0, 230, 230), 2, cv2.LINE_AA)
        for d in dets:
            x, y, w, h = (round(v * s) for v in d.bbox)
            colour = (60, 200, 60) if d.kind == "garment" else (200, 60, 200)
            cv2.rectangle(tile, (x, y), (x + w, y + h), colour, 2, cv2.LINE_AA)
            if d.kind != "garment":
                cv2.putText(tile, d.kind, (x + 2, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
        cv2.putText(tile, f"frame {k}: {len(dets)} found", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(tile)
    return tile_grid(tiles, OVERLAY_COLUMNS)


def write_belt_setup(line_path: str | Path, setup: BeltSetup, *, data: dict[str, Any] | None = None,
                     scene: str | None = None, header: str = "") -> Path:
    """Merge ``setup.segmentation`` into the line config's ``segmentation`` section (and ``scene`` into
    ``tracking.scene``), every other key and the file's leading comment kept, the previous file kept as
    ``<name>.bak``; or, for a new line, into ``data`` written as the line config under ``header`` (a comment)."""
    path = Path(line_path)
    if data is None:
        data, header = open_line_for_rewrite(path)
    section = dict(data.get("segmentation") or {})
    section.update(setup.segmentation)
    data["segmentation"] = section
    if scene is not None:
        data["tracking"] = {"scene": scene, **{k: v for k, v in (data.get("tracking") or {}).items() if k != "scene"}}
    return write_line(path, data, header)


def open_line_for_rewrite(path: Path) -> tuple[dict[str, Any], str]:
    """An existing line config's keys and leading comment, its text kept as ``<name>.bak`` before it is rewritten."""
    text = path.read_text(encoding="utf-8")
    data = read_yaml(path)
    path.with_name(path.name + ".bak").write_text(text, encoding="utf-8")
    return data, leading_comment(text)


def write_line(path: Path, data: dict[str, Any], header: str = "") -> Path:
    """Write a line config's keys (in their order) under ``header`` (a comment)."""
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None), encoding="utf-8")
    return path


def leading_comment(text: str) -> str:
    """The comment lines at the top of a YAML file (with their newlines), kept when the file is rewritten."""
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line if line.endswith("\n") else line + "\n")
    return "".join(lines)


def is_photo_folder(source: str) -> bool:
    """Whether a camera source is a folder of images (still photos: each a new scene)."""
    return Path(source).expanduser().is_dir()


def scene_for(source: str) -> str:
    """``tracking.scene`` for a line reading ``source``: ``still`` for a folder of photos (each a new scene),
    ``belt`` for a camera, stream or video (a moving belt)."""
    return "still" if is_photo_folder(source) else "belt"


def new_line_header(name: str, *, n_frames: int, source: str, template: str | Path, scene: str) -> str:
    """The comment a new line config starts with: what it is and how it was made."""
    what = ("camera.source is a folder of photos: each photo is a new scene (tracking.scene: still), every item "
            "decided in the photo it is in. For a camera on a moving belt set tracking.scene: belt and the belt speed."
            if scene == "still" else
            "camera.source is a camera or video of the moving belt (tracking.scene: belt); check the belt speed.")
    text = (f"Line {name}: set up by `textile-sorter calibrate --belt` from {n_frames} frames of {source}, starting "
            f"from {template}. {what}")
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, 114, break_on_hyphens=False))


def sample_frames(source: str, n_frames: int, *, fps: float | None = None, spread_s: float = 0.5,
                  max_wait_s: float = 60.0) -> list[np.ndarray]:
    """``n_frames`` frames spread over ``source``: evenly over a folder of photos (each a new scene) or a
    video file, one every ``spread_s`` seconds from a live camera or the synthetic belt (the belt moves
    on between them)."""
    from sorting.serving.sources import image_files, open_source

    path = Path(source).expanduser()
    if path.is_dir():
        files = image_files(path)
        picks = [files[round(i)] for i in np.linspace(0, len(files) - 1, min(n_frames, len(files)))] if files else []
        frames = [f for f in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in picks) if f is not None]
    elif path.is_file():
        cap = cv2.VideoCapture(str(path))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or n_frames
        wanted = {round(i) for i in np.linspace(0, max(0, total - 1), n_frames)}
        frames, index = [], 0
        while len(frames) < len(wanted):
            ok, image = cap.read()
            if not ok:
                break
            if index in wanted:
                frames.append(image)
            index += 1
        cap.release()
    else:
        frames = _live_frames(open_source(source, fps=fps, max_frames=None), n_frames, spread_s, max_wait_s)
    if not frames:
        raise DataError(f"no frames from {source}")
    return frames


def _live_frames(src: Any, n_frames: int, spread_s: float, max_wait_s: float) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    step = max(1, round((src.fps or 30.0) * spread_s))
    deadline = time.monotonic() + max_wait_s
    with src:
        k = 0
        while len(frames) < n_frames and time.monotonic() < deadline:
            frame = src.read(1.0)
            if frame is None:
                if src.exhausted:
                    break
                continue
            if k % step == 0:
                frames.append(frame.image)
            k += 1
    return frames


def line_from_template(template: str | Path, line_path: str | Path, *, camera: str,
                       frame_size: tuple[int, int]) -> dict[str, Any]:
    """A new line config (as a dict) from another line's: this camera and frame size, relative paths
    rewritten for the new file's folder, and what belonged to the template's frames (its reference patch
    and ignored rectangles) left out: measure white balance with ``calibrate`` once a patch is in view."""
    template, line_path = Path(template), Path(line_path)
    data = read_yaml(template)
    data["name"] = line_path.stem.removeprefix("line-")
    cam = dict(data.get("camera") or {})
    _move_decision_line(data, cam, frame_size)
    cam.update(source=camera, width=frame_size[0], height=frame_size[1])
    data["camera"] = cam
    cal = dict(data.get("calibration") or {})
    cal.update(reference_roi=None, continuous=False, white_balance=[1.0, 1.0, 1.0], exposure_gain=1.0)
    cal.pop("calibrated_at", None)
    data["calibration"] = cal
    seg = dict(data.get("segmentation") or {})
    seg.pop("ignore_rois", None)
    data["segmentation"] = seg
    if data.get("log") is not None:  # a line of its own writes a decision log of its own
        data["log"] = {**data["log"], "path": f"runs/serve/{data['name']}.sqlite"}
    for section, key in (("model", "path"), ("policy", "bins")):
        value = (data.get(section) or {}).get(key)
        if value and not Path(value).is_absolute():
            data[section][key] = relative_to_line((template.resolve().parent / value).resolve(), line_path)
    return data


def relative_to_line(target: Path, line_path: Path) -> str:
    """``target`` as a line config names files: relative to the config's folder (absolute on another drive)."""
    try:
        return os.path.relpath(target, line_path.resolve().parent)
    except ValueError:  # another drive
        return str(target)


def _move_decision_line(data: dict[str, Any], template_camera: dict[str, Any], frame_size: tuple[int, int]) -> None:
    """Keep the template's decision line at the same share of the frame along the belt (3/4 when its frame
    size is not known), so it lies inside the new camera's frame."""
    axis = 1 if str((data.get("belt") or {}).get("direction", "+x")).endswith("y") else 0
    tracking = dict(data.get("tracking") or {})
    old_size = template_camera.get("width" if axis == 0 else "height")
    line = tracking.get("decision_line_px")
    share = line / old_size if line is not None and old_size else 0.75
    tracking["decision_line_px"] = round(share * frame_size[axis], 1)
    data["tracking"] = tracking


REAL_BELT_PARTS = {"split_touching", "non_garment", "textile_check", "box_trim"}


def _real_belt_defaults(seg: SegmentationConfig, typical_area_px: float | None = None) -> SegmentationConfig:
    """``seg`` with the split of touching garments, the non-garment kinds, the textile check and the trimmed
    garment boxes on (their settings were chosen on real photos of a blue belt; the synthetic world's flat
    garments fool them), what the line already says of them kept; a new split cuts bridges relative to
    ``typical_area_px`` (full-resolution pixels) when it is known."""
    neck = 0 if typical_area_px is None else round(NECK_SHARE_OF_ITEM * typical_area_px ** 0.5 * seg.scale)
    split = seg.split_touching or SplitConfig(neck_px=neck, region_share=SPLIT_REGION_SHARE)
    return seg.model_copy(update={"split_touching": split,
                                  "non_garment": seg.non_garment or NonGarmentConfig(),
                                  "textile_check": seg.textile_check or TextileCheckConfig(),
                                  "box_trim": seg.box_trim if "box_trim" in seg.model_fields_set else BOX_TRIM})


def calibrate_belt(line_path: str | Path, *, source: str | None = None, n_frames: int = 8,
                   template: str | Path | None = None, camera: str | None = None,
                   overlay_path: str | Path | None = None, scene: str | None = None) -> BeltSetup:
    """Set the line's segmentation up from ``n_frames`` frames of ``source`` (default: the line's camera)
    and write it into the line config (created from ``template`` when it does not exist yet).

    ``tracking.scene`` is written as ``scene`` when given; else a new line's, or an existing line's that does
    not set it, follows its camera: ``still`` for a folder of photos, ``belt`` for a camera or a video."""
    from sorting.serving.line_config import load_line_config

    path = Path(line_path)
    data: dict[str, Any] | None = None
    header = ""
    if path.exists():
        cfg = load_line_config(path)
        frames = sample_frames(source or cfg.camera.source, n_frames, fps=cfg.camera.fps)
        if scene is None and "scene" not in (read_yaml(path).get("tracking") or {}):
            scene = scene_for(cfg.camera.source)
    else:
        if template is None or source is None:
            raise ConfigError(f"{path} does not exist: give --template (a line config to start from) and --source")
        frames = sample_frames(source, n_frames)
        height, width = frames[0].shape[:2]
        data = line_from_template(template, path, camera=camera or source, frame_size=(width, height))
        scene = scene or scene_for(camera or source)
        data["tracking"] = {**data.get("tracking", {}), "scene": scene}
        header = new_line_header(data["name"], n_frames=len(frames), source=source, template=template, scene=scene)
        cfg = _checked_draft(path, data)
    along = 0 if cfg.belt.direction[1] == "x" else 1
    setup = set_up_belt(frames, _real_belt_defaults(cfg.segmentation), along_axis=along)
    if setup.segmentation["belt_model"] == "colour":
        typical = setup.segmentation.get("expected_item_area_px")
        setup.segmentation.update(_real_belt_defaults(cfg.segmentation, typical).model_dump(
            mode="json", include=REAL_BELT_PARTS, exclude_none=True))
    write_belt_setup(path, setup, data=data, scene=scene, header=header)
    setup.scene = scene or cfg.tracking.scene
    overlay = Path(overlay_path) if overlay_path else path.with_name(path.stem + "-belt.png")
    cv2.imwrite(str(overlay), setup.overlay)
    setup.overlay_path = overlay
    return setup


def _checked_draft(path: Path, data: dict[str, Any]) -> Any:
    """``data`` loaded as a line config (checked) before anything is written at ``path``."""
    from sorting.serving.line_config import load_line_config

    draft = path.with_name(f".{path.name}.draft")
    try:
        draft.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return load_line_config(draft)
    finally:
        draft.unlink(missing_ok=True)
