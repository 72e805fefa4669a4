"""A real browser for the phone page's tests and benchmark: Debian's chromium driven by selenium
through chromium-driver, and a static server for app/dist on 127.0.0.1 that can be stopped
(offline) and started again on the same port.

    with StaticServer(dist) as server, chromium() as driver:
        driver.get(server.url)
        answer = answer_photos(driver, [photo])

Nothing here is needed to build or use the page; selenium is imported only when a browser starts.
"""
from __future__ import annotations

import base64
import functools
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mushroom.errors import UserError

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)
INSTALL_HINT = "apt-get install -y chromium chromium-driver (and pip install selenium, in requirements.txt)"


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    browser = next((p for p in CHROMIUM if Path(p).is_file()), None) or shutil.which("chromium")
    driver = next((p for p in CHROMEDRIVER if Path(p).is_file()), None) or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class _Quiet(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".webmanifest": "application/manifest+json", ".js": "text/javascript"}

    def log_message(self, *args):  # the tests' output stays readable
        pass


class StaticServer:
    """dist/ over HTTP on 127.0.0.1 (a secure context, so the service worker registers). stop()
    closes the socket (the page is then offline); start() serves again on the same port, so the
    page's origin, and with it its service worker and cache, stay the same."""

    def __init__(self, root: str | os.PathLike, port: int = 0):
        self.root = str(root)
        self.port = port or _free_port()
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "StaticServer":
        handler = functools.partial(_Quiet, directory=self.root)
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def chromium(width: int = 412, height: int = 915):
    """A headless chromium (selenium WebDriver) with a phone-sized window."""
    found = find_browser()
    if found is None:
        raise UserError(f"chromium and chromedriver are not installed: {INSTALL_HINT}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout: float = 90.0, what: str = "the page"):
    """Poll a JavaScript expression until it is truthy; its value. A page error ends the wait."""
    from selenium.common.exceptions import JavascriptException, WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = driver.execute_script(f"return ({script});")
            error = None if value else driver.execute_script("return window.mushroomApp && window.mushroomApp.error;")
        except (JavascriptException, WebDriverException) as exc:
            # the page reloading itself (the first visit reloads once to become cross-origin
            # isolated) destroys the script's context: poll again
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: `{script}` failed after {timeout:.0f} s: {exc}") from exc
            value = error = None
        if value:
            return value
        if error:
            raise AssertionError(f"{what} failed: {error}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: `{script}` not true after {timeout:.0f} s")
        time.sleep(0.05)


def load_page(driver, url: str, timeout: float = 120.0) -> dict:
    """Open the page (on a first visit it reloads itself once, cross-origin isolated by its service
    worker) and wait until the model is loaded; the runtime it chose (window.mushroomApp.engine:
    build 'threaded', 'simd' or 'compat', threads, isolated, relaxed_simd, cores)."""
    driver.get(url)
    wait_for(driver, "window.mushroomApp && window.mushroomApp.ready", timeout, "loading the model")
    return driver.execute_script("return window.mushroomApp.engine;")


def answer_photos(driver, photos, new_find: bool = True, timeout: float = 60.0) -> dict:
    """Give the page photos of one mushroom through its file input, as a person would ("Choose
    photos" starts a new find, "Take a photo" adds one to the current find); the page's answer
    (predict.py's JSON keys) with its error message, if any, under "error"."""
    from selenium.webdriver.common.by import By

    before = driver.execute_script("return window.mushroomApp.answered || 0;")
    box = driver.find_element(By.ID, "files" if new_find else "camera")
    box.send_keys("\n".join(str(Path(p).resolve()) for p in photos))
    wait_for(driver, f"(window.mushroomApp.answered || 0) > {before}", timeout, "answering")
    return driver.execute_script(
        "const a = window.mushroomApp; const e = document.getElementById('error');"
        "return Object.assign({}, a.lastAnswer || {}, {error: e.hidden ? null : e.textContent});")


def screenshot_360(driver, url, photos, path: str | os.PathLike, height: int = 780) -> dict:
    """Emulate a 360 x `height` phone (device pixel ratio 2), answer the photos, save a screenshot
    of the whole page to `path`; the page's widest content and whether the verdict shows."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 360, "height": height, "deviceScaleFactor": 2, "mobile": True})
    load_page(driver, url)
    answer_photos(driver, photos)
    width = driver.execute_script("return document.documentElement.scrollWidth")
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 360, "height": int(full), "deviceScaleFactor": 2, "mobile": True})
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    visible = driver.execute_script("return !document.getElementById('answer').hidden")
    return {"path": path, "scroll_width": width, "verdict_visible": visible}
