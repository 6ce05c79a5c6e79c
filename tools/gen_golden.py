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
    # Gemma 3 text: sliding window 8 on layers 0 and 2 (layer_types given, so the converter writes the
    # per-layer pattern), global layer 1 with linear rope scaling and its own base, head_dim 32 != 64 / 4,
    # query_pre_attn_scalar 24 != head_dim. Prompts of 24 / 19 tokens cross the window.
    "gemma3": ("gemma3_text", dict(num_hidden_layers=3, intermediate_size=96, head_dim=32, sliding_window=8,
                                   query_pre_attn_scalar=24, rms_norm_eps=1e-6,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                   rope_parameters={"full_attention": rope(1000000.0, rope_type="linear", factor=4.0),
                                                    "sliding_attention": rope(10000.0)},
                                   pad_token_id=0, eos_token_id=1, bos_token_id=2),
               dict(prompt_lengths=(24, 19))),
    # Gemma 2: alternating window (layers 0 and 2 local, the default pattern), small soft-caps so that
    # tanh bends the scores and logits.
    "gemma2": ("gemma2", dict(num_hidden_layers=3, intermediate_size=96, head_dim=16, sliding_window=8,
                              query_pre_attn_scalar=16, attn_logit_softcapping=5.0, final_logit_softcapping=10.0,
                              rms_norm_eps=1e-6, rope_parameters=rope(10000.0),
                              pad_token_id=0, eos_token_id=1, bos_token_id=2),
               dict(prompt_lengths=(24, 19))),
    # Phi-4-mini-like: LongRoPE (original context 16, so the 24 / 19 token prompts use the long
    # factors; short_prompts within 16 tokens use the short ones), partial rotary 0.75, fused qkv and
    # gate_up. No sliding window.
    "phi3_longrope": ("phi3", dict(intermediate_size=96, original_max_position_embeddings=16,
                                   partial_rotary_factor=0.75,
                                   rope_parameters=rope(10000.0, rope_type="longrope",
                                                        short_factor=[1.0 + 0.15 * i for i in range(6)],
                                                        long_factor=[1.0 + 1.7 * i for i in range(6)]),
                                   pad_token_id=None, eos_token_id=None, bos_token_id=None,
                                   tie_word_embeddings=True),
                      dict(prompt_lengths=(24, 19), short_prompt_lengths=(16, 11))),
    # Phi-3-mini-like: a sliding window on every layer (10 positions), no rope scaling.
    "phi3_swa": ("phi3", dict(intermediate_size=96, sliding_window=10, rope_parameters=rope(10000.0),
                              pad_token_id=None, eos_token_id=None, bos_token_id=None),
                 dict(prompt_lengths=(24, 19))),
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
    "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
}


def randomize(model, gen, norm_offset=1.0):
    """HF's default init (std 0.02) gives near-uniform logits whose argmax is decided by noise; larger
    weights give well-separated logits so argmax agreement is a meaningful check. norm_offset 0: norms
    applied as (1 + w) (gemma) get w around 0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(norm_offset + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]  # also fused 3-D expert weights (experts, out, in)
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in**0.5))


def run_prompts(model, cfg, gen, lengths):
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    logits = []
    min_gap = float("inf")
    with torch.no_grad():
        for ids in prompts:
            out = model(torch.tensor([ids])).logits[0].to(torch.float32)
            top2 = out.topk(2, dim=-1).values
            min_gap = min(min_gap, float((top2[:, 0] - top2[:, 1]).min()))
            logits.append([[round(float(x), 6) for x in row] for row in out])
    return prompts, logits, min_gap


def make(name, out_dir, seed):
    model_type, extra, *opts = FIXTURES[name]
    opts = opts[0] if opts else {}
    cfg_cls, model_cls = CONFIG_CLASSES[model_type]
    kw = dict(COMMON)
    kw.update(extra)
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(cfg).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen, norm_offset=0.0 if model_type.startswith("gemma") else 1.0)
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

    prompts, logits, min_gap = run_prompts(model, cfg, gen, opts.get("prompt_lengths", (16, 13)))
    golden = {"model_type": model_type, "seed": seed, "prompts": prompts, "logits": logits,
              "transformers": transformers.__version__}
    if "short_prompt_lengths" in opts:
        # Prompts within LongRoPE's original context: transformers uses the short factors for them.
        golden["short_prompts"], golden["short_logits"], _ = run_prompts(model, cfg, gen,
                                                                          opts["short_prompt_lengths"])
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"))
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
