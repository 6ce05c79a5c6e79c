"""gpt-oss and deepseek2 through ExpertFlow on the CLI: the tiny random models gpt_oss, deepseek_v3 and
deepseek_v2_lite of tests/golden/fixtures (checked against transformers by tests/golden/gptoss_golden_test.cpp
and tests/unit/model_mla_golden_test.cpp), converted with a byte-level vocabulary (golden_cli.py). gpt-oss's
experts have gate / up / down biases and the clamped SwiGLU (alpha, limit), deepseek2's the DeepSeek routing
(sigmoid scores, selection bias, groups, routed scale, shared experts); the host expert tier computes them
(ExpertSet::act, biases in the slots), so `--expert-cache` gives the plain CPU text, and `qleap profile` reads
gpt-oss's four MoE layers."""
import json
import re

import pytest

from golden_cli import gen, run


@pytest.fixture(scope="module")
def gptoss_model(golden_gguf):
    return golden_gguf("gpt_oss")


def policy_hits(stderr):
    """From `qleap run`'s closing line: the share of expert selections computed on the tier and the
    selections whose expert the policy held but whose copy had not landed (timing decides between the two;
    their sum is zero only when no selection went through the flow)."""
    m = re.search(rb"expert cache: ([0-9.]+)% of expert selections on the host tier, ([0-9]+) in flight", stderr)
    assert m, stderr
    return float(m.group(1)), int(m.group(2))


# check_hits: gpt-oss's four experts, half of them held (auto), must give the policy hits; deepseek2's are
# not checked for that.
@pytest.mark.parametrize("name, check_hits", [("gpt_oss", True), ("deepseek_v3", False),
                                              ("deepseek_v2_lite", False)])
def test_host_tier_gives_the_plain_cpu_text(qleap_bin, golden_gguf, name, check_hits):
    model = golden_gguf(name)
    plain = gen(qleap_bin, model).stdout
    assert len(plain) > len("The quick brown fox")
    for budget in ["0", "60K", "auto"]:
        r = gen(qleap_bin, model, "--expert-cache", budget, "--expert-tier", "host")
        assert r.stdout == plain, budget
        assert b"expert cache: tier host" in r.stderr
        # The experts really ran through the flow: with half of them held (auto), the policy had hits.
        if budget == "auto" and check_hits:
            share, in_flight = policy_hits(r.stderr)
            assert share > 0 or in_flight > 0


def test_profile_reads_the_moe_layers(qleap_bin, gptoss_model, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world, the quick brown fox jumps over the lazy dog. " * 8)
    r = run(qleap_bin, "profile", gptoss_model, text, "-o", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    assert b"4 MoE layers, 4 experts, 2 per token" in r.stdout + r.stderr
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof
    # The profile seeds the host tier; the text stays the plain CPU text.
    plain = gen(qleap_bin, gptoss_model).stdout
    r = gen(qleap_bin, gptoss_model, "--expert-cache", "60K", "--expert-tier", "host", "--expert-profile",
            tmp_path / "p.json")
    assert r.stdout == plain
