"""Helpers for the web UI browser tests (test_webui.py, test_webui_models.py): a headless Debian
Chromium driven by selenium (the driver path is always given, so selenium never downloads one),
waits that survive re-rendered elements, reading the UI's IndexedDB, and screenshots.

Screenshots go to build/test-artifacts/ ($QLEAP_TEST_ARTIFACTS); with QLEAP_UPDATE_DOCS_IMG=1 the
ones named for the documentation are also written to docs/img/ (docs/webui.md shows them)."""
import os
import pathlib
import shutil

import pytest

from server_util import ROOT

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the browser tests skip; the HTTP-level tests still run
    webdriver = None


def browser_paths():
    chromium = os.environ.get("QLEAP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = os.environ.get("QLEAP_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(driver)):
        pytest.skip(f"chromium / chromedriver not found ({chromium}, {driver}): "
                    "apt-get install chromium chromium-driver, or set QLEAP_CHROMIUM / QLEAP_CHROMEDRIVER")
    return chromium, driver


def start_browser(width=1280, height=860):
    if webdriver is None:
        pytest.skip("selenium is not installed (pip install -r tools/requirements-test.txt)")
    chromium, driver = browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
              "--force-device-scale-factor=1", "--hide-scrollbars", "--lang=en-US"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    b = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    b.set_page_load_timeout(30)
    b.set_script_timeout(30)
    return b


def settle(b, timeout=20):
    """A wait that finds elements again when the page redrew them."""
    return WebDriverWait(b, timeout, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))


def open_ui(b, url, path="/"):
    b.get(url + path)
    settle(b, 30).until(lambda d: d.execute_script("return document.body.dataset.ready") in ("true", "error"))
    assert b.execute_script("return document.body.dataset.ready") == "true", console_errors(b)


def reset_ui(b, url):
    """Forgets every workspace and conversation of this origin, then opens the UI afresh."""
    b.get(url + "/health")  # same origin, no UI holding the database open
    b.execute_async_script("""
        const done = arguments[arguments.length - 1];
        localStorage.clear();
        const r = indexedDB.deleteDatabase("qleap");
        r.onsuccess = r.onerror = r.onblocked = () => done(true);
    """)
    open_ui(b, url)


def console_errors(b):
    try:
        return [l for l in b.get_log("browser") if l.get("level") == "SEVERE"]
    except Exception:  # noqa: BLE001 - logging is best effort
        return []


def idb(b):
    """Everything the UI stored: {"workspaces": [...], "conversations": [...]}."""
    return b.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const r = indexedDB.open("qleap");
        r.onerror = () => done({error: String(r.error)});
        r.onsuccess = () => {
          const db = r.result, out = {};
          const tx = db.transaction(["workspaces", "conversations"]);
          tx.objectStore("workspaces").getAll().onsuccess = (e) => { out.workspaces = e.target.result; };
          tx.objectStore("conversations").getAll().onsuccess = (e) => { out.conversations = e.target.result; };
          tx.oncomplete = () => { db.close(); done(out); };
        };
    """)


def spy_chat_requests(b):
    """Records the JSON body of every /api/chat request in window.__chatBodies."""
    b.execute_script("""
        if (!window.__chatBodies) {
          window.__chatBodies = [];
          const orig = window.fetch;
          window.fetch = (url, init) => {
            if (String(url).endsWith("/api/chat") && init && init.body) window.__chatBodies.push(JSON.parse(init.body));
            return orig(url, init);
          };
        }
    """)


def artifacts_dir():
    d = pathlib.Path(os.environ.get("QLEAP_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def screenshot(b, name, docs=False):
    """Saves name.png to the artifacts; docs=True: also docs/img/ when QLEAP_UPDATE_DOCS_IMG=1."""
    path = artifacts_dir() / (name + ".png")
    b.save_screenshot(str(path))
    if docs and os.environ.get("QLEAP_UPDATE_DOCS_IMG") == "1":
        dst = ROOT / "docs" / "img"
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dst / (name + ".png"))
    return path


def emulate(b, width=None, height=None, dark=None):
    """Device size (None: back to the window) and colour scheme through the DevTools protocol."""
    if width is None:
        b.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    else:
        b.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 800})
    features = [] if dark is None else [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]
    b.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})
