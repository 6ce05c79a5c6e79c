#!/usr/bin/env bash
# The project's test command: unit + golden tests (ctest), Python cross-checks against the gguf
# package and server tests with the official clients (pytest), and a bounded fuzz run of each
# parser. Every stage runs even when an earlier one fails; one summary line over all of them ends
# the output, and the exit status is non-zero when anything failed.
#   QLEAP_VENV           Python environment made by scripts/setup.sh (default .venv)
#   QLEAP_DEFAULT_MODEL  SmolLM2-135M Q4_1 for the tests that use it (default: the one
#                        scripts/setup.sh fetched into the model store, when present)
#   FUZZ_TARGETS / FUZZ_SECONDS  see tests/fuzz/run_fuzz.sh
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${QLEAP_VENV:-.venv}"
PYTHON=python3
[ -x "$venv/bin/python" ] && PYTHON="$venv/bin/python"
if [ -z "${QLEAP_DEFAULT_MODEL:-}" ]; then
  m="${QLEAP_MODELS:-$HOME/.qleap/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
  [ -s "$m" ] && export QLEAP_DEFAULT_MODEL="$m"
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

build_ok=1
{ cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j"$(nproc)"; } || build_ok=0

if ((build_ok)); then
  (cd build && ctest --output-on-failure -j"$(nproc)") 2>&1 | tee "$logs/ctest.txt"
  QLEAP_BIN="$PWD/build/qleap" "$PYTHON" -m pytest -q tests/py 2>&1 | tee "$logs/pytest.txt"
fi
fuzz_passed=0 fuzz_failed=0
for t in ${FUZZ_TARGETS:-gguf_fuzz safetensors_fuzz server_request_fuzz model_load_fuzz}; do
  if FUZZ_TARGETS="$t" bash tests/fuzz/run_fuzz.sh; then
    fuzz_passed=$((fuzz_passed + 1))
  else
    fuzz_failed=$((fuzz_failed + 1))
  fi
done

"$PYTHON" - "$logs" "$build_ok" "$fuzz_passed" "$fuzz_failed" <<'PY'
import os, re, sys
logs, build_ok, fuzz_ok, fuzz_bad = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
passed, failed, skipped = fuzz_ok, fuzz_bad + (0 if build_ok else 1), 0
def read(name):
    p = os.path.join(logs, name)
    return open(p).read() if os.path.exists(p) else ""
c = read("ctest.txt")
m = re.search(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", c)
if m:
    c_failed, c_total = int(m.group(2)), int(m.group(3))
    c_skipped = len(re.findall(r"\(Skipped\)", c))
    passed += c_total - c_failed - c_skipped
    failed += c_failed
    skipped += c_skipped
elif build_ok:
    failed += 1  # ctest did not report: count the stage as one failure
    print("ctest: no result line", file=sys.stderr)
lines = read("pytest.txt").strip().splitlines()
p = lines[-1] if lines else ""
def count(word):
    m = re.search(rf"(\d+) {word}", p)
    return int(m.group(1)) if m else 0
if re.search(r"\d+ (passed|failed|error)", p):
    passed += count("passed")
    failed += count("failed") + count("errors?")
    skipped += count("skipped")
elif build_ok:
    failed += 1
    print("pytest: no result line", file=sys.stderr)
print(f"summary: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
PY
