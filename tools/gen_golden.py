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


# A field this config class does not have (None would be passed on: some fixtures set ids to None).
UNSET = object()


def rope(theta, **scaling):
    """transformers 5 keeps rope_theta and scaling together in rope_parameters."""
    p = {"rope_type": "default", "rope_theta": theta}
    p.update(scaling)
    return p


# The hybrids' references are computed in float64: their float32 forward differs from float64 by about
# 1e-4 at the logits (measured: 1.2e-4 on qwen3_5), the bound the engine is held to, so a float32
# reference could not tell a correct float32 engine from a wrong one at that level.
HYBRID = dict(ref_dtype=torch.float64, centered_norms=True, min_route_margin=0.05, num_hidden_layers=4, head_dim=32, full_attention_interval=2, linear_conv_kernel_dim=4,
              linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
              tie_word_embeddings=False)

# A vision tower as small as the config allows: only there to be left out by the converter.
TINY_VISION = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, patch_size=2, spatial_merge_size=1,
                   temporal_patch_size=1, out_hidden_size=64, num_position_embeddings=16)

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
    # Hybrid Gated DeltaNet + gated attention stacks (layers: linear, full, linear, full). 2 key heads and
    # 4 value heads in the linear layers, so the value-to-key head mapping matters; prompts of 136 and 67
    # tokens cross the DeltaNet chunk boundaries (64, 128). qwen3_5 is the multimodal checkpoint layout
    # (text_config, model.language_model.*, a tiny vision tower the converter must leave out).
    "qwen3_5": ("qwen3_5", dict(HYBRID, intermediate_size=64, prompt_lens=(136, 67),
                                rope_parameters=rope(1000000.0, partial_rotary_factor=0.25,
                                                     mrope_section=[2, 1, 1], mrope_interleaved=True))),
    "qwen3_5_moe": ("qwen3_5_moe_text", dict(HYBRID, intermediate_size=UNSET, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                             shared_expert_intermediate_size=32, prompt_lens=(136, 67),
                                             rope_parameters=rope(1000000.0, partial_rotary_factor=0.25,
                                                                  mrope_section=[2, 1, 1], mrope_interleaved=True))),
    # Value heads wider than key heads (24 vs 16), as the models allow.
    "qwen3_next": ("qwen3_next", dict(HYBRID, linear_value_head_dim=24, intermediate_size=96, num_experts=4,
                                      num_experts_per_tok=2, moe_intermediate_size=32,
                                      shared_expert_intermediate_size=48, norm_topk_prob=True,
                                      prompt_lens=(136, 67),
                                      rope_parameters=rope(1000000.0, partial_rotary_factor=0.25))),
    # Gemma 3 text: sliding window 8 on layers 0 and 2 (layer_types given, so the converter writes the
    # per-layer pattern), global layer 1 with linear rope scaling and its own base, head_dim 32 != 64 / 4,
    # query_pre_attn_scalar 24 != head_dim. Prompts of 24 / 19 tokens cross the window. Gemma's norms
    # scale by (1 + w). The seeds are the ones these fixtures were made with (their place in the table
    # before the hybrids were added).
    "gemma3": ("gemma3_text", dict(num_hidden_layers=3, intermediate_size=96, head_dim=32, sliding_window=8,
                                   query_pre_attn_scalar=24, rms_norm_eps=1e-6,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                   rope_parameters={"full_attention": rope(1000000.0, rope_type="linear", factor=4.0),
                                                    "sliding_attention": rope(10000.0)},
                                   pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                   prompt_lens=(24, 19), centered_norms=True, seed=1234 + 12)),
    # Gemma 3 in the shape of the released configs, which llama.cpp's files can describe (they carry no
    # layer pattern or score scale): five local layers per global one (layers 0-4 and 6 local, 5 global),
    # query_pre_attn_scalar = head_dim, linear rope scaling 8 on the global layers (the 4B-27B configs).
    # tests/golden/llamacpp/gemma3_std.gguf is this fixture converted by llama.cpp's converter.
    "gemma3_std": ("gemma3_text", dict(num_hidden_layers=7, intermediate_size=96, head_dim=32, sliding_window=8,
                                       query_pre_attn_scalar=32, rms_norm_eps=1e-6,
                                       rope_parameters={"full_attention": rope(1000000.0, rope_type="linear",
                                                                               factor=8.0),
                                                        "sliding_attention": rope(10000.0)},
                                       pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                       prompt_lens=(24, 19), centered_norms=True, seed=1234 + 40)),
    # Gemma 2: alternating window (layers 0 and 2 local, the default pattern), small soft-caps so that
    # tanh bends the scores and logits.
    "gemma2": ("gemma2", dict(num_hidden_layers=3, intermediate_size=96, head_dim=16, sliding_window=8,
                              query_pre_attn_scalar=16, attn_logit_softcapping=5.0, final_logit_softcapping=10.0,
                              rms_norm_eps=1e-6, rope_parameters=rope(10000.0),
                              pad_token_id=0, eos_token_id=1, bos_token_id=2,
                              prompt_lens=(24, 19), centered_norms=True, seed=1234 + 13)),
    # Phi-4-mini-like: LongRoPE (original context 16, so the 24 / 19 token prompts use the long
    # factors; short prompts within 16 tokens use the short ones), partial rotary 0.75, fused qkv and
    # gate_up. No sliding window.
    "phi3_longrope": ("phi3", dict(intermediate_size=96, original_max_position_embeddings=16,
                                   partial_rotary_factor=0.75,
                                   rope_parameters=rope(10000.0, rope_type="longrope",
                                                        short_factor=[1.0 + 0.15 * i for i in range(6)],
                                                        long_factor=[1.0 + 1.7 * i for i in range(6)]),
                                   pad_token_id=None, eos_token_id=None, bos_token_id=None,
                                   tie_word_embeddings=True,
                                   prompt_lens=(24, 19), short_prompt_lens=(16, 11), seed=1234 + 14)),
    # Phi-3-mini-like: a sliding window on every layer (10 positions), no rope scaling.
    "phi3_swa": ("phi3", dict(intermediate_size=96, sliding_window=10, rope_parameters=rope(10000.0),
                              pad_token_id=None, eos_token_id=None, bos_token_id=None,
                              prompt_lens=(24, 19), seed=1234 + 15)),
    # gpt-oss: 4 layers alternating sliding window (16 here, 128 in the real models) and full attention
    # from layer 0, attention sinks, biases on q/k/v/o, the router and the experts (4, top-2) with the
    # clamped SwiGLU, YaRN not truncated (its correction range 2.02 .. 4.35 falls between pairs at
    # head_dim 16). Prompts of 40 / 23 tokens cross the window.
    "gpt_oss": ("gpt_oss", dict(num_hidden_layers=4, head_dim=16, intermediate_size=32, num_local_experts=4,
                                num_experts_per_tok=2, sliding_window=16, tie_word_embeddings=False,
                                layer_types=["sliding_attention", "full_attention"] * 2,
                                rope_parameters=rope(150000.0, rope_type="yarn", factor=32.0, beta_fast=32.0,
                                                     beta_slow=1.0, truncate=False,
                                                     original_max_position_embeddings=4096),
                                pad_token_id=None, eos_token_id=None, bos_token_id=None,
                                max_position_embeddings=131072, eager_experts=True, router_scale=4.0, min_route_margin=0.02,
                                prompt_lens=(40, 23), seed=4242)),
}

