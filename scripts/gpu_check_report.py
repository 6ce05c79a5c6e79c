#!/usr/bin/env python3
"""Helper of scripts/gpu_check.sh (standard library only): reads what each step left in the work
folder (gtest JSON, benchmark output) into figures, judges them, and writes the summary.

    gpu_check_report.py gtest RESULT.json [--log LOG] [--gpu] [--expect SUITE,...]
                                                                           figures JSON; exit 1 on failure
    gpu_check_report.py gtest-shards WORK NAME N                           the same over WORK/NAME_{0..N-1}.json
    gpu_check_report.py cuda-bench LOG                                     figures JSON; exit 1 if unparsable
    gpu_check_report.py moe BENCH.json [--gpu]                             figures JSON; exit 1 on failure
    gpu_check_report.py describe gtest|cuda-bench|moe FIGURES.json         one line for the step's detail
    gpu_check_report.py peak-gbs "GPU NAME"                                datasheet memory bandwidth or 0
    gpu_check_report.py summary WORK OUT                                   OUT/summary.json + summary.txt

A step's figures are printed on stdout (the script saves them as WORK/fig/STEP.json); the summary
collects WORK/steps.tsv (name, status, seconds, exit code, reason), WORK/meta.json and WORK/fig/*.
"""
import datetime
import json
import os
import re
import sys

# Datasheet HBM bandwidth in GB/s, matched on nvidia-smi's name (first match wins). Leads only: the
# benchmark's own device-to-device copy is the practical ceiling.
PEAK_GBS = [
    (r"H200", 4800),
    (r"H100.*NVL", 3900),
    (r"H100.*PCIe", 2000),
    (r"H100", 3350),  # SXM, HBM3
    (r"GH200", 4000),
    (r"A100.*80GB", 2039),
    (r"A100", 1555),
    (r"L40S", 864),
    (r"RTX 4090", 1008),
]

# Targets of issue 22.
TARGET_DECODE_OF_COPY = 0.75  # 8B Q4_K decode GB/s / measured copy GB/s
TARGET_PP_OF_CUBLAS = 0.50  # pp512 tok/s / cuBLAS f16 GEMM bound
TARGET_MOE_SPEEDUP = 1.5  # best of (b)-(d) tok/s / (a)


def peak_gbs(name):
    for pat, gbs in PEAK_GBS:
        if re.search(pat, name or ""):
            return gbs
    return 0


def skip_messages(log):
    """Test name -> GTEST_SKIP() message, from the console output (the JSON result omits them)."""
    out = {}
    for m in re.finditer(r"^\[ RUN      \] (\S+)\n(.*?)^\[  SKIPPED \] \1", log, re.M | re.S):
        body = m.group(2)
        k = body.find("Skipped\n")
        out[m.group(1)] = " ".join((body[k + 8:] if k >= 0 else body).split())
    return out


def gtest(path, gpu, expect, log=""):
    """Counts of a --gtest_output=json file (skip messages from the console log). With gpu, a test
    skipped for want of a device fails."""
    with open(path) as f:
        r = json.load(f)
    msgs = skip_messages(log)
    out = {"tests": 0, "passed": 0, "failed": 0, "skipped": 0, "failed_tests": [], "skipped_tests": [],
           "suites": []}
    for s in r.get("testsuites", []):
        out["suites"].append(s["name"])
        for t in s.get("testsuite", []):
            if t.get("result") == "SUPPRESSED" or t.get("status") == "NOTRUN":
                continue
            out["tests"] += 1
            name = f"{s['name']}.{t['name']}"
            if t.get("failures"):
                out["failed"] += 1
                msg = t["failures"][0].get("failure", "").splitlines()
                out["failed_tests"].append({"test": name, "message": " | ".join(msg[:4])[:400]})
            elif t.get("result") == "SKIPPED":
                out["skipped"] += 1
                out["skipped_tests"].append({"test": name, "message": msgs.get(name, "")[:200]})
            else:
                out["passed"] += 1
    problems = []
    if out["tests"] == 0:
        problems.append("no test ran")
    if out["failed"]:
        problems.append(f"{out['failed']} failed")
    missing = [e for e in expect if not any(re.fullmatch(rf"(\w+/)?{e}", s) for s in out["suites"])]
    if missing:
        problems.append("suites not selected: " + ", ".join(missing))
        out["missing_suites"] = missing
    if gpu:
        no_dev = [t["test"] for t in out["skipped_tests"] if "no CUDA device" in t["message"]]
        if no_dev:
            problems.append(f"{len(no_dev)} skipped for want of a device on a GPU machine")
    out["problems"] = problems
    return out, not problems


