"""Structured output: for a set of JSON schemas (nested objects, arrays, enums, required and optional
keys, numbers with bounds, strings with escapes, anyOf, $ref), every generation parses and
validates with `jsonschema`, through both APIs (Ollama `format`, OpenAI `response_format`), streamed
or not, and forced tool calls (`tool_choice`) give valid `tool_calls`. stories260K writes junk, so
with it the grammar alone (including closing the document within the token budget) must make the
output valid; SmolLM2 checks the same with a model that means it."""
import json

import httpx
import jsonschema
import pytest

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

from server_util import Server, smollm_path  # noqa: E402

SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "person": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 24},
            "address": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 20},
                "zip": {"type": "string", "minLength": 5, "maxLength": 5}},
                "required": ["city"]}},
            "required": ["name", "address"]}},
        "required": ["person"]},
    "array": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
        "type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 1000},
                                         "done": {"type": "boolean"}},
        "required": ["id", "done"]}},
    "enums": {"type": "object", "properties": {
        "mood": {"enum": ["happy", "sad", 'so-so "meh"', "naïve", "tab\there"]},
        "level": {"enum": [1, 2, 3, 10]},
        "flag": {"const": True}},
        "required": ["mood", "level"]},
    "optional": {"type": "object", "properties": {"a": {"type": "string", "maxLength": 30}, "b": {"type": "integer"},
                                                  "c": {"type": "number"}, "d": {"type": "null"}},
                 "required": ["a"], "additionalProperties": False},
    "bounds": {"type": "object", "properties": {
        "temp": {"type": "number", "minimum": -10.5, "maximum": 40},
        "pct": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100}},
        "required": ["temp", "pct", "ratio", "year"]},
    "escapes": {"type": "object", "properties": {
        "quote": {"type": "string", "minLength": 3, "maxLength": 40},
        "path": {"type": "string", "maxLength": 40},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
        "required": ["quote", "path"]},
    "anyof": {"type": "object", "properties": {
        "value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, {"type": "string", "maxLength": 10},
                            {"type": "null"}]},
        "items": {"type": "array", "maxItems": 3, "items": {"anyOf": [
            {"type": "boolean"}, {"type": "object", "properties": {"k": {"type": "string", "maxLength": 8}},
                                  "required": ["k"]}]}}},
        "required": ["value", "items"]},
    "refs": {"$defs": {"Pet": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 16}, "kind": {"enum": ["cat", "dog"]}}, "required": ["name", "kind"]}},
        "type": "object", "properties": {"owner": {"type": "string", "maxLength": 16},
                                         "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}, "maxItems": 3}},
        "required": ["owner", "pets"]},
}

PROMPT = "Reply in JSON."
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string", "maxLength": 30},
                                          "unit": {"enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city", "unit"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": {"type": "object", "properties": {
                                          "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                                          "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
                                          "required": ["a", "b"]}}},
]


@pytest.fixture(scope="module")
def server(qleap_bin, test_models):
    s = Server(qleap_bin, test_models, ["--parallel", "4", "--ctx", "1024"], with_smollm=True)
    yield s
    assert s.stop() == 0


def ollama_json(url, model, schema, stream, seed, n):
    c = ollama.Client(host=url)
    opts = {"temperature": 1.0, "seed": seed, "num_predict": n}
    msgs = [{"role": "user", "content": PROMPT}]
    if stream:
        parts = list(c.chat(model=model, messages=msgs, format=schema, options=opts, stream=True))
        assert parts[-1].done
        return "".join(p.message.content for p in parts), parts[-1].done_reason
    r = c.chat(model=model, messages=msgs, format=schema, options=opts)
    return r.message.content, r.done_reason


def openai_json(url, model, schema, stream, seed, n):
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    rf = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    msgs = [{"role": "user", "content": PROMPT}]
    if stream:
        chunks = list(c.chat.completions.create(model=model, messages=msgs, response_format=rf, max_tokens=n,
                                                temperature=1.0, seed=seed, stream=True))
        reason = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), reason[0]
    r = c.chat.completions.create(model=model, messages=msgs, response_format=rf, max_tokens=n, temperature=1.0,
                                  seed=seed)
    return r.choices[0].message.content, r.choices[0].finish_reason


