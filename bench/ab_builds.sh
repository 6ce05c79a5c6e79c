#!/usr/bin/env bash
# Speed of two qleap binaries on the same model, measured in one script: `qleap bench` of A and B in
# alternating rounds (A B A B ...), so machine noise hits both alike, then the B / A ratio of the
# median pp and tg figures. For "before and after a change" checks.
#
#   bench/ab_builds.sh A_QLEAP B_QLEAP MODEL [rounds] [-- extra qleap bench args]
# e.g. bench/ab_builds.sh /tmp/qleap_before build/qleap ~/.qleap/models/SmolLM2-135M-Instruct.Q4_1.gguf 5 -- -t 2
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
a="$1" b="$2" model="$3"
shift 3
rounds=3
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  rounds="$1"
  shift
fi
[ "${1:-}" = "--" ] && shift
extra=("$@")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for ((r = 0; r < rounds; r++)); do
  for who in a b; do
    bin="$a"
    [ "$who" = b ] && bin="$b"
    "$bin" bench "$model" -p 512 -n 128 -r 1 --json --no-membw "${extra[@]}" >"$out/$who.$r.json"
  done
done
python3 - "$out" "$rounds" "$a" "$b" <<'PY'
import json, statistics, sys
out, rounds, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def figs(who, key):
    return [json.load(open(f"{out}/{who}.{r}.json"))[key]["tps"] for r in range(rounds)]
print(f"A = {a}\nB = {b}\n{rounds} alternating rounds of qleap bench -p 512 -n 128")
for key in ("pp", "tg"):
    fa, fb = figs("a", key), figs("b", key)
    ma, mb = statistics.median(fa), statistics.median(fb)
    print(f"{key}: A median {ma:.1f} tok/s {[round(x, 1) for x in fa]}, B median {mb:.1f} tok/s "
          f"{[round(x, 1) for x in fb]}, B/A = {mb / ma:.3f}")
PY
