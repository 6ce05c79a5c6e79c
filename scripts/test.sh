#!/usr/bin/env bash
# The project's test command: unit + golden tests (ctest), Python cross-checks against the gguf
# package (pytest), and a bounded fuzz run of the GGUF and safetensors parsers. Ends with one
# summary line over all three.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

(cd build && ctest --output-on-failure -j"$(nproc)") | tee "$logs/ctest.txt"
QLEAP_BIN="$PWD/build/qleap" python3 -m pytest -q tests/py | tee "$logs/pytest.txt"
fuzz_passed=0
for t in ${FUZZ_TARGETS:-gguf_fuzz safetensors_fuzz server_request_fuzz}; do
  FUZZ_TARGETS="$t" bash tests/fuzz/run_fuzz.sh
  fuzz_passed=$((fuzz_passed + 1))
done

python3 - "$logs" "$fuzz_passed" <<'PY'
import re, sys
logs, fuzz = sys.argv[1], int(sys.argv[2])
c = open(f"{logs}/ctest.txt").read()
m = re.search(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", c)
c_failed, c_total = int(m.group(2)), int(m.group(3))
c_skipped = len(re.findall(r"\(Skipped\)", c))
p = open(f"{logs}/pytest.txt").read().strip().splitlines()[-1]
def count(word):
    m = re.search(rf"(\d+) {word}", p)
    return int(m.group(1)) if m else 0
passed = c_total - c_failed - c_skipped + count("passed") + fuzz
failed = c_failed + count("failed") + count("error")
print(f"summary: {passed} passed, {failed} failed, {c_skipped + count('skipped')} skipped")
PY
