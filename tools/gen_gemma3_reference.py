#!/usr/bin/env python3
"""Reference figures for the real Gemma 3 270M Q4_K_M file from Hugging Face transformers, which loads
the GGUF itself (weights dequantized to float32, norms converted back from 1 + w) and runs its own
Gemma3ForCausalLM: an implementation independent of qleap on the very same weights. llama.cpp's local
snapshot predates Gemma 3, so this is the reference for the real model.

Writes tests/fixtures/models/gemma3_270m_reference.json (small: token ids, per-position argmax, top-2
gap and next-token NLL, greedy continuations), read by tests/unit/model_gemma3_real_test.cpp when
$QLEAP_GEMMA3_MODEL points to the file. With --ppl FILE it also prints transformers' perplexity on
FILE scored as `qleap perplexity` scores it (chunks of --ctx tokens starting with BOS, second half
scored), for docs/models.md.

Usage: /work/genvenv/bin/python tools/gen_gemma3_reference.py [--model PATH] [--ppl FILE --ctx 512 --chunks 4]
"""
import argparse
import json
import math
import os
import shutil
import tempfile

import torch
import transformers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "models", "gemma3_270m_reference.json")

# A scored text (from this repository's own prose, so nothing external is committed) and two greedy
# prompts. The ids are stored: the test feeds them as they are, so tokenization is not part of it.
TEXT = ("QuantumLeap is a local inference engine for large language models. It reads GGUF files, runs "
        "their layers on the CPU with hand-written vector kernels or on a CUDA GPU, and serves them over "
        "an HTTP API that Ollama and OpenAI clients understand. The key-value cache can be compressed "
        "with TurboQuant, which rotates each key and value vector and stores a few bits per coordinate. "
        "Mixture-of-experts models keep their most used experts in fast memory while the rest stay on "
        "the host. Every architecture is checked against Hugging Face transformers on tiny random "
        "models, and real models are compared with llama.cpp on greedy text and perplexity.")
GREEDY_PROMPTS = ["The capital of France is", "def fibonacci(n):\n"]
N_GREEDY = 32


def load(path):
    tmp = tempfile.mkdtemp()
    try:
        os.symlink(os.path.abspath(path), os.path.join(tmp, "m.gguf"))
        tok = transformers.AutoTokenizer.from_pretrained(tmp, gguf_file="m.gguf")
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp, gguf_file="m.gguf",
                                                                  dtype=torch.float32).eval()
    finally:
        shutil.rmtree(tmp)
    return tok, model


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].to(torch.float32)


def scored(ids, logits):
    """Per position: argmax, top-1 minus top-2 logit, NLL of the next token (last position: none)."""
    top2 = logits.topk(2, dim=-1)
    lsm = torch.log_softmax(logits.double(), dim=-1)
    nll = [float(-lsm[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    return ([int(x) for x in top2.indices[:, 0]], [round(float(a - b), 5) for a, b in top2.values],
            [round(x, 6) for x in nll])


def greedy(model, ids, n):
    ids = list(ids)
    out, gaps = [], []
    for _ in range(n):
        top2 = logits_of(model, ids)[-1].topk(2)
        t = int(top2.indices[0])
        out.append(t)
        gaps.append(round(float(top2.values[0] - top2.values[1]), 5))
        ids.append(t)
    return out, gaps


def perplexity(tok, model, path, ctx, chunks):
    with open(path, encoding="utf-8") as f:
        ids = tok(f.read(), add_special_tokens=False)["input_ids"]
    n = min(len(ids) // ctx, chunks)
    total, count = 0.0, 0
    for c in range(n):
        chunk = ids[c * ctx:(c + 1) * ctx]
        chunk[0] = tok.bos_token_id
        lsm = torch.log_softmax(logits_of(model, chunk).double(), dim=-1)
        for i in range(ctx // 2, ctx - 1):
            total -= float(lsm[i, chunk[i + 1]])
            count += 1
        print(f"[{c + 1}/{n}] ppl {math.exp(total / count):.4f}")
    return math.exp(total / count), count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/work/models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--ppl", default="")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    a = ap.parse_args()
    tok, model = load(a.model)
    cfg = model.config
    print("config:", {k: getattr(cfg, k, None) for k in ("sliding_window", "layer_types", "rope_parameters",
                                                         "query_pre_attn_scalar", "final_logit_softcapping")})
    if a.ppl:
        ppl, count = perplexity(tok, model, a.ppl, a.ctx, a.chunks)
        print(f"transformers PPL = {ppl:.4f} ({count} tokens scored)")
        return
    ids = [tok.bos_token_id] + tok(TEXT, add_special_tokens=False)["input_ids"]
    argmax, gap, nll = scored(ids, logits_of(model, ids))
    ref = {"model": os.path.basename(a.model), "transformers": transformers.__version__, "ids": ids,
           "argmax": argmax, "top2_gap": gap, "nll": nll, "greedy": []}
    for p in GREEDY_PROMPTS:
        pid = [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
        out, gaps = greedy(model, pid, N_GREEDY)
        ref["greedy"].append({"prompt": p, "ids": pid, "continuation": out, "top2_gap": gaps})
        print(repr(p), "->", repr(tok.decode(out)))
    ppl = math.exp(sum(nll) / len(nll))
    print(f"{len(ids)} tokens, PPL over the text {ppl:.4f}")
    with open(OUT, "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
