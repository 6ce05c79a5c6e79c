#!/usr/bin/env bash
# Long-prompt prefill: qleap against llama.cpp (flash attention on) on the same GGUF file.
#
#   bench/longctx_vs_llamacpp.sh MODEL.gguf [N ...]          (default N: 512 4096)
#
# The test both engines can run: the whole-prompt prefill rate of an N-token prompt from an empty
# context, in 512-token batches on both sides (the Feb 2025 llama.cpp snapshot has no depth option):
#   qleap bench MODEL -t T -p N -n 0 -r 1 -b 512 -c C --no-membw
#   llama-bench -m MODEL -t T -fa 1 -p N -n 0 -r 1 -b 512 -ub 512
# The prompt's average query sees N/2 keys, so the rate at N against the rate at 512 shows what the
# attention costs as the context grows; the ratio qleap / llama.cpp per N against the pp512 ratio
# shows whether qleap's attention keeps its lead.
# Rounds are interleaved and alternate the order (qleap, llama.cpp, llama.cpp, qleap, ...) so slow
# drifts of a shared machine's load hit both engines alike; each line prints the per-round rates,
# the per-round ratios and their median.
#
# Environment:
#   ISAS        qleap levels to run (QLEAP_ISA; default "amx"), each against its llama-bench
#   LLAMA_BENCH_AT  "level=path ..." llama-bench per level (default: $LLAMA_BIN/llama-bench for all)
#   LLAMA_BIN   llama.cpp binaries (default /work/llamacpp-build/bin); nothing here builds llama.cpp
#   THREADS (1), ROUNDS (2), QLEAP (./build/qleap), WORK (/tmp/qleap-longctx), NICE (19)
#   LLAMA_NS    N values llama.cpp also runs (default: all); others are qleap only (e.g. 16384 when
#               llama.cpp's quadratic attention would take too long)
#   PP_DEPTHS   also run qleap alone: pp512 after D tokens of context (`--pp-depth D --fill random`),
#               e.g. "4096 16384", per level and round
# When N exceeds the model's training context, both engines still run it (qleap warns): a speed
# figure, not a quality one.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="$1"
shift
NS="${*:-512 4096}"
LLAMA_BIN="${LLAMA_BIN:-/work/llamacpp-build/bin}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-2}"
ISAS="${ISAS:-amx}"
QLEAP="${QLEAP:-./build/qleap}"
WORK="${WORK:-/tmp/qleap-longctx}"
NICE="${NICE:-19}"
LLAMA_NS="${LLAMA_NS:-$NS}"
PP_DEPTHS="${PP_DEPTHS:-}"
mkdir -p "$WORK"
base=$(basename "$MODEL" .gguf)

llama_for() {
  local lvl="$1" kv
  for kv in ${LLAMA_BENCH_AT:-}; do
    [ "${kv%%=*}" = "$lvl" ] && { echo "${kv#*=}"; return; }
  done
  echo "$LLAMA_BIN/llama-bench"
}
in_list() { [[ " $2 " == *" $1 "* ]]; }

run_q() {  # level N round
  local ctx=$(($2 + 16))
  nice -n "$NICE" env QLEAP_ISA="$1" "$QLEAP" bench "$MODEL" -t "$THREADS" -p "$2" -n 0 -r 1 -b 512 -c "$ctx" \
    --no-membw --json > "$WORK/q-$base-$1-$2-$3.json" 2> "$WORK/q-$base-$1-$2-$3.err"
}
run_l() {  # level N round
  nice -n "$NICE" "$(llama_for "$1")" -m "$MODEL" -t "$THREADS" -fa 1 -p "$2" -n 0 -r 1 -b 512 -ub 512 -o json \
    > "$WORK/l-$base-$1-$2-$3.json" 2> "$WORK/l-$base-$1-$2-$3.err"
}
run_d() {  # level depth round
  nice -n "$NICE" env QLEAP_ISA="$1" "$QLEAP" bench "$MODEL" -t "$THREADS" -p 512 -n 0 -r 1 -b 512 \
    -c $(($2 + 528)) --pp-depth "$2" --fill random --no-membw --json > "$WORK/d-$base-$1-$2-$3.json" \
    2> "$WORK/d-$base-$1-$2-$3.err"
}

echo "== $base: whole-prompt prefill, $THREADS thread(s), $ROUNDS interleaved rounds, levels $ISAS"
echo "   start $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  for lvl in $ISAS; do
    for n in $NS; do
      if ! in_list "$n" "$LLAMA_NS"; then
        run_q "$lvl" "$n" "$r"
      elif [ $((r % 2)) -eq 1 ]; then
        run_q "$lvl" "$n" "$r"
        run_l "$lvl" "$n" "$r"
      else
        run_l "$lvl" "$n" "$r"
        run_q "$lvl" "$n" "$r"
      fi
      echo "   round $r $lvl N=$n done $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"
    done
    for d in $PP_DEPTHS; do
      run_d "$lvl" "$d" "$r"
    done
  done
done

python3 - "$WORK" "$base" "$ROUNDS" "$ISAS" "$NS" "$LLAMA_NS" "$PP_DEPTHS" <<'PY'
import json, os, statistics, sys
work, base, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
isas, ns, lns, depths = (sys.argv[i].split() for i in range(4, 8))
med = statistics.median
fmt = lambda v: " ".join(f"{x:.2f}" for x in v)

def qrate(path):
    return json.load(open(path))["pp"]["tps"]

def lrate(path):
    rows = json.load(open(path))
    return next(x for x in rows if x["n_prompt"] > 0 and x["n_gen"] == 0)["avg_ts"]

for lvl in isas:
    base_ratio = None
    for n in ns:
        q = [qrate(f"{work}/q-{base}-{lvl}-{n}-{r}.json") for r in range(1, rounds + 1)]
        line = f"{lvl} pp{n}: qleap {fmt(q)} (median {med(q):.2f})"
        if n in lns:
            l = [lrate(f"{work}/l-{base}-{lvl}-{n}-{r}.json") for r in range(1, rounds + 1)]
            rat = [a / b for a, b in zip(q, l)]
            line += f" | llama.cpp -fa 1 {fmt(l)} (median {med(l):.2f}) | ratio {fmt(rat)} (median {med(rat):.2f})"
            if base_ratio is None:
                base_ratio = med(rat)
            else:
                line += f", {med(rat) / base_ratio:.2f}x the pp{ns[0]} ratio"
        print(line)
    for d in depths:
        v = [qrate(f"{work}/d-{base}-{lvl}-{d}-{r}.json") for r in range(1, rounds + 1)]
        print(f"{lvl} pp512@d{d} (qleap only, --fill random): {fmt(v)} (median {med(v):.2f})")
PY
