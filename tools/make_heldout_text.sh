#!/usr/bin/env bash
# Writes the held-out text of the TurboQuant quality tables (docs/turboquant.md): the first BYTES
# bytes (default 160000) of the Markdown files under docs/ and examples/ of a llama.cpp checkout, in
# byte order of their paths. The tables used commit c392e5094 (ggerganov/llama.cpp, Feb 2025): prose,
# build instructions, shell sessions, tables and code, none of it the KV calibration text.
# Usage: tools/make_heldout_text.sh LLAMA_CPP_DIR OUT [BYTES]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 LLAMA_CPP_DIR OUT [BYTES]" >&2
  exit 2
fi
src=$1 out=$2 bytes=${3:-160000}
[ -d "$src/docs" ] || { echo "$src has no docs/ folder (not a llama.cpp checkout?)" >&2; exit 1; }
# head stops reading early: the writer's SIGPIPE is expected, not an error.
set +o pipefail
(cd "$src" && find docs examples -name '*.md' -print0 | LC_ALL=C sort -z | xargs -0 cat 2> /dev/null) |
  head -c "$bytes" > "$out"
set -o pipefail
echo "$out: $(wc -c < "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16)"
