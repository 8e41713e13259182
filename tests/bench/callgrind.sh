#!/usr/bin/env bash
# tests/bench/callgrind.sh - instructions per event of the engine step and of
# decode + step, counted by callgrind (deterministic, unlike wall time).
#
#   tests/bench/callgrind.sh [N] [--annotate]
#
# Runs bench_engine --callgrind on N and 2N events (N = 2000 by default),
# once per pass kind, collecting only inside that pass's function
# (--toggle-collect), and prints (I(2N) - I(N)) / N: the marginal cost of an
# event, with set-up and one-time costs (zone calendars, first allocations)
# cancelled out. --annotate also prints the top functions of the 2N runs.
#
# Environment: TD_BINARY_DIR (default: build), TD_SOURCE_DIR (default: the
# repository). The build should be RelWithDebInfo or Release (scripts/test's
# build/ is), without sanitizers.
set -euo pipefail

SRC=${TD_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BIN=${TD_BINARY_DIR:-$SRC/build}
BENCH=$BIN/bench_engine
N=2000
ANNOTATE=0
for a in "$@"; do
    case $a in
    --annotate) ANNOTATE=1 ;;
    '' | *[!0-9]*)
        echo "usage: tests/bench/callgrind.sh [N] [--annotate]" >&2
        exit 2
        ;;
    *) N=$a ;;
    esac
done
((N > 0)) || {
    echo "callgrind: N must be > 0" >&2
    exit 2
}
[[ -x $BENCH ]] || {
    echo "callgrind: no $BENCH (build it: cmake --build build --target bench_engine)" >&2
    exit 1
}
command -v valgrind >/dev/null || {
    echo "callgrind: valgrind is not installed (scripts/deps installs it)" >&2
    exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/touchd-callgrind-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# instructions FN EVENTS: Ir collected inside bench_pass_FN for EVENTS events.
instructions() {
    local fn=$1 n=$2 out=$WORK/cg.$1.$2
    valgrind --tool=callgrind --callgrind-out-file="$out" --collect-atstart=no \
        --toggle-collect="bench_pass_${fn}*" \
        "$BENCH" --callgrind --events "$n" --rules "$SRC/rules" >"$WORK/log.$fn.$n" 2>&1 || {
        echo "callgrind: bench_engine failed:" >&2
        cat "$WORK/log.$fn.$n" >&2
        return 1
    }
    # "totals: <Ir>" (or "summary:" in older formats)
    awk '/^(totals|summary):/ { print $2; exit }' "$out"
}

printf 'callgrind: %s, N = %d and 2N = %d events\n' "$BENCH" "$N" $((2 * N))
for fn in step decode_step; do
    i1=$(instructions "$fn" "$N")
    i2=$(instructions "$fn" $((2 * N)))
    per=$(((i2 - i1) / N))
    label=${fn/_/+}
    printf '  %-12s %14d Ir (N)  %14d Ir (2N)  %8d instructions/event\n' "$label" "$i1" "$i2" "$per"
    if ((ANNOTATE)); then
        callgrind_annotate --inclusive=no "$WORK/cg.$fn.$((2 * N))" 2>/dev/null |
            grep -E '^ *[0-9,]+ ' | head -n 25 | sed 's/^/      /' || true
    fi
done
