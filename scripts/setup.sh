#!/usr/bin/env bash
# Installs everything qleap needs on a fresh Debian 12 machine, builds it, and fetches the default
# model. Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential cmake pkg-config git unzip python3-pip
  nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libfmt-dev libgtest-dev libgmock-dev
  libbenchmark-dev libzstd-dev liblz4-dev libhwloc-dev clang libclang-rt-14-dev
  chromium chromium-driver)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "[setup] installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# Python tools are for tests and reference checks only; the engine never needs them.
python3 -m pip install -q -r tools/requirements-test.txt

echo "[setup] building"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"

bash scripts/fetch_default_model.sh
