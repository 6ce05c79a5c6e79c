"""ExpertFlow flags (--expert-cache, --expert-profile, --expert-tier) on `qleap run` and `qleap bench --moe`:
bad values give a clear error (exit 1, no crash), the host tier gives the same greedy text as the plain CPU run,
the cuda tier without a device falls back to the CPU with a note, and bench --moe measures the policies with the
runtime next to the simulation. Model: a tiny random qwen3moe from tools/make_random_model.py (numpy only)."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(qleap_bin, *args, timeout=120):
    return subprocess.run([qleap_bin, *map(str, args)], capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def moe_model(qleap_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("ef")
    hf = d / "hf"
    subprocess.run([sys.executable, ROOT / "tools" / "make_random_model.py", hf, "--hidden", "64", "--layers", "2",
                    "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--vocab", "512", "--experts", "8",
                    "--experts-used", "2"], check=True, capture_output=True)
    out = d / "moe.gguf"
    r = run(qleap_bin, "convert", hf, out, "--type", "Q8_0")
    assert r.returncode == 0, r.stderr
    return out


def gen(qleap_bin, model, *extra):
    r = run(qleap_bin, "run", model, "hello world", "-n", "12", "--temp", "0", "--raw", "-t", "2", *extra)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("flags, message", [
    (["--expert-cache", "12Q"], "--expert-cache: expected a byte count"),
    (["--expert-cache", "-5"], "--expert-cache: expected a byte count"),
    (["--expert-cache", "1M", "--expert-profile", "/nonexistent/profile.json"], "/nonexistent/profile.json"),
    (["--expert-profile", "p.json"], "--expert-profile needs --expert-cache"),
    (["--expert-tier", "host"], "--expert-tier needs --expert-cache"),
])
def test_run_rejects_bad_expert_flags(qleap_bin, moe_model, flags, message):
    r = run(qleap_bin, "run", moe_model, "hi", "-n", "2", *flags)
    assert r.returncode == 1, r.stderr
    assert message in r.stderr.decode()


def test_run_rejects_malformed_profile_and_unknown_tier(qleap_bin, moe_model, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run(qleap_bin, "run", moe_model, "hi", "-n", "2", "--expert-cache", "1M", "--expert-profile", bad)
    assert r.returncode == 1 and b"error:" in r.stderr
    r = run(qleap_bin, "run", moe_model, "hi", "-n", "2", "--expert-cache", "1M", "--expert-tier", "tpu")
    assert 0 < r.returncode < 128 and b"--expert-tier" in r.stderr


def test_expert_cache_on_a_dense_model_is_an_error(qleap_bin, test_models):
    r = run(qleap_bin, "run", test_models / "stories260K.gguf", "hi", "-n", "2", "--expert-cache", "1M",
            "--expert-tier", "host")
    assert r.returncode == 1 and b"not a mixture-of-experts model" in r.stderr


def test_host_tier_gives_the_plain_cpu_text(qleap_bin, moe_model, tmp_path):
    plain = gen(qleap_bin, moe_model).stdout
    for budget in ["0", "400K", "2M", "auto"]:
        r = gen(qleap_bin, moe_model, "--expert-cache", budget, "--expert-tier", "host")
        assert r.stdout == plain, budget
        assert b"expert cache: tier host" in r.stderr
    # Seeded from a profile of the same model.
    text = tmp_path / "t.txt"
    text.write_text("hello world, the quick brown fox jumps over the lazy dog. " * 4)
    prof = tmp_path / "p.json"
    r = run(qleap_bin, "profile", moe_model, text, "-o", prof)
    assert r.returncode == 0, r.stderr
    r = gen(qleap_bin, moe_model, "--expert-cache", "2M", "--expert-tier", "host", "--expert-profile", prof)
    assert r.stdout == plain
    assert b"seeded from profile" in r.stderr


def test_cuda_tier_without_device_falls_back_with_a_note(qleap_bin, moe_model):
    plain = gen(qleap_bin, moe_model).stdout
    r = gen(qleap_bin, moe_model, "--expert-cache", "auto")
    assert r.stdout == plain
    if b"no CUDA device" not in r.stderr:
        pytest.skip("a CUDA device is present: the cuda tier ran (covered by the GPU tests)")
    assert b"every expert runs on the CPU" in r.stderr


def test_bench_moe_measures_policies_with_the_host_tier(qleap_bin, moe_model):
    r = run(qleap_bin, "bench", "--moe", moe_model, "-p", "16", "-n", "16", "-r", "1", "-t", "1", "--json",
            "--expert-tier", "host")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    mt = j["measured_tier"]
    assert mt["tier"] == "host" and "not a GPU speedup" in mt["note"]
    assert [p["policy"][:3] for p in mt["policies"]] == ["(b)", "(c)", "(d)"]
    for p in mt["policies"]:
        assert 0.0 <= p["hit_rate"] <= 1.0 and p["tg_tps"] > 0 and p["upload_bytes_per_token"] >= 0
    # Static placement moves nothing after seeding, and with warm-up = prefill both count the same
    # decode tokens from the same seed: the measured hit rate is the simulated one.
    assert mt["policies"][0]["upload_bytes_per_token"] == 0
    assert mt["policies"][0]["hit_rate"] == pytest.approx(j["simulated"][0]["hit_rate"])
    assert 0.0 <= mt["policies"][2]["prediction_recall"] <= 1.0
    # --expert-cache sets the budget of both the simulation and the measurement.
    r = run(qleap_bin, "bench", "--moe", moe_model, "-p", "8", "-n", "8", "-r", "1", "-t", "1", "--json",
            "--expert-tier", "host", "--expert-cache", "0")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["experts"]["budget_bytes"] == 0
    assert all(p["hit_rate"] == 0 for p in j["measured_tier"]["policies"])
    r = run(qleap_bin, "bench", "--moe", moe_model, "-p", "8", "-n", "8", "--expert-cache", "lots")
    assert r.returncode == 1 and b"--expert-cache: expected a byte count" in r.stderr


def test_serve_runs_moe_models_through_the_expert_flow(qleap_bin, test_models, moe_model):
    """`qleap serve --expert-cache ... --expert-tier host`: a MoE model's greedy reply equals `qleap run`
    without ExpertFlow, /api/qleap/status and /metrics report the expert-tier hit rate, and a dense model
    in the same store is served as before (the flags apply to MoE models only)."""
    import shutil
    import urllib.request

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from server_util import Server

    s = Server(qleap_bin, test_models, ["--expert-cache", "1M", "--expert-tier", "host"])
    try:
        shutil.copy(moe_model, s.models / "moe.gguf")

        def post(path, body):
            req = urllib.request.Request(s.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())

        opts = {"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0}
        reply = post("/api/generate", {"model": "moe", "prompt": "hello world", "raw": True, "stream": False,
                                       "options": opts})
        plain = gen(qleap_bin, moe_model).stdout.decode()
        assert plain.rstrip("\n") == "hello world" + reply["response"]
        with urllib.request.urlopen(s.url + "/api/qleap/status", timeout=10) as r:
            status = json.loads(r.read())
        assert status["expert_cache_hit_rate"] is not None and 0.0 <= status["expert_cache_hit_rate"] <= 1.0
        with urllib.request.urlopen(s.url + "/metrics", timeout=10) as r:
            assert 'qleap_expert_cache_hit_rate{model="moe:latest"}' in r.read().decode()
        dense = post("/api/generate", {"model": "stories260K", "prompt": "Once", "raw": True, "stream": False,
                                       "options": opts})
        assert dense["done"] and dense["eval_count"] == 12
    finally:
        assert s.stop() == 0, "server exited with an error"


def test_serve_rejects_bad_expert_flags(qleap_bin, tmp_path):
    r = run(qleap_bin, "serve", "--port", "0", "--models", tmp_path, "--expert-cache", "12Q")
    assert r.returncode != 0 and b"--expert-cache: expected a byte count" in r.stderr
    r = run(qleap_bin, "serve", "--port", "0", "--models", tmp_path, "--expert-tier", "host")
    assert r.returncode != 0 and b"--expert-cache" in r.stderr
