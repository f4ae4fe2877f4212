"""`liif view` in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
driven by Selenium through the system chromedriver.

Selenium, not Playwright: Playwright's Python package downloads its own browsers and driver
by default and pins Chromium versions; Selenium talks W3C WebDriver to the chromedriver that
Debian ships matched to its chromium, and is told both paths, so nothing is fetched
(SE_OFFLINE keeps selenium-manager off the network too).

The page's state is read from `window.__liifView` (tile counters per layer, the scale); tests
hold tile requests (`hold`) to see the placeholders before the model's tiles replace them.
Skipped with the reason when chromium or chromedriver is missing, except under CI=true, where
that is a failure: CI installs them (.ci/run).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_like, random_model
from PIL import Image

from liif_cli.runtime.weights import save_checkpoint
from liif_cli.view.server import ViewServer
from liif_cli.view.session import ViewSession

pytestmark = pytest.mark.slow  # a browser start is seconds; CI runs them all

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HEADLESS_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORT = (800, 560)  # CSS pixels, device pixel ratio 1
WAIT_S = 120  # generous: the test machine is shared and often loaded


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = (f"headless Chromium tests need {', '.join(missing)} "
                  "(apt-get install chromium chromium-driver)")
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser tests: " + reason)
        pytest.skip(reason)


def start_browser(width: int, height: int, scale: float = 1.0, mobile: bool = False):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in HEADLESS_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='liif-view-chromium-')}")
    opts.add_argument(f"--window-size={width},{height + 200}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile})
    return driver


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    d = tmp_path_factory.mktemp("viewb")
    Image.fromarray(photo_like(90, 120, seed=3)).save(d / "photo.png")
    Image.fromarray(photo_like(40, 60, seed=4)).save(d / "small.png")
    save_checkpoint(random_model(seed=0), d / "tiny.pth")
    save_checkpoint(random_model(seed=1), d / "other.pth")
    session = ViewSession([d / "photo.png", d / "small.png"],
                          models=[str(d / "tiny.pth"), str(d / "other.pth")], device="cpu")
    srv = ViewServer(session, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def driver(server):
    drv = start_browser(*VIEWPORT)
    yield drv
    drv.quit()


def state(drv, expr: str = ""):
    return drv.execute_script(f"return window.__liifView{expr}")


def wait_for(drv, expr: str, what: str, timeout: float = WAIT_S):
    """Wait until the JS expression (over `v`, the page's state) is truthy."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = drv.execute_script(f"const v = window.__liifView; return v && ({expr})")
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {state(drv)}")


def drawn_origin(drv) -> list[float]:
    """The view's origin once the frames asked for so far are drawn (it is set when a frame is
    drawn, not when the zoom or pan is asked for): two animation frames on."""
    return drv.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => requestAnimationFrame(() => done(window.__liifView.origin)))")


def load(drv, srv) -> None:
    drv.get(srv.url)
    wait_for(drv, "v.ready", "the page to load")


def select(drv, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(drv.find_element(By.ID, element_id)).select_by_value(value)


def screenshot(drv) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(drv.get_screenshot_as_png())).convert("RGB"))


def test_page_loads_fits_the_image_and_is_not_blank(driver, server):
    load(driver, server)
    v = state(driver)
    assert v["errors"] == [] and v["image"] == 0
    # fit: the 120×90 image scaled up to the canvas (never model tiles below 100 %... here
    # fit is above 100 %, so the model is asked: that is the point of the viewer)
    assert v["s"] > 1
    readout = driver.find_element("id", "readout").text
    assert "%" in readout and "→" in readout
    shot = screenshot(driver)
    assert shot.std() > 10 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 500


def test_zoom_to_400_replaces_placeholders_with_model_tiles(driver, server):
    load(driver, server)
    select(driver, "model-a", "off")
    driver.execute_script("const v = window.__liifView; v.hold = true; v.zoomTo(4);"
                          "v.settleNow();")
    wait_for(driver, "v.S === 4 && v.drawn.b.wanted > 0", "the tiles of x4")
    v = state(driver)
    assert v["drawn"]["b"]["placeholder"] == v["drawn"]["b"]["wanted"]  # placeholders first
    assert v["drawn"]["b"]["done"] == 0 and v["queued"] > 0
    before = driver.execute_script("return window.__liifView.pixel(400, 280)")
    shot_before = screenshot(driver)
    driver.execute_script("window.__liifView.release()")
    wait_for(driver, "v.drawn.b.done === v.drawn.b.wanted && v.drawn.b.placeholder === 0",
             "the model's tiles")
    v = state(driver)
    assert v["failed"] == 0 and v["loaded"] >= v["drawn"]["b"]["wanted"] and v["errors"] == []
    assert "400%" in driver.find_element("id", "readout").text
    assert "480×360" in driver.find_element("id", "readout").text  # 120×90 at ×4
    after = driver.execute_script("return window.__liifView.pixel(400, 280)")
    assert len(before) == len(after) == 4
    assert not np.array_equal(screenshot(driver), shot_before)  # the model's pixels are shown


