"""The drawing page in a real browser: headless Chromium driven by Selenium draws a digit
with pointer actions on the canvas and reads the answer from the page."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"
)
# Strokes on the 280×280 pad, in pad pixels: a seven (a bar, then a long diagonal).
SEVEN = [[(70, 60), (210, 60)], [(210, 60), (120, 230)]]


@pytest.fixture
def browser():
    # Imported here: Selenium costs every parallel worker a quarter-second to collect.
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the [dev] extra")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,700"):
        options.add_argument(flag)
    options.add_argument("--disable-gpu")
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def draw(driver, canvas, strokes) -> None:
    """Pointer actions: press, move in small steps, release; offsets from the canvas centre."""
    from selenium.webdriver.common.action_chains import ActionChains

    box = canvas.size
    scale_x, scale_y = box["width"] / 280, box["height"] / 280
    for stroke in strokes:
        (x0, y0), (x1, y1) = stroke
        actions = ActionChains(driver, duration=10)
        actions.move_to_element_with_offset(canvas, (x0 - 140) * scale_x, (y0 - 140) * scale_y)
        actions.click_and_hold()
        steps = 12
        for i in range(1, steps + 1):
            x = x0 + (x1 - x0) * i / steps
            y = y0 + (y1 - y0) * i / steps
            actions.move_to_element_with_offset(canvas, (x - 140) * scale_x, (y - 140) * scale_y)
        actions.release()
        actions.perform()


def test_drawing_a_seven_shows_the_answer(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with urllib.request.urlopen(server.http_url + "/", timeout=10) as response:
        policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy

    browser.get(server.http_url + "/")
    canvas = browser.find_element(By.ID, "pad")
    draw(browser, canvas, SEVEN)
    label = browser.find_element(By.ID, "label")
    WebDriverWait(browser, 30).until(lambda _: label.get_attribute("data-label") not in ("", None))
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "status").text == "ready"
    )  # the last drawing's answer is in
    assert label.get_attribute("data-label") == "7", browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "model").text == "mnist v1"
    top = browser.find_elements(By.CSS_SELECTOR, "#bars li.top .digit")
    assert [e.text for e in top] == ["7"]
    # The 28×28 the model saw is drawn: its canvas is not all black.
    lit = browser.execute_script(
        "const c = document.getElementById('seen').getContext('2d');"
        "return c.getImageData(0, 0, 112, 112).data.some((v, i) => i % 4 === 0 && v > 128);"
    )
    assert lit
    # Nothing came from elsewhere.
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin);"
    )
    assert set(origins) <= {server.http_url}
    shot = Path(os.environ.get("MNIST_SERVING_SCREENSHOT", tmp_path / "draw-page.png"))
    assert browser.save_screenshot(str(shot))
