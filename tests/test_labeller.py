"""The labeller (sorting.apps.labeller): a boxes CSV corrected photo by photo through its web page's JSON API."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sorting.apps.labeller import BoxFile, create_app
from sorting.apps.labeller.app import TOKEN_HEADER
from sorting.datasets.box_labels import read_box_rows
from sorting.errors import DataError

TOKEN = "t0ken"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three small photos (120 x 80) in tmp/photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(folder / name), np.full((80, 120, 3), 90, np.uint8))
    return folder


@pytest.fixture
def proposals(tmp_path: Path, photos: Path) -> Path:
    """A propose-labels file: names relative to its folder, two boxes on a, none on b (an empty row), c unlisted."""
    path = tmp_path / "labels" / "boxes.csv"
    path.parent.mkdir()
    path.write_text("image,x0,y0,x1,y1,kind\n"
                    "../photos/a.png,10,10,50,40,garment\n../photos/a.png,60,5,100,30,hand\n"
                    "../photos/b.png,,,,,\n")
    return path


def _client(boxes: BoxFile):
    return create_app(boxes, token=TOKEN).test_client()


def _put(client, index: int, boxes: list, token: str = TOKEN):
    return client.put(f"/api/boxes/{index}", json={"boxes": boxes}, headers={TOKEN_HEADER: token})


def test_a_change_is_written_at_once_and_reads_back_as_boxes(proposals: Path) -> None:
    """A photo's new boxes replace its old ones in the file, the other photos' rows are kept as they were, and the
    file as first opened is kept beside it once."""
    original = proposals.read_text()
    client = _client(BoxFile(proposals))
    assert client.get("/api/boxes/0").get_json() == {
        "name": "../photos/a.png", "size": [120, 80],
        "boxes": [{"box": [10.0, 10.0, 50.0, 40.0], "kind": "garment"}, {"box": [60.0, 5.0, 100.0, 30.0], "kind": "hand"}]}
    answer = _put(client, 0, [{"box": [60, 5, 100, 30], "kind": "object"}, {"box": [5.5, 50, 40, 75], "kind": "garment"}])
    assert answer.status_code == 200
    rows = read_box_rows(proposals)
    assert rows.problems == []
    assert rows.boxes == {"../photos/a.png": [((60, 5, 100, 30), "object"), ((5.5, 50, 40, 75), "garment")],
                          "../photos/b.png": []}
    assert _put(client, 1, [{"box": [1, 1, 30, 30], "kind": "hand"}]).status_code == 200
    assert (proposals.parent / "boxes.csv.bak").read_text() == original  # the file as opened, not the first save
    assert read_box_rows(proposals).boxes["../photos/b.png"] == [((1, 1, 30, 30), "hand")]


def test_a_photo_whose_boxes_are_all_deleted_keeps_its_empty_row(proposals: Path) -> None:
    client = _client(BoxFile(proposals))
    assert _put(client, 0, []).status_code == 200
    assert read_box_rows(proposals).boxes == {"../photos/a.png": [], "../photos/b.png": []}
    assert [p.boxes for p in BoxFile(proposals).photos] == [[], []]  # read back: both photos, no box


def test_boxes_are_clipped_to_the_photo_and_drawn_either_way(proposals: Path) -> None:
    client = _client(BoxFile(proposals))
    answer = _put(client, 0, [{"box": [100, 70, -20, 200], "kind": "garment"}])  # dragged up and left, past the edges
    assert answer.get_json() == {"boxes": [{"box": [0.0, 70.0, 100.0, 80.0], "kind": "garment"}]}


@pytest.mark.parametrize("boxes, why", [
    ([{"box": [1, 1, 30, 30], "kind": "sock"}], "kind"),
    ([{"box": [1, 1, 30], "kind": "garment"}], "four numbers"),
    ([{"box": [1, 1, "x", 30], "kind": "garment"}], "four numbers"),
    ([{"box": [130, 10, 150, 30], "kind": "garment"}], "less than"),  # wholly outside the photo
    ([{"box": [10, 10, 11, 30], "kind": "garment"}], "less than"),
])
def test_a_bad_box_is_refused_and_nothing_is_written(proposals: Path, boxes: list, why: str) -> None:
    before = proposals.read_text()
    client = _client(BoxFile(proposals))
    answer = _put(client, 0, [{"box": [10, 10, 50, 40], "kind": "garment"}, *boxes])
    assert answer.status_code == 400 and why in answer.get_json()["error"]
    assert proposals.read_text() == before and not (proposals.parent / "boxes.csv.bak").exists()
    assert client.get("/api/boxes/0").get_json()["boxes"][1]["kind"] == "hand"  # the photo's boxes as they were


def test_a_change_without_the_pages_token_or_a_body_is_refused(proposals: Path) -> None:
    before = proposals.read_text()
    client = _client(BoxFile(proposals))
    assert _put(client, 0, [], token="other").status_code == 403
    assert client.put("/api/boxes/0", data="not json", headers={TOKEN_HEADER: TOKEN}).status_code == 400
    assert client.put("/api/boxes/9", json={"boxes": []}, headers={TOKEN_HEADER: TOKEN}).status_code == 404
    assert proposals.read_text() == before


def test_the_page_the_photo_and_missing_ones(proposals: Path, photos: Path) -> None:
    client = _client(BoxFile(proposals))
    index = "".join(client.get("/").get_data(as_text=True).split())  # every photo with its boxes by kind
    assert '<ahref="/photo/0">../photos/a.png</a></td><td>1</td><td>1</td><td></td></tr>' in index  # garment, hand
    assert '<ahref="/photo/1">../photos/b.png</a></td><td></td><td></td><td></td></tr>' in index
    page = client.get("/photo/1").get_data(as_text=True)
    assert "photo 2 of 2" in page and TOKEN in page and "label.js" in page
    assert client.get("/image/0").data == (photos / "a.png").read_bytes()
    assert client.get("/photo/2").status_code == 404 and client.get("/image/2").status_code == 404
    (photos / "b.png").unlink()
    assert client.get("/image/1").status_code == 404
    assert "cannot read" in client.get("/api/boxes/1").get_json()["error"]


def test_a_folder_adds_its_unlisted_photos_and_starts_a_new_file(tmp_path: Path, proposals: Path,
                                                                  photos: Path) -> None:
    listed = BoxFile(proposals, photos_dir=photos)
    assert [p.name for p in listed.photos] == ["../photos/a.png", "../photos/b.png", "../photos/c.png"]
    new = tmp_path / "new.csv"
    client = _client(BoxFile(new, photos_dir=photos))
    assert not new.exists()  # nothing written before the first change
    assert _put(client, 2, [{"box": [0, 0, 10, 10], "kind": "object"}]).status_code == 200
    assert read_box_rows(new).boxes == {"photos/a.png": [], "photos/b.png": [],
                                        "photos/c.png": [((0, 0, 10, 10), "object")]}
    assert not (tmp_path / "new.csv.bak").exists()


def test_a_file_it_cannot_rewrite_whole_is_refused(tmp_path: Path, proposals: Path) -> None:
    """Rows it cannot read, or kinds it does not know, would be lost by a rewrite: it says which, and opens nothing."""
    broken = proposals.with_name("broken.csv")
    broken.write_text(proposals.read_text() + "../photos/c.png,1,2,x,4,garment\n")
    with pytest.raises(DataError, match="broken.csv line 5"):
        BoxFile(broken)
    strange = proposals.with_name("strange.csv")
    strange.write_text(proposals.read_text() + "../photos/c.png,1,2,30,40,tray\n")
    with pytest.raises(DataError, match="tray"):
        BoxFile(strange)
    with pytest.raises(DataError, match="does not exist"):
        BoxFile(tmp_path / "none.csv")


def test_the_command_says_why_it_cannot_open_a_file_or_a_port(tmp_path: Path, proposals: Path, capsys) -> None:
    """``label-boxes`` stops with one clear message before serving anything: a file it would have to drop rows of,
    a file that does not exist without a folder to start it from, a port already taken."""
    import socket

    from sorting.cli import main

    broken = proposals.with_name("broken.csv")
    broken.write_text(proposals.read_text() + "../photos/c.png,1,2,x,4,garment\n")
    assert main(["label-boxes", str(broken)]) != 0
    assert "broken.csv line 5" in capsys.readouterr().err
    assert main(["label-boxes", str(tmp_path / "none.csv")]) != 0
    assert "give the folder of photos" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["label-boxes", str(proposals), "--port", str(taken.getsockname()[1])]) != 0
    assert "cannot listen" in capsys.readouterr().err


def test_a_file_changed_on_disk_meanwhile_is_not_written_over(proposals: Path) -> None:
    """Another labeller or an editor wrote the file after this one read it: a change here is refused (409) and the
    other writer's rows stay; the photo's boxes here are still what the file held when read."""
    client = _client(BoxFile(proposals))
    assert _put(client, 0, [{"box": [10, 10, 50, 40], "kind": "object"}]).status_code == 200  # written here: fine
    other = "image,x0,y0,x1,y1,kind\n../photos/a.png,1,1,20,20,hand\n../photos/b.png,5,5,25,25,garment\n"
    proposals.write_text(other)
    answer = _put(client, 1, [{"box": [30, 30, 60, 60], "kind": "hand"}])
    assert answer.status_code == 409 and "changed on disk" in answer.get_json()["error"]
    assert proposals.read_text() == other
    assert client.get("/api/boxes/1").get_json()["boxes"] == []
