#!/usr/bin/env python3
"""Generates the golden-logit fixtures under tests/golden/fixtures/<name>/.

Each fixture is a tiny random-weight Hugging Face model (fixed seed) saved as config.json +
model.safetensors (F32), plus golden.json = {"prompts": [[ids]], "logits": [[[n_vocab floats] per
position] per prompt]} computed by transformers in float32 (eager attention). The C++ golden test
converts each directory to GGUF with our converter, runs it with our engine and compares.

Needs torch + transformers (not available in CI: the fixtures are committed).
Usage: python3 tools/gen_golden.py [--out tests/golden/fixtures] [--only name,...]
"""
import argparse
import json
import os
import shutil

import torch
import transformers

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
)


def rope(theta, **scaling):
    """transformers 5 keeps rope_theta and scaling together in rope_parameters."""
    p = {"rope_type": "default", "rope_theta": theta}
    p.update(scaling)
    return p


FIXTURES = {
    "llama_gqa": ("llama", dict(rope_parameters=rope(10000.0))),
    "llama_tied": ("llama", dict(tie_word_embeddings=True, rope_parameters=rope(10000.0))),
    "llama_rope_llama3": (
        "llama",
        dict(rope_parameters=rope(500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                  high_freq_factor=4.0, original_max_position_embeddings=64)),
    ),
    "llama_rope_linear": ("llama", dict(rope_parameters=rope(10000.0, rope_type="linear", factor=4.0))),
    "llama_rope_yarn": (
        "llama",
        dict(rope_parameters=rope(10000.0, rope_type="yarn", factor=4.0, original_max_position_embeddings=128)),
    ),
    "mistral": ("mistral", dict(rope_parameters=rope(10000.0), sliding_window=None)),
    "qwen2": ("qwen2", dict(rope_parameters=rope(1000000.0), tie_word_embeddings=False)),
    "qwen3": ("qwen3", dict(head_dim=32, rope_parameters=rope(1000000.0), tie_word_embeddings=False)),
    # Mixture of experts: 8 experts, top-2, small expert FFNs (fixtures stay well under 1 MB).
    "qwen3_moe": ("qwen3_moe", dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                    norm_topk_prob=True, rope_parameters=rope(1000000.0),
                                    tie_word_embeddings=False)),
    "qwen2_moe": ("qwen2_moe", dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                    shared_expert_intermediate_size=48, norm_topk_prob=False,
                                    rope_parameters=rope(1000000.0), tie_word_embeddings=False)),
    "mixtral": ("mixtral", dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=48,
                                rope_parameters=rope(1000000.0), sliding_window=None)),
    # OLMoE has no GQA (and llama.cpp assumes k_norm spans n_embd), so kv heads = heads here.
    "olmoe": ("olmoe", dict(num_experts=8, num_experts_per_tok=2, intermediate_size=48, norm_topk_prob=False,
                            num_key_value_heads=4,
                            rope_parameters=rope(10000.0), eos_token_id=None, pad_token_id=None)),
}

CONFIG_CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM),
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM),
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM),
    "olmoe": (transformers.OlmoeConfig, transformers.OlmoeForCausalLM),
}


def randomize(model, gen):
    """HF's default init (std 0.02) gives near-uniform logits whose argmax is decided by noise; larger
    weights give well-separated logits so argmax agreement is a meaningful check."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]  # also fused 3-D expert weights (experts, out, in)
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in**0.5))


def make(name, out_dir, seed):
    model_type, extra = FIXTURES[name]
    cfg_cls, model_cls = CONFIG_CLASSES[model_type]
    kw = dict(COMMON)
    kw.update(extra)
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(cfg).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)
    if cfg.tie_word_embeddings:
        model.tie_weights()

    d = os.path.join(out_dir, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model.save_pretrained(d, safe_serialization=True)
    for extra_file in ("generation_config.json",):
        p = os.path.join(d, extra_file)
        if os.path.exists(p):
            os.remove(p)

    prompts = [
        torch.randint(0, cfg.vocab_size, (16,), generator=gen).tolist(),
        torch.randint(0, cfg.vocab_size, (13,), generator=gen).tolist(),
    ]
    logits = []
    min_gap = float("inf")
    with torch.no_grad():
        for ids in prompts:
            out = model(torch.tensor([ids])).logits[0].to(torch.float32)
            top2 = out.topk(2, dim=-1).values
            min_gap = min(min_gap, float((top2[:, 0] - top2[:, 1]).min()))
            logits.append([[round(float(x), 6) for x in row] for row in out])
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump({"model_type": model_type, "seed": seed, "prompts": prompts, "logits": logits,
                   "transformers": transformers.__version__}, f, separators=(",", ":"))
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    print(f"{name}: {size / 1024:.0f} KiB, smallest top1-top2 logit gap {min_gap:.4f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "fixtures"))
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    names = [n for n in FIXTURES if not args.only or n in args.only.split(",")]
    for i, n in enumerate(FIXTURES):
        if n in names:
            make(n, args.out, seed=1234 + i)


if __name__ == "__main__":
    main()
