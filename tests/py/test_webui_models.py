"""The web UI's Models and Monitor tabs in a headless browser: the store's models (show, unload,
load, pull a local file, delete), Hugging Face search through the server against a local stand-in
Hub (files, sizes, the planner's verdict, pull with progress, a clear message when the Hub cannot be
reached), and the live engine figures of a dense model and of a MoE model with an expert cache.
Helpers in webui_util.py; the Hub stand-in in hf_standin.py."""
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from server_util import ROOT, Server
from test_webui_api import STORIES_FILE, STORIES_REPO, make_hub, start_server
from webui_util import emulate, open_ui, screenshot, settle, start_browser

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
except ImportError:
    pass

MODEL = "stories260K:latest"


@pytest.fixture(scope="module")
def hub(test_models, tmp_path_factory):
    h, stories, _ = make_hub(test_models, tmp_path_factory.mktemp("hub"), delay=0.02)
    h.stories = stories
    yield h
    h.stop()


@pytest.fixture(scope="module")
def server(qleap_bin, test_models, hub):
    s = start_server(qleap_bin, test_models, hub.url, extra=("--parallel", "2", "--allow-local-pull"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    b = start_browser()
    yield b
    b.quit()


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def click_row_button(b, sel, label):
    def click(d):
        d.find_element(By.CSS_SELECTOR, sel).find_element(By.XPATH, f".//button[text()='{label}']").click()
        return True
    settle(b).until(click)


def test_models_tab_lists_and_shows_metadata(server, browser):
    b = browser
    open_ui(b, server.url, "/#models")
    sel = f'#model-table tr[data-model="{MODEL}"]'
    text = settle(b).until(lambda d: d.find_element(By.CSS_SELECTOR, sel).text)
    assert "F32" in text and "llama" in text
    click_row_button(b, sel, "Show")
    settle(b).until(lambda d: "llama.block_count = 5" in d.find_element(By.ID, "details-body").text)
    b.find_element(By.ID, "details-close").click()


def test_unload_and_load(server, browser):
    b = browser
    post(server.url + "/api/generate", {"model": MODEL, "prompt": "", "stream": False})
    b.find_element(By.ID, "refresh-models").click()
    sel = f'#model-table tr[data-model="{MODEL}"]'
    settle(b).until(lambda d: "loaded" in d.find_element(By.CSS_SELECTOR, sel).text.split())
    click_row_button(b, sel, "Unload")
    settle(b).until(lambda d: "on disk" in d.find_element(By.CSS_SELECTOR, sel).text)
    assert get(server.url + "/api/ps")["models"] == []
    click_row_button(b, sel, "Load")
    settle(b).until(lambda d: "loaded" in d.find_element(By.CSS_SELECTOR, sel).text.split())
    assert [m["name"] for m in get(server.url + "/api/ps")["models"]] == [MODEL]


def test_pull_local_path_with_progress_then_delete(server, browser, test_models, tmp_path):
    b = browser
    src = tmp_path / "webui-pulled.gguf"
    shutil.copy(test_models / "stories260K.gguf", src)
    b.find_element(By.ID, "pull-name").send_keys(str(src))
    b.find_element(By.ID, "pull").click()
    settle(b, 30).until(lambda d: d.find_element(By.ID, "pull-text").text.startswith("success"))
    assert "100%" in b.find_element(By.ID, "pull-bar").get_attribute("style")
    sel = '#model-table tr[data-model="webui-pulled:latest"]'
    settle(b).until(EC.presence_of_element_located((By.CSS_SELECTOR, sel)))
    click_row_button(b, sel, "Delete")
    settle(b).until(EC.alert_is_present())
    b.switch_to.alert.accept()
    settle(b).until(lambda d: not d.find_elements(By.CSS_SELECTOR, sel))
    names = [m["name"] for m in get(server.url + "/api/tags")["models"]]
    assert "webui-pulled:latest" not in names and MODEL in names


def repo_card(b, repo):
    return b.find_element(By.CSS_SELECTOR, f'#hf-results .hf-repo[data-repo="{repo}"]')


def file_row(b, repo, name):
    return repo_card(b, repo).find_element(By.CSS_SELECTOR, f'tr[data-file="{name}"]')


def test_search_hugging_face_and_pull_with_progress(server, browser, hub):
    b = browser
    open_ui(b, server.url)
    # Ctrl+K, a query, and the palette's "Search Hugging Face" entry.
    b.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, "k")
    field = settle(b).until(lambda d: d.find_element(By.ID, "palette-input") if d.find_element(By.ID, "palette").is_displayed() else None)
    field.send_keys("qleap-test")
    settle(b).until(lambda d: any("Search Hugging Face" in li.text for li in d.find_elements(By.CSS_SELECTOR, "#palette-results li")))
    while "Search Hugging Face" not in b.find_element(By.CSS_SELECTOR, "#palette-results li.sel").text:
        field.send_keys(Keys.ARROW_DOWN)
    field.send_keys(Keys.ENTER)
    settle(b).until(lambda d: d.find_element(By.ID, "models").is_displayed())
    settle(b, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#hf-results .hf-repo"))
    assert b.find_element(By.ID, "hf-query").get_attribute("value") == "qleap-test"
    api = get(server.url + "/api/qleap/search?q=qleap-test")
    shown = [e.get_attribute("data-repo") for e in b.find_elements(By.CSS_SELECTOR, "#hf-results .hf-repo")]
    assert shown == [m["repo"] for m in api["models"]]

    row = file_row(b, STORIES_REPO, STORIES_FILE)
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[1] == "F32" and cells[2] == "1.13 MiB" and cells[3].startswith("fits")
    assert "2048 ctx" in cells[3] and "f16 KV" in cells[3]
    giant = file_row(b, "qleap-test/Giant-7T-GGUF", "giant-F32.gguf")
    assert "too large" in giant.text and "TiB" in giant.text
    # Pulling what does not fit asks first; declining pulls nothing.
    giant.find_element(By.CSS_SELECTOR, "button.pull-file").click()
    settle(b).until(EC.alert_is_present())
    assert "does not fit" in b.switch_to.alert.text
    b.switch_to.alert.dismiss()
    assert not [p for p, _ in hub.requests if "giant" in p and "resolve" in p and _ is None]
    split = file_row(b, "qleap-test/stories260K-split-GGUF", "stories260K-F32-00001-of-00002.gguf")
    assert "split into 2 parts" in split.text and split.find_element(By.CSS_SELECTOR, "button").get_attribute("disabled")
    assert "unknown" in file_row(b, "qleap-test/broken-GGUF", "broken-Q4_K_M.gguf").text
    assert "no .gguf file" in repo_card(b, "qleap-test/no-gguf").text
    screenshot(b, "webui-search", docs=True)
    emulate(b, 360, 740)
    try:  # at phone width the file tables scroll inside their box; the page does not
        time.sleep(0.2)
        assert b.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 0
    finally:
        emulate(b)

    # Pull: the bar moves through intermediate values, then the model is in the store.
    b.execute_script("""
        window.__pulls = [];
        new MutationObserver(() => window.__pulls.push(document.getElementById('pull-text').textContent))
          .observe(document.getElementById('pull-text'), {childList: true, characterData: true, subtree: true});
    """)
    row.find_element(By.CSS_SELECTOR, "button.pull-file").click()
    settle(b, 60).until(lambda d: d.find_element(By.ID, "pull-text").text.startswith("success"))
    seen = b.execute_script("return window.__pulls")
    pcts = sorted({int(x) for t in seen for x in __import__("re").findall(r"\((\d+)%\)", t)})
    assert any(0 < p < 100 for p in pcts), seen
    store_name = "stories260K-F32:latest"
    settle(b).until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#model-table tr[data-model="{store_name}"]'))
    settle(b).until(lambda d: file_row(d, STORIES_REPO, STORIES_FILE).find_element(By.CSS_SELECTOR, "button").text == "Installed")
    assert (server.models / "stories260K-F32.gguf").read_bytes() == hub.stories
    click_row_button(b, f'#model-table tr[data-model="{store_name}"]', "Delete")
    settle(b).until(EC.alert_is_present())
    b.switch_to.alert.accept()
    settle(b).until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'#model-table tr[data-model="{store_name}"]'))
    settle(b).until(lambda d: file_row(d, STORIES_REPO, STORIES_FILE).find_element(By.CSS_SELECTOR, "button").text == "Pull")


