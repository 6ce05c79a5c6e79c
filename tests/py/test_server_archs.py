"""gemma3, gemma2, phi3, deepseek2 (MLA + MoE) and gpt-oss in `qleap serve`: the tiny random models of
tests/golden/fixtures (checked
against transformers by the C++ golden tests), converted by `qleap convert` with a byte-level
vocabulary, give under concurrent slots the same greedy text as one request at a time, with the f16
cache and with TurboQuant (tq3) on their attention layers, sliding-window layers included (prompts
and generations run far past the 8-10 position windows; deepseek2: on the cached MLA latent)."""
import concurrent.futures as cf
import json
import pathlib
import shutil
import subprocess
import threading

import httpx
import pytest

from server_util import Server

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ["gemma3", "gemma2", "phi3_longrope", "phi3_swa", "deepseek_v3", "deepseek_v2_lite", "gpt_oss"]
N = 6
OPTS = {"temperature": 0, "num_predict": 24, "repeat_penalty": 1.0}


def byte_vocab():
    """GPT-2's byte-to-character map: a byte-level BPE vocabulary of the 256 single bytes, no merges."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@pytest.fixture(scope="module")
def arch_models(qleap_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("arch_models")
    tok = {"model": {"type": "BPE", "vocab": byte_vocab(), "merges": []}, "added_tokens": []}
    for name in FIXTURES:
        src = tmp_path_factory.mktemp("hf_" + name)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(ROOT / "tests" / "golden" / "fixtures" / name / f, src / f)
        (src / "tokenizer.json").write_text(json.dumps(tok))
        subprocess.run([qleap_bin, "convert", str(src), str(out / f"{name}.gguf"), "--type", "F16"],
                       check=True, capture_output=True)
    return out


def generate(url, model, prompt):
    body = {"model": model, "prompt": prompt, "raw": True, "stream": False, "options": OPTS}
    r = httpx.post(url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    j = r.json()
    return j["response"], j["eval_count"]


@pytest.mark.parametrize("kv", ["f16", "tq3"])
def test_concurrent_greedy_equals_sequential(qleap_bin, test_models, arch_models, kv):
    # Prefill chunks of 8: the windowed layers' rings (window + 7 positions) are far smaller than the
    # context and wrap many times.
    s = Server(qleap_bin, test_models, ["--parallel", "4", "--kv", kv, "--ctx", "128", "-b", "8"])
    try:
        for f in FIXTURES:
            shutil.copy(arch_models / f"{f}.gguf", s.models / f"{f}.gguf")
        for name in FIXTURES:
            prompts = [f"Prompt {i}: the {['red', 'blue', 'green'][i % 3]} fox #{i * 7}" for i in range(N)]
            sequential = [generate(s.url, name, p) for p in prompts]
            assert len({t for t, _ in sequential}) > 1, f"{name}: prompts should give different texts"
            start = threading.Barrier(N)

            def run(i):
                start.wait()
                return generate(s.url, name, prompts[i])

            with cf.ThreadPoolExecutor(N) as ex:
                together = list(ex.map(run, range(N)))
            for i in range(N):
                assert together[i] == sequential[i], f"{name} --kv {kv}: request {i} differs under concurrency"
            # The second pass of sequential requests reuses cached prefixes where the rings allow.
            assert [generate(s.url, name, p) for p in prompts] == sequential, f"{name}: prefix reuse changed text"
    finally:
        assert s.stop() == 0


def test_info_sizes_the_rings_by_the_batch(qleap_bin, arch_models):
    """A sliding-window layer keeps window + batch - 1 positions (the prefill chunk is stored before it
    is attended): `qleap info -b` sizes them as a run with that batch would. gemma3 fixture: 2 of 3
    layers sliding (window 8), 2 kv heads x 32."""
    def usage(kv, batch):
        r = subprocess.run([qleap_bin, "info", str(arch_models / "gemma3.gguf"), "--kv", kv, "-c", "256",
                            "-b", str(batch), "--json"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        j = json.loads(r.stdout)
        return j["kv_bytes_per_token"], j["kv_fixed_bytes"]

    # 60 more ring positions x 2 layers: f16 K and V rows (2 x 64 values x 2 bytes); TurboQuant one
    # record each of K and V per kv head (rings at 4 bits: 32 x 4 / 8 + a 2-byte norm), held once.
    for kv, per_position in (("f16", 2 * 64 * 2), ("tq3", 2 * 2 * (16 + 2))):
        small, large = usage(kv, 4), usage(kv, 64)
        assert small[0] == large[0]
        assert large[1] - small[1] == 60 * 2 * per_position, kv
