"""Manifest I/O, splitting (determinism, stratification, groups, leak guard) and stats."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields, replace
from pathlib import Path

import pytest

from sorting.cli import main
from sorting.datasets.manifest import COLUMNS, ManifestRow, read_manifest, write_manifest
from sorting.datasets.split import check_no_leak, split_manifest, split_rows
from sorting.datasets.stats import compute_stats, manifest_stats
from sorting.errors import ConfigError, DataError


def _rows(n_per_class: dict[str, int], *, garments_per_item: int = 1) -> list[ManifestRow]:
    rows = []
    for colour, n in n_per_class.items():
        for i in range(n):
            rows.append(ManifestRow(
                path=f"img/{colour}_{i:04d}.jpg", colour=colour, fibre="cotton" if i % 2 else None,
                garment=f"{colour}-g{i // garments_per_item}", sha1=f"{colour}{i:036d}", width=100 + i, height=80,
            ))
    return rows


def test_columns_follow_the_row_dataclass() -> None:
    assert tuple(f.name for f in fields(ManifestRow)) == COLUMNS


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    rows = [
        ManifestRow("a/1.jpg", fibre="cotton", colour="navy", garment="g1", composition="cotton 95%, elastane 5%",
                    source="catalogue", split="train", sha1="ab" * 20, width=224, height=300),
        ManifestRow("/abs/2.png"),
        ManifestRow("b/3 with space.jpg", colour="red", split="test"),
    ]
    path = write_manifest(rows, tmp_path / "sub" / "m.csv")
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    manifest = read_manifest(path)
    assert manifest.rows == rows
    assert manifest.root == tmp_path / "sub"
    assert manifest.image_path(rows[0]) == tmp_path / "sub" / "a" / "1.jpg"
    assert manifest.image_path(rows[1]) == Path("/abs/2.png")
    assert manifest.subset("test") == [rows[2]] and manifest.subset(None) == [rows[1]]
    assert manifest.labelled("fibre") == [rows[0]]


def test_moving_a_manifest_rebases_relative_paths(tmp_path: Path) -> None:
    write_manifest([ManifestRow("img/a.jpg"), ManifestRow("/abs/b.jpg")], tmp_path / "data" / "m.csv")
    source = read_manifest(tmp_path / "data" / "m.csv")
    moved = read_manifest(write_manifest(source.rows, tmp_path / "runs" / "x" / "m.csv", root=source.root))
    assert [r.path for r in moved.rows] == ["../../data/img/a.jpg", "/abs/b.jpg"]
    assert moved.image_path(moved.rows[0]).resolve() == (tmp_path / "data" / "img" / "a.jpg")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"m\.csv: empty file"),
        ("path,colour,colur\na.jpg,red,\n", r"m\.csv:1: unknown column\(s\) \['colur'\]"),
        ("colour\nred\n", r"m\.csv:1: no 'path' column"),
        ("path,split\na.jpg,train\nb.jpg,training\n", r"m\.csv:3: split 'training'"),
        ("path,width\na.jpg,12.5\n", r"m\.csv:2: width '12.5' is not an integer"),
        ("path,colour\na.jpg,red\na.jpg,blue\n", r"m\.csv:3: path 'a\.jpg' already listed on line 2"),
        ("path,colour\na.jpg,red,extra\n", r"m\.csv:2: more cells"),
        ("path,colour\n,red\n", r"m\.csv:2: empty 'path'"),
    ],
)
def test_malformed_manifest_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_missing_and_binary_manifests(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "bin.csv").write_bytes(b"path\n\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not a UTF-8"):
        read_manifest(tmp_path / "bin.csv")


def test_hand_written_minimal_manifest_is_valid(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,colour\n\na.jpg,red\nb.jpg,\n")
    rows = read_manifest(tmp_path / "m.csv").rows
    assert rows == [ManifestRow("a.jpg", colour="red"), ManifestRow("b.jpg")]


# --- split ------------------------------------------------------------------------------------


def test_split_is_deterministic_order_independent_and_seed_dependent() -> None:
    rows = _rows({"red": 50, "blue": 30})
    first = split_rows(rows, seed=3)
    assert split_rows(rows, seed=3) == first
    shuffled = split_rows(list(reversed(rows)), seed=3)
    assert {r.path: r.split for r in shuffled} == {r.path: r.split for r in first}
    assert [r.split for r in split_rows(rows, seed=4)] != [r.split for r in first]
    assert all(r.split is None for r in rows)  # input not modified


def test_split_is_stratified_per_class() -> None:
    rows = split_rows(_rows({"red": 100, "blue": 40, "navy": 20, "pink": 3}), fractions=(0.7, 0.2, 0.1))
    counts = Counter((r.colour, r.fibre, r.split) for r in rows)
    for colour, n in {"red": 100, "blue": 40, "navy": 20}.items():
        for fibre in ("cotton", None):
            stratum = n // 2
            assert counts[(colour, fibre, "train")] == pytest.approx(0.7 * stratum, abs=1)
            assert counts[(colour, fibre, "val")] == pytest.approx(0.2 * stratum, abs=1)
            assert counts[(colour, fibre, "test")] == pytest.approx(0.1 * stratum, abs=1)
    assert [r.split for r in rows if r.colour == "pink" and r.fibre] == ["train"]  # one image: cannot be cut


def test_split_keeps_groups_and_duplicates_together() -> None:
    rows = _rows({"red": 60, "blue": 60}, garments_per_item=4)
    rows[5] = replace(rows[5], sha1=rows[100].sha1)  # same picture under two garments
    result = split_rows(rows, group_by="garment", seed=1)
    by_garment: dict[str, set[str | None]] = {}
    for row in result:
        by_garment.setdefault(row.garment or "", set()).add(row.split)
    assert all(len(splits) == 1 for splits in by_garment.values())
    assert result[5].split == result[100].split
    assert Counter(r.split for r in result)["test"] >= 8


def test_leak_guard_lists_examples() -> None:
    rows = [ManifestRow("a.jpg", split="train", sha1="f" * 40, garment="g1"),
            ManifestRow("b.jpg", split="test", sha1="f" * 40, garment="g2"),
            ManifestRow("c.jpg", split="val", sha1="e" * 40, garment="g1")]
    with pytest.raises(DataError, match=r"1 leak.*a\.jpg \(train\).*b\.jpg \(test\)"):
        check_no_leak(rows)
    with pytest.raises(DataError, match=r"2 leak.*same garment g1"):
        check_no_leak(rows, group_by="garment")
    check_no_leak([replace(r, split=None) for r in rows])


def test_split_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="summing to 1"):
        split_rows(_rows({"red": 5}), fractions=(0.8, 0.3, 0.1))
    with pytest.raises(ConfigError, match="cannot group by 'sha2'"):
        split_rows(_rows({"red": 5}), group_by="sha2")


def test_split_manifest_file_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_manifest(_rows({"red": 20, "blue": 20}), tmp_path / "m.csv")
    out, counts = split_manifest(path, tmp_path / "other" / "s.csv", fractions=(0.5, 0.25, 0.25))
    assert counts == {"train": 20, "val": 10, "test": 10}
    assert read_manifest(out).rows[0].path == "../img/red_0000.jpg"
    assert main(["data", "split", str(path), "--seed", "2"]) == 0
    assert "train 32, val 4, test 4" in capsys.readouterr().out
    assert {r.split for r in read_manifest(path).rows} == {"train", "val", "test"}


# --- stats ------------------------------------------------------------------------------------


def test_stats_counts_imbalance_sizes_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = split_rows(_rows({"red": 40, "blue": 10}))
    path = write_manifest(rows + [ManifestRow("x.jpg", colour="red")], tmp_path / "m.csv")
    stats = compute_stats(read_manifest(path))
    assert stats.totals("colour") == {"red": 41, "blue": 10}
    assert stats.imbalance("colour") == pytest.approx(4.1)
    assert stats.counts["colour"]["unsplit"] == {"red": 1}
    assert stats.totals("fibre") == {"cotton": 25}
    assert stats.width is not None and (stats.width.min, stats.width.max) == (100, 139)
    assert stats.n_without_size == 1
    _, png = manifest_stats(path)
    assert png == tmp_path / "m.stats.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["data", "stats", str(path), "--out", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    assert "imbalance max/min 4.1" in text and (tmp_path / "c.png").stat().st_size > 1000