def gtest_shards(work, name, n):
    """The shards WORK/NAME_i.json (console logs WORK/logs/NAME_i.log) of one sharded run, summed."""
    tot = {"tests": 0, "passed": 0, "failed": 0, "skipped": 0, "failed_tests": [], "shards": n, "problems": []}
    for i in range(n):
        p = os.path.join(work, f"{name}_{i}.json")
        if not os.path.exists(p):
            tot["problems"].append(f"shard {i} wrote no result (crash?)")
            continue
        lp = os.path.join(work, "logs", f"{name}_{i}.log")
        log = open(lp, errors="replace").read() if os.path.exists(lp) else ""
        f, _ = gtest(p, False, [], log)
        for k in ("tests", "passed", "failed", "skipped"):
            tot[k] += f[k]
        tot["failed_tests"] += f["failed_tests"]
    if tot["failed"]:
        tot["problems"].insert(0, f"{tot['failed']} failed")
    return tot, not tot["problems"] and tot["tests"] > 0


def _num(s):
    return float(s.replace(",", ""))


def cuda_bench(text):
    """Figures of one qleap_cuda_bench run (bench/cuda/cuda_bench.cpp's text output)."""
    f = {}
    m = re.search(r"^device: (.+) \(compute (\d+)\.(\d+), (\d+) SMs, ([\d.]+) GiB\)", text, re.M)
    if m:
        f["device"] = m.group(1)
        f["compute"] = f"{m.group(2)}.{m.group(3)}"
        f["sms"] = int(m.group(4))
    m = re.search(r"device copy \(.*?\): ([\d.]+) GB/s; datasheet peak used: ([\d.]+) GB/s", text)
    if m:
        f["copy_gbs"], f["peak_gbs"] = _num(m.group(1)), _num(m.group(2))
    m = re.search(r"^model: (\S+) (\S+) synthetic, (\d+) layers", text, re.M)
    if m:
        f["shape"], f["type"], f["layers"] = m.group(1), m.group(2), int(m.group(3))
    kernels = []
    for m in re.finditer(r"^\| (\w+) \| (\d+) x (\d+) \| ([\d.]+) MB \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)% \|$", text,
                         re.M):
        kernels.append({"matrix": m.group(1), "rows": int(m.group(2)), "cols": int(m.group(3)),
                        "mb": _num(m.group(4)), "us": _num(m.group(5)), "gbs": _num(m.group(6)),
                        "pct_of_copy": _num(m.group(7))})
    if kernels:
        f["kernels"] = kernels
    m = re.search(r"\| CUDA graph \| pp(\d+) t/s \| tg(\d+) @ depth (\d+) t/s \|", text)
    if m:
        f["prompt"], f["gen"], f["depth"] = int(m.group(1)), int(m.group(2)), int(m.group(3))
    runs = {}
    for m in re.finditer(r"^\| (on|off) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)% \| ([\d.]+)% \|$", text, re.M):
        runs[m.group(1)] = {"pp_tps": _num(m.group(2)), "tg_tps": _num(m.group(3)), "decode_gbs": _num(m.group(4)),
                            "pct_of_copy": _num(m.group(5)), "pct_of_peak": _num(m.group(6))}
    if runs:
        f["graph"] = runs
    m = re.search(r"decode bytes per token: ([\d.]+) GB = weights ([\d.]+) \+ KV ([\d.]+)", text)
    if m:
        f["decode_gb_per_token"] = _num(m.group(1))
        f["kv_gb_per_token"] = _num(m.group(3))
    m = re.search(r"cuBLAS f16 GEMM bound for a (\d+)-token chunk: ([\d.]+) t/s \(([\d.]+) ms per layer\)", text)
    if m:
        f["cublas_bound_tps"] = _num(m.group(2))
        f["cublas_ms_per_layer"] = _num(m.group(3))
    best = runs.get("on") or runs.get("off")
    if best and f.get("copy_gbs"):
        f["decode_of_copy"] = round(best["decode_gbs"] / f["copy_gbs"], 4)
        if f.get("peak_gbs"):
            f["decode_of_peak"] = round(best["decode_gbs"] / f["peak_gbs"], 4)
    if best and f.get("cublas_bound_tps"):
        f["pp_of_cublas"] = round(best["pp_tps"] / f["cublas_bound_tps"], 4)
    return f, bool(best)


