"""API surface clients use: logprobs / top_logprobs (OpenAI chat and completions shapes, Ollama's
fields), images refused for text-only models, empty embedding inputs, num_ctx smaller than the
prompt, parallel_tool_calls."""
import json
import math

import httpx
import pytest

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

from server_util import Server  # noqa: E402

MSGS = [{"role": "user", "content": "Tell me a story about a cat."}]


@pytest.fixture(scope="module")
def server(qleap_bin, test_models):
    s = Server(qleap_bin, test_models, ["--parallel", "2"])
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def check_entry(e, k, greedy):
    """One token's entry: a log-probability, its bytes, the k most likely tokens in order."""
    token, logprob, top = e["token"], e["logprob"], e["top_logprobs"]
    assert logprob <= 0
    if e.get("bytes") is not None:  # (the ollama package's model drops them)
        assert bytes(e["bytes"]).decode("utf-8", "replace") == token
    assert len(top) == k
    lps = [t["logprob"] for t in top]
    assert lps == sorted(lps, reverse=True) and sum(math.exp(x) for x in lps) <= 1.0 + 1e-4
    if greedy and k:
        assert top[0]["token"] == token and top[0]["logprob"] == pytest.approx(logprob)
    if k and token in [t["token"] for t in top]:
        assert [t["logprob"] for t in top if t["token"] == token][0] == pytest.approx(logprob)


def test_ollama_logprobs(server):
    c = ollama.Client(host=server.url)
    opts = {"temperature": 0, "num_predict": 12}
    r = c.generate(model="stories260K", prompt="Once upon a time", options=opts, logprobs=True, top_logprobs=3)
    assert len(r.logprobs) == r.eval_count == 12
    for e in r.logprobs:
        check_entry(e.model_dump(), 3, greedy=True)
    # Streamed: the entries arrive with the chunks and add up to the same list.
    parts = list(c.generate(model="stories260K", prompt="Once upon a time", options=opts, logprobs=True,
                            top_logprobs=3, stream=True))
    streamed = [e.model_dump() for p in parts for e in (p.logprobs or [])]
    assert [e["token"] for e in streamed] == [e.token for e in r.logprobs]
    assert sum(1 for p in parts[:-1] if p.logprobs) >= 6, "entries should come with their chunks"
    assert "".join(e["token"] for e in streamed).strip() == r.response.strip()
    chat = c.chat(model="stories260K", messages=MSGS, options=opts, logprobs=True)
    assert len(chat.logprobs) == 12 and all(e.top_logprobs == [] for e in chat.logprobs)
    none = c.generate(model="stories260K", prompt="Once", options=opts)
    assert not none.logprobs
    r = httpx.post(server.url + "/api/generate", json={"model": "stories260K", "prompt": "x", "top_logprobs": 50})
    assert r.status_code == 400


def test_openai_logprobs(oai):
    r = oai.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=10, temperature=0,
                                    logprobs=True, top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 10
    for e in content:
        check_entry(e.model_dump(), 4, greedy=True)
    assert "".join(e.token for e in content) == r.choices[0].message.content
    chunks = list(oai.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=10, temperature=0,
                                              logprobs=True, top_logprobs=4, stream=True))
    streamed = [e for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    plain = oai.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=3)
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=3, top_logprobs=2)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=3, logprobs=True, top_logprobs=21)
    # Legacy completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}.
    c = oai.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=8, temperature=0,
                               logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert "".join(lp.tokens) == c.choices[0].text
    assert lp.text_offset == [sum(len(t.encode()) for t in lp.tokens[:i]) for i in range(8)]
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2 and max(top.values()) == pytest.approx(l) and top.get(tok) == pytest.approx(l)


def test_images_to_a_text_only_model_are_refused(server, oai):
    c = ollama.Client(host=server.url)
    img = "iVBORw0KGgo="  # any base64: never decoded
    for call in (lambda: c.generate(model="stories260K", prompt="What is this?", images=[img]),
                 lambda: c.chat(model="stories260K", messages=[{"role": "user", "content": "What is this?",
                                                                "images": [img]}])):
        with pytest.raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == 400 and "stories260K:latest" in str(e.value) and "image" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="stories260K", max_tokens=3, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + img}}]}])
    assert "stories260K:latest" in str(e.value)
    # An unknown model is still a 404, and an empty image list is no image.
    r = httpx.post(server.url + "/api/generate", json={"model": "nope", "prompt": "x", "images": [img]})
    assert r.status_code == 404
    r = c.generate(model="stories260K", prompt="Once", images=[], options={"num_predict": 2})
    assert r.done


def test_empty_embedding_inputs_are_refused(server, oai):
    for body in ({"input": ""}, {"input": [""]}, {"input": []}, {"input": ["a", ""]}, {"input": [[]]}):
        r = httpx.post(server.url + "/v1/embeddings", json={"model": "stories260K", **body})
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "invalid_request_error"
    for body in ({"input": ""}, {"input": [""]}, {"input": []}, {"input": ["a", ""]}):
        r = httpx.post(server.url + "/api/embed", json={"model": "stories260K", **body})
        assert r.status_code == 400 and "input" in r.json()["error"], body
    # No input at all: Ollama's way to load the model.
    r = httpx.post(server.url + "/api/embed", json={"model": "stories260K"})
    assert r.status_code == 200 and r.json()["embeddings"] == []
    assert len(oai.embeddings.create(model="stories260K", input=["a"]).data) == 1


def test_tiny_num_ctx_truncates_instead_of_failing(server):
    long_prompt = "Once upon a time " * 300
    for num_ctx in (1, 2, 3):
        for stream in (False, True):
            r = httpx.post(server.url + "/api/generate", json={
                "model": "stories260K", "prompt": long_prompt, "stream": stream,
                "options": {"num_ctx": num_ctx, "num_predict": 4, "temperature": 0}}, timeout=30)
            assert r.status_code == 200
            last = json.loads(r.text.strip().splitlines()[-1])
            assert "error" not in last and last["done"] and last["eval_count"] >= 1, (num_ctx, stream, r.text)
            assert last["prompt_eval_count"] <= max(1, num_ctx)


def test_parallel_tool_calls_accepted(server):
    """parallel_tool_calls is accepted either way; a forced call is one call (with false, a free reply
    holding several <tool_call> blocks keeps only the first)."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "integer"}}, "required": ["x"]}}}]
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for parallel in (True, False):
        r = c.chat.completions.create(model="stories260K", messages=MSGS, tools=tools, max_tokens=40,
                                      tool_choice="required", parallel_tool_calls=parallel, temperature=0.5, seed=3)
        calls = r.choices[0].message.tool_calls
        assert len(calls) == 1 and calls[0].function.name == "f"
        assert isinstance(json.loads(calls[0].function.arguments)["x"], int)
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "stories260K", "messages": MSGS,
                                                              "parallel_tool_calls": "yes"})
    assert r.status_code == 400
