#!/usr/bin/env python3
"""qleap vs llama.cpp on the same GGUF files, same machine, same threads, at each ISA level.

Runs `qleap bench` (capped with QLEAP_ISA=<level>) and `llama-bench` alternately, round after
round, so that a change in the machine's load hits both engines alike, and prints per-level ratios
(mean of the per-round ratios, with their spread).

llama.cpp picks its kernels when it is compiled, not at run time: one binary (e.g. built with
-DGGML_NATIVE=ON) serves every level unless --llama-bench-at gives a binary for a level (e.g. one
built with only AVX2); the table says which binary ran against each level.

Tests:
  pp<P>, tg<T>     llama-bench's definitions: a P-token prompt from an empty context, T tokens decoded
                   one at a time (qleap: `qleap bench -p P -n T`).
  pp<P>@d<D>       P prompt tokens processed after D tokens of context. qleap: `--pp-depth D`
                   (context filled once, untimed). llama.cpp with -fa 1: where its llama-bench has
                   a depth option (`-d`, builds since spring 2025), `-p P -d D`, its own definition
                   of the same test; older builds (the Feb 2025 snapshot): P / (t(pp D+P) - t(pp D)),
                   i.e. the time of the last P tokens of a D+P prompt (ubatch 512 keeps the chunks
                   aligned when D is a multiple of 512).
Decode bandwidth: weight bytes per token x tg rate, against the read bandwidth `qleap bench`
measures in the same process.

Example:
  bench/vs_llamacpp.py --llama-bench /path/llama-bench --models a.gguf b.gguf --rounds 3 --depths 4096
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

LEVELS = ["scalar", "avx2", "avx512", "amx"]


def run_json(cmd, env=None, timeout=3600):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return json.loads(r.stdout)


def qleap_levels(qleap):
    top = run_json([qleap, "info", "--json"])["cpu"]["isa"]
    return LEVELS[1:LEVELS.index(top) + 1] if top in LEVELS else []


def qleap_bench(qleap, model, isa, a, pp=0, tg=0, depth=0):
    env = dict(os.environ, QLEAP_ISA=isa)
    cmd = [qleap, "bench", model, "-t", str(a.threads), "-p", str(pp), "-n", str(tg), "-r", "1", "--json"]
    if depth:
        cmd += ["--pp-depth", str(depth), "--fill", "random", "--no-membw"]
    return run_json(cmd, env=env)


_DEPTH_OPTION = {}


def llama_has_depth(binary):
    """Whether this llama-bench has `-d/--n-depth` (the Feb 2025 snapshot does not)."""
    if binary not in _DEPTH_OPTION:
        r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60)
        _DEPTH_OPTION[binary] = "--n-depth" in r.stdout + r.stderr
    return _DEPTH_OPTION[binary]


def llama_bench(binary, model, a, prompts=(), tg=0, fa=0, reps=1, depth=0):
    cmd = [binary, "-m", model, "-t", str(a.threads), "-r", str(reps), "-o", "json", "-fa", str(fa)]
    cmd += ["-p", ",".join(str(p) for p in prompts) if prompts else "0", "-n", str(tg)]
    if depth:
        cmd += ["-d", str(depth)]
    rows = run_json(cmd)
    out = {}
    for r in rows:
        if r["n_gen"] > 0 and r["n_prompt"] == 0:
            out["tg"] = r["avg_ts"]
        elif r["n_prompt"] > 0 and r["n_gen"] == 0:
            out[f"pp{r['n_prompt']}"] = r["avg_ts"]
    return out


def llama_pp_at_depth(binary, model, a, depth):
    """llama.cpp's rate for a.pp prompt tokens after `depth` tokens of context, flash attention on."""
    if llama_has_depth(binary):
        return llama_bench(binary, model, a, prompts=[a.pp], fa=1, depth=depth).get(f"pp{a.pp}", float("nan"))
    ld = llama_bench(binary, model, a, prompts=[depth, depth + a.pp], fa=1)
    t_d, t_dp = depth / ld[f"pp{depth}"], (depth + a.pp) / ld[f"pp{depth + a.pp}"]
    return a.pp / (t_dp - t_d) if t_dp > t_d else float("nan")


