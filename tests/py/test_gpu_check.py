"""scripts/gpu_check.sh, the GPU bring-up script, in its --dry-run mode: on a machine without a GPU it
must run every step it can against the build under test (CUDA tests skip cleanly, the CUDA benchmark's
flags are checked, a tiny MoE is made and benched) and write a well-formed summary, so that the real run
on a lent GPU does not fail on a typo. Also the helper's parsers on the benchmark's output format."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))
import gpu_check_report  # noqa: E402

STEPS = ["env", "deps", "configure", "build", "tests_cuda", "cli", "cuda_bench_q4k", "moe_model", "moe_bench",
         "cuda_bench_q8", "cuda_bench_32k", "pytest_gpu", "tests_rest"]


@pytest.fixture(scope="module")
def dry_run(qleap_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_check")
    build = pathlib.Path(qleap_bin).resolve().parent
    env = dict(os.environ)
    env.pop("OUT", None)
    # The synthetic MoE model needs numpy: the test environment's (pinned), not whatever python3 is.
    env["QLEAP_PYTHON"] = sys.executable
    r = subprocess.run(["bash", SCRIPTS / "gpu_check.sh", "--dry-run", "--build-dir", build, "--out", d / "out",
                        "--work", d / "work", "--jobs", "2"], capture_output=True, text=True, timeout=300, env=env)
    summary = json.loads((d / "out" / "summary.json").read_text())
    return r, summary, d


def test_dry_run_passes_and_writes_the_summary(dry_run):
    r, s, d = dry_run
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert s["format"] == "qleap-gpu-check-1" and s["dry_run"] is True and s["ok"] is True
    assert [x["name"] for x in s["steps"]] == STEPS
    for x in s["steps"]:
        assert x["status"] in ("ok", "skipped"), x
        assert isinstance(x["seconds"], float) and x["reason"], x
    assert s["counts"]["failed"] == 0 and s["counts"]["timeout"] == 0
    assert set(s["targets"]) == {"decode_q4k_of_copy", "pp512_of_cublas", "moe_best_over_cpu"}
    assert all(t["met"] is None for t in s["targets"].values())  # nothing measured without a GPU
    assert (d / "out" / "summary.txt").read_text().rstrip().endswith("result: OK")
    assert (d / "out" / "logs.tar.gz").stat().st_size > 0
    assert sorted(p.name for p in (d / "out").iterdir()) == ["logs.tar.gz", "summary.json", "summary.txt"]


def test_dry_run_selects_every_cuda_suite_and_they_skip_cleanly(dry_run):
    _, s, _ = dry_run
    t = next(x for x in s["steps"] if x["name"] == "tests_cuda")
    f = t["figures"]
    assert f["failed"] == 0 and f["tests"] >= 20
    for suite in ("CudaMatmul", "CudaOps", "CudaAttention", "CudaModelGolden", "CudaModelStories", "CudaExpertTier"):
        assert any(x.endswith(suite) for x in f["suites"]), suite
    assert f["skipped"] >= 15, f  # the GPU tests skip, with the reason in the result
    assert any("no CUDA device" in x["message"] for x in f["skipped_tests"])


def test_dry_run_steps_do_what_they_can_without_a_gpu(dry_run):
    _, s, _ = dry_run
    st = {x["name"]: x for x in s["steps"]}
    assert st["build"]["status"] == "skipped" and "nothing compiled" in st["build"]["reason"]
    assert st["configure"]["status"] == "ok" and "sm_90" in st["configure"]["reason"]
    assert st["cli"]["status"] == "ok" and "ngl99 = expected" in st["cli"]["reason"]
    assert st["moe_model"]["status"] == "ok"
    m = st["moe_bench"]
    assert m["status"] == "ok"
    assert m["figures"]["modes"][0]["tg_tps"] > 0  # (a) measured on the CPU
    assert "no CUDA device" in m["figures"]["tier_note"]
    for b in ("cuda_bench_q4k", "cuda_bench_q8", "cuda_bench_32k"):
        # A CUDA build checks the flags; a build without CUDA has no benchmark to check.
        assert st[b]["status"] == "skipped"
        assert "flags accepted" in st[b]["reason"] or "no qleap_cuda_bench" in st[b]["reason"]


def test_bad_arguments_are_refused():
    for args, msg in [(["--frobnicate"], "unknown option"), (["--jobs", "x"], "--jobs"),
                      (["--only", "tests_gpu"], "unknown step"), (["--moe-size", "huge"], "--moe-size")]:
        r = subprocess.run(["bash", SCRIPTS / "gpu_check.sh", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    r = subprocess.run(["bash", SCRIPTS / "gpu_check.sh", "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--dry-run" in r.stdout and "carry" in r.stdout


def test_cuda_bench_flags_are_checked_without_a_device(qleap_bin):
    b = pathlib.Path(qleap_bin).resolve().parent / "qleap_cuda_bench"
    if not b.exists():
        pytest.skip("this build has no qleap_cuda_bench (configured without CUDA)")
    ok = subprocess.run([b, "--check", "--shape", "llama3-8b", "--type", "Q4_K", "--ctx", "33280", "--depth", "32768",
                         "--gen", "32"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "device memory needed" in ok.stdout, ok.stderr
    for args, msg in [(["--type", "IQ2_XS"], "not one the benchmark synthesizes"), (["--ctx", "4k"], "--ctx: expected an integer"),
                      (["--depth", "4090", "--gen", "64"], "exceed --ctx"), (["--shape", "llama2"], "--shape"),
                      (["--bogus"], "unknown option")]:
        r = subprocess.run([b, "--check", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and msg in r.stderr, (args, r.stderr)


# The text qleap_cuda_bench prints (bench/cuda/cuda_bench.cpp's format strings), with made-up numbers.
CUDA_BENCH_SAMPLE = """device: NVIDIA H100 80GB HBM3 (compute 9.0, 132 SMs, 79.2 GiB)
device copy (1 GiB, read + write): 2950 GB/s; datasheet peak used: 3350 GB/s
model: llama3-8b Q4_K synthetic, 32 layers, weights 4.06 GiB (layers) + 0.27 GiB (output)

