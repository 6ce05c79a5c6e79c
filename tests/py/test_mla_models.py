"""deepseek2 (DeepSeek-V2/V3-style MLA + MoE) through the CLI: the tiny random models of tests/golden/fixtures
(checked against transformers by tests/unit/model_mla_golden_test.cpp), converted with a byte-level vocabulary
(golden_cli.py). `qleap profile` reads the routing of the MoE layers (the leading dense layer has none), and the
latent runs in q8_0 and TurboQuant caches. ExpertFlow's host tier on them: test_gptoss_expert_flow.py."""
import json

import pytest

from golden_cli import gen, run

FIXTURES = ["deepseek_v3", "deepseek_v2_lite"]


@pytest.fixture(scope="module")
def mla_models(golden_gguf):
    """name -> converted GGUF."""
    return {name: golden_gguf(name) for name in FIXTURES}


@pytest.mark.parametrize("name", FIXTURES)
def test_profile_reads_the_moe_layers(qleap_bin, mla_models, name, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world, the quick brown fox jumps over the lazy dog. " * 8)
    r = run(qleap_bin, "profile", mla_models[name], text, "-o", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    assert b"2 MoE layers, 8 experts, 2 per token" in r.stdout + r.stderr
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof


@pytest.mark.parametrize("kv", ["q8_0", "tq3", "tq3:w0"])
def test_latent_in_quantized_caches(qleap_bin, mla_models, kv):
    r = gen(qleap_bin, mla_models["deepseek_v3"], "--kv", kv)
    assert r.stdout.startswith(b"The quick brown fox")