# DeepSeek-style MLA + MoE (deepseek2 GGUF): absorbed latent attention checked against transformers'
# expanded keys. kv_lora_rank 32 + rope 16 = a 48-wide latent; nope 16, v 24 (v != nope, so a mix-up of
# the kv_b split shows). deepseek_v3: q_lora_rank 24, one leading dense layer, 8 experts in 4 groups
# (top-2 groups, top-2 experts), sigmoid scores with a random selection bias, routed scale 2.5, a shared
# expert, YaRN (factor 4, mscale = mscale_all_dim = 1: scores scaled by mscale^2) crossed by the
# prompts (original context 16). deepseek_v2: q_lora_rank None (V2-Lite layout), softmax greedy top-2,
# two shared experts. References in float64 (as the hybrids'): the F32 bound is 1e-4. Explicit seeds
# (their place in the table is not their seed); the routing margin is DeepSeek's own selection margin.
MLA = dict(num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=24,
           n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, intermediate_size=96,
           num_hidden_layers=3, first_k_dense_replace=1, rms_norm_eps=1e-6, min_route_margin=0.001, ref_dtype=torch.float64,
           pad_token_id=None, eos_token_id=None, bos_token_id=None, prompt_lens=(40, 23))
FIXTURES.update({
    "deepseek_v3": ("deepseek_v3", dict(MLA, q_lora_rank=24, n_group=4, topk_group=2, n_shared_experts=1,
                                        routed_scaling_factor=2.5, norm_topk_prob=True, tie_word_embeddings=False,
                                        rope_parameters=rope(10000.0, rope_type="yarn", factor=4.0, mscale=1.0,
                                                             mscale_all_dim=1.0, original_max_position_embeddings=16,
                                                             beta_fast=32.0, beta_slow=1.0),
                                        seed=1934)),
    "deepseek_v2_lite": ("deepseek_v2", dict(MLA, q_lora_rank=None, n_shared_experts=2, topk_method="greedy",
                                             n_group=None, topk_group=None, routed_scaling_factor=1.0,
                                             norm_topk_prob=False, tie_word_embeddings=False,
                                             rope_parameters=rope(10000.0), seed=1935)),
})

