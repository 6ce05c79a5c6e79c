"""gguf-py reads what our converter writes for the hybrid Gated DeltaNet fixtures (qwen3_5, qwen3_5_moe,
qwen3_next), and every tensor equals the checkpoint's weight transformed the way llama.cpp's files hold
it, computed here independently with numpy: RMSNorm weights as 1 + w (except the DeltaNet's gated norm),
A_log as -exp(A_log), the conv kernel as a matrix, qwen3_next's fused qkvz split into q|k|v and z, and
for qwen35 files the value heads reordered from grouped (key head k's j-th value head at k * r + j) to
tiled (at j * n_k + k) order wherever they appear. The vision tower is left out.
"""
import json
import os

import numpy as np
import pytest

import gguf
from test_gguf_crosscheck import FIXTURES, out_dir  # noqa: F401 (out_dir is a pytest fixture)

HYBRID = {"qwen3_5": "qwen35", "qwen3_5_moe": "qwen35moe", "qwen3_5_moe_text": "qwen35moe",
          "qwen3_next": "qwen3next"}


def hybrid_fixtures():
    out = []
    for n in sorted(os.listdir(FIXTURES)):
        p = os.path.join(FIXTURES, n, "config.json")
        if os.path.exists(p):
            with open(p) as f:
                if json.load(f)["model_type"] in HYBRID:
                    out.append(n)
    return out


