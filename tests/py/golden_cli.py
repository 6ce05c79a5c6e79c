"""The tiny random models of tests/golden/fixtures (checked against transformers by the C++ golden tests) on
the CLI: converted by `qleap convert` to F16 with a byte-level vocabulary, and greedy text from `qleap run`."""
import json
import shutil
import subprocess

from test_server_archs import ROOT, byte_vocab


def run(qleap_bin, *args, timeout=120):
    return subprocess.run([qleap_bin, *map(str, args)], capture_output=True, timeout=timeout)


def convert_golden(qleap_bin, name, work):
    """tests/golden/fixtures/<name> with a 256-byte BPE vocabulary, converted into work/<name>.gguf."""
    src = work / ("hf_" + name)
    src.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(ROOT / "tests" / "golden" / "fixtures" / name / f, src / f)
    tok = {"model": {"type": "BPE", "vocab": byte_vocab(), "merges": []}, "added_tokens": []}
    (src / "tokenizer.json").write_text(json.dumps(tok))
    out = work / f"{name}.gguf"
    r = run(qleap_bin, "convert", src, out, "--type", "F16")
    assert r.returncode == 0, r.stderr
    return out


def gen(qleap_bin, model, *extra):
    """24 greedy tokens after "The quick brown fox", on 2 threads."""
    r = run(qleap_bin, "run", model, "The quick brown fox", "-n", "24", "--temp", "0", "--raw", "-t", "2", *extra)
    assert r.returncode == 0, r.stderr
    return r
