"""Synthetic world: determinism, manifest validity, colour fidelity, fibre structure, video ground truth."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sorting.cli import main
from sorting.datasets.manifest import read_manifest
from sorting.datasets.synth import ConveyorConfig, ConveyorWorld, make_crop_dataset, render_conveyor_clip
from sorting.datasets.synth.colours import COLOUR_BOXES, prototype_lab
from sorting.datasets.synth.garments import GARMENTS
from sorting.datasets.synth.scene import ItemSpec, Lighting, Scene, random_lighting, render_sprite
from sorting.datasets.synth.textures import FIBRES
from sorting.errors import ConfigError
from sorting.taxonomy import Taxonomy, load_taxonomy


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    out = tmp_path_factory.mktemp("crops")
    return make_crop_dataset(out, n=40, size=64, seed=3, workers=1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    return render_conveyor_clip(out, n_items=10, seed=5, hard_fraction=0.3, belt_speed_px_s=400.0)


def test_crop_dataset_is_deterministic_by_seed(crops, tmp_path):
    again = make_crop_dataset(tmp_path / "again", n=40, size=64, seed=3, workers=2)
    other = make_crop_dataset(tmp_path / "other", n=12, size=64, seed=4, workers=1)
    rows, rows_again = read_manifest(crops).rows, read_manifest(again).rows
    assert [r.sha1 for r in rows] == [r.sha1 for r in rows_again]
    assert {r.sha1 for r in read_manifest(other).rows}.isdisjoint({r.sha1 for r in rows})


def test_manifest_rows_labels_and_splits(crops):
    taxonomy = load_taxonomy()
    manifest = read_manifest(crops)
    rows = manifest.rows
    assert len(rows) == 40
    assert {r.fibre for r in rows} == set(taxonomy.fibre)
    assert {r.colour for r in rows} == set(taxonomy.colour)
    assert {r.garment for r in rows} <= set(GARMENTS)
    for fibre in taxonomy.fibre:  # stratified: every class in every split
        assert {r.split for r in rows if r.fibre == fibre} == {"train", "val", "test"}
    for row in rows[:10]:
        img = cv2.imread(str(manifest.image_path(row)))
        assert img is not None and (img.shape[1], img.shape[0]) == (row.width, row.height)
        assert max(img.shape[:2]) == 64


def test_unknown_taxonomy_class_is_a_clear_error(tmp_path):
    tax = Taxonomy("x", ("cotton", "hemp"), ("white",))
    with pytest.raises(ConfigError, match="hemp"):
        make_crop_dataset(tmp_path, n=4, taxonomy=tax, workers=1)


@pytest.fixture(scope="module")
def scene():
    return Scene(640, 480, seed=0)


def _on_belt(scene: Scene, spec: ItemSpec, rng: np.random.Generator, lighting: Lighting | None = None):
    sprite = render_sprite(spec)
    w, h = sprite.size
    canvas = scene.belt_region(200, 100, w, h, 0.0)
    Scene.paste(canvas, sprite, 0, 0)
    img = scene.finish(canvas, 200, 100, lighting or random_lighting(rng), int(rng.integers(1000)))
    inner = cv2.erode(sprite.mask().astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    return img, inner


def test_rendered_colour_is_nearest_its_own_prototype(scene):
    rng = np.random.default_rng(0)
    names = list(COLOUR_BOXES)
    protos = np.stack([prototype_lab(c) for c in names])
    hits, total = 0, 0
    for i in range(2 * len(names)):
        colour = names[i % len(names)]
        spec = ItemSpec(FIBRES[i % len(FIBRES)], colour, GARMENTS[i % len(GARMENTS)], 1000 + i)
        img, inner = _on_belt(scene, spec, rng)
        mean_bgr = img[inner].astype(np.float32).mean(axis=0) / 255.0
        lab = cv2.cvtColor(mean_bgr.reshape(1, 1, 3), cv2.COLOR_BGR2Lab).reshape(3)
        hits += names[int(np.argmin(np.linalg.norm(protos - lab, axis=1)))] == colour
        total += 1
    assert hits / total >= 0.9, f"only {hits}/{total} crops nearest their own colour prototype"


def _structure_stats(scene: Scene, fibre: str) -> tuple[float, float]:
    """Mean fine-detail energy (Laplacian) and share of specular highlight pixels for grey garments."""
    rng = np.random.default_rng(1)
    detail, highlight = [], []
    for k in range(3):
        img, inner = _on_belt(scene, ItemSpec(fibre, "grey", "towel", 77 + k), rng, Lighting())
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        detail.append(float(np.abs(cv2.Laplacian(grey, cv2.CV_32F))[inner].mean()))
        highlight.append(float((grey[inner] > 1.6 * np.median(grey[inner])).mean()))
    return float(np.mean(detail)), float(np.mean(highlight))


def test_fibre_structure_differs_measurably(scene):
    stats = {f: _structure_stats(scene, f) for f in FIBRES}
    smooth = ("polyester", "silk", "viscose")
    textured = ("wool", "acrylic", "linen", "polyamide", "cotton")
    assert max(stats[f][0] for f in smooth) < min(stats[f][0] for f in textured), stats
    assert min(stats[f][1] for f in ("polyester", "silk")) > 3 * max(stats[f][1] for f in ("cotton", "wool", "linen"))


def test_ground_truth_is_consistent_with_the_video(clip):
    gt = json.loads(clip.ground_truth_path.read_text())
    cap = cv2.VideoCapture(str(clip.video_path))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape == (gt["height"], gt["width"], 3)
    assert frames == gt["n_frames"] == clip.n_frames
    assert gt["direction"] == "+x" and gt["belt_speed_px_s"] == 400.0
    assert len(gt["items"]) == 10
    step = gt["belt_speed_px_s"] / gt["fps"]
    for item in gt["items"]:
        track = item["track"]
        assert [t[0] for t in track] == list(range(item["entry_frame"], item["exit_frame"] + 1))
        assert 0 <= item["entry_frame"] <= item["exit_frame"] < gt["n_frames"]
        xs = np.array([t[1] for t in track])
        assert np.allclose(np.diff(xs), step, atol=1.01)  # moves with the belt along +x
        assert track[0][1] - item["size"][0] / 2 < 1 and track[-1][1] + item["size"][0] / 2 > gt["width"] - 1
    reasons = {i["hard_reason"] for i in gt["items"] if i["hard"]}
    assert {"touching", "cut_off"} <= reasons
    for item in gt["items"]:
        if item["hard_reason"] == "cut_off":
            assert item["track"][0][2] + item["size"][1] / 2 > gt["height"]
        if item["hard_reason"] == "touching":
            assert item["touching_ids"]
    # The reference strip is never covered and reads neutral light grey.
    x, y, w, h = gt["reference_roi"]
    patch = first[y : y + h, x : x + w].reshape(-1, 3).mean(axis=0)
    assert patch.min() > 170 and patch.max() - patch.min() < 25
    for item in gt["items"]:
        assert item["track"][0][2] - item["size"][1] / 2 > y + h


def test_stain_is_on_the_belt_but_not_an_item(clip):
    gt = json.loads(clip.ground_truth_path.read_text())
    assert len(gt["distractors"]) == 2 and all(d["kind"] == "stain" for d in gt["distractors"])
    item_ids = {i["id"] for i in gt["items"]}
    world = ConveyorWorld(ConveyorConfig(n_items=10, seed=5, hard_fraction=0.3, belt_speed_px_s=400.0))
    stains = [it for it in world.items if it.is_stain]
    assert stains and not {s.id for s in stains} & item_ids
    stain = gt["distractors"][0]
    k, cx, cy = stain["track"][len(stain["track"]) // 2]
    frame = next(world.frames(k, k + 1))[2]
    spot = frame[int(cy) - 3 : int(cy) + 4, int(cx) - 3 : int(cx) + 4]
    edge = int(cx - stain["size"][0] / 2 - 6)  # clean belt just beside the stain (garments keep a gap)
    belt = frame[int(cy) - 3 : int(cy) + 4, edge - 4 : edge + 1]
    assert spot.mean() < belt.mean() - 10  # visibly darker than clean belt


def test_frames_are_deterministic_and_seekable():
    cfg = ConveyorConfig(n_items=4, seed=9, colour_cast=False)
    a = [f for _, _, f in ConveyorWorld(cfg).frames(0, 40)]
    b = [f for _, _, f in ConveyorWorld(cfg).frames(30, 40)]
    assert all(np.array_equal(x, y) for x, y in zip(a[30:], b))
    c = next(ConveyorWorld(ConveyorConfig(n_items=4, seed=10, colour_cast=False)).frames(35, 36))[2]
    assert not np.array_equal(a[35], c)
    picked = list(ConveyorWorld(cfg).frames(0, 40, only={3, 17, 39}))
    assert [k for k, _, _ in picked] == [3, 17, 39]
    assert all(np.array_equal(a[k], f) for k, _, f in picked)


def test_colour_cast_shifts_the_reference_strip():
    world = ConveyorWorld(ConveyorConfig(n_items=10, seed=2))
    start, end = world.cast_frames
    x, y, w, h = world.scene.reference_roi
    normal = next(world.frames(0, 1))[2][y : y + h, x : x + w].reshape(-1, 3).mean(axis=0)
    cast = next(world.frames((start + end) // 2, (start + end) // 2 + 1))[2][y : y + h, x : x + w]
    cast = cast.reshape(-1, 3).mean(axis=0)
    assert cast[2] / cast[0] > 1.4 * normal[2] / normal[0]  # red/blue ratio up: a warm cast


def test_direction_y_transposes_the_world():
    gt = ConveyorWorld(ConveyorConfig(n_items=3, seed=1, direction="+y")).ground_truth()
    assert gt["direction"] == "+y"
    track = gt["items"][0]["track"]
    assert track[-1][2] > track[0][2] and track[-1][1] == track[0][1]
    frame = next(ConveyorWorld(ConveyorConfig(n_items=3, seed=1, direction="+y")).frames(0, 1))[2]
    assert frame.shape == (480, 640, 3)


def test_cli_synth_writes_crops_and_video(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--crops", "12", "--size", "48",
                 "--video-items", "2", "--belt-speed", "600", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "manifest" in printed and "conveyor.mp4" in printed
    assert len(read_manifest(tmp_path / "crops" / "manifest.csv").rows) == 12
    assert (tmp_path / "video" / "conveyor_gt.json").is_file()


def test_cli_synth_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    assert "examples:" in capsys.readouterr().out
