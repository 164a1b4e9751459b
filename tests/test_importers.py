"""Image loading and the two importers on a folder of deliberately broken inputs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sorting.cli import main
from sorting.datasets.images import ImageError, load_image
from sorting.datasets.importers import LabelMaps, import_csv, import_image_folder
from sorting.datasets.manifest import file_sha1, read_manifest
from sorting.errors import ConfigError, DataError


def _texture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (7, 7), 2)


def _jpeg_bytes(img_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img_bgr)
    assert ok
    return buf.tobytes()


def _write_good_and_bad(folder: Path) -> dict[str, str]:
    """Write one of every case into ``folder``; returns name -> expected reject reason ('' = good)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}

    def good(name: str) -> Path:
        expected[name] = ""
        return folder / name

    def bad(name: str, reason: str) -> Path:
        expected[name] = reason
        return folder / name

    cv2.imwrite(str(good("plain.jpg")), _texture(seed=1))
    cv2.imwrite(str(good("grey.png")), cv2.cvtColor(_texture(seed=2), cv2.COLOR_BGR2GRAY))
    rgba = np.dstack([_texture(seed=3), np.full((48, 64), 128, np.uint8)])
    cv2.imwrite(str(good("alpha.png")), rgba)
    cv2.imwrite(str(good("deep16.png")), _texture(seed=4).astype(np.uint16) * 257)
    Image.fromarray(_texture(seed=5)[:, :, ::-1]).convert("CMYK").save(good("cmyk.jpg"), "JPEG")
    Image.fromarray(_texture(seed=6)).convert("P").save(good("palette.png"))
    bad("empty.jpg", "empty file").write_bytes(b"")
    data = _jpeg_bytes(_texture(seed=7))
    bad("truncated.jpg", "truncated image").write_bytes(data[: len(data) * 2 // 3])
    bad("noise.jpg", "not an image").write_bytes(np.random.default_rng(0).bytes(3000))
    bad("notes.txt", "not an image file").write_text("not a picture\n")
    return expected


@pytest.fixture()
def broken_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """ImageFolder with two known classes, one alias-only class and one unknown label."""
    root = tmp_path / "photos"
    expected: dict[str, str] = {}
    for rel, reason in _write_good_and_bad(root / "Cotton").items():
        expected[f"Cotton/{rel}"] = reason
    for seed, (rel, reason) in enumerate(
        [("PET/a.jpg", ""), ("Denim/d.jpg", ""), ("Wool blend/w.jpg", "unknown label 'Wool blend'")], start=10
    ):
        (root / rel).parent.mkdir()
        cv2.imwrite(str(root / rel), _texture(seed=seed))
        expected[rel] = reason
    (root / "Cotton" / "plain_copy.jpg").write_bytes((root / "Cotton" / "plain.jpg").read_bytes())
    expected["Cotton/plain_copy.jpg"] = "duplicate"
    (root / "Cotton" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored, not counted
    return root, expected


# --- load_image -------------------------------------------------------------------------------


def test_load_image_converts_every_format_to_bgr_uint8(tmp_path: Path) -> None:
    _write_good_and_bad(tmp_path)
    for name in ("plain.jpg", "grey.png", "alpha.png", "deep16.png", "cmyk.jpg", "palette.png"):
        img = load_image(tmp_path / name)
        assert img.dtype == np.uint8 and img.shape == (48, 64, 3), name
    np.testing.assert_array_equal(load_image(tmp_path / "deep16.png"), _texture(seed=4))  # 16-bit scaled back
    grey = load_image(tmp_path / "grey.png")
    assert (grey[:, :, 0] == grey[:, :, 2]).all()
    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)  # 16-bit greyscale (Pillow mode I;16)
    cv2.imwrite(str(tmp_path / "grey16.png"), ramp)
    np.testing.assert_array_equal(load_image(tmp_path / "grey16.png")[:, :, 1], np.rint(ramp / 257).astype(np.uint8))


def test_alpha_is_composited_on_white_and_channels_are_bgr(tmp_path: Path) -> None:
    red_transparent = np.zeros((4, 4, 4), np.uint8)
    red_transparent[..., 2] = 255  # BGRA: red
    red_transparent[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    cv2.imwrite(str(tmp_path / "a.png"), red_transparent)
    img = load_image(tmp_path / "a.png")
    assert img[0, 0].tolist() == [0, 0, 255]  # red stays red in BGR order
    assert img[3, 0].tolist() == [255, 255, 255]  # transparent -> white


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty.jpg", "empty file"), ("truncated.jpg", "truncated image"), ("noise.jpg", "not an image"),
     ("missing.jpg", "missing file")],
)
def test_load_image_rejects_bad_files_with_a_reason(tmp_path: Path, name: str, reason: str) -> None:
    _write_good_and_bad(tmp_path)
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / name)
    assert info.value.reason == reason
    assert isinstance(info.value, DataError) and name in str(info.value)


