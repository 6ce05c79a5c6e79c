#!/usr/bin/env bash
# Extracts every .deb in DIR into PREFIX (never into /) and makes the tree usable from there:
# pkg-config files point into PREFIX and absolute symbolic links are re-pointed into it. The CMake
# package files of these Debian packages locate themselves relative to their own path, so
# CMAKE_PREFIX_PATH=PREFIX/usr finds them as they are.
#
#   scripts/gpu_check_extract.sh DIR PREFIX
#
# Prints the number of packages extracted. Uses dpkg-deb when the machine has it, else a small Python
# reader of the .deb (ar archive holding data.tar.*).
set -euo pipefail
dir="${1:?usage: gpu_check_extract.sh DIR PREFIX}"
prefix="${2:?usage: gpu_check_extract.sh DIR PREFIX}"
case "$prefix" in
  / | "") echo "gpu_check_extract.sh: refusing to extract into '/'" >&2; exit 2 ;;
esac
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
shopt -s nullglob
debs=("$dir"/*.deb)
if ((${#debs[@]} == 0)); then
  echo "gpu_check_extract.sh: no .deb files in $dir" >&2
  exit 1
fi
for f in "${debs[@]}"; do
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$f" "$prefix"
  else
    python3 - "$f" "$prefix" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
data = open(deb, "rb").read()
assert data[:8] == b"!<arch>\n", f"{deb}: not a .deb"
off = 8
while off + 60 <= len(data):
    name = data[off:off + 16].decode().strip().rstrip("/")
    size = int(data[off + 48:off + 58].decode().strip())
    body = data[off + 60:off + 60 + size]
    if name.startswith("data.tar"):
        if name.endswith(".zst"):
            sys.exit(f"{deb}: {name} needs dpkg-deb or zstd")
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as t:
            t.extractall(dest, filter="tar")
        break
    off += 60 + size + (size & 1)
else:
    sys.exit(f"{deb}: no data.tar member")
PY
  fi
done
# pkg-config files name /usr literally (prefix=/usr, libdir=/usr/lib/...).
while IFS= read -r -d '' pc; do
  sed -i -E "s#^([A-Za-z_]+)=/usr(/|\$)#\1=$prefix/usr\2#" "$pc"
done < <(find "$prefix" -name '*.pc' -print0)
# Absolute links (e.g. a .so pointing at /lib/...) would leave the prefix.
while IFS= read -r -d '' l; do
  t=$(readlink "$l")
  case "$t" in /*) ln -sfn "$prefix$t" "$l" ;; esac
done < <(find "$prefix" -type l -print0)
echo "${#debs[@]}"