def moe(path, gpu):
    """Modes (a)-(d) of `qleap bench --moe --json` with --expert-tier."""
    with open(path) as fh:
        r = json.load(fh)
    e = r.get("experts", {})
    a = r.get("measured_cpu", {})
    f = {"experts": e, "prediction_recall": r.get("prediction_recall"), "reuse_rate": r.get("reuse_rate"),
         "threads": r.get("threads"), "isa": r.get("isa"),
         "modes": [{"mode": "(a) all experts on the CPU", "tg_tps": a.get("tg_tps"), "hit_rate": 0.0,
                    "upload_bytes_per_token": 0.0,
                    "cpu_expert_bytes_per_token": e.get("expert_bytes", 0) * e.get("per_token", 0) *
                    e.get("layers", 0)}],
         "simulated": r.get("simulated", [])}
    mt = r.get("measured_tier")
    problems = []
    if mt:
        f["tier"], f["tier_note"] = mt.get("tier"), mt.get("note", "")
        for p in mt.get("policies", []):
            f["modes"].append({"mode": p["policy"], "tg_tps": p["tg_tps"], "hit_rate": p["hit_rate"],
                               "upload_bytes_per_token": p["upload_bytes_per_token"], "in_flight": p["in_flight"],
                               "seed_bytes": p.get("seed_bytes"), "prediction_recall": p.get("prediction_recall")})
    else:
        problems.append("no measured_tier in the output (--expert-tier missing?)")
    base = f["modes"][0]["tg_tps"] or 0
    tier = f["modes"][1:]
    if tier and base > 0:
        best = max(tier, key=lambda m: m["tg_tps"])
        f["best_mode"], f["best_speedup"] = best["mode"], round(best["tg_tps"] / base, 3)
    if gpu and len(tier) != 3:
        problems.append(f"{len(tier)} tier modes measured, expected 3 (is the device seen?)")
    f["problems"] = problems
    return f, not problems


def describe(kind, f):
    """One line for a step's detail column."""
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"
    if kind == "gtest":
        s = f"{f['passed']} passed, {f['failed']} failed, {f['skipped']} skipped of {f['tests']}"
        if f.get("shards"):
            s += f" in {f['shards']} shards"
        extra = f.get("problems", []) + [t["test"] for t in f.get("failed_tests", [])[:5]]
        return s + "".join("; " + x for x in extra)
    if kind == "cuda-bench":
        g = f["graph"].get("on") or f["graph"].get("off")
        return (f"{f.get('type')} depth {f.get('depth')}: tg {g['tg_tps']:.1f} t/s = {g['decode_gbs']:.0f} GB/s "
                f"({pct(f.get('decode_of_copy'))} of copy {f.get('copy_gbs', 0):.0f}); pp{f.get('prompt')} "
                f"{g['pp_tps']:.0f} t/s ({pct(f.get('pp_of_cublas'))} of cuBLAS bound)")
    if kind == "moe":
        parts = [f"{m['mode'][:3]} {m['tg_tps']:.1f} t/s" + (f" {100 * m['hit_rate']:.0f}% hits" if i else "")
                 for i, m in enumerate(f["modes"])]
        if f.get("best_speedup") is not None:
            parts.append(f"best {f['best_speedup']:.2f}x (a)")
        if f.get("tier_note"):
            parts.append(f["tier_note"].split(":")[0])
        return "; ".join(parts + f.get("problems", []))
    raise ValueError(kind)


