#!/usr/bin/env bash
# Installs everything qleap needs on a fresh Debian 12 machine, builds it, and fetches the default
# model. Safe to run again: every step is skipped when already done.
#   QLEAP_VENV   the Python environment for tests and tools (default .venv in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential cmake pkg-config git unzip python3-pip python3-venv
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

# Python is for tests and tools only (the engine never needs it). The packages go into a virtual
# environment made here from tools/requirements-test.txt alone, so a package installed by hand on
# this machine cannot hide a missing line.
venv="${QLEAP_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating the Python environment $venv"
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r tools/requirements-test.txt

echo "[setup] building"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"

PYTHON="$venv/bin/python" bash scripts/fetch_default_model.sh
