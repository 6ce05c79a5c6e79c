"""End-to-end checks of the qleap command line on the real stories260K model."""
import json
import subprocess


def run(qleap_bin, *args, timeout=120):
    return subprocess.run([qleap_bin, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_greedy_story_matches_reference(qleap_bin, test_models):
    expected = (test_models / "stories260K.expected.txt").read_text()
    r = run(qleap_bin, "run", test_models / "stories260K.gguf", "--raw", "--temp", "0", "-n", "200", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == expected.rstrip("\n")


def test_info_reports_metadata_and_memory(qleap_bin, test_models):
    r = run(qleap_bin, "info", test_models / "stories260K.gguf")
    assert r.returncode == 0, r.stderr
    assert "arch:        llama" in r.stdout
    assert "F32" in r.stdout
    # 5 layers x 2 (K,V) x 4 kv heads x 8 dims x 2 bytes (f16) = 640 bytes per token
    assert "640 B per token" in r.stdout


def test_missing_model_is_a_clear_error(qleap_bin, tmp_path):
    r = run(qleap_bin, "run", tmp_path / "nope.gguf", "hi")
    assert r.returncode == 1
    assert "not found" in r.stderr


def test_corrupt_gguf_is_a_clear_error(qleap_bin, test_models, tmp_path):
    data = (test_models / "stories260K.gguf").read_bytes()
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[: len(data) // 2])
    r = run(qleap_bin, "info", bad)
    assert r.returncode == 1
    assert "truncated" in r.stderr or "past the end" in r.stderr


def test_bad_flag_value_is_rejected(qleap_bin, test_models):
    r = run(qleap_bin, "run", test_models / "stories260K.gguf", "--kv", "bogus", "x", "-n", "1")
    assert r.returncode != 0
    assert "bogus" in r.stderr


# ---- KV cache types: qleap compare, q4_0, long-context bench ----

STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
    "dog. One day, Lily saw a big red ball under a tree. She ran to get it, but the ball rolled away. "
    "Lily was sad, so her mom came to help her. Together they found the ball next to the pond. "
)


def test_compare_prompt_mode_prints_kld_and_both_continuations(qleap_bin, test_models):
    r = run(qleap_bin, "compare", test_models / "stories260K.gguf", "--kv", "tq3", "Once upon a time", "-n", "16",
            "-t", "1")
    assert r.returncode == 0, r.stderr
    assert "f16 greedy" in r.stdout and "tq3 greedy" in r.stdout
    assert "mean KLD" in r.stdout and "top-1 agreement" in r.stdout
    assert "identical for the first" in r.stdout


def test_compare_against_itself_is_lossless(qleap_bin, test_models):
    r = run(qleap_bin, "compare", test_models / "stories260K.gguf", "--kv", "f16", "Once upon a time", "-n", "8",
            "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)["summary"]
    assert s["mean_kld"] < 1e-9
    assert s["top1_agreement"] == 1.0


def test_compare_text_mode_orders_cache_types(qleap_bin, test_models, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text(STORY * 12)
    res = {}
    # ':w0': without the recent window, which covers half of this 128-token context, so that bits decide.
    for kv in ("q8_0", "tq4:w0", "tq2:w0", "tq2"):
        r = run(qleap_bin, "compare", test_models / "stories260K.gguf", "--kv", kv, "--text", text, "-c", "128",
                "-t", "1", "--json")
        assert r.returncode == 0, r.stderr
        j = json.loads(r.stdout)
        assert j["summary"]["tokens"] > 100
        assert j["summary"]["ppl_base"] > 1.0
        res[kv] = j["summary"]["mean_kld"]
    # More bits, less divergence from f16 (measured: q8_0 0.002, tq4:w0 0.016, tq2:w0 0.51 on this text);
    # the default window of 64 exact positions helps (tq2 with it: 0.0025).
    assert 0 < res["q8_0"] < res["tq4:w0"] < res["tq2:w0"]
    assert res["tq2"] < 0.5 * res["tq2:w0"]


def test_compare_text_mode_several_types_in_one_run(qleap_bin, test_models, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text(STORY * 12)
    args = ["--text", text, "-c", "128", "-t", "1", "--json"]
    r = run(qleap_bin, "compare", test_models / "stories260K.gguf", "--kv", "q4_0r,tq3:w0", *args)
    assert r.returncode == 0, r.stderr
    both = json.loads(r.stdout)
    assert [j["kv"] for j in both] == ["q4_0r", "tq3:w0"]
    # The same figures as one run per type: the baseline is shared, not approximated.
    for j in both:
        one = run(qleap_bin, "compare", test_models / "stories260K.gguf", "--kv", j["kv"], *args)
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["summary"] == j["summary"]
    r = run(qleap_bin, "compare", test_models / "stories260K.gguf", "--kv", "tq3,,tq4", *args)
    assert r.returncode != 0 and "empty type" in r.stderr
    r = run(qleap_bin, "compare", test_models / "stories260K.gguf", "--kv", "tq3,tq4", "Once upon a time", "-n", "4")
    assert r.returncode != 0 and "need --text" in r.stderr


def test_q4_0_kv_cache_and_its_size(qleap_bin, test_models):
    r = run(qleap_bin, "info", test_models / "stories260K.gguf", "--kv", "q4_0")
    assert r.returncode == 0, r.stderr
    # 5 layers x 2 (K,V) x one 18-byte block (kv_dim 32) = 180 bytes per token
    assert "180 B per token" in r.stdout


def test_bench_decode_after_a_filled_context(qleap_bin, test_models):
    r = run(qleap_bin, "bench", test_models / "stories260K.gguf", "-p", "0", "-n", "4", "-r", "1", "--depth", "200",
            "--fill", "random", "--kv", "tq3", "--no-membw", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["tg"]["depth"] == 200 and j["tg"]["tps"] > 0
    # Records (200 bytes) + block key means, a row of 8 floats per 128 positions (5 x 4 x 32 / 128).
    assert j["kv_bytes_per_token"] == 205 and abs(j["kv_compression_vs_f16"] - 640 / 205) < 1e-9


def test_bench_reports_the_best_and_the_median_read_probe(qleap_bin, test_models):
    # The decode ratio is against the best probe; the median shows how far the host moved meanwhile.
    m = test_models / "stories260K.gguf"
    j = json.loads(run(qleap_bin, "bench", m, "-p", "0", "-n", "4", "-r", "1", "--json").stdout)
    assert j["machine_read_probes"] == 5
    assert j["machine_read_gbps"] >= j["machine_read_gbps_median"] > 0
    text = run(qleap_bin, "bench", m, "-p", "0", "-n", "4", "-r", "1").stdout
    assert "best of 5 probes, median" in text, text


def test_bench_parallel_decodes_slots_together(qleap_bin, test_models):
    # --parallel N (no --mem-budget): N sequences decode one token each per step, timed against one
    # sequence alone in interleaved rounds.
    r = run(qleap_bin, "bench", test_models / "stories260K.gguf", "--parallel", "3", "-n", "8", "-d", "5",
            "-r", "2", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)["slots"]
    assert s["n"] == 3 and s["n_gen"] == 8 and s["depth"] == 5
    assert s["tps_one"] > 0 and s["tps_all"] > 0 and s["ratio"] > 0
    assert abs(s["ratio"] - s["tps_all"] / s["tps_one"]) < 0.5 * s["ratio"]
    bad = run(qleap_bin, "bench", test_models / "stories260K.gguf", "--parallel", "2", "-n", "0")
    assert bad.returncode != 0 and "-n > 0" in bad.stderr
    text = run(qleap_bin, "bench", test_models / "stories260K.gguf", "--parallel", "2", "-n", "4", "-r", "1")
    assert text.returncode == 0 and "x2" in text.stdout and "vs 1 slot" in text.stdout


def test_bench_pp_is_one_batch_unless_b_is_given(qleap_bin, test_models):
    m = test_models / "stories260K.gguf"
    one = run(qleap_bin, "bench", m, "-p", "40", "-n", "0", "-r", "1", "--no-membw", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["pp"]["batch"] == 40
    # -b 16: the 40 prompt tokens in batches of 16 (as run/serve and llama-bench's -ub do), after a
    # context filled to 30, so batches cross the depth.
    r = run(qleap_bin, "bench", m, "-p", "40", "-n", "0", "-r", "1", "-b", "16", "--pp-depth", "30", "--fill",
            "random", "--no-membw", "--json")
    assert r.returncode == 0, r.stderr
    pp = json.loads(r.stdout)["pp"]
    assert pp["batch"] == 16 and pp["n"] == 40 and pp["depth"] == 30 and pp["tps"] > 0


def test_bench_compares_kv_types_in_one_process(qleap_bin, test_models):
    r = run(qleap_bin, "bench", test_models / "stories260K.gguf", "-p", "0", "-n", "4", "-r", "2", "--depth", "100",
            "--fill", "random", "--kv", "f16,q8_0,tq3", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["baseline"] == "f16" and j["depth"] == 100 and j["reps"] == 2
    rows = {t["kv"]: t for t in j["types"]}
    assert list(rows) == ["f16", "q8_0", "tq3"]
    # The baseline's per-round ratio to itself is exactly 1; the others are positive rates.
    assert rows["f16"]["ratio"] == 1.0 and rows["f16"]["ratio_sd"] == 0.0
    assert all(t["tps"] > 0 and t["ratio"] > 0 for t in j["types"])
    # Sizes are each cache's real allocation per token (stories260K: 5 layers, 4 kv heads x 8).
    assert rows["f16"]["kv_bytes_per_token"] == 5 * 2 * 32 * 2
    assert rows["tq3"]["kv_bytes_per_token"] == 205
    bad = run(qleap_bin, "bench", test_models / "stories260K.gguf", "-n", "0", "--kv", "f16,tq3")
    assert bad.returncode != 0 and "-n > 0" in bad.stderr


def test_info_reports_the_turboquant_exact_rows_as_fixed_bytes(qleap_bin, test_models):
    def fixed(kv):
        r = run(qleap_bin, "info", test_models / "stories260K.gguf", "--kv", kv, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    j = fixed("tq3")
    # Records per token (5 layers x 4 kv heads x (K + V) x 10 bytes) and the block key means' shift
    # rows (8 floats per 128 positions, layer and kv head: 5 bytes), plus the exact rows, whatever the
    # context: the sink, one position of K and V per layer and kv head as floats (5 x 4 x 2 x 8 x 4
    # bytes), the recent window, 64 positions as fp16, and 8 more held so that short trims stay exact
    # (5 x 4 x 72 x 2 x 8 x 2 bytes), and one shift row per layer and kv head (5 x 4 x 8 x 4 bytes).
    shift = 5 * 4 * 8 * 4
    assert j["kv_bytes_per_token"] == 205
    assert j["kv_fixed_bytes"] == 5 * 4 * 2 * 8 * 4 + 5 * 4 * 72 * 2 * 8 * 2 + shift
    assert fixed("tq3:w0")["kv_fixed_bytes"] == 5 * 4 * 2 * 8 * 4 + shift
    assert fixed("tq3:sink0:w16")["kv_fixed_bytes"] == 5 * 4 * 24 * 2 * 8 * 2 + shift
    assert fixed("tq3:sink0:w0")["kv_fixed_bytes"] == shift
    assert fixed("tq3:sink0:w0:bm0")["kv_fixed_bytes"] == 0
    assert fixed("tq3:bm0")["kv_bytes_per_token"] == 200


def test_kv_sensitivity_profile_feeds_the_per_head_allocation(qleap_bin, test_models, tmp_path):
    model = test_models / "stories260K.gguf"
    text = tmp_path / "text.txt"
    text.write_text(((test_models / "stories260K.expected.txt").read_text() + "\n") * 4)
    out = tmp_path / "sens.json"
    r = run(qleap_bin, "profile", model, text, "--kv-sensitivity", "-c", "256", "--chunks", "2", "-t", "1",
            "-o", out)
    assert r.returncode == 0, r.stderr
    assert "mean 3 bits: summed error" in r.stdout
    j = json.loads(out.read_text())
    assert j["format"] == "qleap-kv-sensitivity" and j["chunks"] == 2 and j["tokens"] == 256
    assert (j["n_layers"], j["n_kv_heads"], j["head_dim"], j["rates"]) == (5, 4, 8, [2, 3, 4])
    assert sorted((h["layer"], h["kv_head"]) for h in j["heads"]) == [(l, g) for l in range(5) for g in range(4)]
    for h in j["heads"]:
        for err in (h["k"], h["v"]):
            assert len(err) == 3 and all(e >= 0 for e in err) and err[0] > err[2]
    # The allocation spends the bytes of tq3 (whole-bit steps at head_dim 8) and runs end to end.
    info = run(qleap_bin, "info", model, "--kv", f"tq3:alloc={out}", "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["kv_bytes_per_token"] == 205  # records + shift rows, as plain tq3
    gen = run(qleap_bin, "run", model, "--kv", f"tq3:alloc={out}", "--raw", "--temp", "0", "-n", "16", "-q")
    assert gen.returncode == 0 and gen.stdout.strip(), gen.stderr
    # Clear errors: too short a context, a cache that is not TurboQuant, a profile of another shape.
    short = run(qleap_bin, "profile", model, text, "--kv-sensitivity", "-c", "64", "-o", tmp_path / "x.json")
    assert short.returncode != 0 and "at least 128" in short.stderr
    f16 = run(qleap_bin, "profile", model, text, "--kv-sensitivity", "--kv", "f16", "-c", "256")
    assert f16.returncode != 0 and "not one" in f16.stderr
    j["n_layers"] = 6
    j["heads"] += [{"layer": 5, "kv_head": g, "k": [1, 0.5, 0.1], "v": [1, 0.5, 0.1]} for g in range(4)]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(j))
    bad = run(qleap_bin, "run", model, "--kv", f"tq3:alloc={other}", "-n", "4", "-q")
    assert bad.returncode != 0 and "6 layers" in bad.stderr, bad.stderr
    info = run(qleap_bin, "info", model, "--kv", f"tq3:alloc={other}")
    assert "cannot size" in info.stdout and "6 layers" in info.stdout


# ---- passkey retrieval, capacity per RAM budget ----
def test_passkey_reports_every_type_and_depth(qleap_bin, test_models):
    # (stories260K's tokenizer is nearly per character: instruction, needle and question take ~160 tokens)
    r = run(qleap_bin, "passkey", test_models / "stories260K.gguf", "--tokens", "400", "--depths", "0.1,0.9",
            "--kv", "f16,tq3", "-c", "512", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    trials = json.loads(r.stdout)["trials"]
    assert [(t["kv"], t["depth_asked"]) for t in trials] == [("f16", 0.1), ("f16", 0.9), ("tq3", 0.1), ("tq3", 0.9)]
    for t in trials:
        assert t["tokens"] == 400 and len(t["key"]) == 5
        assert abs(t["depth"] - t["depth_asked"]) < 0.15
        digits = "".join(c if c.isdigit() else " " for c in t["answer"]).split()
        assert t["found"] == (bool(digits) and digits[0] == t["key"])
    # Same seed, same numbers for every type; the depths hide different ones.
    assert trials[0]["key"] == trials[2]["key"] != trials[1]["key"]
    r = run(qleap_bin, "passkey", test_models / "stories260K.gguf", "--tokens", "400", "--depths", "0.5",
            "-c", "512", "-t", "1")
    assert r.returncode == 0, r.stderr
    assert "retrieves what f16 retrieves" in r.stdout


def test_passkey_trials_hide_different_keys_and_pair_the_answers(qleap_bin, test_models):
    m = test_models / "stories260K.gguf"
    r = run(qleap_bin, "passkey", m, "--tokens", "400", "--depths", "0.1,0.9", "--trials", "2", "--kv", "f16,tq3",
            "-c", "512", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    trials = json.loads(r.stdout)["trials"]
    assert [(t["kv"], t["depth_asked"], t["trial"]) for t in trials] == [
        (kv, d, i) for kv in ("f16", "tq3") for d in (0.1, 0.9) for i in (0, 1)]
    keys = [t["key"] for t in trials[:4]]
    assert len(set(keys)) == 4 and keys == [t["key"] for t in trials[4:]]
    # One trial per depth keeps the keys it always had: trial 0 of depth i is key number i.
    one = run(qleap_bin, "passkey", m, "--tokens", "400", "--depths", "0.1,0.9", "--kv", "f16", "-c", "512",
              "-t", "1", "--json")
    assert [t["key"] for t in json.loads(one.stdout)["trials"]] == [keys[0], keys[1]]
    table = run(qleap_bin, "passkey", m, "--tokens", "400", "--depths", "0.5", "--trials", "2", "--kv", "f16,tq3",
                "-c", "512", "-t", "1")
    assert table.returncode == 0, table.stderr
    assert "2 trials per depth" in table.stdout
    row = [line for line in table.stdout.splitlines() if line.strip().startswith("tq3 |")][0]
    assert "/2" in row and "lost " in row and "gained " in row, table.stdout


def test_passkey_bad_values_are_clear_errors(qleap_bin, test_models):
    m = test_models / "stories260K.gguf"
    for args, msg in [(["--depths", "1.5"], "--depths"), (["--depths", "x"], "--depths"),
                      (["--tokens", "abc"], "--tokens"), (["--tokens", "1000", "-c", "512"], "--ctx"),
                      (["--tokens", "100"], "no room")]:
        r = run(qleap_bin, "passkey", m, *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert msg in r.stderr, (args, r.stderr)
    r = run(qleap_bin, "passkey", m, "--trials", "0")
    assert r.returncode != 0 and "--trials" in r.stderr, r.stderr


def test_bench_mem_budget_reports_the_largest_context_per_type(qleap_bin, test_models):
    r = run(qleap_bin, "bench", test_models / "stories260K.gguf", "--kv", "f16,tq4,tq3", "--mem-budget", "200MiB",
            "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["mem_budget"] == 200 << 20
    t = {x["kv"]: x for x in j["types"]}
    assert t["f16"]["kv_bytes_per_token"] == 640 and t["f16"]["kv_fixed_bytes"] == 0
    assert t["tq3"]["kv_fixed_bytes"] > 0
    for x in t.values():
        assert 0 < x["ram_bytes_at_max"] <= 200 << 20
        # one more position would not fit
        assert x["ram_bytes_at_max"] + x["kv_bytes_per_token"] > 200 << 20
    assert t["tq3"]["max_ctx"] > 3 * t["f16"]["max_ctx"]
    assert t["f16"]["max_ctx"] < t["tq4"]["max_ctx"] < t["tq3"]["max_ctx"]
    r = run(qleap_bin, "bench", test_models / "stories260K.gguf", "--kv", "f16,tq3", "--mem-budget", "1.5G")
    assert r.returncode == 0, r.stderr
    assert "max context" in r.stdout and "tq3" in r.stdout


def test_bench_mem_budget_bad_values_are_clear_errors(qleap_bin, test_models):
    m = test_models / "stories260K.gguf"
    for v in ["lots", "0", "-1GiB", "2XB", "1e30"]:
        r = run(qleap_bin, "bench", m, "--mem-budget", v)
        assert r.returncode == 1, (v, r.stderr)
        assert "--mem-budget" in r.stderr
    r = run(qleap_bin, "bench", m, "--mem-budget", "1GiB", "--kv", "f16,bogus")
    assert r.returncode == 1 and "bogus" in r.stderr
    # A budget below the weights: nothing fits, said so.
    r = run(qleap_bin, "bench", m, "--mem-budget", "1KiB")
    assert r.returncode == 0, r.stderr
    assert "does not fit" in r.stdout


def test_bench_and_perplexity_cache_the_kv_calibration(qleap_bin, test_models, tmp_path):
    # A TurboQuant cache is calibrated once per model file and kept under QLEAP_KV_CALIB_DIR: every
    # command reuses it (bench, bench --kv A,B, perplexity and profile used to recompute it every run).
    import os
    import pathlib
    import shutil
    import tempfile

    model = test_models / "stories260K.gguf"
    text = tmp_path / "t.txt"
    text.write_text("Once upon a time there was a little girl who liked to play in the park. " * 20)
    commands = [
        ["bench", model, "-p", "8", "-n", "2", "-r", "1", "--kv", "tq3", "--no-membw"],
        ["bench", model, "-p", "0", "-n", "2", "-r", "1", "--kv", "f16,tq3", "-t", "1"],
        ["perplexity", model, text, "-c", "64", "--kv", "tq3"],
    ]
    for cmd in commands:
        d = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))
        env = dict(os.environ, QLEAP_KV_CALIB_DIR=str(d))
        r = subprocess.run([qleap_bin, *map(str, cmd)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, (cmd, r.stderr)
        assert list(d.glob("*.json")), f"{cmd[0]} left no calibration in {d}"
        shutil.rmtree(d)
