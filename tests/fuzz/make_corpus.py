#!/usr/bin/env python3
"""Writes the fuzzing seed corpus: a few tiny valid GGUF files (gguf-py) and safetensors files, and
structure-aware server requests (both APIs, deep nesting, huge numbers, wrong types per field, raw
HTTP framing) with the dictionary of the API's keys (server_request.dict); and, for the model loader,
tiny models of several architectures converted from the golden fixtures by `qleap convert` (binary from
$QLEAP_BIN, default build/qleap; skipped when it is not built)."""
import json
import os
import shutil
import subprocess

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def gguf_file(path, fill):
    w = gguf.GGUFWriter(path, "llama")
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    g = os.path.join(HERE, "corpus", "gguf")
    s = os.path.join(HERE, "corpus", "safetensors")
    for d in (g, s):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    gguf_file(os.path.join(g, "meta_only.gguf"), lambda w: (w.add_uint32("llama.block_count", 2),
                                                            w.add_string("general.name", "x")))

    def tensors(w):
        w.add_custom_alignment(64)
        w.add_array("tokenizer.ggml.tokens", ["a", "b", "<s>"])
        w.add_array("nested", [[1, 2], [3]])
        w.add_float32("llama.rope.freq_base", 10000.0)
        w.add_bool("b", True)
        w.add_tensor("w", np.arange(8, dtype=np.float32).reshape(2, 4))
        w.add_tensor("h", np.arange(4, dtype=np.float16))
        w.add_tensor("q", np.zeros((1, 34), dtype=np.uint8), raw_dtype=Q.Q8_0)
    gguf_file(os.path.join(g, "tensors.gguf"), tensors)
    ref = os.path.join(HERE, "..", "golden", "gguf_py", "reference.gguf")
    if os.path.exists(ref):
        shutil.copy(ref, os.path.join(g, "all_types.gguf"))
    save_file({"a": np.ones((2, 3), dtype=np.float32), "b": np.zeros(4, dtype=np.float16)},
              os.path.join(s, "small.safetensors"), metadata={"format": "pt"})
    save_file({"x": np.arange(6, dtype=np.int64)}, os.path.join(s, "i64.safetensors"))
    server_seeds(os.path.join(HERE, "corpus", "server_request"))
    server_dict(os.path.join(HERE, "server_request.dict"))


SERVER_BASES = {
    "ollama_generate": {"model": "stories260K", "prompt": "Once upon", "system": "s", "raw": False, "stream": False,
                        "context": [1, 2, 3], "format": "json", "images": [], "keep_alive": "5m",
                        "logprobs": True, "top_logprobs": 2,
                        "options": {"temperature": 0, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "num_predict": 5,
                                    "num_ctx": 1, "num_keep": 4, "seed": 42, "stop": ["a", "b"],
                                    "repeat_penalty": 1.1, "repeat_last_n": 64}},
    "ollama_chat": {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "hi", "images": ["aGk="]},
                                             {"role": "assistant", "content": "",
                                              "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
                                             {"role": "tool", "content": "{}"}],
                    "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                        "type": "object", "properties": {"x": {"type": "integer"}}}}}],
                    "format": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0,
                                                                      "maximum": 9}}, "required": ["a"]},
                    "stream": True, "keep_alive": 0},
    "ollama_embed": {"model": "m", "input": ["a", "b"], "truncate": False, "options": {"num_ctx": 8}},
    "openai_chat": {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                           {"type": "image_url",
                                                                            "image_url": {"url": "data:,"}}]}],
                    "max_tokens": 3, "max_completion_tokens": 4, "temperature": 1, "top_p": 1, "seed": 1,
                    "stop": "x", "n": 1, "presence_penalty": 0.5, "frequency_penalty": 0.5,
                    "stream": True, "stream_options": {"include_usage": True}, "logprobs": True,
                    "top_logprobs": 3, "parallel_tool_calls": False,
                    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                        "type": "object", "properties": {"city": {"type": "string", "maxLength": 9}},
                        "required": ["city"], "$defs": {"u": {"enum": ["c", "f"]}}}}}],
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                        "anyOf": [{"type": "string"}, {"type": "null"}]}}}},
    "openai_completion": {"model": "m", "prompt": ["Once"], "logprobs": 2, "max_tokens": 2, "echo": False},
    "openai_embeddings": {"model": "m", "input": [[1, 2, 3], "text"], "encoding_format": "base64",
                          "dimensions": 8},
}