def tile(x, nk, nv, axis=0):
    """Value heads (equal slices of `axis`) from grouped to tiled order."""
    r = nv // nk
    x = np.moveaxis(x, axis, 0)
    h = x.reshape(nk, r, x.shape[0] // nv, *x.shape[1:])
    return np.moveaxis(np.swapaxes(h, 0, 1).reshape(x.shape), 0, axis)


@pytest.mark.parametrize("name", hybrid_fixtures())
def test_converted_hybrid_matches_checkpoint(out_dir, name):  # noqa: F811
    from safetensors.numpy import load_file

    with open(os.path.join(FIXTURES, name, "config.json")) as f:
        top = json.load(f)
    cfg = top.get("text_config", top)
    arch = HYBRID[top["model_type"]]
    r = gguf.GGUFReader(str(out_dir / f"converted_{name}.gguf"))
    fields = {f.name: f for f in r.fields.values()}

    def val(key):
        return fields[f"{arch}.{key}"].contents()

    assert fields["general.architecture"].contents() == arch
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    n_layers, head_dim = cfg["num_hidden_layers"], cfg["head_dim"]
    interval = cfg["layer_types"].index("full_attention") + 1
    rp = cfg.get("rope_parameters") or {}
    assert val("block_count") == n_layers
    assert val("ssm.conv_kernel") == cfg["linear_conv_kernel_dim"]
    assert val("ssm.state_size") == dk
    assert val("ssm.group_count") == nk
    assert val("ssm.time_step_rank") == nv
    assert val("ssm.inner_size") == nv * dv
    assert val("full_attention_interval") == interval
    assert val("rope.dimension_count") == int(head_dim * rp.get("partial_rotary_factor", 0.25))
    assert val("attention.key_length") == head_dim
    if arch == "qwen3next":
        assert f"{arch}.rope.dimension_sections" not in fields
    else:
        assert list(val("rope.dimension_sections"))[:3] == rp["mrope_section"]

    weights = {}
    for k, w in load_file(os.path.join(FIXTURES, name, "model.safetensors")).items():
        if k.startswith("model.visual."):
            continue
        weights[k.replace("model.language_model.", "model.")] = w
    tiled = arch != "qwen3next"
    kd, vd = nk * dk, nv * dv
    exp = {"token_embd.weight": weights["model.embed_tokens.weight"],
           "output_norm.weight": weights["model.norm.weight"] + 1, "output.weight": weights["lm_head.weight"]}
    n_expert = cfg.get("num_experts", 0)
    for i in range(n_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        exp[b + "attn_norm.weight"] = weights[p + "input_layernorm.weight"] + 1
        exp[b + "post_attention_norm.weight"] = weights[p + "post_attention_layernorm.weight"] + 1
        if (i + 1) % interval == 0:
            for hf, g in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
                exp[b + g + ".weight"] = weights[p + f"self_attn.{hf}.weight"]
            exp[b + "attn_q_norm.weight"] = weights[p + "self_attn.q_norm.weight"] + 1
            exp[b + "attn_k_norm.weight"] = weights[p + "self_attn.k_norm.weight"] + 1
        else:
            la = p + "linear_attn."
            conv = weights[la + "conv1d.weight"][:, 0, :]
            a = -np.exp(weights[la + "A_log"])
            dt = weights[la + "dt_bias"]
            if arch == "qwen3next":
                rr = nv // nk
                g = weights[la + "in_proj_qkvz.weight"].reshape(nk, 2 * dk + 2 * rr * dv, -1)
                q, k = g[:, :dk], g[:, dk:2 * dk]
                v, z = g[:, 2 * dk:2 * dk + rr * dv], g[:, 2 * dk + rr * dv:]
                exp[b + "attn_qkv.weight"] = np.concatenate([x.reshape(-1, g.shape[-1]) for x in (q, k, v)])
                exp[b + "attn_gate.weight"] = z.reshape(-1, g.shape[-1])
                exp[b + "ssm_ba.weight"] = weights[la + "in_proj_ba.weight"]
                out = weights[la + "out_proj.weight"]
            else:
                qkv = weights[la + "in_proj_qkv.weight"]
                exp[b + "attn_qkv.weight"] = np.concatenate([qkv[:2 * kd], tile(qkv[2 * kd:], nk, nv)])
                exp[b + "attn_gate.weight"] = tile(weights[la + "in_proj_z.weight"], nk, nv)
                exp[b + "ssm_beta.weight"] = tile(weights[la + "in_proj_b.weight"], nk, nv)
                exp[b + "ssm_alpha.weight"] = tile(weights[la + "in_proj_a.weight"], nk, nv)
                conv = np.concatenate([conv[:2 * kd], tile(conv[2 * kd:], nk, nv)])
                a, dt = tile(a, nk, nv), tile(dt, nk, nv)
                out = tile(weights[la + "out_proj.weight"], nk, nv, axis=1)
            assert out.shape[1] == vd
            exp[b + "ssm_conv1d.weight"] = conv
            exp[b + "ssm_a"] = a
            exp[b + "ssm_dt.bias"] = dt
            exp[b + "ssm_norm.weight"] = weights[la + "norm.weight"]
            exp[b + "ssm_out.weight"] = out
        if n_expert:
            exp[b + "ffn_gate_inp.weight"] = weights[p + "mlp.gate.weight"]
            for w in ("gate", "up", "down"):
                exp[b + f"ffn_{w}_exps.weight"] = np.stack(
                    [weights[p + f"mlp.experts.{e}.{w}_proj.weight"] for e in range(n_expert)])
                exp[b + f"ffn_{w}_shexp.weight"] = weights[p + f"mlp.shared_expert.{w}_proj.weight"]
            exp[b + "ffn_gate_inp_shexp.weight"] = weights[p + "mlp.shared_expert_gate.weight"].reshape(-1)
        else:
            for w in ("gate", "up", "down"):
                exp[b + f"ffn_{w}.weight"] = weights[p + f"mlp.{w}_proj.weight"]

    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == sorted(exp)
    for g, w in exp.items():
        t = tensors[g]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, g
        assert [int(x) for x in t.shape] == list(reversed(w.shape)), g
        got = np.asarray(t.data).reshape(w.shape)
        np.testing.assert_allclose(got, w, rtol=1e-6 if g.endswith("ssm_a") else 0, atol=0, err_msg=g)
