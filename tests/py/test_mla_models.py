"""deepseek2 (DeepSeek-V2/V3-style MLA + MoE) through the CLI: the tiny random models of tests/golden/fixtures
(checked against transformers by tests/unit/model_mla_golden_test.cpp), converted by `qleap convert` with a
byte-level vocabulary. ExpertFlow's host tier gives the plain CPU text (DeepSeek routing: sigmoid scores,
selection bias, groups, routed scale, shared experts), `qleap profile` reads the routing of the MoE layers
(the leading dense layer has none), and the latent runs in q8_0 and TurboQuant caches."""
import json
import shutil
import subprocess

import pytest

from test_server_archs import ROOT, byte_vocab

FIXTURES = ["deepseek_v3", "deepseek_v2_lite"]


def run(qleap_bin, *args, timeout=120):
    return subprocess.run([qleap_bin, *map(str, args)], capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def mla_models(qleap_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("mla_models")
    tok = {"model": {"type": "BPE", "vocab": byte_vocab(), "merges": []}, "added_tokens": []}
    for name in FIXTURES:
        src = tmp_path_factory.mktemp("hf_" + name)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(ROOT / "tests" / "golden" / "fixtures" / name / f, src / f)
        (src / "tokenizer.json").write_text(json.dumps(tok))
        r = run(qleap_bin, "convert", src, out / f"{name}.gguf", "--type", "F16")
        assert r.returncode == 0, r.stderr
    return out


def gen(qleap_bin, model, *extra):
    r = run(qleap_bin, "run", model, "The quick brown fox", "-n", "24", "--temp", "0", "--raw", "-t", "2", *extra)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("name", FIXTURES)
def test_host_tier_gives_the_plain_cpu_text(qleap_bin, mla_models, name):
    model = mla_models / f"{name}.gguf"
    plain = gen(qleap_bin, model).stdout
    assert len(plain) > len("The quick brown fox")
    for budget in ["0", "60K", "auto"]:
        r = gen(qleap_bin, model, "--expert-cache", budget, "--expert-tier", "host")
        assert r.stdout == plain, budget
        assert b"expert cache: tier host" in r.stderr


@pytest.mark.parametrize("name", FIXTURES)
def test_profile_reads_the_moe_layers(qleap_bin, mla_models, name, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world, the quick brown fox jumps over the lazy dog. " * 8)
    r = run(qleap_bin, "profile", mla_models / f"{name}.gguf", text, "-o", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    assert b"2 MoE layers, 8 experts, 2 per token" in r.stdout + r.stderr
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof


@pytest.mark.parametrize("kv", ["q8_0", "tq3", "tq3:w0"])
def test_latent_in_quantized_caches(qleap_bin, mla_models, kv):
    r = gen(qleap_bin, mla_models / "deepseek_v3.gguf", "--kv", kv)
    assert r.stdout.startswith(b"The quick brown fox")

