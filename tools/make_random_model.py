#!/usr/bin/env python3
"""Writes a random-weight Llama checkpoint in Hugging Face layout (config.json + model.safetensors +
a synthetic byte-level BPE tokenizer.json) for benchmarks, with numpy only (no torch). Defaults: hidden 768, 12 layers, 12 heads / 4 kv heads,
ffn 2048, vocab 32000, context 2048 (~120M parameters), weights ~ N(0, 0.02), norms 1.

    python3 tools/make_random_model.py /tmp/rand-llama [--dtype BF16|F16|F32]
    qleap convert /tmp/rand-llama out.gguf --type Q4_0

Tensors are generated and written one at a time, so memory stays at the size of the largest one.
The tokenizer (256 byte tokens, random merges up to the vocab size, <|endoftext|> = bos = eos) is
there so that other engines (llama.cpp) load the converted model too; its merges mean nothing.
"""
import argparse
import json
import os
import struct

import numpy as np


def to_dtype(a, dtype):
    if dtype == "F32":
        return a.astype(np.float32)
    if dtype == "F16":
        return a.astype(np.float16)
    # BF16: round to nearest even on the top 16 bits of the float32 pattern.
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def byte_chars():
    """GPT-2's byte -> printable character table (bytes that print as themselves keep their code)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def synthetic_tokenizer(vocab_size, rng):
    tokens = byte_chars()
    seen = set(tokens)
    merges = []
    n_regular = vocab_size - 1  # the last id is the special token
    while len(tokens) < n_regular:
        a = tokens[int(rng.integers(0, len(tokens)))]
        b = tokens[int(rng.integers(0, min(len(tokens), 512)))]
        if a + b in seen or len(a + b) > 16:
            continue
        seen.add(a + b)
        tokens.append(a + b)
        merges.append([a, b])
    eot = len(tokens)
    return {
        "version": "1.0",
        "added_tokens": [{"id": eot, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }, eot


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="BF16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tokenizer", action="store_true", help="skip tokenizer.json")
    ap.add_argument("--experts", type=int, default=0,
                    help="mixture of experts: experts per layer (writes a qwen3_moe checkpoint)")
    ap.add_argument("--experts-used", type=int, default=8, help="experts per token")
    ap.add_argument("--expert-ffn", type=int, default=768, help="one expert's intermediate size")
    ap.add_argument("--router-skew", type=float, default=1.0,
                    help="std of a per-expert router logit bias (random routers alone route near-uniformly): "
                         "embedding dim 0 is a constant every token shares, and each expert's router "
                         "weight on it is drawn so its logit bias has this std")
    args = ap.parse_args()
    moe = args.experts > 0

    h, hd = args.hidden, args.hidden // args.heads
    shapes = {"model.embed_tokens.weight": (args.vocab, h)}
    for i in range(args.layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (args.heads * hd, h),
            p + "self_attn.k_proj.weight": (args.kv_heads * hd, h),
            p + "self_attn.v_proj.weight": (args.kv_heads * hd, h),
            p + "self_attn.o_proj.weight": (h, args.heads * hd),
            p + "post_attention_layernorm.weight": (h,),
        })
        if not moe:
            shapes.update({
                p + "mlp.gate_proj.weight": (args.ffn, h),
                p + "mlp.up_proj.weight": (args.ffn, h),
                p + "mlp.down_proj.weight": (h, args.ffn),
            })
            continue
        shapes.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
                       p + "mlp.gate.weight": (args.experts, h)})
        for e in range(args.experts):
            q = f"{p}mlp.experts.{e}."
            shapes.update({q + "gate_proj.weight": (args.expert_ffn, h), q + "up_proj.weight": (args.expert_ffn, h),
                           q + "down_proj.weight": (h, args.expert_ffn)})
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (args.vocab, h)

    esize = 4 if args.dtype == "F32" else 2
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * esize
        header[name] = {"dtype": args.dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)

    # Embedding dim 0 = bias_c for every token: after RMSNorm it is about bias_x (other dims ~ N(0, 1)).
    emb_std = 0.1
    bias_c = 5 * emb_std
    bias_x = bias_c / np.sqrt((bias_c**2 + (h - 1) * emb_std**2) / h)
    os.makedirs(args.out_dir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    with open(os.path.join(args.out_dir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                a = np.ones(shape, dtype=np.float32)
            elif moe and name == "model.embed_tokens.weight":
                # A shared constant in dim 0 (rms-normalized to about bias_x) carries the router bias. The
                # token part is larger than the dense default so that the near-constant output of the
                # random attention layers does not dominate the routing.
                a = rng.standard_normal(shape, dtype=np.float32) * np.float32(emb_std)
                a[:, 0] = bias_c
            elif name.endswith("mlp.gate.weight"):
                a = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(h))
                a[:, 0] = rng.standard_normal(shape[0]).astype(np.float32) * np.float32(args.router_skew / bias_x)
            elif moe and name.endswith("o_proj.weight"):
                # Random attention averages its values into an output nearly the same for every
                # token; kept small so that deeper layers still route by token, not by that.
                a = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.002)
            else:
                a = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            f.write(to_dtype(a, args.dtype).tobytes())
    eot = None
    if not args.no_tokenizer:
        tok, eot = synthetic_tokenizer(args.vocab, np.random.default_rng(args.seed + 1))
        with open(os.path.join(args.out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": args.ffn,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "vocab_size": args.vocab,
        "max_position_embeddings": args.ctx,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": eot if eot is not None else 1,
        "eos_token_id": eot if eot is not None else 2,
        "hidden_act": "silu",
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[args.dtype],
    }
    if moe:
        config.update({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "head_dim": hd,
                       "num_experts": args.experts, "num_experts_per_tok": args.experts_used,
                       "moe_intermediate_size": args.expert_ffn, "norm_topk_prob": True})
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    print(f"wrote {args.out_dir}: {n_params / 1e6:.1f}M parameters, {off / 2**20:.0f} MiB of {args.dtype}")


if __name__ == "__main__":
    main()
