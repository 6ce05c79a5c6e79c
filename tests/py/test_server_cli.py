"""`qleap list`, `qleap pull` (local file), `qleap rm` over a temporary model store."""
import os
import subprocess


def run(qleap_bin, store, *args, check=True):
    env = dict(os.environ, QLEAP_MODELS=str(store))
    return subprocess.run([qleap_bin, *args], capture_output=True, text=True, env=env, check=check)


def test_pull_list_rm(qleap_bin, test_models, tmp_path):
    store = tmp_path / "models"
    assert "stories260K" not in run(qleap_bin, store, "list").stdout
    out = run(qleap_bin, store, "pull", str(test_models / "stories260K.gguf")).stdout
    assert "pulled stories260K:latest" in out
    listing = run(qleap_bin, store, "list").stdout
    line = [l for l in listing.splitlines() if l.startswith("stories260K:latest")][0]
    assert "llama" in line and "F32" in line and "293K" in line
    # The store copy is a model `qleap run` finds by name.
    gen = run(qleap_bin, store, "run", "stories260K", "Once", "--raw", "--temp", "0", "-n", "4", "-q").stdout
    assert gen.startswith("Once")
    run(qleap_bin, store, "rm", "stories260K")
    assert "stories260K" not in run(qleap_bin, store, "list").stdout
    r = run(qleap_bin, store, "rm", "stories260K", check=False)
    assert r.returncode != 0 and "not found" in r.stderr
    r = run(qleap_bin, store, "pull", "not-a-ref", check=False)
    assert r.returncode != 0 and "error" in r.stderr


def test_ps_without_server(qleap_bin, tmp_path):
    r = subprocess.run([qleap_bin, "ps", "--host", "127.0.0.1:1"], capture_output=True, text=True)
    assert r.returncode != 0 and "cannot reach" in r.stderr