def test_search_when_the_hub_is_unreachable(server, browser, hub):
    b = browser
    hub.stop()
    field = b.find_element(By.ID, "hf-query")
    field.clear()
    field.send_keys("llama", Keys.ENTER)
    err = settle(b, 30).until(lambda d: d.find_element(By.ID, "hf-error"))
    assert "cannot be reached" in err.text and hub.url.split("//")[1] in err.text
    assert "pull it by path" in err.text
    # The store's own models are still listed.
    assert b.find_elements(By.CSS_SELECTOR, f'#model-table tr[data-model="{MODEL}"]')


def status_model(url, name):
    (m,) = [x for x in get(url + "/api/qleap/status")["models"] if x["name"] == name]
    return m


def snapshot(b, name):
    """What a model's card shows, read in one go (the page redraws it every second)."""
    return b.execute_script("""
        const c = Array.from(document.querySelectorAll('#model-cards .model-card')).find((x) => x.dataset.model === arguments[0]);
        if (!c || !c.offsetParent) return null;
        const v = (k) => c.querySelector(`[data-k="${k}"]`).textContent;
        const canvas = c.querySelector('canvas.chart'), g = canvas.getContext('2d');
        const px = g.getImageData(0, 0, canvas.width, canvas.height).data;
        let drawn = 0;
        for (let i = 3; i < px.length; i += 4) if (px[i]) drawn++;
        return {badges: c.querySelector('.badges').textContent,
                slots: Array.from(c.querySelectorAll('.slot .slot-tokens')).map((e) => e.textContent),
                used: v('kv-used'), f16: v('kv-f16'), f16unit: v('kv-f16-unit'), decode: v('decode'),
                prefill: v('prefill'), hit: v('hit'), recall: v('recall'),
                moe: !c.querySelector('.moe-box').hidden, drawn};
    """, name)


