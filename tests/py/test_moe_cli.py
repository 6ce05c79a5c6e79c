"""qleap bench --moe / --compress and qleap profile on a tiny MoE model converted from the golden fixture
(tests/golden/fixtures/qwen3_moe: 2 layers, 8 experts, top-2)."""
import json
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "golden" / "fixtures" / "qwen3_moe"


def run(qleap_bin, *args, timeout=120):
    return subprocess.run([qleap_bin, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def moe_gguf(qleap_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("moe") / "qwen3_moe.gguf"
    r = run(qleap_bin, "convert", FIXTURE, out, "--type", "Q8_0")
    assert r.returncode == 0, r.stderr
    return out


def bench_moe(qleap_bin, model, *extra):
    r = run(qleap_bin, "bench", "--moe", model, "-p", "16", "-n", "16", "-r", "1", "-t", "1", "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bench_moe_reports_measured_and_simulated(qleap_bin, moe_gguf):
    j = bench_moe(qleap_bin, moe_gguf)
    assert j["measured_cpu"]["tg_tps"] > 0 and j["measured_cpu"]["pp_tps"] > 0
    assert j["experts"]["per_layer"] == 8 and j["experts"]["per_token"] == 2 and j["experts"]["layers"] == 2
    assert j["experts"]["slots_per_layer"] == 4  # half of 8
    assert 0.0 <= j["prediction_recall"] <= 1.0
    assert [p["policy"][:3] for p in j["simulated"]] == ["(b)", "(c)", "(c)", "(d)"]
    for p in j["simulated"]:
        assert 0.0 <= p["hit_rate"] <= 1.0
    assert j["simulated"][0]["pcie_bytes_per_token"] == 0  # static placement moves nothing


def test_bench_moe_budget_extremes(qleap_bin, moe_gguf):
    full = bench_moe(qleap_bin, moe_gguf, "--moe-budget", "1")
    assert full["simulated"][0]["hit_rate"] == 1.0  # every expert fits: static seeding holds all
    none = bench_moe(qleap_bin, moe_gguf, "--moe-budget", "0")
    assert all(p["hit_rate"] == 0.0 and p["pcie_bytes_per_token"] == 0 for p in none["simulated"])


def test_moe_commands_reject_dense_models(qleap_bin, test_models):
    r = run(qleap_bin, "bench", "--moe", test_models / "stories260K.gguf", "-p", "4", "-n", "4")
    assert r.returncode == 1 and "not a mixture-of-experts model" in r.stderr
    text = test_models / "stories260K.expected.txt"
    r = run(qleap_bin, "profile", test_models / "stories260K.gguf", text)
    assert r.returncode == 1 and "not a mixture-of-experts model" in r.stderr


def test_bench_compress_round_trips(qleap_bin, moe_gguf):
    r = run(qleap_bin, "bench", "--compress", moe_gguf, "--json")
    if r.returncode != 0 and "neither zstd nor lz4" in r.stderr:
        pytest.skip("built without zstd and lz4")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["tensors"] == 6  # 2 layers x gate/up/down experts
    for c in j["codecs"]:
        assert c["ratio"] > 0.9 and c["decompress_gbps_1thread"] > 0
