"""gpt-oss through ExpertFlow on the CLI: the tiny random gpt_oss model of tests/golden/fixtures (checked
against transformers by tests/golden/gptoss_golden_test.cpp), converted by `qleap convert` with a byte-level
vocabulary. Its experts have gate / up / down biases and the clamped SwiGLU (alpha, limit); the host expert
tier computes them (ExpertSet::act, biases in the slots), so `--expert-cache` gives the plain CPU text, and
`qleap profile` reads its four MoE layers."""
import json
import re
import shutil
import subprocess

import pytest

from test_server_archs import ROOT, byte_vocab


def run(qleap_bin, *args, timeout=120):
    return subprocess.run([qleap_bin, *map(str, args)], capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def gptoss_model(qleap_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("gptoss_model")
    src = tmp_path_factory.mktemp("hf_gpt_oss")
    for f in ("config.json", "model.safetensors"):
        shutil.copy(ROOT / "tests" / "golden" / "fixtures" / "gpt_oss" / f, src / f)
    tok = {"model": {"type": "BPE", "vocab": byte_vocab(), "merges": []}, "added_tokens": []}
    (src / "tokenizer.json").write_text(json.dumps(tok))
    r = run(qleap_bin, "convert", src, out / "gpt_oss.gguf", "--type", "F16")
    assert r.returncode == 0, r.stderr
    return out / "gpt_oss.gguf"


def gen(qleap_bin, model, *extra):
    r = run(qleap_bin, "run", model, "The quick brown fox", "-n", "24", "--temp", "0", "--raw", "-t", "2", *extra)
    assert r.returncode == 0, r.stderr
    return r


def policy_hits(stderr):
    """From `qleap run`'s closing line: the share of expert selections computed on the tier and the
    selections whose expert the policy held but whose copy had not landed (timing decides between the two;
    their sum is zero only when no selection went through the flow)."""
    m = re.search(rb"expert cache: ([0-9.]+)% of expert selections on the host tier, ([0-9]+) in flight", stderr)
    assert m, stderr
    return float(m.group(1)), int(m.group(2))


def test_host_tier_gives_the_plain_cpu_text(qleap_bin, gptoss_model):
    plain = gen(qleap_bin, gptoss_model).stdout
    assert len(plain) > len("The quick brown fox")
    for budget in ["0", "60K", "auto"]:
        r = gen(qleap_bin, gptoss_model, "--expert-cache", budget, "--expert-tier", "host")
        assert r.stdout == plain, budget
        assert b"expert cache: tier host" in r.stderr
        # The experts really ran through the flow: with half of them held (auto), the policy had hits.
        if budget == "auto":
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