def summarize(ratios):
    if not ratios:
        return float("nan"), float("nan")
    g = math.exp(statistics.mean(math.log(x) for x in ratios))
    sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    return g, sd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qleap", default="build/qleap")
    ap.add_argument("--llama-bench", required=True, help="llama-bench binary for every level (default)")
    ap.add_argument("--llama-bench-at", action="append", default=[], metavar="LEVEL=PATH",
                    help="llama-bench built for one level, e.g. avx2=/path/llama-bench (repeatable)")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--isa", default="", help="comma list of levels (default: every level this CPU has)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depths", default="", help="comma list of context depths for pp@depth (e.g. 4096)")
    ap.add_argument("--depth-levels", default="", help="levels for the depth tests (default: the top one)")
    ap.add_argument("--json", default="", help="write every measurement here")
    a = ap.parse_args()

    levels = [x for x in a.isa.split(",") if x] or qleap_levels(a.qleap)
    levels.sort(key=lambda x: LEVELS.index(x) if x in LEVELS else -1)
    per_level = dict(kv.split("=", 1) for kv in a.llama_bench_at)
    depths = [int(x) for x in a.depths.split(",") if x]
    depth_levels = [x for x in a.depth_levels.split(",") if x] or levels[-1:]
    uptime = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
    cpu = run_json([a.qleap, "info", "--json"])["cpu"]["model"]
    print(f"# {cpu}, {a.threads} threads, {a.rounds} interleaved rounds, load average at start {uptime}")
    for lvl in levels:
        print(f"# level {lvl}: qleap QLEAP_ISA={lvl}; llama.cpp {per_level.get(lvl, a.llama_bench)}")

    # results[(model, level, test)] = {"q": [...], "l": [...], "ratio": [...]}
    res = {}
    extra = {}

    def add(model, lvl, test, q, l):
        e = res.setdefault((model, lvl, test), {"q": [], "l": [], "ratio": []})
        e["q"].append(q)
        e["l"].append(l)
        if q > 0 and l > 0:
            e["ratio"].append(q / l)
        # One line per measurement as it is taken: a run cut short still leaves its rounds.
        load = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
        print(f"# {os.path.basename(model)} {lvl} {test}: qleap {q:.1f} llama.cpp {l:.1f} t/s "
              f"({q / l if l > 0 else float('nan'):.2f}x, load {load})", file=sys.stderr, flush=True)

    t0 = time.time()
    for rnd in range(a.rounds):
        for model in a.models:
            for lvl in levels:
                lb = per_level.get(lvl, a.llama_bench)
                qj = qleap_bench(a.qleap, model, lvl, a, pp=a.pp, tg=a.tg)
                lj = llama_bench(lb, model, a, prompts=[a.pp], tg=a.tg)
                add(model, lvl, f"pp{a.pp}", qj["pp"]["tps"], lj.get(f"pp{a.pp}", 0))
                add(model, lvl, f"tg{a.tg}", qj["tg"]["tps"], lj.get("tg", 0))
                bw = extra.setdefault((model, lvl), {"weight_gbps": [], "machine_gbps": []})
                bw["weight_gbps"].append(qj["tg"]["weight_gbps"])
                bw["machine_gbps"].append(qj.get("machine_read_gbps", float("nan")))
                for d in depths:
                    if lvl not in depth_levels:
                        continue
                    qd = qleap_bench(a.qleap, model, lvl, a, pp=a.pp, depth=d)
                    lrate = llama_pp_at_depth(lb, model, a, d)
                    add(model, lvl, f"pp{a.pp}@d{d}", qd["pp"]["tps"], lrate)
        print(f"# round {rnd + 1}/{a.rounds} done ({time.time() - t0:.0f} s)", file=sys.stderr)

    print()
    print("| model | level | test | qleap t/s | llama.cpp t/s | qleap / llama.cpp (sd) |")
    print("|---|---|---|---|---|---|")
    for model in a.models:
        for lvl in levels:
            for (m, l2, test), e in res.items():
                if m != model or l2 != lvl:
                    continue
                g, sd = summarize(e["ratio"])
                print(f"| {os.path.basename(model)} | {lvl} | {test} | {statistics.mean(e['q']):.1f} | "
                      f"{statistics.mean(e['l']):.1f} | **{g:.2f}x** ({sd:.2f}) |")
    print()
    print("| model | level | decode GB/s (weights x tg) | read GB/s measured in the same process | % |")
    print("|---|---|---|---|---|")
    for (model, lvl), bw in extra.items():
        w = max(bw["weight_gbps"])
        mm = max(bw["machine_gbps"])
        print(f"| {os.path.basename(model)} | {lvl} | {w:.1f} | {mm:.1f} | {100 * w / mm:.0f}% |")
    load_end = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
    print(f"\n(load average at the end {load_end})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"levels": levels, "results": [
                {"model": m, "level": lvl, "test": t, **e} for (m, lvl, t), e in res.items()],
                "bandwidth": [{"model": m, "level": lvl, **bw} for (m, lvl), bw in extra.items()]}, f, indent=1)


if __name__ == "__main__":
    main()
