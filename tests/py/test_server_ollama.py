"""`qleap serve` driven by the official `ollama` Python client (and raw HTTP for malformed input)."""
import json
import math
import subprocess
import time

import httpx
import pytest

ollama = pytest.importorskip("ollama")

from server_util import Server, smollm_path  # noqa: E402

GREEDY = {"temperature": 0, "num_predict": 24, "repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def server(qleap_bin, test_models):
    s = Server(qleap_bin, test_models, ["--parallel", "4", "--allow-local-pull"], with_smollm=True)
    yield s
    rc = s.stop()
    assert rc == 0, "server exited with an error"


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url)


def test_root_version_health(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.text == "qleap is running"
    assert httpx.head(server.url + "/").status_code == 200
    assert "version" in httpx.get(server.url + "/api/version").json()
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    r = httpx.get(server.url + "/api/nonexistent")
    assert r.status_code == 404 and "error" in r.json()


def test_list_and_show(client):
    models = {m.model: m for m in client.list().models}
    assert "stories260K:latest" in models
    m = models["stories260K:latest"]
    assert m.details.family == "llama" and m.details.format == "gguf"
    assert m.details.quantization_level == "F32"
    assert m.size > 1_000_000
    show = client.show("stories260K")
    assert show.details.parameter_size.endswith("K")
    assert show.modelinfo["general.architecture"] == "llama"
    assert show.modelinfo["llama.block_count"] == 5
    assert "completion" in show.capabilities


def test_generate_matches_cli(client, qleap_bin, test_models):
    """The server's output equals `qleap run` (the Session engine) for the same greedy request."""
    r = client.generate(model="stories260K", prompt="Once upon a time", raw=True, options=GREEDY)
    assert r.done and r.done_reason == "length" and r.eval_count == 24
    assert r.prompt_eval_count > 0 and r.total_duration > 0 and r.eval_duration > 0
    cli = subprocess.run([qleap_bin, "run", str(test_models / "stories260K.gguf"), "Once upon a time",
                          "--raw", "--temp", "0", "-n", "24", "-q", "-t", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert cli.rstrip("\n") == "Once upon a time" + r.response
    assert r.context[0] == 1 and len(r.context) == r.prompt_eval_count + 24


def test_generate_stream_equals_nonstream(client):
    full = client.generate(model="stories260K", prompt="The dog", options=GREEDY)
    parts = list(client.generate(model="stories260K", prompt="The dog", options=GREEDY, stream=True))
    assert len(parts) > 5, "expected one chunk per token"
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 24
    assert "".join(p.response for p in parts) == full.response


def test_stop_sequence(client):
    base = client.generate(model="stories260K", prompt="Once upon a time", options=GREEDY).response
    assert "little" in base
    r = client.generate(model="stories260K", prompt="Once upon a time", options={**GREEDY, "stop": ["little"]})
    assert r.done_reason == "stop"
    assert r.response == base[:base.index("little")]


def test_chat_stream_and_not(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}]
    r = client.chat(model="stories260K", messages=msgs, options=GREEDY)
    assert r.message.role == "assistant" and r.message.content
    parts = list(client.chat(model="stories260K", messages=msgs, options=GREEDY, stream=True))
    assert parts[-1].done and parts[-1].done_reason == "length"
    assert "".join(p.message.content for p in parts) == r.message.content


def test_seeded_sampling_reproducible(client):
    opts = {"temperature": 0.9, "seed": 42, "num_predict": 20}
    a = client.generate(model="stories260K", prompt="Lily", options=opts).response
    b = client.generate(model="stories260K", prompt="Lily", options=opts).response
    assert a == b


def test_embed(client):
    r = client.embed(model="stories260K", input=["hello there", "a cat", "hello there"])
    e = r.embeddings
    assert len(e) == 3 and len(e[0]) == 64
    for v in e:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    assert e[0] == e[2] and e[0] != e[1]
    old = client.embeddings(model="stories260K", prompt="hello there")
    assert pytest.approx(list(old.embedding), abs=1e-6) == e[0]


def test_ps_and_keep_alive(client, server):
    client.generate(model="stories260K", prompt="x", options={"num_predict": 1}, keep_alive="10m")
    ps = {m.model: m for m in client.ps().models}
    assert "stories260K:latest" in ps
    assert ps["stories260K:latest"].size > 0 and ps["stories260K:latest"].context_length > 0
    # Empty prompt with keep_alive 0 unloads (Ollama semantics).
    r = client.generate(model="stories260K", prompt="", keep_alive=0)
    assert r.done_reason == "unload"
    end = time.time() + 5
    while time.time() < end and any(m.model == "stories260K:latest" for m in client.ps().models):
        time.sleep(0.05)
    assert not any(m.model == "stories260K:latest" for m in client.ps().models)
    r = client.generate(model="stories260K", prompt="")
    assert r.done_reason == "load"
    assert any(m.model == "stories260K:latest" for m in client.ps().models)


def test_keep_alive_expires(client):
    client.copy("stories260K", "shortlived")
    client.generate(model="shortlived", prompt="x", options={"num_predict": 1}, keep_alive="300ms")
    assert any(m.model == "shortlived:latest" for m in client.ps().models)
    end = time.time() + 5
    while time.time() < end and any(m.model == "shortlived:latest" for m in client.ps().models):
        time.sleep(0.05)
    assert not any(m.model == "shortlived:latest" for m in client.ps().models)
    client.delete("shortlived")


def test_format_json_schema(client, server):
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}, "n": {"type": "integer"}},
              "required": ["color", "n"]}
    r = client.generate(model="stories260K", prompt="Once upon a time", format=schema,
                        options={"temperature": 0.7, "seed": 1, "num_predict": 200})
    assert r.done_reason == "stop", r.response
    obj = json.loads(r.response)
    assert obj["color"] in ("red", "green") and isinstance(obj["n"], int)
    r = client.chat(model="stories260K", messages=[{"role": "user", "content": "json please"}], format="json",
                    options={"temperature": 0, "num_predict": 12})
    assert r.message.content.lstrip()[:1] in ("{", "[", '"', "t", "f", "n", "-") or r.message.content[:1].isdigit()
    r = httpx.post(server.url + "/api/generate", json={"model": "stories260K", "prompt": "x", "format": "yaml"})
    assert r.status_code == 400  # the client refuses this itself, so send it raw
    r = httpx.post(server.url + "/api/generate", json={"model": "stories260K", "prompt": "x",
                                                      "format": {"type": 5}})
    assert r.status_code == 400


