#!/usr/bin/env bash
# Side-by-side speed of qleap and llama.cpp on the same GGUF files, same machine, same threads.
#
#   bench/vs_llamacpp.sh [LLAMA_BENCH_BINARY]
#
# Makes a ~150M-parameter llama model from random weights (tools/make_random_model.py), converts it
# with `qleap convert` to F16 and requantizes to Q4_0 and Q8_0, then runs `qleap bench` and, when a
# llama-bench binary is given (argument or $LLAMA_BENCH), llama-bench with the same pp/tg/threads.
# Without llama-bench the comparison is skipped and only qleap's figures are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BENCH="${1:-${LLAMA_BENCH:-}}"
THREADS="${THREADS:-2}"
PP="${PP:-512}"
TG="${TG:-128}"
REPS="${REPS:-3}"
TYPES="${TYPES:-Q4_0 Q8_0}"
WORK="${WORK:-/tmp/qleap-bench}"
QLEAP=./build/qleap
mkdir -p "$WORK"

if [ ! -f "$WORK/model-F16.gguf" ]; then
  echo "[bench] generating random-weight ~153M-parameter llama in $WORK/hf"
  # hidden 768, 12 layers, 12 heads / 4 KV heads, ffn 3072, vocab 32000; the synthetic tokenizer
  # it writes lets llama.cpp load the same file.
  python3 tools/make_random_model.py "$WORK/hf" --ffn 3072 --dtype F16
  $QLEAP convert "$WORK/hf" "$WORK/model-F16.gguf" --type F16
fi
for t in $TYPES; do
  [ -f "$WORK/model-$t.gguf" ] || $QLEAP convert "$WORK/model-F16.gguf" "$WORK/model-$t.gguf" --type "$t"
done

printf "\n%-6s | %-10s | %10s | %10s | %10s | %10s | %7s | %7s\n" type engine pp_tps pp_sd tg_tps tg_sd pp_ratio tg_ratio
for t in $TYPES; do
  m="$WORK/model-$t.gguf"
  $QLEAP bench "$m" -t "$THREADS" -p "$PP" -n "$TG" -r "$REPS" --json > "$WORK/qleap-$t.json"
  read -r qpp qppsd qtg qtgsd < <(python3 -c "import json,sys;d=json.load(open('$WORK/qleap-$t.json'));print(d['pp']['tps'],d['pp']['sd'],d['tg']['tps'],d['tg']['sd'])")
  printf "%-6s | %-10s | %10.2f | %10.2f | %10.2f | %10.2f |\n" "$t" qleap "$qpp" "$qppsd" "$qtg" "$qtgsd"
  if [ -n "$LLAMA_BENCH" ] && [ -x "$LLAMA_BENCH" ]; then
    "$LLAMA_BENCH" -m "$m" -t "$THREADS" -p "$PP" -n "$TG" -r "$REPS" -o json > "$WORK/llama-$t.json" 2>/dev/null
    read -r lpp lppsd ltg ltgsd < <(python3 - "$WORK/llama-$t.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
pp = next(r for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
tg = next(r for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
print(pp["avg_ts"], pp["stddev_ts"], tg["avg_ts"], tg["stddev_ts"])
PY
)
    printf "%-6s | %-10s | %10.2f | %10.2f | %10.2f | %10.2f | %7.2f | %7.2f\n" "$t" llama.cpp "$lpp" "$lppsd" "$ltg" "$ltgsd" \
      "$(python3 -c "print($qpp/$lpp)")" "$(python3 -c "print($qtg/$ltg)")"
  fi
done
[ -n "$LLAMA_BENCH" ] || echo "(no llama-bench given: comparison skipped; pass its path as the first argument)"
python3 - "$WORK" $TYPES <<'PY'
import json, sys
work = sys.argv[1]
for t in sys.argv[2:]:
    d = json.load(open(f"{work}/qleap-{t}.json"))
    tg = d["tg"]
    print(f"{t}: decode streams {tg['weight_bytes_per_token']/1e6:.1f} MB/token -> {tg['weight_gbps']:.2f} GB/s "
          f"(machine read bandwidth {d.get('machine_read_gbps', float('nan')):.2f} GB/s); peak RSS {d['peak_rss_bytes']/2**20:.0f} MiB")
PY
