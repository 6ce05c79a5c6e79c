"""Hardware detection, planner and tuner through the qleap command line."""
import json
import os
import pathlib
import subprocess


def run(qleap_bin, *args, env=None, timeout=120):
    return subprocess.run([qleap_bin, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def test_info_json_describes_the_machine(qleap_bin):
    r = run(qleap_bin, "info", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["cpu"]["physical_cores"] >= 1
    assert j["cpu"]["isa"] in ("scalar", "avx2", "avx512", "amx")
    assert j["ram"]["total_bytes"] >= j["ram"]["available_bytes"] > 0
    assert j["mem_bw_gbps"] > 0
    assert isinstance(j["gpus"], list)


def test_amx_refused_falls_back_to_avx512_with_a_note(qleap_bin):
    """A kernel that refuses the AMX tile state (simulated) leaves the AVX-512 kernels, and says so."""
    r = run(qleap_bin, "info", "--json")
    if json.loads(r.stdout)["cpu"]["isa"] != "amx":
        return  # no AMX here: nothing to refuse
    env = dict(os.environ, QLEAP_AMX_DENY="1")
    r = run(qleap_bin, "info", env=env)
    assert r.returncode == 0, r.stderr
    assert "SIMD:       avx512" in r.stdout and "AMX present but refused" in r.stdout


def synthetic_machine(tmp_path, vram_gib=None, ram_gib=16):
    hw = {"cpu": {"model": "Synthetic", "physical_cores": 4, "logical_cpus": 8, "isa": "avx2"},
          "ram": {"total_bytes": ram_gib << 30, "available_bytes": ram_gib << 30},
          "mem_bw_gbps": 20.0, "gpus": []}
    if vram_gib:
        hw["gpus"].append({"vendor": "nvidia", "index": 0, "name": "Synthetic GPU", "supported": True,
                           "vram_total_bytes": vram_gib << 30, "vram_free_bytes": vram_gib << 30,
                           "compute_capability": "9.0"})
    p = tmp_path / "hw.json"
    p.write_text(json.dumps(hw))
    return p


def test_plan_cpu_machine(qleap_bin, test_models, tmp_path):
    r = run(qleap_bin, "plan", test_models / "stories260K.gguf", "--ctx", "256", "--json",
            "--hardware", synthetic_machine(tmp_path))
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["plan"]
    assert p["n_ctx"] == 256 and p["kv_type"] == "f16" and p["threads"] == 4 and p["gpu_layers"] == 0
    assert p["fits"]
    # f16 KV of stories260K: 640 bytes per token
    assert p["kv_bytes"] == 640 * 256


def test_plan_gpu_machine_offloads_everything_and_explains(qleap_bin, test_models, tmp_path):
    r = run(qleap_bin, "plan", test_models / "stories260K.gguf", "--hardware",
            synthetic_machine(tmp_path, vram_gib=8))
    assert r.returncode == 0, r.stderr
    assert "GPU layers 5 on GPU 0 (Synthetic GPU)" in r.stdout
    assert "all 5 layers and the output head on the GPU" in r.stdout
    assert "why:" in r.stdout


def test_plan_honours_flags(qleap_bin, test_models, tmp_path):
    r = run(qleap_bin, "plan", test_models / "stories260K.gguf", "--json", "--kv", "q8_0", "-t", "3", "-b", "32",
            "-ngl", "0", "--hardware", synthetic_machine(tmp_path, vram_gib=8))
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["plan"]
    assert (p["kv_type"], p["threads"], p["batch"], p["gpu_layers"]) == ("q8_0", 3, 32, 0)


def test_plan_bad_gpu_layers_is_an_error(qleap_bin, test_models):
    r = run(qleap_bin, "plan", test_models / "stories260K.gguf", "--gpu-layers", "lots")
    assert r.returncode == 1
    assert "--gpu-layers" in r.stderr


def test_tune_stores_and_run_reuses(qleap_bin, test_models, tmp_path):
    import os
    env = dict(os.environ, QLEAP_TUNE_FILE=str(tmp_path / "tune.json"))
    model = test_models / "stories260K.gguf"
    r = run(qleap_bin, "tune", model, "-p", "32", "-n", "8", "--json", env=env)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert t["chosen"]["tg_tok_s"] > 0 and t["default"]["tg_tok_s"] > 0
    assert len(t["measured"]) >= 2
    store = json.loads((tmp_path / "tune.json").read_text())
    assert len(store["entries"]) == 1
    chosen = store["entries"][0]["settings"]
    r = run(qleap_bin, "run", model, "--raw", "--temp", "0", "-n", "8", "Once", env=env)
    assert r.returncode == 0, r.stderr
    assert "using tuned plan from" in r.stderr
    assert f"{chosen['threads']} threads, batch {chosen['batch']}" in r.stderr
    # An explicit flag still wins over the stored value.
    r = run(qleap_bin, "run", model, "--raw", "--temp", "0", "-n", "4", "-b", "7", "Once", env=env)
    assert "batch 7" in r.stderr


def test_run_reports_its_plan(qleap_bin, test_models):
    r = run(qleap_bin, "run", test_models / "stories260K.gguf", "--raw", "--temp", "0", "-n", "4", "Once")
    assert r.returncode == 0, r.stderr
    assert "[plan: ctx" in r.stderr


def fake_cuda_env(tmp_path):
    import os
    import shutil
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        import pytest
        pytest.skip("no C compiler to build the fake libcuda.so.1")
    src = pathlib.Path(__file__).parent / "fixtures" / "fake_libcuda.c"
    lib = tmp_path / "libcuda.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return dict(os.environ, LD_LIBRARY_PATH=f"{tmp_path}:{os.environ.get('LD_LIBRARY_PATH', '')}")


def test_nvidia_detection_through_the_driver_api(qleap_bin, tmp_path):
    env = fake_cuda_env(tmp_path)
    r = run(qleap_bin, "info", "--json", env=env)
    assert r.returncode == 0, r.stderr
    gpus = [g for g in json.loads(r.stdout)["gpus"] if g["vendor"] == "nvidia"]
    assert len(gpus) == 1, r.stdout
    g = gpus[0]
    assert g["name"] == "Fake H100 80GB"
    assert g["compute_capability"] == "9.0"
    assert g["vram_total_bytes"] == 80 << 30
    assert g["vram_free_bytes"] == 70 << 30  # no NVML for the fake bus id: cuMemGetInfo fallback
    assert g["supported"]
    r = run(qleap_bin, "info", env=env)
    assert "GPU nvidia 0:  Fake H100 80GB, VRAM 80.00 GiB total / 70.00 GiB free, compute capability 9.0" in r.stdout


def test_run_says_when_the_planned_offload_is_unavailable(qleap_bin, test_models, tmp_path):
    env = fake_cuda_env(tmp_path)
    model = test_models / "stories260K.gguf"
    if json.loads(run(qleap_bin, "plan", model, "--json", env=env).stdout)["gpu_offload_in_build"]:
        import pytest
        pytest.skip("this build offloads to the GPU; the fake driver cannot run kernels")
    r = run(qleap_bin, "plan", model, env=env)
    assert r.returncode == 0, r.stderr
    assert "GPU layers 5 on GPU 0 (Fake H100 80GB)" in r.stdout
    r = run(qleap_bin, "run", model, "--raw", "--temp", "0", "-n", "4", "Once", env=env)
    assert r.returncode == 0, r.stderr
    assert "GPU offload is unavailable in this build" in r.stderr
    assert "CPU only" in r.stderr


def test_plan_picks_turboquant_when_f16_does_not_fit_the_slots(qleap_bin, test_models, tmp_path):
    """1 GiB machine (512 MiB budget): f16 KV of stories260K for 262144 x 4 slots is 640 MiB, tq4 240 MiB."""
    hw = synthetic_machine(tmp_path, ram_gib=1)
    m = test_models / "stories260K.gguf"
    r = run(qleap_bin, "plan", m, "--ctx", "262144", "--parallel", "4", "--hardware", hw)
    assert r.returncode == 0, r.stderr
    assert "KV tq4" in r.stdout
    assert "KV f16 would need 640.0 MiB for 262144 x 4 slots" in r.stdout
    assert "using tq4:" in r.stdout
    r = run(qleap_bin, "plan", m, "--ctx", "262144", "--parallel", "4", "--hardware", hw, "--json")
    p = json.loads(r.stdout)["plan"]
    assert p["kv_type"] == "tq4" and p["fits"] and p["n_ctx"] == 262144
    # One slot: f16 fits.
    r = run(qleap_bin, "plan", m, "--ctx", "262144", "--hardware", hw, "--json")
    assert json.loads(r.stdout)["plan"]["kv_type"] == "f16"
    # The user's --kv is the user's word, even when it does not fit.
    r = run(qleap_bin, "plan", m, "--ctx", "262144", "--parallel", "4", "--kv", "f16", "--hardware", hw, "--json")
    p = json.loads(r.stdout)["plan"]
    assert p["kv_type"] == "f16" and not p["fits"]