def test_copy_delete(client):
    client.copy("stories260K", "mystory:v1")
    assert "mystory:v1" in [m.model for m in client.list().models]
    assert client.generate(model="mystory:v1", prompt="Once", options=GREEDY).response
    client.delete("mystory:v1")
    assert "mystory:v1" not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("mystory:v1")
    assert e.value.status_code == 404


def test_pull_local_and_offline_error(client, test_models):
    parts = list(client.pull(str(test_models / "stories260K.gguf"), stream=True))
    assert parts[-1].status == "success"
    assert any(p.total for p in parts)
    # Pulling by path names the model after the file: here the one already in the store.
    assert "stories260K:latest" in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("hf.co/qleap-test-no-such-owner/no-such-repo:Q4_K_M")
    assert "pull failed" in str(e.value) or "not found" in str(e.value)
    with pytest.raises(ollama.ResponseError):
        client.pull("/no/such/file.gguf")


def test_errors(client, server):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="no-such-model", prompt="hi")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.show("no-such-model")
    assert e.value.status_code == 404
    u = server.url
    for path in ("/api/generate", "/api/chat", "/api/embed", "/api/show", "/api/copy"):
        r = httpx.post(u + path, content=b"{not json")
        assert r.status_code == 400 and "error" in r.json(), path
    bad = [
        ("/api/generate", {"model": "stories260K", "prompt": 5}),
        ("/api/generate", {"model": "stories260K", "prompt": "x", "options": {"temperature": "hot"}}),
        ("/api/generate", {"model": "stories260K", "prompt": "x", "options": {"num_predict": 1.5}}),
        ("/api/generate", {"model": "stories260K", "prompt": "x", "keep_alive": "5 parsecs"}),
        ("/api/generate", {"model": "stories260K", "prompt": "x", "context": "abc"}),
        ("/api/chat", {"model": "stories260K", "messages": "hello"}),
        ("/api/chat", {"model": "stories260K", "messages": [{"content": "no role"}]}),
        ("/api/embed", {"model": "stories260K", "input": [1, 2]}),
        ("/api/generate", {"prompt": "no model"}),
        ("/api/generate", []),
    ]
    for path, body in bad:
        r = httpx.post(u + path, json=body)
        assert r.status_code == 400, (path, body, r.text)
        assert isinstance(r.json()["error"], str)
    # Unknown fields are ignored.
    r = httpx.post(u + "/api/generate", json={"model": "stories260K", "prompt": "x", "stream": False,
                                              "whatever": {"a": 1}, "options": {"num_predict": 2, "foo": 1}})
    assert r.status_code == 200 and r.json()["done"]
    # Huge body -> 413, and the server keeps serving.
    r = httpx.post(u + "/api/generate", content=b"x" * (9 << 20))
    assert r.status_code == 413
    assert httpx.get(u + "/api/version").status_code == 200


def test_prompt_longer_than_context_is_truncated(client):
    long_prompt = "Once upon a time " * 400  # far beyond stories260K's context
    r = client.generate(model="stories260K", prompt=long_prompt, options={"temperature": 0, "num_predict": 4})
    assert r.done and r.eval_count == 4
    show = client.show("stories260K")
    assert r.prompt_eval_count < show.modelinfo["llama.context_length"]


@pytest.mark.skipif(smollm_path() is None, reason="SmolLM2-135M-Instruct.Q4_1.gguf not found")
def test_smollm_chat(client):
    r = client.chat(model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
                    options={"temperature": 0, "num_predict": 24})
    assert "Paris" in r.message.content


def test_metrics_and_status(server, client):
    client.generate(model="stories260K", prompt="Once", options=GREEDY)
    m = httpx.get(server.url + "/metrics").text
    assert "# TYPE qleap_tokens_generated_total counter" in m
    gen = [l for l in m.splitlines() if l.startswith("qleap_tokens_generated_total ")]
    assert float(gen[0].split()[1]) >= 24
    st = httpx.get(server.url + "/api/qleap/status").json()
    for k in ("models", "queue_depth", "requests_total", "tokens_generated_total", "tokens_prompt_total",
              "gen_tok_per_s", "prompt_tok_per_s", "ram_used_bytes", "ram_total_bytes", "vram_used_bytes",
              "expert_cache_hit_rate"):
        assert k in st, k
    mod = [x for x in st["models"] if x["name"] == "stories260K:latest"][0]
    assert mod["kv_type"] == "f16" and mod["parallel"] == 4 and mod["active_slots"] == 0
    assert mod["kv_bytes_per_token"] > 0 and mod["kv_bytes_allocated"] >= mod["kv_bytes_used"]
    assert mod["kv_compression_vs_f16"] == pytest.approx(1.0)