def targets(figs):
    """The issue's targets, from the figures present; None where not measured."""
    t = {}
    q4 = figs.get("cuda_bench_q4k", {})
    t["decode_q4k_of_copy"] = {"target": TARGET_DECODE_OF_COPY, "value": q4.get("decode_of_copy")}
    t["pp512_of_cublas"] = {"target": TARGET_PP_OF_CUBLAS, "value": q4.get("pp_of_cublas")}
    m = figs.get("moe_bench", {})
    t["moe_best_over_cpu"] = {"target": TARGET_MOE_SPEEDUP,
                              "value": m.get("best_speedup") if m.get("tier") == "cuda" else None}
    for v in t.values():
        v["met"] = None if v["value"] is None else v["value"] >= v["target"]
    return t


def fmt_pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def summary(work, out):
    steps = []
    with open(os.path.join(work, "steps.tsv")) as f:
        for line in f:
            name, status, secs, rc, reason = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
            steps.append({"name": name, "status": status, "seconds": float(secs), "exit_code": int(rc),
                          "reason": reason, "log": f"logs/{name}.log"})
    meta = {}
    if os.path.exists(os.path.join(work, "meta.json")):
        with open(os.path.join(work, "meta.json")) as f:
            meta = json.load(f)
    figs = {}
    fig_dir = os.path.join(work, "fig")
    for s in steps:
        p = os.path.join(fig_dir, s["name"] + ".json")
        if os.path.exists(p):
            try:
                with open(p) as f:
                    s["figures"] = figs[s["name"]] = json.load(f)
            except ValueError:
                s["figures"] = {}
    counts = {k: sum(1 for s in steps if s["status"] == k) for k in ("ok", "failed", "timeout", "skipped")}
    doc = {"format": "qleap-gpu-check-1",
           "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "dry_run": bool(meta.get("dry_run")), "ok": counts["failed"] == 0 and counts["timeout"] == 0,
           "counts": counts, "meta": meta, "steps": steps, "targets": targets(figs)}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(doc, f, indent=2)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(render_text(doc, figs))
    return doc


