"""gguf-py reads what our GGUF writer and HF converter produce.

Runs `qleap_tests --gtest_filter=GgufCrosscheck.WritesCrosscheckFiles` with QLEAP_CROSSCHECK_OUT set
(binary from $QLEAP_TESTS_BIN, default build/qleap_tests), then:
  - writer.gguf: every key, type, value and tensor equals writer_expected.json (what the C++ test
    handed the writer), as read by gguf.GGUFReader;
  - converted_<fixture>.gguf: metadata matches config.json the way llama.cpp's converter writes it,
    and every tensor equals the safetensors weight (llama q/k re-ordered by an independent numpy
    implementation of the rotary permutation).
"""
import json
import math
import os
import re
import subprocess

import numpy as np
import pytest

import gguf
from gguf_dump import dump

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "golden", "fixtures")


def _tests_bin():
    return os.environ.get("QLEAP_TESTS_BIN", os.path.join(ROOT, "build", "qleap_tests"))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    binary = _tests_bin()
    if not os.path.exists(binary):
        pytest.skip(f"{binary} not built")
    d = tmp_path_factory.mktemp("crosscheck")
    env = dict(os.environ, QLEAP_CROSSCHECK_OUT=str(d), QLEAP_SOURCE_DIR=ROOT)
    r = subprocess.run([binary, "--gtest_filter=GgufCrosscheck.WritesCrosscheckFiles"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[  PASSED  ] 1 test" in r.stdout, r.stdout
    return d


def test_writer_file_reads_back_in_gguf_py(out_dir):
    got = dump(str(out_dir / "writer.gguf"))
    with open(out_dir / "writer_expected.json") as f:
        want = json.load(f)
    assert got["alignment"] == want["alignment"] == 128
    assert [m["key"] for m in got["metadata"]] == [m["key"] for m in want["metadata"]]
    for g, w in zip(got["metadata"], want["metadata"]):
        assert g["type"] == w["type"], g["key"]
        assert g["value"] == w["value"], g["key"]
    assert len(got["tensors"]) == len(want["tensors"])
    for g, w in zip(got["tensors"], want["tensors"]):
        for k in ("name", "type", "shape", "n_bytes", "fnv1a64"):
            assert g[k] == w[k], (g["name"], k)
        assert g["data_offset"] % 128 == 0


def rotary_permute(w, n_head):
    """HF rotate-half rows -> interleaved pairs (per head: row j*d/2+i goes to 2*i+j)."""
    rows = w.shape[0]
    d = rows // n_head
    x = w.reshape(n_head, 2, d // 2, *w.shape[1:])
    return np.swapaxes(x, 1, 2).reshape(w.shape)


# Block tensors whose GGUF names differ by architecture (llama.cpp's tables): gemma's four norms and
# phi3's fused projections.
ARCH_NAMES = {
    "gemma2": {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
               "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"},
    "phi3": {"self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"},
}
ARCH_NAMES["gemma3"] = ARCH_NAMES["gemma2"]


def hf_to_gguf_name(hf, arch=""):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    parts = hf.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    blk, rest = parts[2], ".".join(parts[3:-1])
    ex = re.fullmatch(r"(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w2|w3)", rest)
    if ex:  # one expert of the stacked 3-D tensor: (name, expert index)
        what = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}
        return f"blk.{blk}.ffn_{what[ex.group(2)]}_exps.weight", int(ex.group(1))
    m = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
         "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate": "ffn_gate_inp",
         "block_sparse_moe.gate": "ffn_gate_inp", "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
         "mlp.shared_expert.up_proj": "ffn_up_shexp", "mlp.shared_expert.down_proj": "ffn_down_shexp",
         "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}
    m = {**m, **ARCH_NAMES.get(arch, {})}
    return f"blk.{blk}.{m[rest]}.{parts[-1]}"


def fixture_names():
    # The hybrid DeltaNet and MLA fixtures have their own crosschecks (test_hybrid_crosscheck.py,
    # test_mla_crosscheck.py), gpt_oss its own test below (fused experts).
    return sorted(n for n in os.listdir(FIXTURES) if os.path.isdir(os.path.join(FIXTURES, n))
                  and not n.startswith("qwen3_5") and n != "qwen3_next" and not n.startswith("deepseek")
                  and n != "gpt_oss")


def kv(reader):
    return {f.name: f for f in reader.fields.values()}


@pytest.mark.parametrize("name", fixture_names())
def test_converted_fixture_matches_checkpoint(out_dir, name):
    from safetensors.numpy import load_file

    with open(os.path.join(FIXTURES, name, "config.json")) as f:
        cfg = json.load(f)
    r = gguf.GGUFReader(str(out_dir / f"converted_{name}.gguf"))
    fields = kv(r)
    arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mixtral": "llama",
            "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe", "gemma2": "gemma2",
            "gemma3_text": "gemma3", "phi3": "phi3"}[cfg["model_type"]]
    gemma = arch in ("gemma2", "gemma3")

    def val(key):
        return fields[key].contents()

    assert val("general.architecture") == arch
    assert val("general.file_type") == 0
    n_head, n_kv, n_embd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or n_embd // n_head
    assert val(f"{arch}.context_length") == cfg["max_position_embeddings"]
    assert val(f"{arch}.embedding_length") == n_embd
    assert val(f"{arch}.block_count") == cfg["num_hidden_layers"]
    assert val(f"{arch}.feed_forward_length") == cfg["intermediate_size"]
    assert val(f"{arch}.attention.head_count") == n_head
    assert val(f"{arch}.attention.head_count_kv") == n_kv
    n_rot = int(head_dim * cfg.get("partial_rotary_factor", 1.0))
    assert val(f"{arch}.rope.dimension_count") == n_rot
    assert val(f"{arch}.vocab_size") == cfg["vocab_size"]
    rp = cfg.get("rope_parameters") or {}
    if arch == "gemma3":  # rope parameters by layer type: global layers, and the local layers' own base
        assert math.isclose(val("gemma3.rope.freq_base_swa"), rp["sliding_attention"]["rope_theta"], rel_tol=1e-6)
        rp = rp["full_attention"]
    assert math.isclose(val(f"{arch}.rope.freq_base"), rp.get("rope_theta", cfg.get("rope_theta", 10000.0)),
                        rel_tol=1e-6)
    assert math.isclose(val(f"{arch}.attention.layer_norm_rms_epsilon"), cfg["rms_norm_eps"], rel_tol=1e-6)
    if head_dim != n_embd // n_head or gemma:
        assert val(f"{arch}.attention.key_length") == head_dim
        assert val(f"{arch}.attention.value_length") == head_dim
    else:
        assert f"{arch}.attention.key_length" not in fields
    rtype = rp.get("rope_type", "default")
    if rtype in ("linear", "yarn"):
        assert val(f"{arch}.rope.scaling.type") == rtype
        assert math.isclose(val(f"{arch}.rope.scaling.factor"), rp["factor"], rel_tol=1e-6)
    else:
        assert f"{arch}.rope.scaling.type" not in fields
    if rtype == "yarn":
        assert val(f"{arch}.rope.scaling.original_context_length") == rp["original_max_position_embeddings"]
    if gemma:
        assert val(f"{arch}.attention.sliding_window") == cfg["sliding_window"]
        assert math.isclose(val(f"{arch}.attention.scale"), cfg["query_pre_attn_scalar"] ** -0.5, rel_tol=1e-6)
        period = 2 if arch == "gemma2" else 6
        pattern = [t == "sliding_attention" for t in cfg["layer_types"]]
        if pattern == [i % period < period - 1 for i in range(len(pattern))]:
            assert f"{arch}.attention.sliding_window_pattern" not in fields
        else:
            assert [bool(x) for x in val(f"{arch}.attention.sliding_window_pattern")] == pattern
        if arch == "gemma2":
            assert math.isclose(val("gemma2.attn_logit_softcapping"), cfg["attn_logit_softcapping"], rel_tol=1e-6)
            assert math.isclose(val("gemma2.final_logit_softcapping"), cfg["final_logit_softcapping"], rel_tol=1e-6)
    if arch == "phi3":
        orig = cfg["original_max_position_embeddings"]
        assert val("phi3.rope.scaling.original_context_length") == orig
        # Written always (0: none), as llama.cpp requires the key.
        assert val("phi3.attention.sliding_window") == (cfg.get("sliding_window") or 0)
        if rtype == "longrope":
            scale = cfg["max_position_embeddings"] / orig
            assert math.isclose(val("phi3.rope.scaling.attn_factor"),
                                math.sqrt(1 + math.log(scale) / math.log(orig)), rel_tol=1e-6)

    n_expert = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    if n_expert:
        assert val(f"{arch}.expert_count") == n_expert
        assert val(f"{arch}.expert_used_count") == cfg["num_experts_per_tok"]
        assert val(f"{arch}.expert_feed_forward_length") == cfg.get("moe_intermediate_size", cfg["intermediate_size"])
        assert bool(val(f"{arch}.expert_weights_norm")) == (cfg["model_type"] == "mixtral" or cfg["norm_topk_prob"])
    weights = load_file(os.path.join(FIXTURES, name, "model.safetensors"))
    tensors = {t.name: t for t in r.tensors}
    expected = {}
    experts = {}
    for hf, w in weights.items():
        g = hf_to_gguf_name(hf, arch)
        if isinstance(g, tuple):
            experts.setdefault(g[0], {})[g[1]] = w
            continue
        if g.endswith("ffn_gate_inp_shexp.weight"):
            w = w.reshape(-1)  # a 1 x n_embd matrix, stored as a vector
        if g == "output.weight" and cfg.get("tie_word_embeddings"):
            continue
        if arch == "llama" and ".attn_q." in g:
            w = rotary_permute(w, n_head)
        if arch == "llama" and ".attn_k." in g:
            w = rotary_permute(w, n_kv)
        if gemma and g.endswith("norm.weight"):
            w = w + np.float32(1)  # gemma applies its norms as (1 + w); GGUF holds the sum
        expected[g] = w
    for g, by_index in experts.items():
        assert sorted(by_index) == list(range(n_expert)), g
        expected[g] = np.stack([by_index[e] for e in range(n_expert)])  # GGUF ne = [cols, rows, expert]
    if rtype == "llama3":
        # The per-pair factors transformers' llama3 inv_freq implies, written by
        # tools/gen_rope_freqs.py (torch + transformers are not needed at test time).
        with open(os.path.join(FIXTURES, name, "rope_freqs.json")) as f:
            expected["rope_freqs.weight"] = np.asarray(json.load(f)["rope_freqs"], dtype=np.float32)
    if arch == "phi3" and rtype == "longrope":
        expected["rope_factors_long.weight"] = np.asarray(rp["long_factor"], dtype=np.float32)
        expected["rope_factors_short.weight"] = np.asarray(rp["short_factor"], dtype=np.float32)
    if cfg.get("tie_word_embeddings"):
        assert "output.weight" not in tensors
    assert sorted(tensors) == sorted(expected)
    for g, w in expected.items():
        t = tensors[g]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, g
        assert [int(x) for x in t.shape] == list(reversed(w.shape)), g
        got = np.asarray(t.data).reshape(w.shape)
        tol = 1e-5 if g == "rope_freqs.weight" else 0
        np.testing.assert_allclose(got, w, rtol=tol, atol=0, err_msg=g)


def test_f16_conversion(out_dir):
    from safetensors.numpy import load_file

    r = gguf.GGUFReader(str(out_dir / "converted_llama_gqa_f16.gguf"))
    assert kv(r)["general.file_type"].contents() == 1
    weights = load_file(os.path.join(FIXTURES, "llama_gqa", "model.safetensors"))
    tensors = {t.name: t for t in r.tensors}
    t = tensors["blk.0.ffn_down.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(np.asarray(t.data).ravel(),
                                  weights["model.layers.0.mlp.down_proj.weight"].astype(np.float16).ravel())
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_requantized_real_model(out_dir):
    path = out_dir / "stories260K_f16.gguf"
    src = (out_dir / "stories260K_source.txt").read_text()
    a, b = dump(src), dump(str(path))
    ma = {m["key"]: m for m in a["metadata"]}
    mb = {m["key"]: m for m in b["metadata"]}
    # requantize records file_type and the quantization format version; everything else is copied.
    added = {"general.file_type", "general.quantization_version"}
    assert sorted(k for k in ma if k not in added) == sorted(k for k in mb if k not in added)
    assert mb["general.file_type"]["value"] == 1
    for k in ma:
        if k == "general.file_type":
            assert mb[k]["value"] == 1
            continue
        assert ma[k]["type"] == mb[k]["type"], k
        assert ma[k]["value"] == mb[k]["value"], k
    ra, rb = gguf.GGUFReader(src), gguf.GGUFReader(str(path))
    tb = {t.name: t for t in rb.tensors}
    for t in ra.tensors:
        u = tb[t.name]
        assert list(u.shape) == list(t.shape)
        x = np.asarray(t.data, dtype=np.float32).ravel()
        if len(t.shape) == 2:
            assert u.tensor_type == gguf.GGMLQuantizationType.F16, t.name
            np.testing.assert_array_equal(np.asarray(u.data).ravel(), x.astype(np.float16), err_msg=t.name)
        else:
            np.testing.assert_array_equal(np.asarray(u.data).ravel(), x, err_msg=t.name)


def test_converted_gpt_oss_matches_checkpoint(out_dir):
    """gpt-oss: llama.cpp's keys and names; the fused experts (gate_up_proj [E, H, 2I] with gate and up in
    interleaved columns, down_proj [E, I, H], used as x @ W) split and transposed by numpy here."""
    from safetensors.numpy import load_file

    with open(os.path.join(FIXTURES, "gpt_oss", "config.json")) as f:
        cfg = json.load(f)
    r = gguf.GGUFReader(str(out_dir / "converted_gpt_oss.gguf"))
    fields = kv(r)

    def val(key):
        return fields[key].contents()

    a = "gpt-oss"
    assert val("general.architecture") == a
    assert val(f"{a}.block_count") == cfg["num_hidden_layers"]
    assert val(f"{a}.attention.sliding_window") == cfg["sliding_window"]
    assert val(f"{a}.expert_count") == cfg["num_local_experts"]
    assert val(f"{a}.expert_used_count") == cfg["num_experts_per_tok"]
    assert val(f"{a}.expert_feed_forward_length") == cfg["intermediate_size"]
    if cfg["head_dim"] != cfg["hidden_size"] // cfg["num_attention_heads"]:
        assert val(f"{a}.attention.key_length") == cfg["head_dim"]
    rp = cfg["rope_parameters"]
    assert val(f"{a}.rope.scaling.type") == "yarn"
    assert math.isclose(val(f"{a}.rope.scaling.factor"), rp["factor"], rel_tol=1e-6)
    assert val(f"{a}.rope.scaling.original_context_length") == rp["original_max_position_embeddings"]
    assert bool(val(f"{a}.rope.scaling.yarn_truncate")) == rp["truncate"]
    assert math.isclose(val(f"{a}.rope.freq_base"), rp["rope_theta"], rel_tol=1e-6)
    assert math.isclose(val(f"{a}.expert_swiglu_alpha"), cfg["swiglu_alpha"], rel_tol=1e-6)
    assert math.isclose(val(f"{a}.expert_swiglu_limit"), cfg["swiglu_limit"], rel_tol=1e-6)

    weights = load_file(os.path.join(FIXTURES, "gpt_oss", "model.safetensors"))
    expected = {}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "post_attention_norm", "mlp.router": "ffn_gate_inp"}
    for hf, w in weights.items():
        top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
        if hf in top:
            expected[top[hf]] = w
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf)
        assert m, hf
        blk, rest = f"blk.{m.group(1)}.", m.group(2)
        if rest == "self_attn.sinks":
            expected[blk + "attn_sinks.weight"] = w
        elif rest == "mlp.experts.gate_up_proj":  # [E, H, 2I]: GGUF rows are W's columns, per expert
            expected[blk + "ffn_gate_exps.weight"] = np.ascontiguousarray(np.transpose(w[:, :, 0::2], (0, 2, 1)))
            expected[blk + "ffn_up_exps.weight"] = np.ascontiguousarray(np.transpose(w[:, :, 1::2], (0, 2, 1)))
        elif rest == "mlp.experts.gate_up_proj_bias":  # [E, 2I]
            expected[blk + "ffn_gate_exps.bias"] = np.ascontiguousarray(w[:, 0::2])
            expected[blk + "ffn_up_exps.bias"] = np.ascontiguousarray(w[:, 1::2])
        elif rest == "mlp.experts.down_proj":  # [E, I, H]
            expected[blk + "ffn_down_exps.weight"] = np.ascontiguousarray(np.transpose(w, (0, 2, 1)))
        elif rest == "mlp.experts.down_proj_bias":
            expected[blk + "ffn_down_exps.bias"] = w
        else:
            base, kind = rest.rsplit(".", 1)
            expected[blk + names[base] + "." + kind] = w
    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == sorted(expected)
    for g, w in expected.items():
        t = tensors[g]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, g
        assert [int(x) for x in t.shape] == list(reversed(w.shape)), g
        np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w, err_msg=g)