def test_truncated_jpeg_missing_only_the_end_marker_is_caught(tmp_path: Path) -> None:
    data = _jpeg_bytes(_texture())
    assert data.endswith(b"\xff\xd9")
    (tmp_path / "cut.jpg").write_bytes(data[:-2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.jpg")


def test_too_large_images_are_rejected(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "big.png"), _texture(100, 100))
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "big.png", max_pixels=5000)
    assert info.value.reason == "too large" and "100x100" in str(info.value)


# --- importers --------------------------------------------------------------------------------


def _rejects(path: Path) -> dict[str, tuple[str, str]]:
    with open(path, newline="") as fh:
        return {r["path"]: (r["reason"], r["detail"]) for r in csv.DictReader(fh)}


def test_image_folder_import_keeps_every_good_image_and_explains_every_reject(
    broken_folder: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, expected = broken_folder
    report = import_image_folder(root, tmp_path / "runs" / "m.csv", task="fibre", workers=2, progress=False)
    good = {k for k, v in expected.items() if not v}
    manifest = read_manifest(report.manifest_path)
    kept = {Path(r.path).relative_to(Path("..") / "photos").as_posix() for r in manifest.rows}
    assert kept == good
    assert report.scanned == len(expected) == report.kept + len(report.rejects)
    rejects = _rejects(report.rejects_path)
    assert {k: v[0] for k, v in rejects.items()} == {k: v for k, v in expected.items() if v}
    assert rejects["Cotton/plain_copy.jpg"][1] == "same bytes as Cotton/plain.jpg"
    assert report.reject_counts["duplicate"] == 1 and report.reject_counts["truncated image"] == 1
    # alias map: PET -> polyester, Denim -> cotton in the default sorting taxonomy
    labels = {Path(r.path).name: r.fibre for r in manifest.rows}
    assert labels["a.jpg"] == "polyester" and labels["d.jpg"] == "cotton"
    assert report.class_counts["fibre"] == {"cotton": 7, "polyester": 1}
    for row in manifest.rows:  # recorded facts are true
        path = manifest.image_path(row)
        assert row.sha1 == file_sha1(path) and row.source == "photos" and row.colour is None
        assert (row.height, row.width) == load_image(path).shape[:2]


def test_taxonomy_override_keeps_denim(broken_folder: tuple[Path, dict[str, str]], tmp_path: Path,
                                       repo_root: Path) -> None:
    root, _ = broken_folder
    maps = LabelMaps.load(repo_root / "datasets" / "taxonomies" / "fibre-photos-4class.yaml")
    report = import_image_folder(root, tmp_path / "m.csv", task="fibre", labels=maps, progress=False)
    assert report.class_counts["fibre"]["denim"] == 1


def test_import_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        import_image_folder(tmp_path / "nope", tmp_path / "m.csv", task="fibre", progress=False)
    with pytest.raises(ConfigError, match="unknown task"):
        import_image_folder(tmp_path, tmp_path / "m.csv", task="size", progress=False)


def test_csv_import_maps_columns_and_aliases_and_counts_every_row(tmp_path: Path) -> None:
    data_dir = tmp_path / "catalogue"
    expected = _write_good_and_bad(data_dir / "images")
    rows = [["file", "base colour", "kind"]]
    colours = iter(["Navy Blue", "Off White", "Black", "Grey Melange", "Teal", "Multi"] * 3)
    for name, reason in expected.items():
        rows.append([f"images/{name}", next(colours), "Tshirts"])
    rows += [
        ["images/missing.jpg", "Red", "Shirts"],
        ["images/plain.jpg", "Chartreuse", "Shirts"],  # unmapped colour name
        ["images/grey.png", "NA", "Shirts"],
        ["images/alpha.png", "Red", "Shirts", "extra cell"],
        ["", "Red", "Shirts"],
    ]
    with open(data_dir / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    report = import_csv(data_dir / "labels.csv", tmp_path / "out" / "m.csv", image_col="file",
                        label_cols={"colour": "base colour"}, garment_col="kind", progress=False)
    assert report.scanned == len(rows) - 1 == report.kept + len(report.rejects)
    good = {f"images/{k}" for k, v in expected.items() if not v}
    manifest = read_manifest(report.manifest_path)
    assert {Path(r.path).relative_to("../catalogue").as_posix() for r in manifest.rows} == good
    assert {r.colour for r in manifest.rows} == {"navy", "white", "black", "grey", "blue", "multicolour"}
    assert all(r.garment == "Tshirts" and r.fibre is None for r in manifest.rows)
    assert report.reject_counts == {
        "empty file": 1, "truncated image": 1, "not an image": 2, "missing file": 1,
        "unknown label 'Chartreuse'": 1, "no label": 1, "malformed row": 1, "no image path": 1,
    }  # notes.txt has no suffix filter in a CSV: Pillow says "not an image"
    assert _rejects(report.rejects_path)["images/missing.jpg"] == ("missing file", f"line {len(rows) - 4}")


def test_csv_import_names_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("image,colour\na.jpg,Red\n")
    with pytest.raises(DataError, match=r"l\.csv:1: no column colour label 'color'"):
        import_csv(tmp_path / "l.csv", tmp_path / "m.csv", label_cols={"colour": "color"}, progress=False)


def test_cli_import_folder_prints_summary(broken_folder: tuple[Path, dict[str, str]], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root, expected = broken_folder
    out = tmp_path / "cli" / "m.csv"
    assert main(["data", "import-folder", str(root), "--task", "fibre", "-o", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert f"{sum(not v for v in expected.values())} of {len(expected)} inputs kept" in text
    assert str(out.with_name("m.rejects.csv")) in text
    assert main(["data", "import-folder", str(tmp_path / "nope"), "--task", "fibre", "-o", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_decoding_does_not_depend_on_file_suffix(tmp_path: Path) -> None:
    """A PNG saved as .jpg is still a fine image (suffix only filters folder imports)."""
    buf = io.BytesIO()
    Image.fromarray(_texture()[:, :, ::-1]).save(buf, "PNG")
    (tmp_path / "really_png.jpg").write_bytes(buf.getvalue())
    np.testing.assert_array_equal(load_image(tmp_path / "really_png.jpg"), _texture())


def test_a_name_listed_as_unlabelled_keeps_the_row_and_its_other_labels(tmp_path: Path, repo_root: Path) -> None:
    """fabric-closeups' colour `other` (unnamed) leaves colour empty instead of rejecting the fibre label too."""
    for seed, name in enumerate(("a.jpg", "b.jpg", "c.jpg", "d.jpg")):
        (tmp_path / name).write_bytes(_jpeg_bytes(_texture(seed=seed)))
    (tmp_path / "labels.csv").write_text(
        "image,fibre,colour,sample\na.jpg,Cotton,other,001\nb.jpg,Mixed,mixed,002\nc.jpg,Polyester,gray,003\n"
        "d.jpg,Other,Chartreuse,004\n")
    maps = LabelMaps.load(repo_root / "datasets" / "taxonomies" / "fabric-closeups.yaml")
    report = import_csv(tmp_path / "labels.csv", tmp_path / "m.csv", label_cols={"fibre": "fibre", "colour": "colour"},
                        garment_col="sample", labels=maps, progress=False)
    rows = {Path(r.path).name: (r.fibre, r.colour, r.garment) for r in read_manifest(report.manifest_path).rows}
    assert rows == {"a.jpg": ("cotton", None, "001"), "b.jpg": ("mixed", "multicolour", "002"),
                    "c.jpg": ("polyester", "grey", "003")}
    assert report.reject_counts == {"unknown label 'Chartreuse'": 1}