CONFIG_CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM),
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM),
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM),
    "olmoe": (transformers.OlmoeConfig, transformers.OlmoeForCausalLM),
    "qwen3_5": (transformers.Qwen3_5Config, transformers.Qwen3_5ForConditionalGeneration),
    "qwen3_5_moe_text": (transformers.Qwen3_5MoeTextConfig, transformers.Qwen3_5MoeForCausalLM),
    "qwen3_next": (transformers.Qwen3NextConfig, transformers.Qwen3NextForCausalLM),
    "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
    "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM),
    "deepseek_v2": (transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM),
    "gpt_oss": (transformers.GptOssConfig, transformers.GptOssForCausalLM),
}


def randomize(model, gen, centered_norms=False):
    """HF's default init (std 0.02) gives near-uniform logits whose argmax is decided by noise; larger
    weights give well-separated logits so argmax agreement is a meaningful check. centered_norms: the
    model's RMSNorms scale by (1 + weight) (Qwen3-Next / Qwen3.5, Gemma), so their weights are drawn
    around 0, except the DeltaNet's gated norm (linear_attn.norm), which scales by weight."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                center = 0.0 if centered_norms and not name.endswith("linear_attn.norm.weight") else 1.0
                p.copy_(center + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".sinks"):  # gpt-oss: sink logits on the scale of the scores
                p.copy_(2.0 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]  # also fused 3-D expert weights (experts, out, in)
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in**0.5))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's selection bias (zeros at init)
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))


def make(name, out_dir, seed):
    model_type, extra = FIXTURES[name]
    kw = dict(COMMON)
    kw.update(extra)
    prompt_lens = kw.pop("prompt_lens", (16, 13))
    short_prompt_lens = kw.pop("short_prompt_lens", None)
    seed = kw.pop("seed", seed)
    ref_dtype = kw.pop("ref_dtype", torch.float32)
    centered_norms = kw.pop("centered_norms", False)
    eager_experts = kw.pop("eager_experts", False)
    # Router weights scaled up (gpt_oss): wider routing margins than 52 draws of the default scale gave.
    router_scale = kw.pop("router_scale", 1.0)
    # MoE: draw again (seed + 1000) until every routing decision of the reference run has its k-th and
    # (k+1)-th router logits at least this far apart, so that quantized weights do not flip an expert
    # choice on a near tie (a flip changes that token's output by whole units, not by rounding).
    min_route_margin = kw.pop("min_route_margin", 0.0)
    for attempt in range(50):
        built = build(name, model_type, kw, seed + 1000 * attempt, ref_dtype, centered_norms, prompt_lens,
                      short_prompt_lens, eager_experts, router_scale)
        if built[-1] >= min_route_margin:
            break
    else:
        raise SystemExit(f"{name}: no seed gave a routing margin of {min_route_margin}")
    model, cfg, prompts, logits, short, min_gap, margin = built
    seed += 1000 * attempt

    d = os.path.join(out_dir, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model.to(torch.float32).save_pretrained(d, safe_serialization=True)
    for extra_file in ("generation_config.json",):
        p = os.path.join(d, extra_file)
        if os.path.exists(p):
            os.remove(p)
    golden = {"model_type": model_type, "seed": seed, "prompts": prompts, "logits": logits,
              "dtype": str(ref_dtype).replace("torch.", ""), "transformers": transformers.__version__}
    if short is not None:
        # Prompts within LongRoPE's original context: transformers uses the short factors for them.
        golden["short_prompts"], golden["short_logits"] = short
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    extra = f", smallest routing margin {margin:.4f}" if margin != float("inf") else ""
    print(f"{name}: {size / 1024:.0f} KiB, seed {seed}, smallest top1-top2 logit gap {min_gap:.4f}{extra}")


def build(name, model_type, kw, seed, ref_dtype, centered_norms, prompt_lens, short_prompt_lens=None,
          eager_experts=False, router_scale=1.0):
    """The random model of this seed, its prompts, the reference logits and the margins."""
    cfg_cls, model_cls = CONFIG_CLASSES[model_type]
    kw = {k: v for k, v in kw.items() if v is not UNSET}
    if model_type == "qwen3_5":  # multimodal: the language model's settings go in text_config
        cfg = cfg_cls(text_config=kw, vision_config=TINY_VISION, tie_word_embeddings=False)
        cfg.text_config._attn_implementation = "eager"
    else:
        cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    if ref_dtype == torch.float64 or eager_experts:  # the grouped-matmul experts have no float64 kernel
        cfg._experts_implementation = "eager"
        if model_type == "qwen3_5":
            cfg.text_config._experts_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(cfg).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen, centered_norms)
    if router_scale != 1.0:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("router.weight"):
                    p.mul_(router_scale)
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()

    vocab = kw["vocab_size"]
    min_gap, margin = float("inf"), float("inf")

    def on_route(module, args, out):
        nonlocal margin
        top = out[0].double().topk(module.top_k + 1, dim=-1).values
        margin = min(margin, float((top[:, -2] - top[:, -1]).min()))

    def on_deepseek_route(module, args, out):
        # The margin of the choice DeepSeek's routers make: the k-th vs (k+1)-th selection score among the
        # experts of the chosen groups (V3: sigmoid + bias; V2: softmax), and the chosen groups' margin.
        nonlocal margin
        logits = out[0].double()
        v3 = hasattr(module, "e_score_correction_bias")
        s = logits.sigmoid() + module.e_score_correction_bias.double() if v3 else logits.softmax(-1)
        ng = module.num_group or 1
        if ng > 1 and (v3 or module.topk_method == "group_limited_greedy"):
            g = s.view(s.shape[0], ng, -1)
            gs = g.topk(2, dim=-1).values.sum(-1) if v3 else g.max(-1).values
            top = gs.topk(module.topk_group + 1, dim=-1)
            margin = min(margin, float((top.values[:, -2] - top.values[:, -1]).min()))
            mask = torch.zeros_like(gs).scatter_(1, top.indices[:, :-1], 1)
            s = s.masked_fill(~mask.bool().repeat_interleave(s.shape[1] // ng, dim=1), float("-inf"))
        top = s.topk(module.top_k + 1, dim=-1).values
        margin = min(margin, float((top[:, -2] - top[:, -1]).min()))

    hooks = [m.register_forward_hook(on_route) for m in model.modules()
             if type(m).__name__.endswith("TopKRouter") and hasattr(m, "top_k")]
    hooks += [m.register_forward_hook(on_deepseek_route) for m in model.modules()
              if type(m).__name__.startswith("Deepseek") and type(m).__name__.endswith("TopkRouter")]
    ref = model.to(ref_dtype)

    def run(lengths):
        nonlocal min_gap
        prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
        logits = []
        with torch.no_grad():
            for ids in prompts:
                out = ref(torch.tensor([ids])).logits[0].to(torch.float32)
                top2 = out.topk(2, dim=-1).values
                min_gap = min(min_gap, float((top2[:, 0] - top2[:, 1]).min()))
                logits.append([[round(float(x), 6) for x in row] for row in out])
        return prompts, logits

    prompts, logits = run(prompt_lens)
    short = run(short_prompt_lens) if short_prompt_lens else None
    for h in hooks:
        h.remove()
    return model, cfg, prompts, logits, short, min_gap, margin


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