def test_wheel_keys_and_buttons_zoom(driver, server):
    load(driver, server)
    s0 = state(driver, ".s")
    driver.execute_script("document.getElementById('canvas').dispatchEvent(new WheelEvent("
                          "'wheel', {deltaY: -400, clientX: 300, clientY: 300, bubbles: true,"
                          " cancelable: true}))")
    s1 = state(driver, ".s")
    assert s1 > s0 * 1.5
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys("0").perform()
    assert abs(state(driver, ".s") - s0) < 0.01  # fit again (snapped to 1/100 beyond 100 %)
    ActionChains(driver).send_keys("+").perform()
    assert state(driver, ".s") > s0
    driver.find_element("id", "zoom-100").click()
    assert state(driver, ".s") == 1
    # drag pans
    from selenium.webdriver.common.by import By

    x0, y0 = drawn_origin(driver)  # the 100 % zoom's frame drawn: under load it lags
    ActionChains(driver).drag_and_drop_by_offset(
        driver.find_element(By.ID, "canvas"), 60, 40).perform()
    wait_for(driver, f"v.origin[0] !== {x0}", "the drag to pan")
    x1, y1 = drawn_origin(driver)
    assert abs((x1 - x0) - 60) <= 1 and abs((y1 - y0) - 40) <= 1
    # zoom goes to 30× and more
    for _ in range(12):
        driver.find_element("id", "zoom-in").click()
    assert state(driver, ".s") >= 30


def test_split_slider_and_model_picker(driver, server):
    load(driver, server)
    select(driver, "model-a", "bicubic")
    driver.execute_script("const e = document.getElementById('split'); e.value = 300;"
                          "e.dispatchEvent(new Event('input'));")
    driver.execute_script("window.__liifView.zoomTo(3); window.__liifView.settleNow()")
    both = ("v.S === 3 && v.drawn.a.wanted > 0 && v.drawn.a.done === v.drawn.a.wanted && "
            "v.drawn.b.wanted > 0 && v.drawn.b.done === v.drawn.b.wanted")
    wait_for(driver, both, "bicubic | tiny")
    v = state(driver)
    assert abs(v["split"] - 0.3) < 1e-9
    left = driver.execute_script("return document.getElementById('divider').style.left")
    assert abs(float(left.removesuffix("px")) - 0.3 * VIEWPORT[0]) < 2
    assert driver.find_element("id", "label-a").text == "bicubic"
    assert driver.find_element("id", "label-b").text == "tiny"
    loaded = v["loaded"]
    shot = screenshot(driver)
    select(driver, "model-b", "other")  # the picker: a second model on the right
    wait_for(driver, both + f" && v.loaded > {loaded}", "the other model's tiles")
    assert driver.find_element("id", "label-b").text == "other"
    assert not np.array_equal(screenshot(driver), shot)
    assert state(driver, ".failed") == 0


def test_strip_switches_images(driver, server):
    load(driver, server)
    buttons = driver.find_elements("css selector", "#strip button")
    assert len(buttons) == 2
    buttons[1].click()
    wait_for(driver, "v.image === 1", "the second image")
    assert "small.png" in driver.title


def test_phone_sized_window(server):
    drv = start_browser(390, 700, scale=3, mobile=True)
    try:
        load(drv, server)
        assert drv.execute_script("return document.documentElement.scrollWidth") <= 390
        drv.execute_script("window.__liifView.zoomTo(6); window.__liifView.settleNow()")
        wait_for(drv, "v.S === 6 && v.drawn.b.wanted > 0 && v.drawn.b.done === v.drawn.b.wanted",
                 "tiles on a phone")
        assert drv.execute_script("return document.getElementById('canvas').width") == 390 * 3
    finally:
        drv.quit()


def test_export_writes_the_whole_image_and_asks_before_replacing(driver, server):
    load(driver, server)
    select(driver, "model-a", "off")
    driver.execute_script("window.__liifView.zoomTo(2); window.__liifView.settleNow()")
    wait_for(driver, "v.S === 2", "x2")
    dst = server.session.images[0].path.with_name("photo_x2.png")
    assert not dst.exists()
    driver.find_element("id", "export").click()
    wait_for(driver, "v.job && v.job.state === 'done'", "the export")
    assert Image.open(dst).size == (240, 180)
    dst.write_bytes(b"mine")
    driver.find_element("id", "export").click()
    alert = _wait_alert(driver)
    assert "photo_x2.png" in alert.text and "Replace" in alert.text
    alert.dismiss()  # no: the file stays
    time.sleep(1)
    assert dst.read_bytes() == b"mine"
    driver.find_element("id", "export").click()
    _wait_alert(driver).accept()
    wait_for(driver, "v.job && v.job.id === 2 && v.job.state === 'done'", "the second export")
    assert Image.open(dst).size == (240, 180)
    dst.unlink()


def _wait_alert(drv):
    from selenium.common.exceptions import NoAlertPresentException

    t0 = time.monotonic()
    while time.monotonic() - t0 < WAIT_S:
        try:
            return drv.switch_to.alert
        except NoAlertPresentException:
            time.sleep(0.1)
    raise AssertionError("no confirmation asked")
