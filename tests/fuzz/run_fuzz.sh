#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in build-fuzz and runs each for a bounded time
# over its seed corpus. Exits non-zero when a target finds a crash, leak or sanitizer error.
#   FUZZ_SECONDS  run time per target (default 60)
#   FUZZ_JOBS     parallel fuzzing processes per target (default 1)
#   FUZZ_TARGETS  targets to run (default: gguf_fuzz safetensors_fuzz server_request_fuzz model_load_fuzz)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-1}"
targets="${FUZZ_TARGETS:-gguf_fuzz safetensors_fuzz server_request_fuzz model_load_fuzz}"
if ! command -v clang++ >/dev/null; then
  echo "[fuzz] clang++ not found; skipping fuzzing" >&2
  exit 0
fi
# The sanitizer/coverage flags must reach qleap_lib too (the parser lives there), hence the global
# CMAKE_CXX_FLAGS; the fuzz targets add -fsanitize=fuzzer for libFuzzer's main at link time.
san="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQLEAP_FUZZ=ON \
  -DQLEAP_TESTS=OFF -DQLEAP_BENCH=OFF -DQLEAP_CUDA=OFF "-DCMAKE_CXX_FLAGS=$san" "-DCMAKE_C_FLAGS=$san" >/dev/null
status=0
for t in $targets; do
  cmake --build build-fuzz --target "$t" -j"$(nproc)" >/dev/null
  seeds="tests/fuzz/corpus/${t%_fuzz}"
  work="tests/fuzz/corpus-run/${t%_fuzz}"
  mkdir -p "$work"
  echo "[fuzz] $t for ${secs}s (seeds: $seeds)"
  par=()
  if [ "$jobs" -gt 1 ]; then par=(-jobs="$jobs" -workers="$jobs"); fi
  # Inputs up to 64 KiB, or the largest seed (model_load's seeds are whole tiny models).
  maxlen=65536
  for f in "$seeds"/*; do
    if [ -f "$f" ]; then
      n=$(stat -c %s "$f")
      if [ "$n" -gt "$maxlen" ]; then maxlen=$n; fi
    fi
  done
  dict="tests/fuzz/${t%_fuzz}.dict"
  if [ -f "$dict" ]; then par+=(-dict="$dict"); fi
  if ! UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
    ./build-fuzz/"$t" -max_total_time="$secs" -max_len="$maxlen" -rss_limit_mb=2048 -timeout=10 \
    "${par[@]}" -print_final_stats=1 -artifact_prefix="build-fuzz/$t-" "$work" "$seeds" tests/fuzz/regressions \
    2>&1 | tail -n 25; then
    echo "[fuzz] $t FAILED: see build-fuzz/$t-* for the crashing input" >&2
    status=1
  fi
done
exit $status