WRONG = [None, True, -1, 1e308, 99999999999999999999, -0.0, "", "x", [], [1, "a"], {}, {"a": [None]}]


def nested(depth):
    """JSON text nested depth levels (as text: Python's json module recurses)."""
    opens = "".join("[" if i % 2 else '{"k":' for i in range(depth))
    closes = "".join("]" if i % 2 else "}" for i in reversed(range(depth)))
    return opens + "1" + closes


def server_seeds(d):
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):  # generated seeds are numbered; hand-written ones stay
        if f[:3].isdigit():
            os.remove(os.path.join(d, f))
    n = 0

    def put(name, data):
        nonlocal n
        n += 1
        mode = "wb" if isinstance(data, bytes) else "w"
        with open(os.path.join(d, f"{n:03d}_{name}"), mode) as f:
            f.write(data)

    for name, base in SERVER_BASES.items():
        put(name + ".json", json.dumps(base))
        # Wrong types, one field at a time (one wrong value per field, cycling through them).
        for i, key in enumerate(base):
            bad = dict(base)
            bad[key] = WRONG[i % len(WRONG)]
            put(f"{name}_wrong_{key}.json", json.dumps(bad))
    # Deep nesting where the server copies or walks: beyond the 512-level limit and just under it.
    for depth in (511, 600, 4000):
        for field in ("messages", "format", "tools", "options"):
            b = dict(SERVER_BASES["ollama_chat"])
            b[field] = "@DEEP@"
            put(f"deep_{field}_{depth}.json", json.dumps(b).replace('"@DEEP@"', nested(depth)))
    put("deep_string_brackets.json", json.dumps({"model": "m", "prompt": "[" * 5000}))
    # Huge and odd numbers.
    put("numbers.json", '{"model":"m","prompt":"x","options":{"num_predict":1e400,"temperature":-0,'
                        '"seed":99999999999999999999999,"top_k":-2147483649,"num_ctx":2147483648}}')
    put("schema_numbers.json", json.dumps({"model": "m", "format": {"type": "number", "minimum": -1e300,
                                                                    "exclusiveMaximum": 1e-300}, "prompt": "-0.0"}))
    put("schema_escapes.json", json.dumps({"model": "m", "format": {
        "type": "object", "properties": {"colo\u00fcr": {"enum": ['r"ed', "gr\u00e9en", "\U0001F600"]}},
        "required": ["colo\u00fcr"]}, "prompt": '{"colo\\u00fcr": "gr\\u00e9en"}'}))
    put("schema_recursive.json", json.dumps({"model": "m", "format": {
        "$defs": {"n": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/n"},
                                                                              {"type": "null"}]}}}},
        "$ref": "#/$defs/n"}, "prompt": '{"next": {"next": null}}'}))
    put("schema_self_ref.json", json.dumps({"model": "m", "format": {"$ref": "#"}, "prompt": "{}"}))
    # Raw HTTP framing.
    for raw in (b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n",
                b"POST /api/chat HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n",
                b"OPTIONS * HTTP/1.1\r\nHost: a\r\nOrigin: http://evil.example\r\n\r\n",
                b"GET http://127.0.0.1/x HTTP/1.0\n\n"):
        put("http.txt", raw)


