"""The labeller's page in a real browser (headless Chromium through selenium): draw a box with the mouse, change its
kind with a key, drag one of its edges, delete another box, take changes back, go to the next photo; the boxes CSV must say so. Skips only when no Chromium +
chromedriver can be found (``.ci/run`` installs them)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from test_console_browser import _browser, _wait

from sorting.apps.labeller import BoxFile, start_labeller
from sorting.datasets.box_labels import read_box_rows

pytestmark = pytest.mark.slow


def test_draw_relabel_delete_and_move_on(tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.full((400, 600, 3), 90, np.uint8))
    path = tmp_path / "boxes.csv"
    path.write_text("image,x0,y0,x1,y1,kind\na.png,400,50,550,150,garment\nb.png,,,,,\n")
    labeller = start_labeller(BoxFile(path), port=0)
    driver = _browser(tmp_path)
    try:
        driver.get(labeller.url)  # the list of photos
        driver.find_element(By.LINK_TEXT, "a.png").click()
        _wait(driver, lambda d: d.find_element(By.ID, "status").text == "1 box")
        svg = driver.find_element(By.ID, "boxes")
        scale = svg.size["width"] / 600  # page px per photo px
        # drag from photo (50, 60) to (250, 260): the offsets are from the SVG's centre (300, 200 in photo px)
        (ActionChains(driver).move_to_element_with_offset(svg, round(-250 * scale), round(-140 * scale))
         .click_and_hold().move_by_offset(round(200 * scale), round(200 * scale)).release().perform())
        _wait(driver, lambda d: d.find_element(By.ID, "status").text == "saved: 2 boxes")
        driver.find_element(By.TAG_NAME, "body").send_keys("h")  # the new box, chosen, becomes a hand
        _wait(driver, lambda d: [k for _, k in read_box_rows(path).boxes["a.png"]] == ["garment", "hand"])
        (x0, y0, x1, y1), _ = read_box_rows(path).boxes["a.png"][1]
        assert abs(x0 - 50) <= 3 and abs(y0 - 60) <= 3 and abs(x1 - 250) <= 3 and abs(y1 - 260) <= 3
        # the hand is still chosen: its right edge dragged from photo x 250 to 300
        (ActionChains(driver).move_to_element_with_offset(svg, round(-50 * scale), round(-40 * scale))
         .click_and_hold().move_by_offset(round(50 * scale), 0).release().perform())
        _wait(driver, lambda d: abs(read_box_rows(path).boxes["a.png"][1][0][2] - 300) <= 3)
        assert abs(read_box_rows(path).boxes["a.png"][1][0][0] - 50) <= 3  # the left edge stays
        # the garment (the page draws its boxes again when a save is answered: a stale element is tried again)
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "svg rect")[0].click() or True)
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.DELETE)
        _wait(driver, lambda d: len(read_box_rows(path).boxes["a.png"]) == 1)
        assert read_box_rows(path).boxes["a.png"][0][1] == "hand"
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, "z")  # the garment back
        _wait(driver, lambda d: [k for _, k in read_box_rows(path).boxes["a.png"]] == ["garment", "hand"])
        assert read_box_rows(path).boxes["a.png"][0][0] == (400, 50, 550, 150)
        driver.find_element(By.ID, "undo").click()  # the edge's move taken back too
        _wait(driver, lambda d: abs(read_box_rows(path).boxes["a.png"][1][0][2] - 250) <= 3)
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        _wait(driver, lambda d: "photo 2 of 2" in d.find_element(By.ID, "where").text)
        assert driver.find_element(By.ID, "status").text == "0 boxes"
    finally:
        driver.quit()
        labeller.close()
    assert read_box_rows(path).boxes["b.png"] == []  # only moved past, never changed
