"""The hybrid Gated DeltaNet models (Qwen3.5 / Qwen3-Next, the golden fixtures qwen3_5, qwen3_5_moe and
qwen3_next with a byte-level tokenizer added) through the CLI and the server: `qleap run`, concurrent slots (greedy text
under concurrency equals sequential), a slot reused for a prompt with a shorter common prefix (its
DeltaNet state goes back to a checkpoint: same text as a fresh slot), TurboQuant KV on the attention
layers, and ExpertFlow (host tier) on the MoE variants."""
import concurrent.futures as cf
import json
import pathlib
import shutil
import subprocess
import sys

import httpx
import pytest

from server_util import Server

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "golden" / "fixtures"
sys.path.insert(0, str(ROOT / "tools"))

OPTS = {"temperature": 0, "num_predict": 24, "repeat_penalty": 1.0}
PROMPTS = [f"The {w} number {i} walked into the hybrid model and said: " for i, w in
           enumerate(["cat", "dog", "bird", "fish", "owl", "fox"])]


@pytest.fixture(scope="module")
def models(qleap_bin, tmp_path_factory):
    """name -> converted GGUF (F16) with a 256-byte tokenizer: text byte b is token b."""
    from make_random_model import byte_chars

    out = {}
    tmp = tmp_path_factory.mktemp("hybrid")
    for name in ("qwen3_5", "qwen3_5_moe", "qwen3_next"):
        d = tmp / name
        shutil.copytree(FIXTURES / name, d)
        tok = {"version": "1.0", "added_tokens": [], "normalizer": None,
               "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                 "use_regex": True},
               "post_processor": None, "decoder": {"type": "ByteLevel"},
               "model": {"type": "BPE", "vocab": {c: i for i, c in enumerate(byte_chars())}, "merges": []}}
        (d / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
        (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
        g = tmp / f"{name}.gguf"
        r = subprocess.run([qleap_bin, "convert", str(d), str(g), "--type", "F16"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        if name == "qwen3_5":
            assert "vision tower is not converted" in r.stdout + r.stderr
        out[name] = g
    return out


def generate(url, model, prompt, opts=OPTS):
    r = httpx.post(url + "/api/generate", json={"model": model, "prompt": prompt, "raw": True, "stream": False,
                                                 "options": opts}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def prompted(url):
    return httpx.get(url + "/api/qleap/status").json()["tokens_prompt_total"]


def test_run_cli(qleap_bin, models):
    for g in models.values():
        r = subprocess.run([qleap_bin, "run", str(g), "--raw", "-n", "16", "--temp", "0", "-t", "1", "-q",
                            "Once upon a time"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert len(r.stdout) > 0


@pytest.mark.parametrize("kv", ["f16", "tq3"])
@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_moe", "qwen3_next"])
def test_concurrent_equals_sequential(qleap_bin, test_models, models, name, kv):
    s = Server(qleap_bin, test_models, ["--parallel", "4", "--ctx", "512", "-b", "32", "--kv", kv],
               extra_models=[models[name]])
    try:
        sequential = [generate(s.url, name, p)["response"] for p in PROMPTS]
        assert len(set(sequential)) > 1
        with cf.ThreadPoolExecutor(len(PROMPTS)) as ex:
            concurrent = list(ex.map(lambda p: generate(s.url, name, p)["response"], PROMPTS))
        assert concurrent == sequential
    finally:
        assert s.stop() == 0


def test_slot_reuse_with_shorter_prefix_equals_fresh(qleap_bin, test_models, models):
    """One slot: A (120 bytes: checkpoints of its DeltaNet state at 96, a whole chunk of 32, and 120, the
    prompt's end; the two newest are kept), then B sharing A's first 100 bytes (the slot keeps 96 and
    evaluates the rest), then C sharing nothing (the slot starts over), then B again from scratch: both
    B answers are the same."""
    s = Server(qleap_bin, test_models, ["--parallel", "1", "--ctx", "512", "-b", "32"],
               extra_models=[models["qwen3_5"]])
    try:
        a = "".join(PROMPTS)[:120]
        b = a[:100] + "but then something else happened, far away from here: "
        c = "Z" * 70
        generate(s.url, "qwen3_5", a)
        before = prompted(s.url)
        reused = generate(s.url, "qwen3_5", b)["response"]
        assert prompted(s.url) - before == len(b) - 96  # kept 96 tokens
        generate(s.url, "qwen3_5", c)
        before = prompted(s.url)
        fresh = generate(s.url, "qwen3_5", b)["response"]
        assert prompted(s.url) - before == len(b)
        assert reused == fresh
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("name", ["qwen3_5_moe", "qwen3_next"])
def test_expert_flow_host_tier_equals_cpu(qleap_bin, test_models, models, name):
    texts = []
    for extra in ([], ["--expert-cache", "64K", "--expert-tier", "host"]):
        s = Server(qleap_bin, test_models, ["--parallel", "2", "--ctx", "512", *extra],
                   extra_models=[models[name]])
        try:
            texts.append([generate(s.url, name, p)["response"] for p in PROMPTS[:3]])
            if extra:
                st = httpx.get(s.url + "/api/qleap/status").json()
                assert st.get("expert_cache_hit_rate", 0) > 0, st  # the expert cache ran
        finally:
            assert s.stop() == 0
    assert texts[0] == texts[1]


def test_profile_cli(qleap_bin, models, tmp_path):
    """`qleap profile`: expert activations of the MoE variant, and the per-head TurboQuant sensitivity of
    the attention layers (2 of 4 hold a KV cache), which `--kv tq3:alloc=` then reads."""
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    r = subprocess.run([qleap_bin, "profile", str(models["qwen3_5_moe"]), str(text), "-t", "1", "-o",
                        str(tmp_path / "experts.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "4 MoE layers, 4 experts" in r.stdout
    kvs = tmp_path / "kvs.json"
    r = subprocess.run([qleap_bin, "profile", str(models["qwen3_5"]), str(text), "--kv-sensitivity", "-c", "256",
                        "-t", "1", "-o", str(kvs)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(kvs.read_text())["n_layers"] == 2
    r = subprocess.run([qleap_bin, "run", str(models["qwen3_5"]), "--kv", f"tq3:alloc={kvs}", "--raw", "-n", "8",
                        "--temp", "0", "-t", "1", "-q", "Once upon a time"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
