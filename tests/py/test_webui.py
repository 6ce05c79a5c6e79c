"""The web UI's chat in a real headless browser (Debian chromium + chromedriver through selenium):
streamed answers that match the API, conversations kept in IndexedDB across reloads (rename,
delete, export, import), regenerate, edit and resend, stop with Esc, Markdown / code / math
rendering that streams without rebuilding finished blocks, text that is never HTML, workspaces with
their own settings, keyboard shortcuts, a 360 px wide screen and dark mode. The Models and Monitor
tabs are in test_webui_models.py; helpers in webui_util.py."""
import json
import re
import time
import urllib.request

import pytest

from server_util import ROOT, Server
from webui_util import (emulate, idb, open_ui, reset_ui, screenshot, settle, spy_chat_requests, start_browser)

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select
except ImportError:
    pass

MODEL = "stories260K:latest"
N_PREDICT = 300
WEBUI = ROOT / "src" / "server" / "webui"
FIXTURE = ROOT / "tests" / "py" / "fixtures" / "webui" / "conversations.json"


@pytest.fixture(scope="module")
def server(qleap_bin, test_models):
    s = Server(qleap_bin, test_models, ["--parallel", "2", "--allow-local-pull"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    b = start_browser()
    yield b
    b.quit()


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def greedy(server, messages, n):
    r = post(server.url + "/api/chat", {"model": MODEL, "stream": False, "messages": messages,
                                        "options": {"temperature": 0, "num_predict": n}})
    return r["message"]["content"]


def words(s):
    return " ".join(s.split())


def ws_dialog(b, new=False, **fields):
    """Opens the workspace dialog (settings, or a new workspace), fills fields, saves."""
    b.find_element(By.ID, "ws-new" if new else "ws-settings").click()
    settle(b).until(lambda d: d.find_element(By.ID, "ws-dialog").get_attribute("open") is not None)
    for key, value in fields.items():
        e = b.find_element(By.ID, "ws-" + key.replace("_", "-"))
        if e.tag_name == "select":
            Select(e).select_by_value(value)
        else:
            e.clear()
            e.send_keys(str(value))
    b.find_element(By.ID, "ws-save").click()
    settle(b).until(lambda d: d.find_element(By.ID, "ws-dialog").get_attribute("open") is None)


def send(b, text):
    box = b.find_element(By.ID, "chat-input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def wait_answers(b, n, timeout=60):
    settle(b, timeout).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done]")) == n
                             and not d.find_elements(By.CSS_SELECTOR, ".msg.streaming"))


def sidebar_titles(b):
    return [e.text for e in b.find_elements(By.CSS_SELECTOR, "#conv-list .conv-title")]


def open_conv(b, title):
    settle(b).until(lambda d: title in sidebar_titles(d))
    for li in b.find_elements(By.CSS_SELECTOR, "#conv-list .conv"):
        if li.find_element(By.CSS_SELECTOR, ".conv-title").text == title:
            li.find_element(By.CSS_SELECTOR, ".conv-open").click()
            break
    settle(b).until(lambda d: d.find_element(By.ID, "conv-title").text == title)


def import_file(b, path):
    b.find_element(By.ID, "import-file").send_keys(str(path))


def test_page_is_self_contained(server):
    req = urllib.request.Request(server.url + "/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req) as r:
        html = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
    assert 'src="/ui/app.js"' in html and "/ui/style.css" in html
    assets = sorted(p.name for p in WEBUI.iterdir())
    assert len(assets) >= 10
    for asset in assets:
        with urllib.request.urlopen(server.url + "/ui/" + asset) as r:
            body = r.read().decode()
        # Served bytes are the source file's bytes (embedded at build time).
        assert body == (WEBUI / asset).read_text(), asset
        # Nothing is loaded from another origin (the MathML namespace is a name, not a fetch).
        body = body.replace("http://www.w3.org/1998/Math/MathML", "")
        assert "http://" not in body and "https://" not in body, asset
        # Text never goes in as markup.
        assert not re.search(r"\.(inner|outer)HTML\s*\+?=|insertAdjacentHTML|document\.write|\beval\(", body), asset


def test_chat_streams_renders_and_survives_reload(server, browser):
    b = browser
    reset_ui(b, server.url)
    settle(b, 30).until(lambda d: MODEL in [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#model-select option")])
    ws_dialog(b, temperature=0, num_predict=N_PREDICT)
    # Record the reply's length at every DOM change, to see it grow while tokens stream in.
    b.execute_script("""
        window.__lengths = [];
        new MutationObserver(() => {
          const c = document.querySelector('.msg.assistant .content');
          if (c) window.__lengths.push(c.textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    """)
    prompt = "Once upon a time"
    send(b, prompt)
    wait_answers(b, 1)
    box = b.find_element(By.CSS_SELECTOR, ".msg.assistant")
    assert box.get_attribute("data-done") == "true", box.text
    rendered = b.execute_script("return document.querySelector('.msg.assistant .content').innerText")
    lengths = b.execute_script("return window.__lengths")
    grew = sorted(set(x for x in lengths if 0 < x < len(rendered)))
    assert len(grew) >= 2, f"reply did not stream (lengths seen: {lengths[:20]})"
    meta = b.find_element(By.CSS_SELECTOR, ".msg.assistant .meta").text
    assert "tokens" in meta and "tok/s" in meta and MODEL in meta

    # What the browser stored is exactly the API's greedy answer to the same request; the page
    # shows that text (rendered as Markdown: compare the words).
    ref = greedy(server, [{"role": "user", "content": prompt}], N_PREDICT)
    (conv,) = idb(b)["conversations"]
    assert conv["title"] == prompt and conv["model"] == MODEL
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][0]["content"] == prompt and conv["messages"][1]["content"] == ref
    assert words(rendered) == words(ref)
    screenshot(b, "webui-chat-stream")

    # A reload brings back the sidebar and the open conversation.
    open_ui(b, server.url)
    assert sidebar_titles(b) == [prompt]
    settle(b).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done]"))
    assert b.find_element(By.CSS_SELECTOR, ".msg.user .content").text == prompt
    assert words(b.execute_script("return document.querySelector('.msg.assistant .content').innerText")) == words(ref)
    assert b.find_element(By.ID, "conv-title").text == prompt


def test_regenerate_and_edit_then_resend(server, browser):
    b = browser
    spy_chat_requests(b)
    first = idb(b)["conversations"][0]["messages"][1]["content"]
    b.find_element(By.CSS_SELECTOR, ".msg.assistant .actions .regen").click()
    settle(b, 60).until(lambda d: len(d.execute_script("return window.__chatBodies")) == 1)
    wait_answers(b, 1)
    body = b.execute_script("return window.__chatBodies[0]")
    assert body["messages"] == [{"role": "user", "content": "Once upon a time"}]
    (conv,) = idb(b)["conversations"]
    assert len(conv["messages"]) == 2 and conv["messages"][1]["content"] == first  # greedy: the same answer

    b.find_element(By.CSS_SELECTOR, ".msg.user .actions .edit").click()
    edit = settle(b).until(lambda d: d.find_element(By.CSS_SELECTOR, ".msg.user textarea.edit-box"))
    edit.send_keys(Keys.CONTROL, "a")
    edit.send_keys("The little dog")
    edit.send_keys(Keys.ENTER)
    settle(b, 60).until(lambda d: len(d.execute_script("return window.__chatBodies")) == 2)
    wait_answers(b, 1)
    (conv,) = idb(b)["conversations"]
    assert [m["content"] for m in conv["messages"]][0] == "The little dog"
    assert conv["messages"][1]["content"] == greedy(server, [{"role": "user", "content": "The little dog"}], N_PREDICT)
    assert b.execute_script("return window.__chatBodies[1].messages") == [{"role": "user", "content": "The little dog"}]


def test_escape_stops_the_answer_mid_stream(server, browser):
    b = browser
    ws_dialog(b, num_predict=1900)
    with urllib.request.urlopen(server.url + "/metrics") as r:
        before = int(float(re.search(r"^qleap_requests_cancelled_total (\S+)$", r.read().decode(), re.M).group(1)))
    b.find_element(By.ID, "new-chat").click()
    # Press Esc (through the page's own key handler) as soon as the first words are on screen.
    b.execute_script("""
        window.__stoppedAt = null;
        new MutationObserver(() => {
          const c = document.querySelector('.msg.assistant.streaming .content');
          if (c && c.textContent.length > 0 && window.__stoppedAt === null) {
            window.__stoppedAt = c.textContent.length;
            document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}));
          }
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    """)
    send(b, "Once upon a time")
    wait_answers(b, 1)
    assert b.execute_script("return window.__stoppedAt") is not None
    assert "stopped" in b.find_element(By.CSS_SELECTOR, ".msg.assistant .meta").text
    conv = max(idb(b)["conversations"], key=lambda c: c["created"])
    partial = conv["messages"][1]["content"]
    assert conv["messages"][1]["meta"]["stopped"] is True
    full = greedy(server, [{"role": "user", "content": "Once upon a time"}], 1900)
    assert partial and full.startswith(partial) and len(partial) < len(full) // 2
    deadline = time.time() + 10
    while True:
        with urllib.request.urlopen(server.url + "/metrics") as r:
            after = int(float(re.search(r"^qleap_requests_cancelled_total (\S+)$", r.read().decode(), re.M).group(1)))
        if after > before or time.time() > deadline:
            break
        time.sleep(0.1)
    assert after == before + 1, "the server did not see the request cancelled"
    assert not b.find_element(By.ID, "send").get_attribute("disabled")
    ws_dialog(b, num_predict=N_PREDICT)


def test_rename_and_delete_conversations(server, browser):
    b = browser
    titles = sidebar_titles(b)
    assert len(titles) == 2
    li = b.find_elements(By.CSS_SELECTOR, "#conv-list .conv")[1]
    old = li.find_element(By.CSS_SELECTOR, ".conv-title").text
    li.find_element(By.CSS_SELECTOR, ".conv-rename").click()
    field = settle(b).until(lambda d: d.find_element(By.CSS_SELECTOR, "#conv-list .rename-input"))
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("Story time <b>bold?</b>")
    field.send_keys(Keys.ENTER)
    settle(b).until(lambda d: "Story time <b>bold?</b>" in sidebar_titles(d))
    assert sidebar_titles(b).count(old) == titles.count(old) - 1 and len(sidebar_titles(b)) == 2
    open_ui(b, server.url)
    assert "Story time <b>bold?</b>" in sidebar_titles(b)  # persisted, and shown as text
    assert not b.find_elements(By.CSS_SELECTOR, "#conv-list b")

    li = [x for x in b.find_elements(By.CSS_SELECTOR, "#conv-list .conv") if "Story time" in x.text][0]
    li.find_element(By.CSS_SELECTOR, ".conv-delete").click()
    settle(b).until(EC.alert_is_present())
    b.switch_to.alert.accept()
    settle(b).until(lambda d: len(sidebar_titles(d)) == 1)
    open_ui(b, server.url)
    assert len(sidebar_titles(b)) == 1 and len(idb(b)["conversations"]) == 1


SAMPLE = r"""# Heading one
## Heading two
Text with **bold**, *em*, `inline code`, ~~gone~~ and a [link](https://example.com/a_b).

- first
- second
  1. nested one
  2. nested two
- [x] done task

| left | right | mid |
|:-----|------:|:---:|
| a    | 1     | x   |
| b    | 22    | y   |

```python
def area(r):
    return 3.14159 * r ** 2  # circle
```

Inline math $E = mc^2$ and a price of $5 and $10.

$$\frac{1}{n}\sum_{i=1}^{n} x_i^2 = \sqrt{\alpha + \beta}$$

$\notacommand{x}$
"""


def test_markdown_code_and_math_render(server, browser):
    b = browser
    open_ui(b, server.url)
    b.execute_cdp_cmd("Browser.grantPermissions", {"origin": server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    info = b.execute_script("""
        const c = document.createElement('div');
        c.id = 'md-test';
        c.className = 'msg assistant';
        const inner = document.createElement('div');
        inner.className = 'content md';
        c.append(inner);
        document.getElementById('messages').append(c);
        window.qleapUI.renderMarkdown(arguments[0], inner);
        const q = (s) => inner.querySelectorAll(s);
        return {
          h1: q('h1').length, h2: q('h2').length, strong: q('strong')[0].textContent, em: q('em')[0].textContent,
          del: q('del').length, code: q('p code')[0].textContent,
          links: Array.from(q('a')).map((a) => [a.textContent, a.getAttribute('href'), a.rel]),
          ul: q('ul > li').length, ol: q('ul ol > li').length, task: q('li.task input[type=checkbox]:checked').length,
          th: Array.from(q('th')).map((t) => [t.textContent, t.style.textAlign]), td: q('td').length,
          codeLang: q('.code-block .lang')[0].textContent, codeText: q('.code-block pre')[0].textContent,
          kw: Array.from(q('.code-block .tok-k')).map((s) => s.textContent),
          comment: q('.code-block .tok-c')[0].textContent, num: q('.code-block .tok-n').length,
          inlineMath: q('p math:not([display])').length, displayMath: q('.math-display math[display=block]').length,
          frac: q('mfrac').length, sqrt: q('msqrt').length, sum: q('munderover').length,
          mathError: q('code.math-error')[0] && q('code.math-error')[0].textContent,
          price: Array.from(q('p')).some((p) => p.textContent.includes('a price of $5 and $10')),
        };
    """, SAMPLE)
    assert info["h1"] == 1 and info["h2"] == 1
    assert (info["strong"], info["em"], info["del"], info["code"]) == ("bold", "em", 1, "inline code")
    assert info["links"] == [["link", "https://example.com/a_b", "noopener noreferrer nofollow"]]
    assert (info["ul"], info["ol"], info["task"]) == (3, 2, 1)
    assert info["th"] == [["left", "left"], ["right", "right"], ["mid", "center"]] and info["td"] == 6
    assert info["codeLang"] == "python"
    assert info["codeText"] == "def area(r):\n    return 3.14159 * r ** 2  # circle"
    assert info["kw"] == ["def", "return"] and info["comment"] == "# circle" and info["num"] >= 2
    assert info["inlineMath"] == 1 and info["displayMath"] == 1
    assert (info["frac"], info["sqrt"], info["sum"]) == (1, 1, 1)
    assert info["mathError"] == r"$\notacommand{x}$"
    assert info["price"], "dollar amounts became math"
    # The code block's copy button puts the code (not the rendering) on the clipboard.
    b.find_element(By.CSS_SELECTOR, "#md-test .code-block .copy").click()
    settle(b).until(lambda d: d.find_element(By.CSS_SELECTOR, "#md-test .code-block .copy").text == "Copied")
    copied = b.execute_async_script("const done = arguments[0]; navigator.clipboard.readText().then(done, (e) => done('ERR ' + e));")
    assert copied == "def area(r):\n    return 3.14159 * r ** 2  # circle"
    b.execute_script("document.getElementById('md-test').remove()")


def test_streaming_render_keeps_finished_blocks(server, browser):
    b = browser
    r = b.execute_script("""
        const text = arguments[0];
        const root = document.createElement('div');
        const view = new window.qleapUI.MarkdownView(root);
        const removed = [];
        new MutationObserver((ms) => { for (const m of ms) for (const n of m.removedNodes) removed.push(n); })
          .observe(root, {childList: true});
        let firstHeading = null, kept = true, steps = 0;
        const finished = new Set();
        for (let i = 1; i <= text.length; i += 3) {
          view.render(text.slice(0, i));
          steps++;
          if (!firstHeading) firstHeading = root.querySelector('h1');
          // Every block but the last is complete: remember its node.
          for (const n of Array.from(root.children).slice(0, -1)) finished.add(n);
        }
        view.render(text);
        const whole = document.createElement('div');
        window.qleapUI.renderMarkdown(text, whole);
        return {
          steps, sameHeading: firstHeading === root.querySelector('h1'),
          finishedStillThere: Array.from(finished).filter((n) => !root.contains(n)).map((n) => n.tagName + ':' + n.textContent.slice(0, 30)),
          removedFinished: removed.filter((n) => finished.has(n)).length,
          equal: root.innerHTML === whole.innerHTML, blocks: root.children.length,
        };
    """, SAMPLE)
    assert r["steps"] > 100 and r["blocks"] >= 8
    assert r["sameHeading"]
    # Blocks already complete are never removed or replaced while later text streams in (only a
    # paragraph turning into a table or list while its first line arrives may change kind).
    assert r["removedFinished"] == 0, r["finishedStillThere"]
    assert r["equal"], "incremental rendering differs from rendering the whole text"


XSS = '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> [click](javascript:window.__xss=3) <b>bold</b>'


def test_user_and_model_text_is_never_html(server, browser):
    b = browser
    b.execute_script("window.__xss = undefined")
    b.find_element(By.ID, "new-chat").click()
    ws_dialog(b, num_predict=8)
    send(b, XSS)
    wait_answers(b, 1)
    user = b.find_element(By.CSS_SELECTOR, ".msg.user .content")
    assert user.text == XSS
    assert not b.find_elements(By.CSS_SELECTOR, "#messages img, #messages script, #messages .msg.user b, #messages a")
    assert XSS[:40] in " ".join(sidebar_titles(b))  # the title is text too
    # The same text, and tricks around the link rules, through the Markdown renderer (answers).
    links = b.execute_script("""
        const root = document.createElement('div');
        document.body.append(root);
        window.qleapUI.renderMarkdown(arguments[0] + '\\n\\n' + [
          '[a](JaVaScRiPt:window.__xss=4)', '[b]( javascript:window.__xss=5)', '[c](java\\tscript:window.__xss=6)',
          '<javascript:window.__xss=7>', '![d](javascript:window.__xss=8)', '[e](data:text/html,<script>1</script>)',
          '[f](vbscript:x)', '[ok](https://example.com)', '<mailto:a@example.com>', '<a href="javascript:1">x</a>',
        ].join(' '), root);
        const out = {links: Array.from(root.querySelectorAll('a')).map((a) => a.getAttribute('href')),
                     img: root.querySelectorAll('img, script, b, iframe').length, text: root.textContent};
        root.remove();
        return out;
    """, XSS)
    assert links["links"] == ["https://example.com", "mailto:a@example.com"]
    assert links["img"] == 0 and "<img src=x" in links["text"]
    # Imported files get the same treatment.
    b.execute_script("""
        const payload = JSON.stringify({conversations: [{title: '<img src=x onerror="window.__xss=9">',
          messages: [{role: 'user', content: '<img src=x onerror="window.__xss=10">'},
                     {role: 'assistant', content: '[x](javascript:window.__xss=11) <svg onload="window.__xss=12">'}]}]});
        const dt = new DataTransfer();
        dt.items.add(new File([payload], 'evil.json', {type: 'application/json'}));
        const input = document.getElementById('import-file');
        input.files = dt.files;
        input.dispatchEvent(new Event('change'));
    """)
    open_conv(b, '<img src=x onerror="window.__xss=9">')
    assert not b.find_elements(By.CSS_SELECTOR, "#messages img, #messages svg, #messages a, #conv-list img")
    time.sleep(0.3)
    assert b.execute_script("return window.__xss") is None
    ws_dialog(b, num_predict=N_PREDICT)


def test_export_then_import(server, browser, tmp_path):
    b = browser
    reset_ui(b, server.url)
    b.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    fixture = json.loads(FIXTURE.read_text())
    import_file(b, FIXTURE)
    settle(b).until(lambda d: len(sidebar_titles(d)) == 2)
    assert settle(b).until(lambda d: "Imported 2 conversations" in d.find_element(By.ID, "toast").text)
    assert sorted(sidebar_titles(b)) == sorted(c["title"] for c in fixture["conversations"])
    open_conv(b, "How big is a KV cache?")
    md = b.find_element(By.CSS_SELECTOR, ".msg.assistant .content")
    assert md.find_elements(By.CSS_SELECTOR, "h2") and md.find_elements(By.CSS_SELECTOR, "table tbody tr")
    assert len(md.find_elements(By.CSS_SELECTOR, ".code-block")) == 2
    assert md.find_elements(By.CSS_SELECTOR, ".code-block .tok-k") and md.find_elements(By.CSS_SELECTOR, "math")
    b.execute_script("document.getElementById('toast').className = 'toast'; document.getElementById('messages').scrollTop = 0")
    time.sleep(0.3)  # the toast fades out
    screenshot(b, "webui-chat", docs=True)

    b.find_element(By.ID, "export").click()
    deadline = time.time() + 15
    while not list(tmp_path.glob("qleap-default-*.json")) and time.time() < deadline:
        time.sleep(0.1)
    (path,) = list(tmp_path.glob("qleap-default-*.json"))
    time.sleep(0.2)
    data = json.loads(path.read_text())
    assert data["format"] == "qleap-conversations" and data["workspace"]["name"] == "Default"
    by_title = {c["title"]: c for c in data["conversations"]}
    for c in fixture["conversations"]:
        assert [m["content"] for m in by_title[c["title"]]["messages"]] == [m["content"] for m in c["messages"]]

    # A new workspace takes the export back in.
    ws_dialog(b, new=True, name="Restored")
    assert sidebar_titles(b) == []
    import_file(b, path)
    settle(b).until(lambda d: len(sidebar_titles(d)) == 2)
    # A broken file changes nothing and says why.
    bad = tmp_path / "bad.json"
    bad.write_text('{"conversations": [{"title": "x", "messages": [{"role": "wizard", "content": 1}]}]}')
    import_file(b, bad)
    settle(b).until(lambda d: "Import failed" in d.find_element(By.ID, "toast").text)
    assert "message 1" in b.find_element(By.ID, "toast").text
    assert len(sidebar_titles(b)) == 2 and len(idb(b)["conversations"]) == 4


def test_workspaces_are_isolated_with_their_own_settings(server, browser):
    b = browser
    reset_ui(b, server.url)
    ws_dialog(b, temperature=0, num_predict=6)
    spy_chat_requests(b)
    send(b, "Hello there")
    wait_answers(b, 1)
    ws_dialog(b, new=True, name="Research", system="You answer tersely.", temperature=0.2, top_k=5, num_predict=4)
    assert Select(b.find_element(By.ID, "workspace-select")).first_selected_option.text == "Research"
    assert sidebar_titles(b) == []
    send(b, "Tell me more")
    wait_answers(b, 1)
    bodies = b.execute_script("return window.__chatBodies")
    assert bodies[0]["options"] == {"temperature": 0, "num_predict": 6}
    assert bodies[0]["messages"] == [{"role": "user", "content": "Hello there"}]
    assert bodies[1]["options"] == {"temperature": 0.2, "top_k": 5, "num_predict": 4}
    assert bodies[1]["messages"] == [{"role": "system", "content": "You answer tersely."},
                                     {"role": "user", "content": "Tell me more"}]
    Select(b.find_element(By.ID, "workspace-select")).select_by_visible_text("Default")
    settle(b).until(lambda d: sidebar_titles(d) == ["Hello there"])
    assert b.find_element(By.ID, "conv-title").text == "Hello there"  # the conversation open there
    # After a reload: still two workspaces, each with only its own conversation.
    open_ui(b, server.url)
    assert sidebar_titles(b) == ["Hello there"]
    Select(b.find_element(By.ID, "workspace-select")).select_by_visible_text("Research")
    settle(b).until(lambda d: sidebar_titles(d) == ["Tell me more"])
    data = idb(b)
    ids = {w["name"]: w["id"] for w in data["workspaces"]}
    assert {c["title"]: c["workspace"] for c in data["conversations"]} == {"Hello there": ids["Default"], "Tell me more": ids["Research"]}
    # Deleting a workspace deletes its conversations, not the other's.
    b.find_element(By.ID, "ws-settings").click()
    b.find_element(By.ID, "ws-delete").click()
    settle(b).until(EC.alert_is_present())
    b.switch_to.alert.accept()
    settle(b).until(lambda d: sidebar_titles(d) == ["Hello there"])
    data = idb(b)
    assert [w["name"] for w in data["workspaces"]] == ["Default"] and [c["title"] for c in data["conversations"]] == ["Hello there"]


def test_keyboard_enter_shift_enter_and_ctrl_k(server, browser):
    b = browser
    box = b.find_element(By.ID, "new-chat")
    box.click()
    box = b.find_element(By.ID, "chat-input")
    box.send_keys("line one")
    box.send_keys(Keys.SHIFT, Keys.ENTER)
    box.send_keys("line two")
    assert box.get_attribute("value") == "line one\nline two"
    assert not b.find_elements(By.CSS_SELECTOR, ".msg.user")
    box.send_keys(Keys.ENTER)
    wait_answers(b, 1)
    assert b.find_element(By.CSS_SELECTOR, ".msg.user .content").text == "line one\nline two"
    # Ctrl+K: find a conversation by a word in it and open it with Enter.
    b.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, "k")
    field = settle(b).until(lambda d: d.find_element(By.ID, "palette-input") if d.find_element(By.ID, "palette").is_displayed() else None)
    assert b.switch_to.active_element == field
    field.send_keys("there")
    first = settle(b).until(lambda d: d.find_element(By.CSS_SELECTOR, "#palette-results li.sel"))
    assert first.text.startswith("Hello there")
    field.send_keys(Keys.ENTER)
    settle(b).until(lambda d: not d.find_element(By.ID, "palette").is_displayed())
    assert b.find_element(By.ID, "conv-title").text == "Hello there"
    # Esc closes the palette; arrows move the selection.
    b.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, "k")
    field = settle(b).until(lambda d: d.find_element(By.ID, "palette-input") if d.find_element(By.ID, "palette").is_displayed() else None)
    field.send_keys("Monitor")
    settle(b).until(lambda d: any(li.text.startswith("Monitor") for li in d.find_elements(By.CSS_SELECTOR, "#palette-results li")))
    for _ in range(12):
        if b.find_element(By.CSS_SELECTOR, "#palette-results li.sel").text.startswith("Monitor"):
            break
        field.send_keys(Keys.ARROW_DOWN)
    assert b.find_element(By.CSS_SELECTOR, "#palette-results li.sel").text.startswith("Monitor")
    field.send_keys(Keys.ESCAPE)
    settle(b).until(lambda d: not d.find_element(By.ID, "palette").is_displayed())


def overflow(b):
    return b.execute_script("return document.documentElement.scrollWidth - window.innerWidth")


def test_narrow_screen_and_dark_mode(server, browser):
    b = browser
    reset_ui(b, server.url)
    import_file(b, FIXTURE)
    settle(b).until(lambda d: len(sidebar_titles(d)) == 2)
    try:
        emulate(b, 360, 740)
        open_ui(b, server.url)
        assert b.execute_script("return window.innerWidth") == 360
        # The sidebar is a drawer: hidden until the menu button opens it.
        assert b.execute_script("return document.getElementById('sidebar').getBoundingClientRect().right") <= 0
        b.find_element(By.ID, "sidebar-toggle").click()
        settle(b).until(lambda d: d.execute_script("return document.getElementById('sidebar').getBoundingClientRect().left") >= 0)
        open_conv(b, "How big is a KV cache?")
        settle(b).until(lambda d: d.execute_script("return document.getElementById('sidebar').getBoundingClientRect().right") <= 0)
        assert overflow(b) <= 0, "the chat is wider than the screen"
        for id_ in ("chat-input", "send", "model-select"):
            r = b.execute_script(f"return document.getElementById('{id_}').getBoundingClientRect().toJSON()")
            assert r["left"] >= 0 and r["right"] <= 360 and r["bottom"] <= 740, (id_, r)
        screenshot(b, "webui-mobile", docs=True)
        for tab in ("models", "monitor"):
            b.find_element(By.ID, "tab-" + tab).click()
            time.sleep(0.3)
            assert overflow(b) <= 0, f"the {tab} tab is wider than the screen"
        b.find_element(By.ID, "tab-chat").click()
    finally:
        emulate(b)
    bg = "return getComputedStyle(document.body).backgroundColor"
    lum = lambda c: sum(int(x) for x in re.findall(r"\d+", c)[:3]) / 765  # noqa: E731
    emulate(b, dark=True)
    try:
        settle(b).until(lambda d: lum(d.execute_script(bg)) < 0.2)
        assert lum(b.execute_script("return getComputedStyle(document.querySelector('.msg.assistant')).color")) > 0.7
        b.execute_script("document.getElementById('messages').scrollTop = 0")
        screenshot(b, "webui-dark", docs=True)
    finally:
        emulate(b, dark=False)
    settle(b).until(lambda d: lum(d.execute_script(bg)) > 0.8)
    emulate(b)