def server_dict(path):
    keys = set()

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                keys.add(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    for b in SERVER_BASES.values():
        walk(b)
    keys |= {"type", "properties", "required", "items", "enum", "const", "anyOf", "allOf", "oneOf", "$ref",
             "$defs", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
             "minItems", "maxItems", "additionalProperties", "pattern", "nullable", "object", "array", "string",
             "integer", "number", "boolean", "null", "json_object", "json_schema", "function", "auto", "none",
             "required", "text", "image_url", "tool_calls", "role", "content", "user", "assistant", "system"}
    def entry(token):
        # libFuzzer dictionary syntax: "..." with \\, \" and \xNN escapes.
        out = ""
        for ch in token.encode():
            c = chr(ch)
            out += "\\" + c if c in '"\\' else c if 32 <= ch < 127 else f"\\x{ch:02x}"
        return f'"{out}"'
    lines = [entry(json.dumps(k)) for k in sorted(keys)]
    lines += [entry(t) for t in ("\\u00", "\\ud83d\\ude00", "1e400", "-0", "[[[[", "{{{{", "null", "true",
                                 "Content-Length: ", "Transfer-Encoding: chunked", "Host: ", "Origin: ", "\r\n\r\n",
                                 "HTTP/1.1", "POST /api/chat ", "POST /v1/chat/completions ")]
    with open(path, "w") as f:
        f.write("# Keys and tokens of the server API (make_corpus.py writes this file).\n")
        f.write("\n".join(lines) + "\n")


# One fixture per architecture reader: dense llama (GQA), gemma3 (sliding windows), phi3 (fused
# projections, LongRoPE), qwen2moe (shared expert), gpt-oss (sinks, biased experts), qwen3next
# (DeltaNet), deepseek_v3 (MLA). Q4_0 keeps them small.
MODEL_SEEDS = ["llama_gqa", "gemma3", "phi3_longrope", "qwen2_moe", "gpt_oss", "qwen3_next", "deepseek_v3"]


def model_load_seeds(d):
    """Tiny models, each with a tokenizer so the loader's fuzzing reaches the tokenizer too: a byte-level
    BPE vocabulary of the 256 bytes (the fixtures' vocab size), and, for llama, stories260K's
    SentencePiece vocabulary with its scores and token types."""
    import sys
    import tempfile
    sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
    from make_random_model import byte_chars

    qleap = os.environ.get("QLEAP_BIN", os.path.join(HERE, "..", "..", "build", "qleap"))
    if not os.path.exists(qleap):
        print(f"{qleap} not built: model_load seeds left as they are")
        return
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    fixtures = os.path.join(HERE, "..", "golden", "fixtures")
    tok = {"version": "1.0", "added_tokens": [{"id": 255, "content": "\u00ff", "special": True}],
           "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True},
           "post_processor": None, "decoder": {"type": "ByteLevel"},
           "model": {"type": "BPE", "vocab": {c: i for i, c in enumerate(byte_chars())},
                     "merges": [f"{byte_chars()[104]} {byte_chars()[105]}"]}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODEL_SEEDS:
            src = os.path.join(tmp, name)
            shutil.copytree(os.path.join(fixtures, name), src)
            with open(os.path.join(src, "tokenizer.json"), "w") as f:
                json.dump(tok, f, ensure_ascii=False)
            subprocess.run([qleap, "convert", src, os.path.join(d, name + ".gguf"), "--type", "Q4_0"],
                           check=True, capture_output=True)
    # stories260K's tokenizer (SentencePiece, 512 pieces) on a metadata-only file.
    r = gguf.GGUFReader(os.path.join(HERE, "..", "fixtures", "models", "stories260K.gguf"))
    w = gguf.GGUFWriter(os.path.join(d, "spm_tokenizer.gguf"), "llama")
    for field in r.fields.values():
        if field.name.startswith("tokenizer.ggml."):
            v = field.contents()
            if isinstance(v, list):
                w.add_array(field.name, v)
            elif isinstance(v, str):
                w.add_string(field.name, v)
            elif isinstance(v, bool):
                w.add_bool(field.name, v)
            else:
                w.add_uint32(field.name, int(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
    model_load_seeds(os.path.join(HERE, "corpus", "model_load"))
