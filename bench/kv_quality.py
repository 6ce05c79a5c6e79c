#!/usr/bin/env python3
"""KV-cache quality table: `qleap compare MODEL --kv X --text FILE --json` for each type X, printed as
the markdown table of docs/turboquant.md (bits/value, KV bytes per token, PPL and its paired change
against f16, mean/p99 KLD, top-1 agreement).

Every row is its own `qleap compare` run: f16 and X evaluate the same chunks of FILE, so the PPL
change is paired over the same tokens.

    python3 bench/kv_quality.py --qleap build/qleap --model M.gguf --text FILE -c 512 --chunks 4 \
        --kv q8_0 q4_0 tq4 tq3 [--json out.json] [-- extra qleap args]
    python3 bench/kv_quality.py --from-json a.json b.json    # one table from earlier --json runs
"""
import argparse
import json
import subprocess
import sys


def run_one(args, kv, extra):
    cmd = [args.qleap, "compare", args.model, "--kv", kv, "--text", args.text, "-c", str(args.ctx),
           "--chunks", str(args.chunks), "-t", str(args.threads), "--json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"qleap compare --kv {kv} failed ({r.returncode}):\n{r.stderr}")
    return json.loads(r.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qleap", default="build/qleap")
    p.add_argument("--model")
    p.add_argument("--text", help="text file scored in chunks (perplexity protocol)")
    p.add_argument("-c", "--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("-t", "--threads", type=int, default=1)
    p.add_argument("--kv", nargs="+", help="KV cache types, one row each")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="print the table of earlier --json results (same model, text and context) instead")
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]

    if args.from_json:
        rows = []
        for f in args.from_json:
            with open(f) as fh:
                rows += json.load(fh)
        keys = {(j["model"], j["text"], j["n_ctx"], j["summary"]["tokens"]) for j in rows}
        if len(keys) != 1:
            sys.exit(f"--from-json: the files mix runs of different models, texts or contexts: {sorted(keys)}")
        print_table(rows)
        return
    if not (args.model and args.text and args.kv):
        p.error("--model, --text and --kv are required (or --from-json)")

    rows = []
    for kv in args.kv:
        j = run_one(args, kv, extra)
        rows.append(j)
        s = j["summary"]
        print(f"[{kv}] PPL {s['ppl_test']:.4f} ({100 * s['ppl_ratio_minus_1']:+.2f}%), "
              f"KLD {s['mean_kld']:.4f}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    print_table(rows)


def print_table(rows):
    # bits per value: the cache's bytes per token over (layers x kv heads x head_dim x 2), which the
    # f16 cache stores in 2 bytes each.
    f16_bytes = rows[0]["kv_bytes_per_token"]["base"]
    n_values = f16_bytes / 2
    s0 = rows[0]["summary"]
    print(f"f16 PPL {s0['ppl_base']:.4f} ± {s0['se_ppl_base']:.4f} over {s0['tokens']} tokens")
    # The cache at its full context also holds fixed rows (TurboQuant's exact sink and window): "at ctx"
    # spreads them over the n_ctx positions, what the cache really costs at this context.
    ctx = rows[0]["n_ctx"]
    print("| --kv | bits/value | at ctx | KV B/token | vs f16 | PPL | PPL Δ vs f16 (paired) | mean KLD ± s.e. "
          "| p99 KLD | top-1 agree |")
    print("|------|-----------|--------|-----------|--------|-----|----------------------|-----------------"
          "|---------|-------------|")
    for j in rows:
        s = j["summary"]
        b = j["kv_bytes_per_token"]["test"]
        at_ctx = 8 * (b * ctx + j.get("kv_fixed_bytes", {}).get("test", 0)) / (n_values * ctx)
        print(f"| `{j['kv']}` | {8 * b / n_values:.2f} | {at_ctx:.2f} | {b} | {f16_bytes / b:.2f}× | {s['ppl_test']:.4f} "
              f"| {100 * s['ppl_ratio_minus_1']:+.2f} % ± {100 * s['se_ppl_ratio']:.2f} "
              f"| {s['mean_kld']:.4f} ± {s['se_kld']:.4f} | {s['p99_kld']:.3f} "
              f"| {100 * s['top1_agreement']:.1f} % |")


if __name__ == "__main__":
    main()
