"""The web UI in a real headless browser (Debian chromium + chromedriver, driven by selenium).

Loads the page from `qleap serve`, picks the model, sends a chat message, checks that the reply
arrives in several pieces (streamed) and equals the API's greedy answer to the same request, checks
the models and monitor tabs, and saves screenshots to build/test-artifacts/ (or
$QLEAP_TEST_ARTIFACTS). Browser paths: $QLEAP_CHROMIUM / $QLEAP_CHROMEDRIVER, else the Debian
packages' /usr/bin/chromium and /usr/bin/chromedriver; the test skips only when those are absent.
"""
import json
import os
import pathlib
import shutil
import urllib.request

import pytest

from server_util import ROOT, Server

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # the browser tests skip; the HTTP-level test below still runs
    webdriver = None

MODEL = "stories260K:latest"


def settle(b, timeout=20):
    """A wait that finds elements again when the page redrew them (the UI re-renders its tables
    while it polls, so an element found a moment ago can go stale)."""
    return WebDriverWait(b, timeout, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))


def click_row_button(b, sel, label):
    def click(d):
        d.find_element(By.CSS_SELECTOR, sel).find_element(By.XPATH, f".//button[text()='{label}']").click()
        return True
    settle(b).until(click)
N_PREDICT = 300


def browser_paths():
    chromium = os.environ.get("QLEAP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = os.environ.get("QLEAP_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(driver)):
        pytest.skip(f"chromium / chromedriver not found ({chromium}, {driver}): "
                    "apt-get install chromium chromium-driver, or set QLEAP_CHROMIUM / QLEAP_CHROMEDRIVER")
    return chromium, driver


def artifacts_dir():
    d = pathlib.Path(os.environ.get("QLEAP_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def server(qleap_bin, test_models):
    s = Server(qleap_bin, test_models, ["--parallel", "2", "--allow-local-pull"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    if webdriver is None:
        pytest.skip("selenium is not installed (pip install -r tools/requirements-test.txt)")
    chromium, driver = browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    # An explicit driver path: selenium never tries to download one.
    b = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    b.set_page_load_timeout(30)
    yield b
    b.quit()


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_page_is_self_contained(server):
    req = urllib.request.Request(server.url + "/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req) as r:
        html = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
    assert "/ui/app.js" in html and "/ui/style.css" in html
    # Works offline: nothing is loaded from another origin.
    assert "http://" not in html and "https://" not in html
    for asset in ("app.js", "style.css"):
        with urllib.request.urlopen(server.url + "/ui/" + asset) as r:
            body = r.read().decode()
        assert "https://" not in body and "http://" not in body
        # Served bytes are the source file's bytes (embedded at build time).
        assert body == (ROOT / "src" / "server" / "webui" / asset).read_text()


def test_chat_streams_and_matches_api(server, browser):
    b = browser
    b.get(server.url + "/")
    wait = settle(b, 30)
    wait.until(lambda d: any(o.get_attribute("value") == MODEL
                             for o in d.find_elements(By.CSS_SELECTOR, "#model-select option")))
    Select(b.find_element(By.ID, "model-select")).select_by_value(MODEL)
    for field, value in (("temperature", "0"), ("num-predict", str(N_PREDICT))):
        e = b.find_element(By.ID, field)
        e.clear()
        e.send_keys(value)

    # Record the reply's length at every DOM change, to see it grow while tokens stream in.
    b.execute_script("""
        window.__lengths = [];
        new MutationObserver(() => {
          const c = document.querySelector('.msg.assistant .content');
          if (c) window.__lengths.push(c.textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    """)
    prompt = "Once upon a time"
    b.find_element(By.ID, "chat-input").send_keys(prompt)
    b.find_element(By.ID, "send").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".msg.assistant[data-done]")))
    box = b.find_element(By.CSS_SELECTOR, ".msg.assistant")
    assert box.get_attribute("data-done") == "true", box.text
    text = b.execute_script("return document.querySelector('.msg.assistant .content').textContent")
    lengths = b.execute_script("return window.__lengths")
    grew = sorted(set(x for x in lengths if 0 < x < len(text)))
    assert len(grew) >= 2, f"reply did not stream (lengths seen: {lengths[:20]})"
    assert text.strip(), "empty reply"
    meta = b.find_element(By.CSS_SELECTOR, ".msg.assistant .meta").text
    assert "tokens" in meta and "tok/s" in meta

    # The same request through the API (greedy): the UI shows exactly that text.
    ref = post(server.url + "/api/chat", {"model": MODEL, "stream": False,
                                         "messages": [{"role": "user", "content": prompt}],
                                         "options": {"temperature": 0, "num_predict": N_PREDICT}})
    assert text == ref["message"]["content"]
    b.save_screenshot(str(artifacts_dir() / "webui.png"))


def test_models_tab_lists_and_shows_metadata(server, browser):
    b = browser
    b.find_element(By.ID, "tab-models").click()
    wait = settle(b, 20)
    sel = f'#model-table tr[data-model="{MODEL}"]'
    text = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, sel).text)
    assert "F32" in text and "llama" in text
    click_row_button(b, sel, "Show")
    wait.until(lambda d: "llama.block_count = 5" in d.find_element(By.ID, "details-body").text)
    b.save_screenshot(str(artifacts_dir() / "webui-models.png"))
    b.find_element(By.ID, "details-close").click()


