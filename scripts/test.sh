#!/usr/bin/env bash
# The project's test command: unit + golden tests (ctest), Python cross-checks against the gguf
# package (pytest), and a bounded fuzz run of the GGUF parser.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
(cd build && ctest --output-on-failure -j"$(nproc)")
if compgen -G "tests/py/test_*.py" >/dev/null; then
  QLEAP_BIN="$PWD/build/qleap" python3 -m pytest -q tests/py
fi
if [ -f tests/fuzz/run_fuzz.sh ]; then bash tests/fuzz/run_fuzz.sh; fi
