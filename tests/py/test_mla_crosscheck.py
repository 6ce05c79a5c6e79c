"""gguf-py reads what our converter writes for the DeepSeek-V2/V3 (MLA) fixtures (deepseek_v3,
deepseek_v2_lite): llama.cpp's deepseek2 keys from config.json, and every tensor equal to the checkpoint's,
kv_b_proj split per head into attn_k_b (W_UK transposed) and attn_v_b by an independent numpy
implementation of the split, e_score_correction_bias as exp_probs_b.bias, experts stacked."""
import json
import math
import os

import numpy as np
import pytest

import gguf
from test_gguf_crosscheck import FIXTURES, out_dir  # noqa: F401 (out_dir is a pytest fixture)

NAMES = {"self_attn.q_proj": "attn_q", "self_attn.q_a_proj": "attn_q_a", "self_attn.q_a_layernorm": "attn_q_a_norm",
         "self_attn.q_b_proj": "attn_q_b", "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa",
         "self_attn.kv_a_layernorm": "attn_kv_a_norm", "self_attn.o_proj": "attn_output",
         "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate": "ffn_gate_inp",
         "mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
         "mlp.shared_experts.down_proj": "ffn_down_shexp"}


@pytest.mark.parametrize("name", ["deepseek_v3", "deepseek_v2_lite"])
def test_converted_mla_matches_checkpoint(out_dir, name):  # noqa: F811
    from safetensors.numpy import load_file

    with open(os.path.join(FIXTURES, name, "config.json")) as f:
        cfg = json.load(f)
    v3 = cfg["model_type"] == "deepseek_v3"
    r = gguf.GGUFReader(str(out_dir / f"converted_{name}.gguf"))
    fields = {f.name: f for f in r.fields.values()}

    def val(key):
        return fields[f"deepseek2.{key}"].contents()

    assert fields["general.architecture"].contents() == "deepseek2"
    H, N, P = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"]
    V, R = cfg["v_head_dim"], cfg["kv_lora_rank"]
    assert val("attention.kv_lora_rank") == R
    assert (f"deepseek2.attention.q_lora_rank" in fields) == (cfg["q_lora_rank"] is not None)
    if cfg["q_lora_rank"] is not None:
        assert val("attention.q_lora_rank") == cfg["q_lora_rank"]
    assert val("attention.key_length") == N + P
    assert val("attention.value_length") == V
    assert val("rope.dimension_count") == P
    assert val("leading_dense_block_count") == cfg["first_k_dense_replace"]
    assert val("expert_count") == cfg["n_routed_experts"]
    assert val("expert_shared_count") == cfg["n_shared_experts"]
    assert val("expert_shared_feed_forward_length") == cfg["n_shared_experts"] * cfg["moe_intermediate_size"]
    assert math.isclose(val("expert_weights_scale"), cfg["routed_scaling_factor"], rel_tol=1e-6)
    assert bool(val("expert_weights_norm")) == cfg["norm_topk_prob"]
    assert val("expert_gating_func") == (2 if v3 else 1)
    if v3:
        assert val("expert_group_count") == cfg["n_group"]
        assert val("expert_group_used_count") == cfg["topk_group"]
        rp = cfg["rope_parameters"]
        assert val("rope.scaling.type") == "yarn"
        assert math.isclose(val("rope.scaling.factor"), rp["factor"], rel_tol=1e-6)
        assert math.isclose(val("rope.scaling.yarn_log_multiplier"), 0.1 * rp["mscale_all_dim"], rel_tol=1e-6)
    else:
        assert "deepseek2.expert_group_count" not in fields

    weights = load_file(os.path.join(FIXTURES, name, "model.safetensors"))
    expected, experts = {}, {}
    for hf, w in weights.items():
        if hf in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            expected[{"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                      "lm_head.weight": "output.weight"}[hf]] = w
            continue
        parts = hf.split(".")
        b, rest = f"blk.{parts[2]}.", ".".join(parts[3:-1])
        if parts[-1] == "e_score_correction_bias":
            expected[b + "exp_probs_b.bias"] = w
        elif rest.startswith("mlp.experts."):
            e, proj = int(parts[5]), parts[6]
            experts.setdefault(b + f"ffn_{proj.split('_')[0]}_exps.weight", {})[e] = w
        elif rest == "self_attn.kv_b_proj":
            kv = w.reshape(H, N + V, R)
            expected[b + "attn_k_b.weight"] = np.transpose(kv[:, :N, :], (0, 2, 1)).reshape(H * R, N)
            expected[b + "attn_v_b.weight"] = kv[:, N:, :].reshape(H * V, R)
        else:
            expected[b + NAMES[rest] + "." + parts[-1]] = w
    for g, by in experts.items():
        expected[g] = np.stack([by[e] for e in sorted(by)])
    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == sorted(expected)
    for g, w in expected.items():
        t = tensors[g]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, g
        assert [int(x) for x in t.shape] == list(reversed(w.shape)), g
        np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w, err_msg=g)
