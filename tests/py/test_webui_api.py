"""The server endpoints behind the web UI: GET /api/qleap/search (Hugging Face search with a fit
check by the planner) against a local stand-in Hub (hf_standin.py, no internet), pull from that
Hub with progress, and the live fields of GET /api/qleap/status."""
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import urllib.error
import urllib.request

import pytest

from hf_standin import StandInHub, VirtualFile, giant_gguf_header, shapeless_gguf_header
from server_util import Server

MODEL = "stories260K:latest"
STORIES_REPO = "qleap-test/stories260K-GGUF"
STORIES_FILE = "stories260K-F32.gguf"


@contextlib.contextmanager
def env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update({k: v for k, v in kv.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_hub(test_models, tmp_path, delay=0.0):
    stories = (test_models / "stories260K.gguf").read_bytes()
    head, size = giant_gguf_header(tmp_path / "giant-header.gguf")
    half = len(stories) // 2
    repos = {
        STORIES_REPO: {STORIES_FILE: stories, "README.md": b"# stories\n", "sub/stories260K-copy-F32.gguf": stories},
        "qleap-test/stories260K-split-GGUF": {
            "stories260K-F32-00001-of-00002.gguf": stories[:half],
            "stories260K-F32-00002-of-00002.gguf": stories[half:],
        },
        "qleap-test/Giant-7T-GGUF": {"giant-F32.gguf": VirtualFile(head, size)},
        "qleap-test/broken-GGUF": {"broken-Q4_K_M.gguf": b"this is not a GGUF file" * 100},
        "qleap-test/no-gguf": {"README.md": b"nothing here", "model.safetensors": b"x"},
        "qleap-test/shapeless-GGUF": {"shapeless-F32.gguf": VirtualFile(shapeless_gguf_header(tmp_path / "shapeless.gguf"), 50 << 20)},
    }
    downloads = {STORIES_REPO: 1000, "qleap-test/Giant-7T-GGUF": 500, "qleap-test/broken-GGUF": 10}
    return StandInHub(repos, downloads, delay=delay), stories, size


def start_server(qleap_bin, test_models, endpoint, extra=("--parallel", "2")):
    with env(QLEAP_HF_ENDPOINT=endpoint):
        return Server(qleap_bin, test_models, list(extra))


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


@pytest.fixture(scope="module")
def hub(test_models, tmp_path_factory):
    h, stories, giant_size = make_hub(test_models, tmp_path_factory.mktemp("hub"))
    h.stories, h.giant_size = stories, giant_size
    yield h
    h.stop()


@pytest.fixture(scope="module")
def server(qleap_bin, test_models, hub):
    s = start_server(qleap_bin, test_models, hub.url)
    yield s
    s.stop()


def files_of(result, repo):
    (r,) = [m for m in result["models"] if m["repo"] == repo]
    return r, {f["name"]: f for f in r["files"]}


def test_search_lists_files_sizes_and_fit(server, hub, qleap_bin, test_models):
    hub.requests.clear()
    status, r = get(server.url + "/api/qleap/search?q=qleap-test")
    assert status == 200, r
    assert r["endpoint"] == hub.url and r["query"] == "qleap-test"
    assert [m["repo"] for m in r["models"]][:3] == [STORIES_REPO, "qleap-test/Giant-7T-GGUF", "qleap-test/broken-GGUF"]

    repo, files = files_of(r, STORIES_REPO)
    assert repo["arch"] == "llama" and repo["arch_supported"] is True and repo["n_layers"] == 5
    assert repo["downloads"] == 1000
    f = files[STORIES_FILE]
    assert f["size"] == len(hub.stories) and f["pull"] == f"{STORIES_REPO}/{STORIES_FILE}"
    assert f["quant"] == "F32" and f["store_name"] == "stories260K-F32:latest"
    assert f["fits"] is True and f["plan"]["exact"] is True
    assert "sub/stories260K-copy-F32.gguf" in files  # files in folders are listed too
    assert "README.md" not in files

    # The same verdict as `qleap plan` for the downloaded file with the server's slot count.
    p = subprocess.run([qleap_bin, "plan", str(test_models / "stories260K.gguf"), "--json", "--parallel", "2"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    plan = plan.get("plan", plan)
    assert (f["plan"]["n_ctx"], f["plan"]["kv_type"]) == (plan["n_ctx"], plan["kv_type"])
    assert f["fits"] == plan["fits"]

    _, files = files_of(r, "qleap-test/Giant-7T-GGUF")
    g = files["giant-F32.gguf"]
    assert g["size"] == hub.giant_size and g["fits"] is False
    assert g["plan"]["ram_bytes"] > g["plan"]["ram_budget"]

    repo, files = files_of(r, "qleap-test/broken-GGUF")
    assert files["broken-Q4_K_M.gguf"]["fits"] is None and "not a GGUF" in repo["fit_error"]
    assert files["broken-Q4_K_M.gguf"]["quant"] == "Q4_K_M"

    # A complete header the planner cannot use is reported once, not read again in larger pieces.
    repo, files = files_of(r, "qleap-test/shapeless-GGUF")
    assert "missing metadata key 'llama.block_count'" in repo["fit_error"] and files["shapeless-F32.gguf"]["fits"] is None
    assert len([p for p, _ in hub.requests if "shapeless-F32.gguf" in p]) == 1

    # The header of the 7 TiB file was read with ranged GETs, not downloaded.
    giant_reads = [(p, rng) for p, rng in hub.requests if "giant-F32.gguf" in p]
    assert giant_reads and all(rng and rng.startswith("bytes=") for _, rng in giant_reads)
    assert sum(int(rng.split("-")[1]) - int(rng[6:].split("-")[0]) + 1 for _, rng in giant_reads) <= 1 << 20


def test_search_groups_split_files_and_reports_repos_without_gguf(server):
    status, r = get(server.url + "/api/qleap/search?q=split")
    assert status == 200
    _, files = files_of(r, "qleap-test/stories260K-split-GGUF")
    (f,) = files.values()
    assert f["parts"] == 2 and f["pull"] is None and "split" in f["note"]
    assert f["name"] == "stories260K-F32-00001-of-00002.gguf"
    status, r = get(server.url + "/api/qleap/search?q=no-gguf")
    assert status == 200 and r["models"][0]["error"] == "no .gguf file in this repository"
    status, r = get(server.url + "/api/qleap/search?q=nothing-matches-this")
    assert status == 200 and r["models"] == []


@pytest.mark.parametrize("query, message", [
    ("", "q is missing"), ("q=%20%20", "q is missing"), ("q=" + "x" * 201, "longer than"),
    ("q=a&limit=0", "limit"), ("q=a&limit=abc", "limit"), ("q=a&limit=21", "limit"),
])
def test_search_rejects_bad_queries(server, query, message):
    status, r = get(server.url + "/api/qleap/search?" + query)
    assert status == 400 and message in r["error"]


def test_search_reports_a_hub_that_fails(server, hub):
    for mode, message in (("error", "answered HTTP 500"), ("garbage", "not JSON")):
        hub.mode = mode
        try:
            status, r = get(server.url + "/api/qleap/search?q=stories")
        finally:
            hub.mode = "ok"
        assert status == 502 and message in r["error"], r


def test_search_survives_answers_of_the_wrong_shape(server, hub):
    hub.mode = "weird"
    try:
        status, r = get(server.url + "/api/qleap/search?q=odd")
    finally:
        hub.mode = "ok"
    assert status == 200, r
    by_repo = {m["repo"]: m for m in r["models"]}
    assert by_repo[""]["error"] == "the Hub listed a model without a valid id"
    assert "not a list" in by_repo["odd/notalist"]["error"]
    assert by_repo["../../etc"]["error"] == "the Hub listed a model without a valid id"
    odd = by_repo["odd/tree"]
    assert [f["name"] for f in odd["files"]] == ["a.gguf", "b.gguf"] and all(f["size"] == 0 for f in odd["files"])
    assert all(f["fits"] is None for f in odd["files"])
    assert get(server.url + "/api/tags")[0] == 200


def test_search_offline_is_a_clear_502(qleap_bin, test_models):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = start_server(qleap_bin, test_models, f"http://127.0.0.1:{port}")
    try:
        status, r = get(srv.url + "/api/qleap/search?q=llama")
        assert status == 502
        assert f"127.0.0.1:{port}" in r["error"] and "cannot reach the Hugging Face Hub" in r["error"]
        # The rest of the server is unaffected.
        assert get(srv.url + "/api/tags")[0] == 200
    finally:
        srv.stop()


def test_pull_from_the_hub_streams_progress(qleap_bin, test_models, tmp_path):
    h, stories, _ = make_hub(test_models, tmp_path, delay=0.01)
    srv = start_server(qleap_bin, test_models, h.url)
    try:
        out = post(srv.url + "/api/pull", {"model": f"{STORIES_REPO}/{STORIES_FILE}", "stream": True})
        lines = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
        assert lines[-1] == {"status": "success"}, lines[-3:]
        done = [x["completed"] for x in lines if x.get("total") == len(stories) and "completed" in x]
        assert len(done) >= 3 and done == sorted(done) and done[-1] == len(stories)
        assert any(0 < c < len(stories) for c in done), "no intermediate progress"
        path = srv.models / "stories260K-F32.gguf"
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(stories).digest()
        _, tags = get(srv.url + "/api/tags")
        assert "stories260K-F32:latest" in [m["name"] for m in tags["models"]]
        # A file the Hub does not have: a clear error naming the HTTP status, no partial file left.
        out = post(srv.url + "/api/pull", {"model": f"{STORIES_REPO}/missing-Q4_0.gguf", "stream": True})
        last = json.loads(out.decode().splitlines()[-1])
        assert "HTTP 404" in last["error"]
        assert not list(srv.models.glob("*.partial"))
    finally:
        srv.stop()
        h.stop()


def test_status_reports_live_engine_figures(server):
    post(server.url + "/api/generate", {"model": MODEL, "prompt": "Once upon a time", "stream": False,
                                        "options": {"temperature": 0, "num_predict": 24}})
    r = json.loads(post(server.url + "/api/generate", {"model": MODEL, "prompt": "The dog", "raw": True, "stream": False,
                                                       "options": {"temperature": 0, "num_predict": 16}}))
    _, s = get(server.url + "/api/qleap/status")
    (m,) = [x for x in s["models"] if x["name"] == MODEL]
    assert len(m["slots"]) == m["parallel"] == 2
    tokens = [x["tokens"] for x in m["slots"]]
    # The last request's slot holds its prompt and every generated token but the last (sampled, not
    # yet evaluated).
    assert r["prompt_eval_count"] + r["eval_count"] - 1 in tokens
    assert m["kv_bytes_used"] == sum(tokens) * m["kv_bytes_per_token"]
    # stories260K: 5 layers, 4 KV heads x 8 dims: 2 (K, V) x 2 bytes x 5 x 32 = 640 bytes a token in f16.
    assert m["kv_bytes_used_f16"] == sum(tokens) * 640
    assert m["prefill_tok_per_s"] > 0 and m["decode_tok_per_s"] > 0
    assert m["expert_cache_hit_rate"] is None and m["expert_prefetch_recall"] is None