def test_monitor_tab_shows_live_status(server, browser):
    b = browser
    b.find_element(By.ID, "tab-monitor").click()
    wait = settle(b, 20)
    text = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'#loaded-table tr[data-model="{MODEL}"]').text)
    assert "f16" in text or "q8_0" in text
    wait.until(lambda d: d.find_element(By.ID, "m-requests").text not in ("", "–", "0"))
    assert int(b.find_element(By.ID, "m-requests").text) >= 2
    gen, _prompt = b.find_element(By.ID, "m-tokens").text.split(" / ")
    assert int(gen) >= N_PREDICT
    # The page keeps polling: the timestamp changes without a reload.
    first = b.find_element(By.ID, "monitor-updated").text
    wait.until(lambda d: d.find_element(By.ID, "monitor-updated").text != first)
    b.save_screenshot(str(artifacts_dir() / "webui-monitor.png"))


def test_unload_and_load_from_models_tab(server, browser):
    b = browser
    b.find_element(By.ID, "tab-models").click()
    wait = settle(b, 20)
    sel = f'#model-table tr[data-model="{MODEL}"]'
    wait.until(lambda d: "loaded" in d.find_element(By.CSS_SELECTOR, sel).text)
    click_row_button(b, sel, "Unload")
    wait.until(lambda d: "on disk" in d.find_element(By.CSS_SELECTOR, sel).text)
    with urllib.request.urlopen(server.url + "/api/ps") as r:
        assert json.loads(r.read())["models"] == []
    click_row_button(b, sel, "Load")
    wait.until(lambda d: "loaded" in d.find_element(By.CSS_SELECTOR, sel).text.split())
    with urllib.request.urlopen(server.url + "/api/ps") as r:
        assert [m["name"] for m in json.loads(r.read())["models"]] == [MODEL]


def test_pull_with_progress_then_delete(server, browser, test_models, tmp_path):
    b = browser
    src = tmp_path / "webui-pulled.gguf"
    shutil.copy(test_models / "stories260K.gguf", src)
    b.find_element(By.ID, "tab-models").click()
    wait = settle(b, 30)
    b.find_element(By.ID, "pull-name").send_keys(str(src))
    b.find_element(By.ID, "pull").click()
    # A local path is imported into the store, reporting progress like a download.
    wait.until(lambda d: d.find_element(By.ID, "pull-text").text.startswith("success"))
    assert b.find_element(By.ID, "pull-bar").get_attribute("style").find("100%") >= 0
    sel = '#model-table tr[data-model="webui-pulled:latest"]'
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, sel)))
    # Let the bar's width transition finish before the screenshot.
    wait.until(lambda d: d.execute_script(
        "const b = document.getElementById('pull-bar'); return b.offsetWidth >= b.parentElement.clientWidth - 1"))
    b.save_screenshot(str(artifacts_dir() / "webui-pull.png"))
    click_row_button(b, sel, "Delete")
    wait.until(EC.alert_is_present())
    b.switch_to.alert.accept()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, sel))
    with urllib.request.urlopen(server.url + "/api/tags") as r:
        names = [m["name"] for m in json.loads(r.read())["models"]]
    assert "webui-pulled:latest" not in names and MODEL in names
