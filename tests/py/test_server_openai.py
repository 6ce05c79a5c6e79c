"""`qleap serve` driven by the official `openai` Python client."""
import math

import httpx
import pytest

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

from server_util import Server  # noqa: E402

MSGS = [{"role": "user", "content": "Tell me a story about a cat."}]


@pytest.fixture(scope="module")
def server(qleap_bin, test_models):
    s = Server(qleap_bin, test_models, ["--parallel", "4"])
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert "stories260K:latest" in ids
    assert client.models.retrieve("stories260K:latest").id == "stories260K:latest"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope:latest")


def test_chat_matches_ollama_api(client, server):
    r = client.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=20, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "length" and c.message.role == "assistant"
    assert r.usage.completion_tokens == 20 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 20
    o = ollama.Client(host=server.url).chat(model="stories260K", messages=MSGS,
                                            options={"temperature": 0, "num_predict": 20, "repeat_penalty": 1.0})
    assert o.message.content == c.message.content


def test_chat_stream_include_usage(client):
    full = client.chat.completions.create(model="stories260K", messages=MSGS, max_completion_tokens=16,
                                          temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(model="stories260K", messages=MSGS, max_completion_tokens=16,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert all(ch.usage is None for ch in chunks[:-1])


def test_chat_stream_without_usage(client):
    chunks = list(client.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=4,
                                                 temperature=0, stream=True))
    assert all(ch.choices for ch in chunks)


def test_stop_and_seed(client):
    a = client.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=20, temperature=1.0,
                                       seed=7).choices[0].message.content
    b = client.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=20, temperature=1.0,
                                       seed=7).choices[0].message.content
    assert a == b
    full = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=24,
                                     temperature=0).choices[0].text
    assert " was" in full
    r = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=24, temperature=0,
                                  stop=[" was"])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == full[:full.index(" was")]


def test_completions_stream(client):
    full = client.completions.create(model="stories260K", prompt="The sun", max_tokens=12, temperature=0)
    assert full.object == "text_completion" and full.usage.completion_tokens == 12
    chunks = list(client.completions.create(model="stories260K", prompt="The sun", max_tokens=12, temperature=0,
                                            stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == full.choices[0].text


def test_embeddings(client, server):
    r = client.embeddings.create(model="stories260K", input=["hello there", "a cat"])  # SDK asks for base64
    assert [d.index for d in r.data] == [0, 1]
    v = r.data[0].embedding
    assert len(v) == 64 and math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    f = client.embeddings.create(model="stories260K", input="hello there", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(v, abs=1e-7)
    o = ollama.Client(host=server.url).embed(model="stories260K", input="hello there")
    assert o.embeddings[0] == pytest.approx(v, abs=1e-6)
    assert r.usage.prompt_tokens > 0


def test_errors(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=MSGS)
    assert e.value.status_code == 404
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="stories260K", messages="hi")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="stories260K", messages=MSGS, temperature="hot")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="stories260K", messages=MSGS, n=2)
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]


def test_tools_pass_through(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}]
    r = client.chat.completions.create(model="stories260K", messages=MSGS, tools=tools, max_tokens=8, temperature=0)
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length", "tool_calls")
    assert c.message.content or c.message.tool_calls


def test_response_format_json_schema(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = client.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=50, temperature=0,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "x", "schema": schema}})
    import json
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content)["ok"], bool)
