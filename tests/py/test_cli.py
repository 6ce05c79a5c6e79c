"""End-to-end checks of the qleap command line on the real stories260K model."""
import subprocess


def run(qleap_bin, *args, timeout=120):
    return subprocess.run([qleap_bin, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_greedy_story_matches_reference(qleap_bin, shared_models):
    expected = (shared_models / "stories260K.expected.txt").read_text()
    r = run(qleap_bin, "run", shared_models / "stories260K.gguf", "--raw", "--temp", "0", "-n", "200", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == expected.rstrip("\n")


def test_info_reports_metadata_and_memory(qleap_bin, shared_models):
    r = run(qleap_bin, "info", shared_models / "stories260K.gguf")
    assert r.returncode == 0, r.stderr
    assert "arch:        llama" in r.stdout
    assert "F32" in r.stdout
    # 5 layers x 2 (K,V) x 4 kv heads x 8 dims x 2 bytes (f16) = 640 bytes per token
    assert "640 B per token" in r.stdout


def test_missing_model_is_a_clear_error(qleap_bin, tmp_path):
    r = run(qleap_bin, "run", tmp_path / "nope.gguf", "hi")
    assert r.returncode == 1
    assert "not found" in r.stderr


def test_corrupt_gguf_is_a_clear_error(qleap_bin, shared_models, tmp_path):
    data = (shared_models / "stories260K.gguf").read_bytes()
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[: len(data) // 2])
    r = run(qleap_bin, "info", bad)
    assert r.returncode == 1
    assert "truncated" in r.stderr or "past the end" in r.stderr


def test_bad_flag_value_is_rejected(qleap_bin, shared_models):
    r = run(qleap_bin, "run", shared_models / "stories260K.gguf", "--kv", "bogus", "x", "-n", "1")
    assert r.returncode != 0
    assert "bogus" in r.stderr