def render_text(doc, figs):
    m = doc["meta"]
    L = [f"qleap GPU check{' (DRY RUN: no GPU)' if doc['dry_run'] else ''} - {doc['finished']}",
         f"commit {m.get('commit', '?')}; GPU: {m.get('gpu', 'none')} (compute {m.get('compute_cap', '-')}), "
         f"driver {m.get('driver', '-')}; nvcc {m.get('nvcc', '-')}; {m.get('cpus', '?')} CPUs "
         f"({m.get('cpu_model', '?')}); build arch {m.get('arch', '-')}",
         "", f"{'step':<16} {'status':<8} {'secs':>6}  detail"]
    for s in doc["steps"]:
        L.append(f"{s['name']:<16} {s['status']:<8} {s['seconds']:>6.0f}  {s['reason']}")
    c = doc["counts"]
    L.append(f"\n{c['ok']} ok, {c['failed']} failed, {c['timeout']} timed out, {c['skipped']} skipped")
    t = figs.get("tests_cuda")
    if t:
        L.append(f"\nCUDA tests: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped of {t['tests']}")
        for x in t["failed_tests"]:
            L.append(f"  FAILED {x['test']}: {x['message'][:200]}")
    for key in ("cuda_bench_q4k", "cuda_bench_q8", "cuda_bench_32k"):
        b = figs.get(key)
        if not b or "graph" not in b:
            continue
        g = b["graph"].get("on") or b["graph"].get("off")
        L.append(f"\n{key}: {b.get('shape')} {b.get('type')} on {b.get('device')}: copy {b.get('copy_gbs', 0):.0f} GB/s"
                 f" (datasheet {b.get('peak_gbs', 0):.0f})")
        L.append(f"  pp{b.get('prompt')} {g['pp_tps']:.0f} t/s (cuBLAS bound {b.get('cublas_bound_tps', 0):.0f}: "
                 f"{fmt_pct(b.get('pp_of_cublas'))}); tg{b.get('gen')} @ depth {b.get('depth')} {g['tg_tps']:.1f} t/s"
                 f" = {g['decode_gbs']:.0f} GB/s ({fmt_pct(b.get('decode_of_copy'))} of copy, "
                 f"{fmt_pct(b.get('decode_of_peak'))} of datasheet)")
        if "off" in b["graph"] and "on" in b["graph"]:
            L.append(f"  without CUDA graph: tg {b['graph']['off']['tg_tps']:.1f} t/s")
    mo = figs.get("moe_bench")
    if mo:
        e = mo.get("experts", {})
        L.append(f"\nMoE ({e.get('layers')} MoE layers x {e.get('per_layer')} experts, top-{e.get('per_token')}, "
                 f"{e.get('all_bytes', 0) / 2**20:.0f} MiB of experts, budget {e.get('budget_bytes', 0) / 2**20:.0f} "
                 f"MiB; tier {mo.get('tier')}; {mo.get('threads')} threads)")
        if mo.get("tier_note"):
            L.append(f"  note: {mo['tier_note']}")
        L.append(f"  {'mode':<38} {'tg tok/s':>9} {'hit rate':>9} {'copied MiB/token':>17}")
        for x in mo["modes"]:
            L.append(f"  {x['mode']:<38} {x['tg_tps'] or 0:>9.1f} {100 * (x['hit_rate'] or 0):>8.1f}% "
                     f"{(x['upload_bytes_per_token'] or 0) / 2**20:>17.2f}")
        if mo.get("best_speedup") is not None:
            L.append(f"  best: {mo['best_mode']} = {mo['best_speedup']:.2f}x (a)")
    L.append("\ntargets (issue 22):")
    for k, v in doc["targets"].items():
        state = "not measured" if v["met"] is None else ("met" if v["met"] else "NOT met")
        val = "-" if v["value"] is None else f"{v['value']:.2f}"
        L.append(f"  {k:<22} {val:>6} (target >= {v['target']}): {state}")
    L.append(f"\nresult: {'OK' if doc['ok'] else 'FAILED'}")
    return "\n".join(L) + "\n"


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, args = argv[1], argv[2:]
    flag = lambda name: name in args
    def opt(name, default=""):
        return args[args.index(name) + 1] if name in args else default
    if cmd == "gtest":
        expect = [e for e in opt("--expect").split(",") if e]
        log = ""
        if opt("--log"):
            with open(opt("--log"), errors="replace") as f:
                log = f.read()
        figs, ok = gtest(args[0], flag("--gpu"), expect, log)
    elif cmd == "gtest-shards":
        figs, ok = gtest_shards(args[0], args[1], int(args[2]))
    elif cmd == "cuda-bench":
        with open(args[0], errors="replace") as f:
            figs, ok = cuda_bench(f.read())
    elif cmd == "moe":
        figs, ok = moe(args[0], flag("--gpu"))
    elif cmd == "describe":
        with open(args[1]) as f:
            print(describe(args[0], json.load(f)))
        return 0
    elif cmd == "peak-gbs":
        print(peak_gbs(args[0] if args else ""))
        return 0
    elif cmd == "summary":
        doc = summary(args[0], args[1])
        return 0 if doc["ok"] else 1
    else:
        print(f"gpu_check_report.py: unknown command {cmd}", file=sys.stderr)
        return 2
    print(json.dumps(figs, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
