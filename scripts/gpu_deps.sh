#!/usr/bin/env bash
# Fetches the Debian 12 (amd64) packages that the GPU machine's image lacks but the build needs
# (headers, link libraries, CMake/pkg-config files and their runtime libraries) as .deb files into
# .gpudeps/, which git ignores and the device call carries (carry: [".gpudeps"]). Run it HERE, on a
# machine with network access; scripts/gpu_check.sh extracts the files into a private prefix there.
#
#   scripts/gpu_deps.sh [--dir DIR] [--verify] [--no-download]
#
#   --dir DIR      where the .deb files go (default .gpudeps)
#   --verify       then extract them into a clean temporary prefix and check that they are complete:
#                  configure qleap against that prefix alone (CMAKE_FIND_ROOT_PATH, pkg-config limited
#                  to the prefix; CUDA off) and build + run a probe that includes and links every
#                  dependency from the prefix
#   --no-download  only --verify what DIR already holds
#
# The set is what CMakeLists.txt finds: fmt, nlohmann_json, CLI11, cpp-httplib (built with OpenSSL,
# zlib and brotli, whose headers httplib.h includes), GoogleTest (+ GMock's config the GTest package
# includes when present), Google Benchmark, zstd and lz4 (optional codecs), and pkgconf (the
# pkg-config program) in case the GPU machine lacks one.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=.gpudeps
verify=0
download=1
while (($#)); do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --verify) verify=1; shift ;;
    --no-download) download=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_deps.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Every -dev package with the runtime library it links to (apt-get download does not follow Depends).
packages=(
  libfmt-dev libfmt9
  nlohmann-json3-dev
  libcli11-dev
  libcpp-httplib-dev libcpp-httplib0.11
  libssl-dev libssl3
  zlib1g-dev zlib1g
  libbrotli-dev libbrotli1
  libgtest-dev libgmock-dev
  libbenchmark-dev libbenchmark1debian
  libzstd-dev libzstd1
  liblz4-dev liblz4-1
  pkgconf-bin libpkgconf3  # FindPkgConfig needs a pkg-config program; the GPU image may have none
)

if ((download)); then
  # A private package list for amd64 (the pattern of the device tool's README), so that this works
  # on any Debian-like machine and leaves the system's lists alone.
  lists=/tmp/qleap-gpudeps-apt
  mkdir -p "$lists/partial" "$dir"
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists" -oAPT::Sandbox::User=root)
  apt-get "${o[@]}" -qq update
  rm -f "$dir"/*.deb
  (cd "$dir" && apt-get "${o[@]}" -qq download "${packages[@]}")
  # What was fetched, for the GPU check's summary.
  for f in "$dir"/*.deb; do
    printf '%s\t%s\t%s\n' "$(dpkg-deb -f "$f" Package)" "$(dpkg-deb -f "$f" Version)" \
      "$(sha256sum "$f" | cut -d' ' -f1)"
  done >"$dir/MANIFEST.tsv"
fi
# The device copy of the tree has no .git: the GPU check reports this commit as the one the
# dependencies were fetched at (normally just before the device call).
{ git rev-parse --short=12 HEAD 2>/dev/null || echo unknown; } | tr -d '\n' >"$dir/SOURCE_COMMIT"
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo -n "-dirty" >>"$dir/SOURCE_COMMIT"
echo >>"$dir/SOURCE_COMMIT"

n=$(find "$dir" -maxdepth 1 -name '*.deb' | wc -l)
if ((n != ${#packages[@]})); then
  echo "gpu_deps.sh: $dir holds $n .deb files, expected ${#packages[@]}" >&2
  exit 1
fi
deb_bytes=$(du -cb "$dir"/*.deb | tail -1 | cut -f1)
# What a device call sends: the tracked and untracked-not-ignored files plus the carried folder.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$((deb_bytes + tree_bytes))
printf 'gpu_deps: %d packages, %.1f MiB of .deb; working tree %.1f MiB; carried total %.1f MiB (limit 64)\n' \
  "$n" "$(echo "$deb_bytes / 1048576" | bc -l)" "$(echo "$tree_bytes / 1048576" | bc -l)" \
  "$(echo "$total / 1048576" | bc -l)"
if ((total > 60 * 1048576)); then
  echo "gpu_deps.sh: the carried total is too close to the device tool's 64 MiB limit" >&2
  exit 1
fi

((verify)) || exit 0

# ---- --verify: the packages alone are enough to configure and link against ----
tmp=$(mktemp -d /tmp/qleap-gpudeps-verify.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
bash scripts/gpu_check_extract.sh "$dir" "$prefix" >/dev/null
lib="$prefix/usr/lib/x86_64-linux-gnu"
rootlib="$prefix/lib/x86_64-linux-gnu"  # zlib1g installs its library under /lib
pc="$lib/pkgconfig:$prefix/usr/share/pkgconfig"
# Only the prefix is searched for packages, libraries and headers (the compiler itself and libc stay
# the system's); pkg-config sees the prefix's .pc files only.
# The pkg-config program is the prefix's pkgconf too (as on a machine that has none).
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$@"\n' "$lib" "$prefix/usr/bin/pkgconf" >"$tmp/pkg-config"
chmod +x "$tmp/pkg-config"
iso=(-DCMAKE_FIND_ROOT_PATH="$prefix" -DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=ONLY
  -DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY -DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY
  -DPKG_CONFIG_EXECUTABLE="$tmp/pkg-config")
echo "verify: configure qleap against $prefix only"
PKG_CONFIG_LIBDIR="$pc" cmake -S . -B "$tmp/qleap" -G Ninja -DQLEAP_CUDA=OFF "${iso[@]}" >"$tmp/qleap.log" 2>&1 || {
  cat "$tmp/qleap.log"; echo "verify: configure failed" >&2; exit 1; }
# Every package CMake found must come from the prefix.
bad=$(grep -E '^(fmt|nlohmann_json|CLI11|GTest|benchmark)_DIR:PATH=' "$tmp/qleap/CMakeCache.txt" | grep -v "=$prefix/" || true)
bad+=$(grep -E '^(QLEAP_ZSTD_LIB|QLEAP_LZ4_LIB|QLEAP_ZSTD_INC|QLEAP_LZ4_INC):' "$tmp/qleap/CMakeCache.txt" | grep -v "$prefix/" || true)
bad+=$(grep -E '^HTTPLIB_INCLUDEDIR:INTERNAL=' "$tmp/qleap/CMakeCache.txt" | grep -v "=$prefix/" || true)
if [ -n "$bad" ]; then
  echo "verify: found outside the prefix:"; echo "$bad"; exit 1
fi

# A probe that includes every dependency's headers the way the engine does and calls into each
# library, linked from the prefix and run with it.
mkdir -p "$tmp/probe"
cat >"$tmp/probe/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.22)
project(probe CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
find_package(GTest REQUIRED)
find_package(benchmark REQUIRED)
find_library(ZSTD zstd REQUIRED)
find_library(LZ4 lz4 REQUIRED)
find_path(ZSTD_INC zstd.h REQUIRED)
find_path(LZ4_INC lz4hc.h REQUIRED)
add_executable(probe probe.cpp)
target_include_directories(probe PRIVATE ${ZSTD_INC} ${LZ4_INC})
target_link_libraries(probe PRIVATE fmt::fmt nlohmann_json::nlohmann_json CLI11::CLI11 PkgConfig::HTTPLIB
                      GTest::gtest GTest::gmock benchmark::benchmark ${ZSTD} ${LZ4} Threads::Threads)
EOF
cat >"$tmp/probe/probe.cpp" <<'EOF'
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <lz4hc.h>
#include <zstd.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
int main(int argc, char** argv) {
  CLI::App app("probe");
  CLI11_PARSE(app, argc, argv);
  httplib::Server srv;
  nlohmann::json j = {{"zstd", ZSTD_versionNumber()}, {"lz4", LZ4_versionNumber()}};
  benchmark::Initialize(&argc, argv);
  testing::InitGoogleMock(&argc, argv);
  fmt::print("{} {}\n", j.dump(), srv.is_valid());
  return 0;
}
EOF
echo "verify: build and run a probe linking every dependency from the prefix"
PKG_CONFIG_LIBDIR="$pc" cmake -S "$tmp/probe" -B "$tmp/probe/b" -G Ninja "${iso[@]}" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--disable-new-dtags -Wl,-rpath,$lib:$rootlib -Wl,-rpath-link,$lib:$rootlib" >"$tmp/probe.log" 2>&1 &&
  cmake --build "$tmp/probe/b" >>"$tmp/probe.log" 2>&1 || { cat "$tmp/probe.log"; exit 1; }
# Every header the probe read from a dependency must be the prefix's copy.
leaks=$(cd "$tmp/probe/b" && ninja -t deps | grep -E '^ +/usr/include/(fmt|nlohmann|CLI|httplib|gtest|gmock|benchmark|zstd|lz4|openssl|brotli|zlib)' || true)
if [ -n "$leaks" ]; then
  echo "verify: headers read from the system instead of the prefix:"; echo "$leaks" | sort -u; exit 1
fi
# And every library it loads that the packages provide (the rpath points into the prefix).
ldd "$tmp/probe/b/probe" | grep -E 'fmt|httplib|ssl|crypto|brotli|libz\.|zstd|lz4|benchmark' | tee "$tmp/ldd.txt"
if grep -v "$prefix" "$tmp/ldd.txt" | grep -q .; then
  echo "verify: libraries loaded from outside the prefix" >&2; exit 1
fi
"$tmp/probe/b/probe"
echo "verify: ok"
