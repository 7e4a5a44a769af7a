"""The browser page (``serve``'s ``/``) in headless Chromium, driven by Selenium: a fake
microphone plays a WAV, the page encodes it to Opus with WebCodecs, frames it in Ogg and talks
to a tiny Moshi server; the page must show that it is connected, has sent and received audio,
decoded and played some, shows the model's text and a round trip, with no console errors.
Skips when selenium, chromium or chromedriver is missing (``.ci/run`` installs them)."""

from __future__ import annotations

import os
import shutil
import time

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("sphn")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install 'selenium>=4')")

from helpers import ServerThread  # noqa: E402

# A page stuck in a loop hangs chromedriver's calls: fail instead (pytest-timeout).
pytestmark = pytest.mark.timeout(240)

TOKEN = "pagetoken"
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> tuple[str, str]:
    """-> (chromium binary, chromedriver) or pytest.skip with the reason."""
    browser = next((p for p in map(shutil.which, CHROMIUMS) if p), None)
    driver = shutil.which("chromedriver")
    if not browser:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    if not driver:
        pytest.skip("chromedriver is not installed (apt-get install chromium-driver)")
    return browser, driver


def chrome(mic_wav: str, size=(1000, 700)):
    """Headless Chromium whose microphone plays ``mic_wav`` (looped), console logs kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--disable-gpu", "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}",
                "--autoplay-policy=no-user-gesture-required", f"--window-size={size[0]},{size[1]}",
                "--disable-dev-shm-usage", "--mute-audio"):
        opts.add_argument(arg)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(driver))


def page_state(driver) -> dict:
    return driver.execute_script("""
        const s = document.getElementById('stats').dataset;
        const num = (v) => v === '' || v === undefined ? null : Number(v);
        const out = {};
        for (const k of Object.keys(s)) out[k] = num(s[k]);
        out.status = document.getElementById('status').dataset.state;
        out.rtt = num(document.getElementById('rtt').dataset.ms);
        out.text = document.getElementById('text').textContent;
        out.error = document.getElementById('error').textContent;
        out.notice = document.getElementById('notice').textContent;
        return out;""")


def converse(driver, page_url: str, timeout: float = 25.0, min_frames: int = 25) -> dict:
    """Opens the page, clicks Start, waits until the conversation has gone on for
    ``min_frames`` user frames with every sign of life (or ``timeout``); -> the page state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page_url)
    WebDriverWait(driver, 10).until(lambda d: page_state(d)["status"] != "loading")
    state = page_state(driver)
    assert state["status"] == "idle", state
    driver.find_element(By.ID, "toggle").click()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = page_state(driver)
        if state["status"] in ("error", "closed", "stopped"):
            break
        if (state["status"] == "connected" and state["sentFrames"] >= min_frames
                and state["playedSamples"] > 0 and state["textPieces"] > 0 and state["rtt"]):
            break
        time.sleep(0.25)
    return state


def severe_logs(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    find_browser()  # skip before building a model
    from audiolm_jax.serve.server import SamplingOptions, ServeOptions, build_server
    from helpers import tiny_moshi_workdir

    workdir, user_wav, _ = tiny_moshi_workdir(tmp_path_factory.mktemp("browser"))
    options = ServeOptions(max_sessions=1, auth_token=TOKEN,
                           sampling=SamplingOptions(text_temperature=2.0, text_top_k=0))
    t = ServerThread(build_server(workdir, options))
    yield t, user_wav
    t.stop()


@pytest.fixture(scope="module")
def driver(served):
    d = chrome(served[1])
    yield d
    d.quit()


def test_page_converses(served, driver):
    from selenium.webdriver.common.by import By

    server, _ = served
    state = converse(driver, server.http_url(f"/?token={TOKEN}&text_top_k=0"))
    assert not state["notice"], state
    assert not state["error"] and state["jsErrors"] == 0, state
    assert state["status"] == "connected", state
    assert state["sentFrames"] >= 25 and state["sentBytes"] > 0, state
    assert state["recvPages"] > 0 and state["recvBytes"] > 0, state
    assert state["decodedSamples"] > 0 and state["playedSamples"] > 0, state
    assert state["textPieces"] > 0 and state["text"].strip(), state
    assert state["rtt"] is not None and 0 < state["rtt"] < 5000, state
    driver.find_element(By.ID, "toggle").click()
    assert page_state(driver)["status"] == "stopped"
    server.wait_idle()
    assert severe_logs(driver) == []


def test_page_shows_a_refused_connection(served, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, _ = served
    driver.get(server.http_url("/?token=wrong"))
    WebDriverWait(driver, 10).until(lambda d: page_state(d)["status"] == "idle")
    driver.find_element(By.ID, "toggle").click()
    WebDriverWait(driver, 10).until(lambda d: page_state(d)["status"] == "error")
    assert "before the handshake" in page_state(driver)["error"]
    driver.get_log("browser")  # (Chromium logs the refused websocket itself)


def test_page_explains_missing_webcodecs(served, driver):
    server, _ = served
    hide = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                  {"source": "delete window.AudioEncoder; delete window.AudioDecoder;"})
    try:
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(server.http_url(f"/?token={TOKEN}"))
        WebDriverWait(driver, 10).until(lambda d: page_state(d)["status"] != "loading")
        state = page_state(driver)
        assert state["status"] == "unsupported", state
        assert "WebCodecs" in state["notice"], state
        assert not driver.find_element("id", "toggle").is_enabled()
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                               {"identifier": hide["identifier"]})
    assert severe_logs(driver) == []
