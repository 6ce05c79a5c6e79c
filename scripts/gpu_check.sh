#!/usr/bin/env bash
# GPU bring-up check (issue 22): on a machine with one NVIDIA GPU, build qleap for that GPU's
# architecture and run every CUDA path once (tests, CLI, benchmarks), within one device-tool call.
#
#   scripts/gpu_check.sh [options]
#
# Steps, in order of priority (a step that does not fit the remaining time budget is skipped):
#   env             GPU name, compute capability, driver, nvcc, CPUs, Python packages
#   deps            extract .gpudeps/*.deb (made here by scripts/gpu_deps.sh) into a private prefix
#   configure       CMake, CUDA for the device's own architecture only (nvidia-smi compute_cap)
#   build           qleap, qleap_tests, qleap_cuda_bench with all cores
#   tests_cuda      qleap_tests --gtest_filter='*Cuda*' (kernels, model logits, stories text, expert tier)
#   cli             qleap run stories260K -ngl 99 / -ngl 2 / --kv tq3 -ngl 99 vs the expected text;
#                   qleap bench placement with -ngl 99 and -ngl 2; qleap info
#   cuda_bench_q4k  qleap_cuda_bench, Llama-3-8B shape, Q4_K: decode GB/s vs copy and datasheet, pp512
#                   vs the cuBLAS bound, kernels alone, CUDA graph on/off
#   moe_model       a synthetic qwen3moe (tools/make_random_model.py, router skew) converted to Q4_0
#   moe_bench       qleap bench --moe --expert-tier cuda --moe-budget 0.5: (a) CPU, (b) static,
#                   (c) dynamic cache, (d) cache + prefetch: tok/s, hit rate, bytes copied per token
#   cuda_bench_q8   the same at Q8_0
#   cuda_bench_32k  Q4_K decode at 32K tokens of context
#   pytest_gpu      tests/py/test_cli_gpu_layers.py and test_expert_flow_cli.py with the device present
#   tests_rest      every other qleap_tests test with the device present (sharded over the cores)
#
# Writes OUT/summary.json, OUT/summary.txt and OUT/logs.tar.gz (every step's log and raw output);
# OUT is $OUT (the device tool's folder) or ./gpu_check_out. Keeps going after a failed step; exits
# non-zero if any step failed or timed out. Missed speed targets are reported, not failures.
#
# Options:
#   --dry-run          no GPU needed: parse arguments, extract .gpudeps when present, configure (in a
#                      temporary folder) for QLEAP_GPU_ARCH (default 90), run the tests and benchmarks of
#                      an EXISTING --build-dir (CUDA tests skip; qleap_cuda_bench --check validates its
#                      flags), make and bench a tiny MoE, write the summary. Compiles nothing.
#   --build-dir DIR    build folder (default build-gpu; with --dry-run: build)
#   --out DIR          output folder (default $OUT, else ./gpu_check_out)
#   --work DIR         scratch folder for logs, models, prefix (default: a new /tmp/qleap-gpu-check.*)
#   --deps DIR         .deb folder (default .gpudeps)
#   --prefix DIR       where the .deb files are extracted (default /tmp/qleap-gpudeps; with --dry-run:
#                      WORK/prefix). The binaries' RPATH points there, so binaries built elsewhere
#                      with the same prefix run too (--no-build --build-dir FOLDER_OF_BINARIES)
#   --jobs N           build jobs and benchmark threads (default: nproc)
#   --budget SECONDS   total time for all steps (default 570: a 600 s device call less margin)
#   --only A,B         run only these steps (env, deps, configure and build are added unless
#                      --no-build)
#   --skip A,B         leave these steps out
#   --no-build         use --build-dir as it is (skip configure and build)
#   --moe-size S       tiny | small | medium (default medium; tiny with --dry-run)
#   --werror           keep the project's -Werror (default: warnings are counted, not fatal, since the
#                      GPU machine's compiler may be newer than the one the project is tested with)
#   --cap-scale N      multiply every step's time limit by N (a slow rehearsal machine; default 1)
#   --isolate-deps     configure with CMAKE_FIND_ROOT_PATH=prefix (packages from the prefix only) and
#                      pkg-config limited to it: a rehearsal, on a machine that has the packages
#                      installed, that .gpudeps alone is enough
#   -h, --help         this text
#
# Environment: QLEAP_GPU_ARCH overrides the architecture (with --dry-run: the assumed one, default 90).
# QLEAP_PYTHON: the Python that makes the synthetic MoE model (needs numpy; default python3).
#
# The device-tool call (docs/cuda.md, "GPU bring-up"): first `bash scripts/gpu_deps.sh` here, then
#   run(command="bash scripts/gpu_check.sh", carry=[".gpudeps"], timeout_s=600)
set -uo pipefail

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
root="$(cd "$(dirname "$self")/.." && pwd)"
py="${QLEAP_PYTHON:-python3}"
report="$root/scripts/gpu_check_report.py"
all_steps=(env deps configure build tests_cuda cli cuda_bench_q4k moe_model moe_bench cuda_bench_q8
  cuda_bench_32k pytest_gpu tests_rest)

