#!/usr/bin/env bash
# qleap against llama.cpp on the same i-quant / ternary GGUF files: greedy text, perplexity and speed.
#
#   bench/iquants_vs_llamacpp.sh MODEL.gguf [TYPE ...]
#
# Requantizes MODEL with llama.cpp's llama-quantize --allow-requantize to each TYPE (default IQ2_XXS
# IQ3_S IQ4_XS TQ2_0) into $WORK, then for each file:
#   - greedy text: `qleap run --temp 0` and `llama-cli --temp 0` on the same prompt, N_TEXT tokens,
#     and the length of the common prefix in tokens;
#   - perplexity on $PPL_TEXT (if set): qleap perplexity and llama-perplexity, same context
#     ($PPL_CTX, default 512) and chunks ($PPL_CHUNKS, default all);
#   - speed: pp$PP and tg$TG, qleap bench and llama-bench alternating over $ROUNDS rounds with the
#     same threads; the ratio qleap / llama.cpp per round, and their median.
# PHASES (default "text ppl speed") picks the parts to run.
# IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M need an importance matrix in llama-quantize; the script
# writes a uniform one (every column weight 1): the i-quants need one for quality, not for speed.
# IMATRIX=FILE uses FILE instead (e.g. one made by llama-imatrix on a text, for usable IQ2 files);
# files that already exist in $WORK are not requantized.
# The llama.cpp binaries come from $LLAMA_BIN (default /work/llamacpp-build/bin); nothing here
# builds llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="$1"
shift
TYPES="${*:-IQ2_XXS IQ3_S IQ4_XS TQ2_0}"
LLAMA_BIN="${LLAMA_BIN:-/work/llamacpp-build/bin}"
THREADS="${THREADS:-2}"
PP="${PP:-512}"
TG="${TG:-128}"
ROUNDS="${ROUNDS:-3}"
N_TEXT="${N_TEXT:-48}"
PROMPT="${PROMPT:-The history of the printing press begins}"
WORK="${WORK:-/tmp/qleap-iq-bench}"
QLEAP="${QLEAP:-./build/qleap}"
PHASES="${PHASES:-text ppl speed}"
has() { [[ " $PHASES " == *" $1 "* ]]; }
mkdir -p "$WORK"
base=$(basename "$MODEL" .gguf)

imatrix="${IMATRIX:-$WORK/$base.ones.imatrix}"
if [ -z "${IMATRIX:-}" ] && [ ! -f "$imatrix" ]; then
  python3 - "$MODEL" "$imatrix" <<'PY'
import struct, sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
ents = [(t.name, int(t.shape[0])) for t in r.tensors if len(t.shape) == 2 and t.name.endswith(".weight")]
with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("<i", len(ents)))
    for name, n in ents:
        b = name.encode()
        f.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", 1, n) + struct.pack(f"<{n}f", *([1.0] * n)))
PY
fi

for t in $TYPES; do
  out="$WORK/$base.$t.gguf"
  [ -f "$out" ] || "$LLAMA_BIN/llama-quantize" --allow-requantize --imatrix "$imatrix" "$MODEL" "$out" "$t" \
    > "$WORK/quantize-$t.log" 2>&1
done

has text && echo "== greedy text ($N_TEXT tokens, prompt: $PROMPT)"
for t in $TYPES; do
  has text || break
  m="$WORK/$base.$t.gguf"
  $QLEAP run "$m" "$PROMPT" --raw --temp 0 -n "$N_TEXT" -t "$THREADS" 2>/dev/null > "$WORK/q-$t.txt"
  "$LLAMA_BIN/llama-cli" -m "$m" -p "$PROMPT" -n "$N_TEXT" --temp 0 -t "$THREADS" -no-cnv --no-warmup \
    --simple-io 2>/dev/null > "$WORK/l-$t.txt" || true
  python3 - "$WORK/q-$t.txt" "$WORK/l-$t.txt" "$PROMPT" "$t" <<'PY'
import sys
q, l, prompt, t = open(sys.argv[1]).read(), open(sys.argv[2]).read(), sys.argv[3], sys.argv[4]
l = l[len(prompt):] if l.startswith(prompt) else l
q = q[len(prompt):] if q.startswith(prompt) else q
n = 0
while n < min(len(q), len(l)) and q[n] == l[n]:
    n += 1
same = "identical" if q.strip() == l.strip() else f"first difference at character {n}"
print(f"{t}: {same}\n  qleap:     {q.strip()[:300]!r}\n  llama.cpp: {l.strip()[:300]!r}")
PY
done

if has ppl && [ -n "${PPL_TEXT:-}" ]; then
  echo "== perplexity on $PPL_TEXT (ctx ${PPL_CTX:-512})"
  for t in $TYPES; do
    m="$WORK/$base.$t.gguf"
    chunks=()
    [ -n "${PPL_CHUNKS:-}" ] && chunks=(--chunks "$PPL_CHUNKS")
    qp=$($QLEAP perplexity "$m" "$PPL_TEXT" --ctx "${PPL_CTX:-512}" -t "$THREADS" "${chunks[@]}" 2>&1 |
      grep -oE "PPL = [0-9.]+" | grep -oE "[0-9.]+$" | tail -1)
    lp=$("$LLAMA_BIN/llama-perplexity" -m "$m" -f "$PPL_TEXT" -c "${PPL_CTX:-512}" -t "$THREADS" "${chunks[@]}" 2>&1 |
      grep -oE "Final estimate: PPL = [0-9.]+" | grep -oE "[0-9.]+$")
    echo "$t: qleap PPL $qp, llama.cpp PPL $lp, ratio $(python3 -c "print(f'{$qp / $lp:.4f}')")"
  done
fi

has speed && echo "== speed: pp$PP / tg$TG, $THREADS threads, $ROUNDS alternating rounds"
for t in $TYPES; do
  has speed || break
  m="$WORK/$base.$t.gguf"
  for r in $(seq "$ROUNDS"); do
    $QLEAP bench "$m" -t "$THREADS" -p "$PP" -n "$TG" -r 1 --json > "$WORK/qb-$t-$r.json" 2>/dev/null
    "$LLAMA_BIN/llama-bench" -m "$m" -t "$THREADS" -p "$PP" -n "$TG" -r 1 -o json > "$WORK/lb-$t-$r.json" 2>/dev/null
  done
  python3 - "$WORK" "$t" "$ROUNDS" <<'PY'
import json, statistics, sys
work, t, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
rp, rt, qs, ls = [], [], [], []
for r in range(1, rounds + 1):
    q = json.load(open(f"{work}/qb-{t}-{r}.json"))
    rows = json.load(open(f"{work}/lb-{t}-{r}.json"))
    lpp = next(x for x in rows if x["n_prompt"] > 0 and x["n_gen"] == 0)["avg_ts"]
    ltg = next(x for x in rows if x["n_gen"] > 0 and x["n_prompt"] == 0)["avg_ts"]
    qs.append((q["pp"]["tps"], q["tg"]["tps"]))
    ls.append((lpp, ltg))
    rp.append(q["pp"]["tps"] / lpp)
    rt.append(q["tg"]["tps"] / ltg)
fmt = lambda v: " ".join(f"{x:.2f}" for x in v)
print(f"{t}: qleap pp {fmt(a for a, _ in qs)} tg {fmt(b for _, b in qs)} | llama.cpp pp {fmt(a for a, _ in ls)} "
      f"tg {fmt(b for _, b in ls)} | ratio pp {fmt(rp)} (median {statistics.median(rp):.2f}) "
      f"tg {fmt(rt)} (median {statistics.median(rt):.2f})")
PY
done