| matrix | rows x cols | bytes | us | GB/s | % of copy |
|---|---|---|---|---|---|
| attn_q | 4096 x 4096 | 9.4 MB | 6.1 | 1547 | 52% |
| output | 128256 x 4096 | 295.5 MB | 120.4 | 2454 | 83% |

| CUDA graph | pp512 t/s | tg64 @ depth 512 t/s | GB/s at decode | % of copy | % of peak |
|---|---|---|---|---|---|
| on | 7000 | 450.5 | 2100 | 71% | 63% |
| off | 6900 | 300.0 | 1399 | 47% | 42% |
(decode bytes per token: 4.66 GB = weights 4.65 + KV 0.009)
cuBLAS f16 GEMM bound for a 512-token chunk: 12000 t/s (1.33 ms per layer)
"""


def test_cuda_bench_output_is_parsed():
    f, ok = gpu_check_report.cuda_bench(CUDA_BENCH_SAMPLE)
    assert ok
    assert f["device"] == "NVIDIA H100 80GB HBM3" and f["compute"] == "9.0" and f["copy_gbs"] == 2950
    assert f["type"] == "Q4_K" and f["prompt"] == 512 and f["gen"] == 64 and f["depth"] == 512
    assert [k["matrix"] for k in f["kernels"]] == ["attn_q", "output"]
    assert f["graph"]["on"]["tg_tps"] == 450.5 and f["graph"]["off"]["decode_gbs"] == 1399
    assert f["cublas_bound_tps"] == 12000
    assert f["decode_of_copy"] == pytest.approx(2100 / 2950, abs=1e-4)
    assert f["pp_of_cublas"] == pytest.approx(7000 / 12000, abs=1e-4)
    assert gpu_check_report.cuda_bench("qleap_cuda_bench: no CUDA device\n")[1] is False


def test_datasheet_peaks():
    assert gpu_check_report.peak_gbs("NVIDIA H100 80GB HBM3") == 3350
    assert gpu_check_report.peak_gbs("NVIDIA H200") == 4800
    assert gpu_check_report.peak_gbs("NVIDIA H100 PCIe") == 2000
    assert gpu_check_report.peak_gbs("Some Other GPU") == 0
