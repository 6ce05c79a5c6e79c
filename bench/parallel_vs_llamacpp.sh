#!/usr/bin/env bash
# Parallel decode (the server's slots) of qleap and llama.cpp on the same GGUF files, same machine and
# threads, rounds interleaved: `qleap bench --parallel N` (N sequences decode one token each per step,
# against one sequence alone in the same process) and llama.cpp's llama-batched-bench (-npl 1,N).
#
#   bench/parallel_vs_llamacpp.sh LLAMA_BATCHED_BENCH MODEL.gguf [MODEL.gguf ...]
#
# Environment: THREADS (2), SLOTS (4), TG (64 tokens per sequence), CTX (16 prompt tokens before it),
# ROUNDS (3), QLEAP (./build/qleap). Prints one line per round and a summary per model: medians of
# tokens/s (all sequences together) and the geometric mean of the per-round qleap / llama.cpp ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
LBB="${1:-}"
if [ -z "$LBB" ] || [ ! -x "$LBB" ] || [ $# -lt 2 ]; then
  echo "usage: $0 LLAMA_BATCHED_BENCH MODEL.gguf [MODEL.gguf ...]" >&2
  exit 2
fi
shift
QLEAP="${QLEAP:-./build/qleap}"
T="${THREADS:-2}" N="${SLOTS:-4}" TG="${TG:-64}" CTX="${CTX:-16}" R="${ROUNDS:-3}"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
for m in "$@"; do
  for r in $(seq "$R"); do
    # qleap: CTX positions, one more token, then TG decode steps (llama-batched-bench: CTX prompt
    # tokens, then TG generated).
    "$QLEAP" bench "$m" --parallel "$N" -n "$TG" -d "$CTX" -r 1 -t "$T" --json > "$W/q$r.json"
    "$LBB" -m "$m" -c $(((CTX + TG + 1) * N + 64)) -b 512 -ub 512 -npp "$CTX" -ntg "$TG" -npl "1,$N" -t "$T" \
      2>/dev/null | grep -E "^\| +$CTX " > "$W/l$r.txt"
  done
  python3 - "$W" "$R" "$N" "$m" <<'PY'
import json, math, statistics as st, sys
W, R, N, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
q1, qn, l1, ln = [], [], [], []
for r in range(1, R + 1):
    s = json.load(open(f"{W}/q{r}.json"))["slots"]
    # llama-batched-bench rows: | PP | TG | B | N_KV | T_PP | S_PP | T_TG | S_TG | T | S |
    rows = {int(c[3]): float(c[8]) for c in (l.split("|") for l in open(f"{W}/l{r}.txt"))}
    q1.append(s["tps_one"]); qn.append(s["tps_all"]); l1.append(rows[1]); ln.append(rows[N])
    print(f"{m.split('/')[-1]} round {r}: x1 qleap {q1[-1]:.1f} llama.cpp {l1[-1]:.1f} | x{N} qleap {qn[-1]:.1f} "
          f"llama.cpp {ln[-1]:.1f} t/s")
g = lambda a, b: math.exp(sum(math.log(x / y) for x, y in zip(a, b)) / len(a))
print(f"{m.split('/')[-1]}: x1 {st.median(q1):.1f} vs {st.median(l1):.1f} t/s ({g(q1, l1):.2f}x) | x{N} "
      f"{st.median(qn):.1f} vs {st.median(ln):.1f} t/s ({g(qn, ln):.2f}x) | gain over x1: qleap "
      f"{st.median(qn) / st.median(q1):.2f}x, llama.cpp {st.median(ln) / st.median(l1):.2f}x")
PY
done