def number(text):
    return float(text.replace(",", ""))


def test_monitor_shows_live_engine_figures(server, browser):
    b = browser
    post(server.url + "/api/generate", {"model": MODEL, "prompt": "Once upon a time", "stream": False,
                                        "options": {"temperature": 0, "num_predict": 200}})
    open_ui(b, server.url, "/#monitor")
    m = status_model(server.url, MODEL)
    tokens = [s["tokens"] for s in m["slots"]]
    assert max(tokens) >= 200
    want = [f"{t} / {m['context_length']}" for t in tokens]
    # The slots' token counts shown are the status's (no request runs meanwhile).
    snap = settle(b, 20).until(lambda d: (lambda s: s if s and s["slots"] == want else None)(snapshot(d, MODEL)))
    assert "KV f16" in snap["badges"]
    assert snap["used"] == snap["f16"] and snap["used"].endswith("KiB")  # an f16 cache: the same bytes
    assert number(snap["decode"]) > 0 and number(snap["prefill"]) > 0
    assert snap["hit"] == "n/a" and snap["recall"] == "n/a" and not snap["moe"]
    # It updates by itself: a new request shows up without a reload.
    first = b.find_element(By.ID, "monitor-updated").text
    settle(b).until(lambda d: d.find_element(By.ID, "monitor-updated").text != first)
    n = int(b.find_element(By.ID, "m-requests").text)
    post(server.url + "/api/generate", {"model": MODEL, "prompt": "The cat", "stream": False, "options": {"num_predict": 4}})
    settle(b).until(lambda d: int(d.find_element(By.ID, "m-requests").text) == n + 1)
    # The chart has been drawn (pixels, not an empty canvas).
    assert snapshot(b, MODEL)["drawn"] > 100


@pytest.fixture(scope="module")
def moe_server(qleap_bin, test_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("moe")
    r = subprocess.run([sys.executable, ROOT / "tools" / "make_random_model.py", d / "hf", "--hidden", "64", "--layers", "2",
                        "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--vocab", "512", "--experts", "8",
                        "--experts-used", "2"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([qleap_bin, "convert", d / "hf", d / "tinymoe.gguf", "--type", "Q8_0"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # Room for part of the 16 experts: some hits, some misses, and prefetches to check.
    s = Server(qleap_bin, test_models, ["--parallel", "1", "--expert-cache", "400K", "--expert-tier", "host", "--kv", "q8_0"])
    shutil.copy(d / "tinymoe.gguf", s.models / "tinymoe.gguf")
    yield s
    s.stop()


def test_monitor_shows_expert_cache_of_a_moe_model(moe_server, browser):
    b = browser
    name = "tinymoe:latest"
    # Experts reach the cache asynchronously (the host tier copies them on a worker thread): on a
    # busy machine the first request may find none there yet, so ask until some are.
    for _ in range(30):
        post(moe_server.url + "/api/generate", {"model": name, "prompt": "hello world", "raw": True, "stream": False,
                                                "options": {"temperature": 0, "num_predict": 64}})
        m = status_model(moe_server.url, name)
        if m["expert_cache_hit_rate"] > 0:
            break
    assert 0 < m["expert_cache_hit_rate"] < 1 and 0 < m["expert_prefetch_recall"] <= 1
    open_ui(b, moe_server.url, "/#monitor")
    hit, recall = f"{100 * m['expert_cache_hit_rate']:.1f} %", f"{100 * m['expert_prefetch_recall']:.1f} %"
    snap = settle(b, 20).until(lambda d: (lambda s: s if s and s["hit"] == hit else None)(snapshot(d, name)))
    assert snap["recall"] == recall and snap["moe"]
    assert b.find_element(By.ID, "m-experts").text == hit
    assert "KV q8_0" in snap["badges"]
    # q8_0 holds the same tokens in fewer bytes than f16: the two figures and the ratio say so.
    assert "smaller as q8_0" in snap["f16unit"]
    assert m["kv_bytes_used"] < m["kv_bytes_used_f16"]
    # A few seconds of requests, so that the charts have something to show.
    stop = threading.Event()

    def load():
        i = 0
        while not stop.is_set():
            post(moe_server.url + "/api/generate", {"model": name, "prompt": f"story {i}", "raw": True, "stream": False,
                                                    "options": {"temperature": 0.8, "num_predict": 400}})
            i += 1
    t = threading.Thread(target=load)
    t.start()
    try:
        settle(b, 30).until(lambda d: d.execute_script(
            "return document.querySelectorAll('#model-cards canvas.chart').length") == 2 and len(
            d.execute_script("return window.qleapUI.monitorHistory(arguments[0]).decode.filter((v) => v)", name)) >= 6)
    finally:
        stop.set()
        t.join()
    emulate(b, 1280, 780)
    time.sleep(1.2)  # a poll at the new size
    screenshot(b, "webui-monitor", docs=True)
    emulate(b)
    emulate(b, 360, 740)
    try:
        open_ui(b, moe_server.url, "/#monitor")
        settle(b, 20).until(lambda d: snapshot(d, name))
        assert b.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 0
    finally:
        emulate(b)