# Keys our converter writes that gguf-py's tables do not name, each read with llama.cpp's value as the
# default when a file lacks it (llama.cpp's own gpt-oss files carry none of them).
ENGINE_KEYS = {"gpt-oss.expert_swiglu_alpha", "gpt-oss.expert_swiglu_limit", "gpt-oss.rope.scaling.yarn_truncate"}


def _gguf_py_key_names(arch):
    names = set()
    for group in vars(gguf.Keys).values():
        if isinstance(group, type):
            for attr, v in vars(group).items():
                if isinstance(v, str) and not attr.startswith("_"):
                    names.add(v.replace("{arch}", arch))
    return names


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(FIXTURES)
                                        if os.path.exists(os.path.join(FIXTURES, n, "config.json"))))
def test_converted_names_are_llamacpp_names(out_dir, name):
    """Every architecture name, tensor name and metadata key our converter writes is one that gguf-py (the
    tables llama.cpp's own converter writes from) defines for that architecture, so the loader reads
    the names of llama.cpp's files, not names of our own."""
    r = gguf.GGUFReader(str(out_dir / f"converted_{name}.gguf"))
    fields = {f.name: f for f in r.fields.values()}
    arch_name = fields["general.architecture"].contents()
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    assert arch_name in by_name, arch_name
    arch = by_name[arch_name]
    n_blocks = fields[f"{arch_name}.block_count"].contents()
    allowed = set()
    for t in gguf.MODEL_TENSORS[arch]:
        template = gguf.TENSOR_NAMES[t]
        if "{bid}" in template:
            allowed.update(template.format(bid=b) for b in range(n_blocks))
        else:
            allowed.add(template)
    bad = [t.name for t in r.tensors if re.sub(r"\.(weight|bias)$", "", t.name) not in allowed]
    assert not bad, f"{arch_name}: tensor names gguf-py does not define for this architecture: {bad}"
    keys = _gguf_py_key_names(arch_name) | ENGINE_KEYS
    bad_keys = [k for k in fields if not k.startswith("GGUF.") and k not in keys]
    assert not bad_keys, f"{arch_name}: metadata keys gguf-py does not define: {bad_keys}"
