"""--gpu-layers / -ngl on the command line: the greedy story is the same with any offload request,
and without a CUDA device the request falls back to the CPU with a note (never an error)."""
import functools
import subprocess


def run(qleap_bin, *args, timeout=120):
    return subprocess.run([qleap_bin, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@functools.lru_cache(maxsize=None)
def has_cuda_device(qleap_bin):
    return "CUDA 0:" in run(qleap_bin, "info").stdout


def test_gpu_layers_keeps_greedy_text(qleap_bin, test_models):
    expected = (test_models / "stories260K.expected.txt").read_text().rstrip("\n")
    model = test_models / "stories260K.gguf"
    for flag in (["-ngl", "99"], ["--gpu-layers", "2"]):
        r = run(qleap_bin, "run", model, "--raw", "--temp", "0", "-n", "200", "-q", *flag)
        assert r.returncode == 0, r.stderr
        assert r.stdout.rstrip("\n") == expected, flag
        if not has_cuda_device(qleap_bin):
            assert "ignored: no CUDA device" in r.stderr


def test_bench_reports_placement(qleap_bin, test_models):
    r = run(qleap_bin, "bench", test_models / "stories260K.gguf", "-p", "8", "-n", "4", "-r", "1", "-ngl", "3")
    assert r.returncode == 0, r.stderr
    if has_cuda_device(qleap_bin):
        assert "placement: CPU: layers 0-1, GPU: layers 2-4" in r.stdout
    else:
        assert "placement: CPU: all 5 layers" in r.stdout


def test_gpu_layers_rejects_garbage(qleap_bin, test_models):
    r = run(qleap_bin, "run", test_models / "stories260K.gguf", "hi", "--gpu-layers", "-5")
    assert r.returncode != 0