# ---------------------------------------------------------------------------------------------
# Helpers used inside steps (each step runs as `gpu_check.sh --_step NAME` under `timeout`).
# Exit status of a step: 0 ok, 3 skipped, anything else failed; WORK/reason/NAME holds its detail.
note() { printf '%s\n' "$*" >"$QC_WORK/reason/$QC_STEP"; }
skip() { note "$*"; exit 3; }
fail() { note "$*"; echo "FAILED: $*"; exit 1; }
figures() { cat >"$QC_WORK/fig/$QC_STEP.json"; }  # stdin: the step's figures as JSON
qenv() {  # qleap commands run with the prefix's libraries and no state from this machine's home
  LD_LIBRARY_PATH="${QC_LIBPATH:+$QC_LIBPATH:}${LD_LIBRARY_PATH:-}" QLEAP_KV_CALIB_DIR="$QC_WORK/kvcalib" \
    QLEAP_TUNE_FILE="$QC_WORK/tune.json" QLEAP_SOURCE_DIR="$root" "$@"
}
bin() { echo "$QC_BUILD/$1"; }
need_bin() { [ -x "$(bin "$1")" ] || fail "$(bin "$1") does not exist (did the build step fail?)"; }
banner() { echo "+ $*"; }

step_env() {
  local name="" cc="" driver="" mem=""
  if command -v nvidia-smi >/dev/null; then
    banner nvidia-smi
    nvidia-smi || true
    IFS=, read -r name cc driver mem < <(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total \
      --format=csv,noheader | head -1 | sed 's/, */,/g')
  fi
  local arch="${QLEAP_GPU_ARCH:-}"
  [ -z "$arch" ] && [ -n "$cc" ] && arch="${cc/./}"
  [ -z "$arch" ] && arch=90
  echo "$arch" >"$QC_WORK/arch"
  echo "$name" >"$QC_WORK/gpu_name"
  local nvcc_v="" cmake_v gen py_pk commit="unknown" deps_commit=""
  local nvcc_bin
  nvcc_bin=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
  [ -n "$nvcc_bin" ] && nvcc_v=$("$nvcc_bin" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
  cmake_v=$(cmake --version 2>/dev/null | head -1 | awk '{print $3}')
  gen=$(command -v ninja >/dev/null && echo "ninja $(ninja --version)" || echo "make")
  git -C "$root" rev-parse --short=12 HEAD >/dev/null 2>&1 && commit=$(git -C "$root" rev-parse --short=12 HEAD)
  [ -f "$QC_DEPS/SOURCE_COMMIT" ] && deps_commit=$(head -1 "$QC_DEPS/SOURCE_COMMIT")
  py_pk=$("$py" - <<'PY' 2>/dev/null
from importlib import metadata
out = []
for m in ("numpy", "torch", "transformers", "safetensors", "pytest"):
    try:
        out.append(f"{m} {metadata.version(m)}")
    except metadata.PackageNotFoundError:
        out.append(f"{m} -")
print(", ".join(out))
PY
)
  banner "c++: $(c++ --version 2>/dev/null | head -1); nvcc $nvcc_v; cmake $cmake_v; $gen; python: $py_pk"
  QC_NAME="$name" QC_CC="$cc" QC_DRIVER="$driver" QC_MEM="$mem" QC_NVCC="$nvcc_v" QC_CMAKE="$cmake_v" \
    QC_GEN="$gen" QC_PYPK="$py_pk" QC_COMMIT="$commit" QC_DEPS_COMMIT="$deps_commit" QC_ARCH_USED="$arch" \
    QC_CXX="$(c++ --version 2>/dev/null | head -1)" "$py" - <<'PY' >"$QC_WORK/meta.json"
import json, os
e = os.environ
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((int(l.split()[1]) // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
print(json.dumps({
    "dry_run": e["QC_DRY"] == "1", "commit": e["QC_COMMIT"], "deps_made_at_commit": e["QC_DEPS_COMMIT"],
    "gpu": e["QC_NAME"] or None, "compute_cap": e["QC_CC"] or None, "driver": e["QC_DRIVER"] or None,
    "gpu_memory": e["QC_MEM"] or None, "arch": e["QC_ARCH_USED"], "nvcc": e["QC_NVCC"] or None,
    "cxx": e["QC_CXX"], "cmake": e["QC_CMAKE"], "generator": e["QC_GEN"], "python": e["QC_PYPK"],
    "cpus": os.cpu_count(), "cpu_model": cpu, "ram_mib": mem, "jobs": int(e["QC_JOBS"]),
    "build_dir": e["QC_BUILD"], "budget_s": int(e["QC_BUDGET"]), "moe_size": e["QC_MOE_SIZE"]}, indent=1))
PY
  if [ -z "$name" ]; then
    [ "$QC_DRY" = 1 ] && { note "no GPU (dry run); assumed arch sm_$arch; nvcc ${nvcc_v:-none}"; return 0; }
    fail "no NVIDIA GPU found (nvidia-smi missing or silent); building for sm_$arch anyway"
  fi
  note "$name, compute $cc (sm_$arch), driver $driver, $mem; nvcc ${nvcc_v:-none}; $(nproc) CPUs"
}

step_deps() {
  if ! compgen -G "$QC_DEPS/*.deb" >/dev/null; then
    skip "no $QC_DEPS/*.deb: using the system's packages (run scripts/gpu_deps.sh first and carry .gpudeps)"
  fi
  # Only a folder this script made (marked) is cleared before extracting again.
  if [ -e "$QC_PREFIX" ] && [ ! -e "$QC_PREFIX/.qleap-gpudeps" ] && [ -n "$(ls -A "$QC_PREFIX")" ]; then
    fail "--prefix $QC_PREFIX is not empty and was not made by this script: not touching it"
  fi
  rm -rf "$QC_PREFIX"
  local n
  n=$(bash "$root/scripts/gpu_check_extract.sh" "$QC_DEPS" "$QC_PREFIX") || fail "extracting $QC_DEPS failed"
  touch "$QC_PREFIX/.qleap-gpudeps"
  [ -f "$QC_DEPS/MANIFEST.tsv" ] && cat "$QC_DEPS/MANIFEST.tsv"
  local pc=""
  if [ -x "$QC_PREFIX/usr/bin/pkgconf" ]; then
    # A pkg-config for CMake, used when the machine has none (its library comes from the prefix).
    mkdir -p "$QC_PREFIX/bin"
    printf '#!/bin/sh
LD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"
' \
      "$QC_PREFIX/usr/lib/x86_64-linux-gnu" "$QC_PREFIX/usr/bin/pkgconf" >"$QC_PREFIX/bin/pkg-config"
    chmod +x "$QC_PREFIX/bin/pkg-config"
    "$QC_PREFIX/bin/pkg-config" --version >/dev/null || fail "the prefix's pkgconf does not run"
    command -v pkg-config >/dev/null || pc="; pkg-config from the prefix (the machine has none)"
  fi
  note "$n packages from $QC_DEPS into $QC_PREFIX$pc"
}

# CMake arguments shared by the real and the dry-run configure.
cmake_args() {
  local dir="$1"
  local a=(-S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$QC_ARCH")
  if [ ! -f "$dir/CMakeCache.txt" ] && command -v ninja >/dev/null; then a+=(-G Ninja); fi
  if [ -d "$QC_PREFIX/usr" ]; then
    local lib="$QC_PREFIX/usr/lib/x86_64-linux-gnu" rootlib="$QC_PREFIX/lib/x86_64-linux-gnu"
    # The binaries find the prefix's libraries (and those libraries' own dependencies) by RPATH.
    a+=(-DCMAKE_PREFIX_PATH="$QC_PREFIX/usr"
      "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags -Wl,-rpath,$lib:$rootlib -Wl,-rpath-link,$lib:$rootlib")
    if [ "$QC_ISOLATE" = 1 ]; then
      a+=(-DCMAKE_FIND_ROOT_PATH="$QC_PREFIX" -DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=ONLY)
    fi
  fi
  if [ "$QC_WERROR" != 1 ]; then
    # A launcher that appends -Wno-error after the project's -Werror (the order decides).
    mkdir -p "$dir"
    printf '#!/bin/sh\nexec "$@" -Wno-error\n' >"$dir/qleap-no-werror.sh"
    chmod +x "$dir/qleap-no-werror.sh"
    a+=(-DCMAKE_CXX_COMPILER_LAUNCHER="$dir/qleap-no-werror.sh")
  fi
  printf '%s\n' "${a[@]}"
}

pkg_env() {
  if ! command -v pkg-config >/dev/null && [ -x "$QC_PREFIX/bin/pkg-config" ]; then
    export PATH="$QC_PREFIX/bin:$PATH"
  fi
  if [ -d "$QC_PREFIX/usr" ]; then
    local pc="$QC_PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig:$QC_PREFIX/usr/share/pkgconfig"
    if [ "$QC_ISOLATE" = 1 ]; then
      export PKG_CONFIG_LIBDIR="$pc"
    else
      export PKG_CONFIG_PATH="$pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    fi
  fi
}

step_configure() {
  local dir="$QC_BUILD"
  [ "$QC_DRY" = 1 ] && dir="$QC_WORK/configure-dry"
  local args
  mapfile -t args < <(cmake_args "$dir")
  pkg_env
  banner cmake "${args[@]}"
  cmake "${args[@]}" || fail "cmake configure failed (see the log)"
  local cuda
  cuda=$(grep -o 'qleap: CUDA backend [a-z]* ([^)]*)' "$QC_WORK/logs/configure.log" | tail -1)
  if [ "$QC_DRY" = 1 ]; then
    rm -rf "$dir"  # only the configure was checked; nothing is built from it
    note "dry run: configured for sm_$QC_ARCH in a scratch folder: ${cuda:-no CUDA status line}"
    return 0
  fi
  case "$cuda" in
    *enabled*) note "${cuda#qleap: }" ;;
    *) fail "${cuda:-no CUDA status line}: no nvcc 12+ found, nothing would run on the GPU" ;;
  esac
}

step_build() {
  local targets=(qleap qleap_tests qleap_cuda_bench)
  if [ "$QC_DRY" = 1 ]; then
    local have=()
    for t in "${targets[@]}"; do [ -x "$(bin "$t")" ] && have+=("$t"); done
    if [ ! -x "$(bin qleap)" ] || [ ! -x "$(bin qleap_tests)" ]; then
      fail "dry run: --build-dir $QC_BUILD has no qleap and qleap_tests: build them first"
    fi
    skip "dry run: nothing compiled; using $QC_BUILD (${have[*]})"
  fi
  banner cmake --build "$QC_BUILD" -j"$QC_JOBS" --target "${targets[@]}"
  cmake --build "$QC_BUILD" -j"$QC_JOBS" --target "${targets[@]}" || fail "build failed (see the log)"
  local w
  w=$(grep -c 'warning:' "$QC_WORK/logs/build.log")
  grep 'warning:' "$QC_WORK/logs/build.log" | sort | uniq -c | sort -rn | head -20
  note "built ${targets[*]} for sm_$QC_ARCH with $QC_JOBS jobs; $w compiler warnings"
}

# Each test suite the brief names must be selected by the filter (a rename would silently drop it).
cuda_suites=CudaLayout,CudaDevice,CudaMatmul,CudaOps,CudaAttention,CudaModelGolden,CudaModelStories,CudaModel,CudaExpertTier

step_tests_cuda() {
  need_bin qleap_tests
  local t
  t=$(bin qleap_tests)
  banner "$t --gtest_list_tests --gtest_filter='*Cuda*'"
  qenv "$t" --gtest_list_tests --gtest_filter='*Cuda*'
  qenv "$t" --gtest_filter='*Cuda*' --gtest_output="json:$QC_WORK/tests_cuda.json" | tee "$QC_WORK/tests_cuda.out"
  local rc=${PIPESTATUS[0]}
  [ -f "$QC_WORK/tests_cuda.json" ] || fail "qleap_tests exited $rc without a result file (crash?)"
  local gpu=()
  [ "$QC_DRY" = 1 ] || gpu=(--gpu)
  "$py" "$report" gtest "$QC_WORK/tests_cuda.json" --log "$QC_WORK/tests_cuda.out" --expect "$cuda_suites" \
    "${gpu[@]}" >"$QC_WORK/fig/tests_cuda.json"
  local ok=$? line
  line=$("$py" "$report" describe gtest "$QC_WORK/fig/tests_cuda.json")
  ((ok == 0 && rc == 0)) || fail "$line"
  note "$line"
}

step_cli() {
  need_bin qleap
  local q model exp d="$QC_WORK/cli"
  q=$(bin qleap)
  model="$root/tests/fixtures/models/stories260K.gguf"
  exp="$root/tests/fixtures/models/stories260K.expected.txt"
  mkdir -p "$d"
  banner "$q info"
  qenv "$q" info || true
  local cfgs=("ngl99:-ngl 99" "ngl2:-ngl 2" "tq3_ngl99:--kv tq3 -ngl 99" "tq3_cpu:--kv tq3 -ngl 0")
  local c name flags rc bad=() res=()
  for c in "${cfgs[@]}"; do
    name=${c%%:*} flags=${c#*:}
    banner "$q run $model --raw --temp 0 -n 200 $flags"
    # shellcheck disable=SC2086
    qenv "$q" run "$model" --raw --temp 0 -n 200 $flags </dev/null >"$d/$name.txt" 2>"$d/$name.err"
    rc=$?
    cat "$d/$name.err"
    ((rc == 0)) || bad+=("$name exited $rc")
    if [ "$QC_DRY" != 1 ] && [[ $name != *cpu ]] && grep -q 'no CUDA device' "$d/$name.err"; then
      bad+=("$name: the GPU was not used")
    fi
  done
  same() { "$py" -c 'import sys; a, b = (open(p).read().rstrip("\n") for p in sys.argv[1:]); sys.exit(a != b)' "$1" "$2"; }
  for name in ngl99 ngl2; do
    if same "$d/$name.txt" "$exp"; then res+=("$name = expected"); else bad+=("$name differs from the expected text"); fi
  done
  # TurboQuant rounds K and V to 3 bits, so a tiny float difference upstream can flip a rounding and
  # the greedy text may part later on: the shared prefix is reported, an empty output fails.
  local tq
  tq=$("$py" - "$d/tq3_ngl99.txt" "$d/tq3_cpu.txt" "$exp" <<'PY'
import sys
g, c, e = (open(p).read().rstrip("\n") for p in sys.argv[1:])
n = next((i for i, (x, y) in enumerate(zip(g, c)) if x != y), min(len(g), len(c)))
s = "tq3 -ngl 99 = tq3 CPU" if g == c else f"tq3 -ngl 99 and tq3 CPU share {n} of {len(c)} chars"
print(s + ("" if c == e else " (tq3 CPU differs from the f16 text, as quantized KV may)"))
sys.exit(0 if g.strip() else 1)
PY
) || bad+=("tq3 -ngl 99 wrote no text")
  res+=("$tq")
  local p99 p2
  banner "$q bench $model -p 64 -n 32 -r 2 --no-membw -ngl 99 / -ngl 2"
  qenv "$q" bench "$model" -p 64 -n 32 -r 2 --no-membw -ngl 99 | tee "$d/bench99.txt" || bad+=("bench -ngl 99 failed")
  qenv "$q" bench "$model" -p 64 -n 32 -r 2 --no-membw -ngl 2 | tee "$d/bench2.txt" || bad+=("bench -ngl 2 failed")
  p99=$(grep -m1 '^placement:' "$d/bench99.txt")
  p2=$(grep -m1 '^placement:' "$d/bench2.txt")
  if [ "$QC_DRY" != 1 ]; then
    [[ $p99 == *GPU* ]] || bad+=("-ngl 99 placement has no GPU: $p99")
    [[ $p2 == *GPU* && $p2 == *CPU* ]] || bad+=("-ngl 2 placement is not split: $p2")
  fi
  join() { local IFS=';'; echo "$*" | sed 's/;/; /g'; }
  ((${#bad[@]} == 0)) || fail "$(join "${bad[@]}")"
  note "$(join "${res[@]}"); -ngl 99 ${p99:-no placement line}; -ngl 2 ${p2:-no placement line}"
}

# qleap_cuda_bench with the given flags; on a dry run only its argument check.
cuda_bench() {
  local b
  b=$(bin qleap_cuda_bench)
  [ -x "$b" ] || {
    [ "$QC_DRY" = 1 ] && skip "dry run: $QC_BUILD has no qleap_cuda_bench (configured without CUDA)"
    fail "$b does not exist (did the build step fail?)"
  }
  local peak=()
  [ "${QC_PEAK:-0}" != 0 ] && peak=(--peak-gbs "$QC_PEAK")
  if [ "$QC_DRY" = 1 ]; then
    banner "$b --check $* ${peak[*]}"
    qenv "$b" --check "$@" "${peak[@]}" || fail "qleap_cuda_bench rejected the flags: $*"
    skip "dry run: flags accepted (qleap_cuda_bench --check $*); not run without a device"
  fi
  banner "$b $* ${peak[*]}"
  qenv "$b" "$@" "${peak[@]}" | tee "$QC_WORK/$QC_STEP.txt"
  local rc=${PIPESTATUS[0]}
  "$py" "$report" cuda-bench "$QC_WORK/$QC_STEP.txt" | figures
  local ok=${PIPESTATUS[0]}
  ((rc == 0)) || fail "qleap_cuda_bench exited $rc"
  ((ok == 0)) || fail "no decode figures in the output"
  note "$("$py" "$report" describe cuda-bench "$QC_WORK/fig/$QC_STEP.json")"
}

step_cuda_bench_q4k() { cuda_bench --shape llama3-8b --type Q4_K --ctx 4096 --prompt 512 --gen 64; }
step_cuda_bench_q8() { cuda_bench --shape llama3-8b --type Q8_0 --ctx 4096 --prompt 512 --gen 64 --no-graph-compare; }
step_cuda_bench_32k() {
  cuda_bench --shape llama3-8b --type Q4_K --ctx 33280 --prompt 512 --depth 32768 --gen 32 --no-kernels --no-graph-compare
}

step_moe_model() {
  need_bin qleap
  "$py" -c 'import numpy' 2>/dev/null || skip "numpy is not importable: no synthetic MoE"
  # qwen3moe at reduced sizes; the per-expert router bias (--router-skew) gives a moderate, made-up
  # skew (docs/moe.md). medium: one expert is Qwen3-30B-A3B's (hidden 2048, expert FFN 768) in 8 layers.
  local shape
  case "$QC_MOE_SIZE" in
    tiny) shape="--hidden 64 --layers 2 --heads 4 --kv-heads 2 --vocab 512 --experts 8 --experts-used 2 --expert-ffn 128" ;;
    small) shape="--hidden 512 --layers 8 --heads 8 --kv-heads 4 --vocab 8192 --experts 64 --experts-used 8 --expert-ffn 256" ;;
    medium) shape="--hidden 2048 --layers 8 --heads 16 --kv-heads 4 --vocab 8192 --experts 64 --experts-used 8 --expert-ffn 768" ;;
    *) fail "--moe-size: tiny, small or medium" ;;
  esac
  local hf="$QC_WORK/moe-hf" out="$QC_WORK/moe.gguf"
  rm -rf "$hf" "$out"
  banner "$py tools/make_random_model.py $hf $shape --dtype BF16 --router-skew 0.5"
  # shellcheck disable=SC2086
  "$py" "$root/tools/make_random_model.py" "$hf" $shape --dtype BF16 --router-skew 0.5 ||
    fail "make_random_model.py failed"
  banner "qleap convert $hf $out --type Q4_0"
  qenv "$(bin qleap)" convert "$hf" "$out" --type Q4_0 || fail "qleap convert failed"
  rm -rf "$hf"
  qenv "$(bin qleap)" info "$out" | tee "$QC_WORK/moe_info.txt"
  note "$QC_MOE_SIZE qwen3moe ($shape), Q4_0, $(du -m "$out" | cut -f1) MiB"
}

step_moe_bench() {
  need_bin qleap
  local m="$QC_WORK/moe.gguf"
  [ -f "$m" ] || fail "no $m (moe_model failed or was skipped)"
  cat "$root/README.md" "$root"/docs/*.md >"$QC_WORK/moe_text.txt"
  local p=64 n=128 r=2
  [ "$QC_MOE_SIZE" = tiny ] && p=16 n=16 r=1
  local args=(bench --moe "$m" -p "$p" -n "$n" -r "$r" -t "$QC_JOBS" --moe-text "$QC_WORK/moe_text.txt"
    --moe-budget 0.5 --expert-tier cuda --json)
  banner qleap "${args[@]}"
  qenv "$(bin qleap)" "${args[@]}" >"$QC_WORK/moe_bench.json"
  local rc=$?
  cat "$QC_WORK/moe_bench.json"
  ((rc == 0)) || fail "qleap bench --moe exited $rc"
  local gpu=()
  [ "$QC_DRY" = 1 ] || gpu=(--gpu)
  "$py" "$report" moe "$QC_WORK/moe_bench.json" "${gpu[@]}" | figures
  local ok=${PIPESTATUS[0]} line
  line=$("$py" "$report" describe moe "$QC_WORK/fig/moe_bench.json")
  ((ok == 0)) || fail "$line"
  note "$line"
}

step_pytest_gpu() {
  [ "$QC_DRY" = 1 ] && skip "dry run: these tests run on the CPU in scripts/test.sh"
  need_bin qleap
  "$py" -c 'import pytest' 2>/dev/null || skip "pytest is not importable"
  cd "$root" || exit 1
  QLEAP_BIN="$(bin qleap)" qenv "$py" -m pytest -q -p no:cacheprovider tests/py/test_cli_gpu_layers.py \
    tests/py/test_expert_flow_cli.py || fail "$(tail -1 "$QC_WORK/logs/pytest_gpu.log")"
  note "$(tail -1 "$QC_WORK/logs/pytest_gpu.log")"
}

step_tests_rest() {
  [ "$QC_DRY" = 1 ] && skip "dry run: the whole suite runs in scripts/test.sh"
  need_bin qleap_tests
  local n=$((QC_JOBS < 8 ? QC_JOBS : 8)) i pids=()
  [ -n "${QLEAP_DEFAULT_MODEL:-}" ] || echo "(QLEAP_DEFAULT_MODEL unset: the SmolLM2 tests skip)"
  for ((i = 0; i < n; i++)); do
    GTEST_TOTAL_SHARDS=$n GTEST_SHARD_INDEX=$i qenv "$(bin qleap_tests)" --gtest_filter='-*Cuda*' \
      --gtest_output="json:$QC_WORK/tests_rest_$i.json" >"$QC_WORK/logs/tests_rest_$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  "$py" "$report" gtest-shards "$QC_WORK" tests_rest "$n" | figures  local ok=${PIPESTATUS[0]} line
  line=$("$py" "$report" describe gtest "$QC_WORK/fig/tests_rest.json")
  ((ok == 0)) || fail "$line"
  note "$line"
}

# ---------------------------------------------------------------------------------------------
if [ "${1:-}" = "--_step" ]; then
  QC_STEP="$2"
  export QC_STEP
  "step_$2"
  exit $?
fi

usage() { sed -n '2,/^set -uo pipefail/p' "$self" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

dry=0 build_dir="" out="${OUT:-}" work="" deps="$root/.gpudeps" jobs=$(nproc) budget=570 only="" skip_list=""
no_build=0 moe_size="" werror=0 isolate=0 cap_scale=1 prefix=""
while (($#)); do
  case "$1" in
    --dry-run) dry=1 ;;
    --build-dir) build_dir="${2:?--build-dir needs a value}"; shift ;;
    --out) out="${2:?--out needs a value}"; shift ;;
    --work) work="${2:?--work needs a value}"; shift ;;
    --deps) deps="${2:?--deps needs a value}"; shift ;;
    --prefix) prefix="${2:?--prefix needs a value}"; shift ;;
    --jobs) jobs="${2:?--jobs needs a value}"; shift ;;
    --budget) budget="${2:?--budget needs a value}"; shift ;;
    --only) only="${2:?--only needs a value}"; shift ;;
    --skip) skip_list="${2:?--skip needs a value}"; shift ;;
    --no-build) no_build=1 ;;
    --moe-size) moe_size="${2:?--moe-size needs a value}"; shift ;;
    --werror) werror=1 ;;
    --isolate-deps) isolate=1 ;;
    --cap-scale) cap_scale="${2:?--cap-scale needs a value}"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "--jobs: a positive integer, got '$jobs'"
[[ $budget =~ ^[1-9][0-9]*$ ]] || die "--budget: a positive number of seconds, got '$budget'"
[[ $cap_scale =~ ^[1-9][0-9]*$ ]] || die "--cap-scale: a positive integer, got '$cap_scale'"
[ -n "$moe_size" ] || moe_size=$([ $dry = 1 ] && echo tiny || echo medium)
case "$moe_size" in tiny | small | medium) ;; *) die "--moe-size: tiny, small or medium, got '$moe_size'" ;; esac
[ -n "$build_dir" ] || build_dir=$([ $dry = 1 ] && echo build || echo build-gpu)
case "$build_dir" in /*) ;; *) build_dir="$root/$build_dir" ;; esac
[ -n "$out" ] || out="$root/gpu_check_out"
[[ $deps == /* ]] || deps="$PWD/$deps"
for s in ${only//,/ } ${skip_list//,/ }; do
  [[ " ${all_steps[*]} " == *" $s "* ]] || die "unknown step '$s' (steps: ${all_steps[*]})"
done
selected=()
for s in "${all_steps[@]}"; do
  if [ -n "$only" ]; then
    base=0
    case "$s" in env | deps | configure | build) ((no_build)) || base=1 ;; esac
    [ "$s" = env ] && base=1
    [[ ",$only," == *",$s,"* ]] || ((base)) || continue
  fi
  [[ ",$skip_list," == *",$s,"* ]] && continue
  ((no_build)) && [[ $s == configure || $s == build ]] && continue
  selected+=("$s")
done
if [ -z "$work" ]; then
  work=$(mktemp -d /tmp/qleap-gpu-check.XXXXXX)
fi
mkdir -p "$work"/{logs,fig,reason} "$out" || die "cannot create $work or $out"
work=$(cd "$work" && pwd)
out=$(cd "$out" && pwd)
[ -n "$prefix" ] || prefix=$([ $dry = 1 ] && echo "$work/prefix" || echo /tmp/qleap-gpudeps)
[[ $prefix == /* ]] || prefix="$PWD/$prefix"
: >"$work/steps.tsv"

export QC_ROOT="$root" QC_WORK="$work" QC_OUT="$out" QC_BUILD="$build_dir" QC_DEPS="$deps" QC_DRY="$dry"
export QC_PREFIX="$prefix" QC_JOBS="$jobs" QC_MOE_SIZE="$moe_size" QC_WERROR="$werror" QC_ISOLATE="$isolate"
export QC_BUDGET="$budget" QC_ARCH="${QLEAP_GPU_ARCH:-90}" QC_PEAK=0 QC_LIBPATH=""
export PYTHONUNBUFFERED=1

# Each step's time limit (s) when the budget allows; a step is not started with under 20 s left, and
# 15 s are kept for the summary.
declare -A cap=([env]=30 [deps]=60 [configure]=150 [build]=420 [tests_cuda]=180 [cli]=90 [cuda_bench_q4k]=150
  [moe_model]=150 [moe_bench]=150 [cuda_bench_q8]=120 [cuda_bench_32k]=180 [pytest_gpu]=120 [tests_rest]=150)
start=$SECONDS
echo "gpu_check: $([ $dry = 1 ] && echo 'DRY RUN, ')steps ${selected[*]}; budget ${budget}s; work $work; out $out"
for s in "${selected[@]}"; do
  left=$((budget - (SECONDS - start) - 15))
  t=$((cap[$s] * cap_scale))
  ((t > left)) && t=$left
  if ((t < 20)); then
    printf '%s\tskipped\t0\t0\t%s\n' "$s" "out of time budget (${budget}s)" >>"$work/steps.tsv"
    printf '[%4ds] %-15s skipped  (out of time budget)\n' $((SECONDS - start)) "$s"
    continue
  fi
  t0=$SECONDS
  timeout -k 10 "$t" bash "$self" --_step "$s" >"$work/logs/$s.log" 2>&1
  rc=$?
  dt=$((SECONDS - t0))
  case $rc in
    0) st=ok ;;
    3) st=skipped ;;
    124 | 137) st=timeout; echo "step stopped after its ${t}s limit" >"$work/reason/$s" ;;
    *) st=failed ;;
  esac
  reason=""
  [ -f "$work/reason/$s" ] && reason=$(head -c 400 "$work/reason/$s" | tr '\t\n' '  ' | sed 's/ *$//')
  [ -z "$reason" ] && [ "$st" != ok ] && reason=$(grep -v '^\s*$' "$work/logs/$s.log" | tail -1 | head -c 300 | tr '\t' ' ')
  printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$st" "$dt" "$rc" "$reason" >>"$work/steps.tsv"
  printf '[%4ds] %-15s %-8s %4ds  %s\n' $((SECONDS - start)) "$s" "$st" "$dt" "$reason"
  # What later steps need from earlier ones.
  if [ "$s" = env ]; then
    QC_ARCH=$(cat "$work/arch" 2>/dev/null || echo "$QC_ARCH")
    QC_PEAK=$("$py" "$report" peak-gbs "$(cat "$work/gpu_name" 2>/dev/null)")
  fi
  if [ "$s" = deps ] && [ -d "$QC_PREFIX/usr" ]; then
    QC_LIBPATH="$QC_PREFIX/usr/lib/x86_64-linux-gnu:$QC_PREFIX/lib/x86_64-linux-gnu"
  fi
done

"$py" "$report" summary "$work" "$out"
rc=$?
# Logs and raw outputs in one archive (the device tool returns at most 8 files).
tar -C "$work" -czf "$out/logs.tar.gz" --exclude='*.gguf' --exclude=prefix --exclude=moe-hf --exclude=kvcalib --exclude=moe_text.txt \
  --exclude='configure-dry' . 2>/dev/null
echo
cat "$out/summary.txt"
echo "(summary: $out/summary.json, $out/summary.txt; logs: $out/logs.tar.gz; work folder: $work)"
exit $rc
