#!/usr/bin/env bash
# Side-by-side speed of qleap and llama.cpp on the same GGUF files, same machine, same threads, at
# every ISA level this CPU has (qleap capped with QLEAP_ISA), rounds interleaved. The work is done
# by bench/vs_llamacpp.py (see its --help); this wrapper supplies defaults:
#
#   bench/vs_llamacpp.sh LLAMA_BENCH [MODEL.gguf ...]
#
# Without models it makes a ~150M-parameter llama from random weights (tools/make_random_model.py),
# converts it with `qleap convert` to F16 and requantizes to Q4_0 and Q8_0 (in $WORK).
# Environment: THREADS (2), PP (512), TG (128), ROUNDS (3), DEPTHS (e.g. 4096,16384: pp at depth on
# the top level), ISA (comma list, default all levels), LLAMA_BENCH_AT (space-separated LEVEL=PATH
# llama-bench builds for single levels), JSON (write the measurements there), QLEAP (the qleap binary,
# default ./build/qleap).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BENCH="${1:-${LLAMA_BENCH:-}}"
if [ -z "$LLAMA_BENCH" ] || [ ! -x "$LLAMA_BENCH" ]; then
  echo "usage: $0 LLAMA_BENCH [MODEL.gguf ...]   (llama-bench binary not given or not executable)" >&2
  exit 2
fi
shift || true
WORK="${WORK:-/tmp/qleap-bench}"
QLEAP="${QLEAP:-./build/qleap}"
MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  mkdir -p "$WORK"
  if [ ! -f "$WORK/model-F16.gguf" ]; then
    echo "[bench] generating random-weight ~153M-parameter llama in $WORK/hf" >&2
    # hidden 768, 12 layers, 12 heads / 4 KV heads, ffn 3072, vocab 32000; the synthetic tokenizer
    # it writes lets llama.cpp load the same file.
    python3 tools/make_random_model.py "$WORK/hf" --ffn 3072 --dtype F16
    $QLEAP convert "$WORK/hf" "$WORK/model-F16.gguf" --type F16
  fi
  for t in Q4_0 Q8_0; do
    [ -f "$WORK/model-$t.gguf" ] || $QLEAP convert "$WORK/model-F16.gguf" "$WORK/model-$t.gguf" --type "$t"
    MODELS+=("$WORK/model-$t.gguf")
  done
fi
ARGS=(--qleap "$QLEAP" --llama-bench "$LLAMA_BENCH" --threads "${THREADS:-2}" --pp "${PP:-512}"
      --tg "${TG:-128}" --rounds "${ROUNDS:-3}" --models "${MODELS[@]}")
[ -n "${DEPTHS:-}" ] && ARGS+=(--depths "$DEPTHS")
[ -n "${ISA:-}" ] && ARGS+=(--isa "$ISA")
[ -n "${JSON:-}" ] && ARGS+=(--json "$JSON")
for kv in ${LLAMA_BENCH_AT:-}; do ARGS+=(--llama-bench-at "$kv"); done
exec python3 bench/vs_llamacpp.py "${ARGS[@]}"
