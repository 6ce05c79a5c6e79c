"""Our converted GGUFs run in llama.cpp exactly like the HF model runs in transformers.

For each golden fixture (plus a 256-token byte-level tokenizer so llama.cpp can read text), converts
with our converter (GgufCrosscheck.ConvertDirFromEnv), runs llama.cpp's llama-perplexity with an F32
KV cache over a 64-byte text, and compares with the perplexity transformers computes the same way
(chunks of 16, NLL over the second half of each chunk). This checks metadata keys, tensor names and
the llama q/k rotary permutation against an independent engine.

Needs torch + transformers and a llama.cpp build (llama-perplexity in $QLEAP_LLAMA_CPP_BIN, default
/work/llamacpp/build/bin); skipped otherwise.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "golden", "fixtures")
LLAMA_BIN = os.environ.get("QLEAP_LLAMA_CPP_BIN", "/work/llamacpp/build/bin")
TEXT = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-"
N_CTX = 16

sys.path.insert(0, os.path.join(ROOT, "tools"))


def _tests_bin():
    return os.environ.get("QLEAP_TESTS_BIN", os.path.join(ROOT, "build", "qleap_tests"))


def hf_perplexity(model_dir, ids):
    import torch
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    nll, cnt = 0.0, 0
    for c in range(len(ids) // N_CTX):
        chunk = ids[c * N_CTX:(c + 1) * N_CTX]
        with torch.no_grad():
            lp = torch.log_softmax(m(torch.tensor([chunk])).logits[0].double(), -1)
        for j in range(N_CTX // 2, N_CTX - 1):
            nll -= lp[j, chunk[j + 1]].item()
            cnt += 1
    return math.exp(nll / cnt)


@pytest.mark.parametrize("name", sorted(os.listdir(FIXTURES)))
def test_llamacpp_matches_transformers(tmp_path, name):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    ppl_bin = os.path.join(LLAMA_BIN, "llama-perplexity")
    if not os.path.exists(ppl_bin):
        pytest.skip(f"{ppl_bin} not found")
    if not os.path.exists(_tests_bin()):
        pytest.skip("qleap_tests not built")
    from make_random_model import byte_chars

    # A neutral directory name: llama.cpp looks up Phi-3's chat tokens when general.name (which our
    # converter takes from the directory) contains "phi3", and this byte vocabulary has none.
    d = tmp_path / "hf"
    shutil.copytree(os.path.join(FIXTURES, name), d)
    # Byte tokens in byte order, no merges: text byte b is token id b in both engines.
    tok = {"version": "1.0", "added_tokens": [], "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True},
           "post_processor": None, "decoder": {"type": "ByteLevel"},
           "model": {"type": "BPE", "vocab": {c: i for i, c in enumerate(byte_chars())}, "merges": []}}
    json.dump(tok, open(d / "tokenizer.json", "w"), ensure_ascii=False)
    json.dump({"add_bos_token": False}, open(d / "tokenizer_config.json", "w"))
    gguf_path = tmp_path / f"{name}.gguf"
    env = dict(os.environ, QLEAP_CONVERT_IN=str(d), QLEAP_CONVERT_OUT=str(gguf_path), QLEAP_SOURCE_DIR=ROOT)
    r = subprocess.run([_tests_bin(), "--gtest_filter=GgufCrosscheck.ConvertDirFromEnv"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and gguf_path.exists(), r.stdout + r.stderr
    (tmp_path / "text.txt").write_bytes(TEXT)
    env = dict(os.environ, LD_LIBRARY_PATH=LLAMA_BIN)
    r = subprocess.run([ppl_bin, "-m", str(gguf_path), "-f", str(tmp_path / "text.txt"), "-c", str(N_CTX), "-b",
                        str(N_CTX), "-t", "1", "-ctk", "f32", "-ctv", "f32"], env=env, capture_output=True,
                       text=True, timeout=120)
    if "unknown model architecture" in r.stderr:
        pytest.skip("this llama.cpp build does not know the architecture (qwen3 is newer than some builds)")
    if "build_gemma2" in r.stdout + r.stderr and "fatal error" in r.stdout + r.stderr:
        pytest.skip("this llama.cpp build has gemma2 graphs only for the 2B/9B/27B layer counts")
    if "missing tensor 'output.weight'" in r.stderr and json.load(open(d / "config.json")).get("tie_word_embeddings"):
        pytest.skip("this llama.cpp build predates tied output embeddings for this architecture (Phi-4-mini)")
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    ours = float(m.group(1))
    ref = hf_perplexity(str(d), list(TEXT))
    assert ours == pytest.approx(ref, rel=2e-5), (ours, ref)
