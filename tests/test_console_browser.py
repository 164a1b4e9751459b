"""A real browser (headless Chromium through selenium) on the console while a synthetic line runs.

Phase 1 feeds the seams from a thread (tests/_console_fixtures.SyntheticLine: frames into the slot,
decision rows into the log, the line's metrics); the page must show frames arriving and counters
moving, acknowledge an alarm, and store a relabel through the page into the decision log.
``TEXTILE_SORTER_SCREENSHOTS=1`` saves the Live page to docs/images/console.png (the README's).
Skips only when no Chromium + chromedriver can be found (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from _console_fixtures import SyntheticLine
from sorting.apps.console import start_console
from sorting.serving.decision_log import stored_labels
from sorting.serving.live import ModelInfo

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1400,1000")


def _browser(tmp_path: Path):
    """A headless Chromium driven by the system's chromedriver (never downloaded)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no Chromium + chromedriver on this machine (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)


def _wait(driver, condition, timeout: float = 15.0):
    """Poll ``condition`` (the page re-renders its panels every second: stale elements are retried)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


@pytest.fixture
def line(tmp_path):
    line = SyntheticLine(tmp_path / "decisions.sqlite", fps=20, every=4)
    line.feed.status.model_loaded(ModelInfo(path="runs/demo/model.onnx", model_id="efficientnet_lite0:4f2a9c",
                                            name="efficientnet_lite0", run_id="4f2a9c", exported_at="2026-11-30",
                                            classes={"fibre": ("cotton", "polyester", "wool"),
                                                     "colour": ("white", "black", "red")}))
    line.feed.alarms.event("missed_firings", "1 firing missed (late): item went to the end-of-belt reject")
    yield line.start()
    line.close()


def test_live_page_updates_and_relabel_through_the_page(line, tmp_path, repo_root) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    console = start_console(line.feed, line.log.path, port=0)
    driver = _browser(tmp_path)
    try:
        driver.get(console.url + "live")
        frames = lambda d: int(d.find_element(By.ID, "frame-count").get_attribute("data-n"))  # noqa: E731
        _wait(driver, lambda d: frames(d) >= 3)  # frames arrive
        total = int(_text(driver, "total"))
        _wait(driver, lambda d: int(_text(d, "total")) > total)  # counters move
        _wait(driver, lambda d: d.execute_script("return document.getElementById('frame').naturalWidth") == 640)
        _wait(driver, lambda d: "Camera frames arriving" in _text(d, "lights"))
        assert "efficientnet_lite0:4f2a9c" in _text(driver, "model")
        assert "Missed firings" in _text(driver, "alarms")
        if os.environ.get("TEXTILE_SORTER_SCREENSHOTS") == "1":
            time.sleep(1.5)  # a few more items and frames for the picture
            out = repo_root / "docs" / "images" / "console.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        driver.find_element(By.CSS_SELECTOR, "#alarms button.ack").click()
        _wait(driver, lambda d: "No alarms." in _text(d, "alarms"))
        assert line.feed.alarms.snapshot() == []

        driver.get(console.url + "relabel?session=live")
        cards = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "form.card"))
        first, second = cards[0], cards[1]
        # mouse: pick fibre and colour, click Save
        Select(first.find_element(By.NAME, "fibre")).select_by_value("wool")
        Select(first.find_element(By.NAME, "colour")).select_by_value("red")
        first.find_element(By.CSS_SELECTOR, "button[value=save]").click()
        _wait(driver, lambda d: "done" in first.get_attribute("class"))
        # keyboard: the next card is active; '2' = several, Enter saves
        _wait(driver, lambda d: "active" in second.get_attribute("class"))
        driver.switch_to.active_element.send_keys("2")
        driver.switch_to.active_element.send_keys(Keys.ENTER)
        _wait(driver, lambda d: "done" in second.get_attribute("class"))
        assert int(_text(driver, "labelled")) == 2
        labels = {r["item_id"]: r for r in stored_labels(line.log.path)}
        assert labels[first.get_attribute("data-uid")]["fibre"] == "wool"
        assert labels[first.get_attribute("data-uid")]["colour"] == "red"
        assert labels[second.get_attribute("data-uid")]["layout"] == "several"
    finally:
        driver.quit()
        console.close()


def test_live_page_follows_serve_sorting_a_synthetic_clip(tmp_path, repo_root) -> None:
    """``textile-sorter serve --console`` sorting the synthetic belt: the page shows its frames, counters and
    model. ``TEXTILE_SORTER_SCREENSHOTS=1`` with a demo model (runs/demo/model.onnx) saves the README's picture."""
    import subprocess
    import sys

    import yaml
    from selenium.webdriver.common.by import By

    from _modbus_fixtures import free_port
    from test_serve import tiny_model_line

    demo = repo_root / "runs" / "demo" / "model.onnx"
    screenshot = os.environ.get("TEXTILE_SORTER_SCREENSHOTS") == "1" and demo.is_file()
    line = tiny_model_line(tmp_path, demo if screenshot else None)
    if screenshot:  # the demo's own bins, so the picture shows what make demo sorts
        cfg = yaml.safe_load(line.read_text())
        cfg["policy"] = {"bins": str(repo_root / "serving" / "bins-fibre-colour.yaml")}
        line.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sorting", "serve", "--line", str(line), "--source", "synthetic:5",
                             "--console", "--console-port", str(port), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    driver = _browser(tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/live"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                driver.get(url)
                if driver.find_elements(By.ID, "frame-count"):
                    break
            except Exception:  # the console is not up yet
                pass
            time.sleep(0.5)
        frames = lambda d: int(d.find_element(By.ID, "frame-count").get_attribute("data-n"))  # noqa: E731
        _wait(driver, lambda d: frames(d) >= 3, 60)
        _wait(driver, lambda d: int(_text(d, "total") or 0) > 0, 60)
        total = int(_text(driver, "total"))
        _wait(driver, lambda d: int(_text(d, "total")) > total, 60)  # counters move while it sorts
        assert ("efficientnet" if screenshot else "tiny") in _text(driver, "model")
        if screenshot:
            time.sleep(2.0)
            driver.save_screenshot(str(repo_root / "docs" / "images" / "console.png"))
    finally:
        driver.quit()
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0