def check(text, schema, what):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        pytest.fail(f"{what}: not JSON ({e}): {text!r}")
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as e:
        pytest.fail(f"{what}: invalid ({e.message}): {text!r}")


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schemas_always_validate_stories260k(server, name):
    """The junk model: 2 seeds x 2 APIs x streamed or not, under a tight token budget."""
    schema = SCHEMAS[name]
    for seed in (1, 2):
        for api in (ollama_json, openai_json):
            for stream in (False, True):
                text, reason = api(server.url, "stories260K", schema, stream, seed, 120)
                check(text, schema, f"{name} {api.__name__} stream={stream} seed={seed}")
                assert reason == "stop", (name, reason, text)


@pytest.mark.skipif(smollm_path() is None, reason="SmolLM2-135M-Instruct.Q4_1.gguf not found")
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schemas_always_validate_smollm(server, name):
    schema = SCHEMAS[name]
    api, stream = (ollama_json, False) if len(name) % 2 else (openai_json, True)
    text, reason = api(server.url, "smollm2", schema, stream, 3, 100)
    check(text, schema, f"{name} {api.__name__} stream={stream}")
    api, stream = (openai_json, False) if len(name) % 2 else (ollama_json, True)
    text, reason = api(server.url, "smollm2", schema, stream, 4, 100)
    check(text, schema, f"{name} {api.__name__} stream={stream}")


def forced_calls(url, model, tool_choice, stream, parallel=None, seed=1):
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    kw = {"parallel_tool_calls": parallel} if parallel is not None else {}
    msgs = [{"role": "user", "content": "What is the weather in Paris? Also add 2 and 3."}]
    if not stream:
        r = c.chat.completions.create(model=model, messages=msgs, tools=TOOLS, tool_choice=tool_choice,
                                      max_tokens=80, temperature=1.0, seed=seed, **kw)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.content is None
        return [(t.function.name, t.function.arguments) for t in ch.message.tool_calls]
    chunks = list(c.chat.completions.create(model=model, messages=msgs, tools=TOOLS, tool_choice=tool_choice,
                                            max_tokens=80, temperature=1.0, seed=seed, stream=True, **kw))
    calls = [t for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls for t in ch.choices[0].delta.tool_calls]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]
    return [(t.function.name, t.function.arguments) for t in calls]


@pytest.mark.parametrize("model", ["stories260K", "smollm2"])
def test_forced_tool_calls_are_valid(server, model):
    if model == "smollm2" and smollm_path() is None:
        pytest.skip("SmolLM2 not found")
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for stream in (False, True):
        for name in ("get_weather", "add"):
            calls = forced_calls(server.url, model, {"type": "function", "function": {"name": name}}, stream)
            assert len(calls) == 1 and calls[0][0] == name, calls
            jsonschema.validate(json.loads(calls[0][1]), params[name])
        calls = forced_calls(server.url, model, "required", stream, parallel=False, seed=5)
        assert len(calls) == 1 and calls[0][0] in params
        jsonschema.validate(json.loads(calls[0][1]), params[calls[0][0]])


def test_tool_choice_errors(server):
    u = server.url + "/v1/chat/completions"
    base = {"model": "stories260K", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for bad in ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS},
                {"tool_choice": "required"},
                {"tool_choice": {"type": "function"}, "tools": TOOLS},
                {"tool_choice": "always", "tools": TOOLS},
                {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string",
                                                                                       "pattern": "^a"}}}},
                {"response_format": {"type": "json_schema", "json_schema": {"schema": {
                    "type": "integer", "minimum": 5, "maximum": 1}}}}):
        r = httpx.post(u, json={**base, **bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(u, json={**base, "tools": TOOLS, "tool_choice": "none"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
