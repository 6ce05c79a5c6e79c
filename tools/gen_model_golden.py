#!/usr/bin/env python3
"""Golden logits for tests/unit/model_hf_golden_test.cpp: tiny random llama / qwen2 / qwen3 (and qwen3
with YaRN) models from HF transformers, written to GGUF with the llama.cpp conventions (F32 tensors,
llama q/k rows permuted for adjacent-pair RoPE), plus the logits HF computes for a fixed token list.
Run from the repo root: python3 tools/gen_model_golden.py"""
import numpy as np, torch, gguf
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
torch.manual_seed(0)
toks = [3, 17, 5, 39, 0, 22, 8, 8, 31, 12, 1, 2, 30, 44, 45, 46, 90, 91, 7, 7, 7, 60, 61, 62, 63, 64, 65, 66, 67, 68,
        69, 70, 71, 72, 73, 74, 75, 76, 77, 78]

def permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

def write(name, arch, model, cfg, rope_extra=None):
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(f"tests/fixtures/model_golden/{name}.gguf", arch)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_block_count(cfg.num_hidden_layers); w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size); w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads); w.add_key_length(hd); w.add_value_length(hd)
    w.add_context_length(cfg.max_position_embeddings); w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"]); w.add_rope_dimension_count(hd)
    if rope_extra:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN); w.add_rope_scaling_factor(rope_extra["factor"])
        w.add_rope_scaling_orig_ctx_len(rope_extra["original_max_position_embeddings"])
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if "lm_head.weight" in sd and not cfg.tie_word_embeddings: w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."; b = f"blk.{i}."
        q = sd[p + "self_attn.q_proj.weight"]; k = sd[p + "self_attn.k_proj.weight"]
        if arch == "llama": q = permute(q, cfg.num_attention_heads); k = permute(k, cfg.num_key_value_heads)
        w.add_tensor(b + "attn_q.weight", q); w.add_tensor(b + "attn_k.weight", k)
        w.add_tensor(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        for s in "qkv":
            if p + f"self_attn.{s}_proj.bias" in sd: w.add_tensor(b + f"attn_{s}.bias", sd[p + f"self_attn.{s}_proj.bias"])
        if p + "self_attn.q_norm.weight" in sd:
            w.add_tensor(b + "attn_q_norm.weight", sd[p + "self_attn.q_norm.weight"])
            w.add_tensor(b + "attn_k_norm.weight", sd[p + "self_attn.k_norm.weight"])
        w.add_tensor(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with torch.no_grad():
        logits = model(torch.tensor([toks])).logits[0].float().numpy()
    logits.astype(np.float32).tofile(f"tests/fixtures/model_golden/{name}.f32")
    print(name, logits.shape, float(np.abs(logits).max()))

common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=100, rms_norm_eps=1e-6, max_position_embeddings=128)
def init(m):
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n: p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "bias" in n: p.copy_(0.3 * torch.randn_like(p))
            else: p.copy_(0.15 * torch.randn_like(p))
    return m.eval()
c = LlamaConfig(**common, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
write("llama", "llama", init(LlamaForCausalLM(c)), c)
c = Qwen2Config(**common, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
write("qwen2", "qwen2", init(Qwen2ForCausalLM(c)), c)
c = Qwen3Config(**common, head_dim=32, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
write("qwen3", "qwen3", init(Qwen3ForCausalLM(c)), c)
y = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32}
c = Qwen3Config(**common, head_dim=32, tie_word_embeddings=False, rope_parameters=y)
write("qwen3_yarn", "qwen3", init(Qwen3ForCausalLM(c)), c, rope_extra=y)
