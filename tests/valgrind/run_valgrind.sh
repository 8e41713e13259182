#!/usr/bin/env bash
# tests/valgrind/run_valgrind.sh - the memcheck pass (ctest label `valgrind`).
#
# Runs under valgrind memcheck, each must exit with its normal status and no
# memcheck error or definite leak:
#   touchd check   over the default rules (rules/*.rules)
#   touchd replay  of every examples/*.jsonl through the default rules
#   touchd test, explain, gifts (offline), replay --advance
#   every unit test binary (tests/unit/test_*.c)
# Integration tests are not run under valgrind: they mostly measure the
# redis-server and broker they drive, and ASan covers them (build-asan/).
#
# CTest provides TD_SOURCE_DIR, TD_BINARY_DIR and TD_TOUCHD. By hand:
#   TD_SOURCE_DIR=$PWD TD_BINARY_DIR=$PWD/build bash tests/valgrind/run_valgrind.sh
# Needs a build without sanitizers (valgrind and ASan do not mix).
set -euo pipefail

SRC=${TD_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BIN=${TD_BINARY_DIR:-$SRC/build}
TOUCHD=${TD_TOUCHD:-$BIN/touchd}
JOBS=${TD_JOBS:-$(nproc 2>/dev/null || echo 2)}

VG=(valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite --track-origins=yes --num-callers=30 -q
    --suppressions="$SRC/tests/valgrind/touchd.supp")

command -v valgrind >/dev/null || {
    echo "valgrind: not installed (scripts/deps installs it)" >&2
    exit 1
}
[[ -x $TOUCHD ]] || {
    echo "valgrind: no touchd binary at $TOUCHD" >&2
    exit 1
}
if grep -q -a '__asan_init' "$TOUCHD"; then
    echo "valgrind: $TOUCHD is a sanitizer build; this pass needs a plain build: SKIPPED"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/touchd-valgrind-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The jobs: one line each, "<name>\t<allowed exit statuses>\t<command...>".
# Statuses other than those allowed fail the job; 99 (memcheck errors) and
# signals are never allowed.
JOBS_FILE=$WORK/jobs
: >"$JOBS_FILE"
add_job() { # name allowed cmd...
    local name=$1 allowed=$2
    shift 2
    printf '%s\t%s\t%s\n' "$name" "$allowed" "$(printf '%q ' "$@")" >>"$JOBS_FILE"
}

shopt -s nullglob
rules=("$SRC"/rules/*.rules)
if ((${#rules[@]} == 0)); then
    echo "valgrind: no rules/*.rules" >&2
    exit 1
fi
add_job "touchd check rules" 0 "$TOUCHD" check "${rules[@]}"
for ex in "$SRC"/examples/*.jsonl; do
    # examples may hold deliberately bad lines (sample.jsonl has a truncated
    # one), reported and skipped: exit status 3 (docs/cli.md) is fine here.
    allowed="0 3"
    add_job "touchd replay $(basename "$ex")" "$allowed" \
        "$TOUCHD" replay --rules "$SRC/rules" "$ex"
done
# the rules' own tests, with timers on the virtual clock (touchd test), an
# explanation of a replayed history (touchd explain), the offline gift
# register, and replay with timers advanced past the last event
add_job "touchd test rules" 0 "$TOUCHD" test --holidays "$SRC/config/holidays" "$SRC/rules"
add_job "touchd explain" 0 "$TOUCHD" explain --rules "$SRC/rules" --holidays "$SRC/config/holidays" \
    --events "$SRC/examples/sample.jsonl" --prospect p-1001
add_job "touchd gifts" "0 3" "$TOUCHD" gifts --events "$SRC/examples/sample.jsonl"
add_job "touchd replay --advance" "0 3" "$TOUCHD" replay --rules "$SRC/rules" --advance 30d \
    --holidays "$SRC/config/holidays" "$SRC/examples/sample.jsonl"
for t in "$SRC"/tests/unit/test_*.c; do
    name=$(basename "$t" .c)
    if [[ -x $BIN/$name ]]; then
        add_job "$name" 0 "$BIN/$name"
    else
        echo "valgrind: $name not built in $BIN" >&2
        add_job "$name (not built)" 0 false
    fi
done

# Runs job number $1; its output goes to $WORK/<n>.log, status to <n>.rc.
run_job() {
    local n=$1 line name allowed cmd rc=0
    line=$(sed -n "${n}p" "$JOBS_FILE")
    IFS=$'\t' read -r name allowed cmd <<<"$line"
    (cd "$WORK" && eval "${VG[*]@Q} $cmd") >"$WORK/$n.log" 2>&1 </dev/null || rc=$?
    echo "$rc" >"$WORK/$n.rc"
}

total=$(wc -l <"$JOBS_FILE")
echo "valgrind: $total runs, $JOBS at a time"
# A small pool: at most JOBS valgrinds at once (each is single-threaded).
running=0
for ((n = 1; n <= total; n++)); do
    run_job "$n" &
    running=$((running + 1))
    if ((running >= JOBS)); then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

fail=0
for ((n = 1; n <= total; n++)); do
    IFS=$'\t' read -r name allowed _ <<<"$(sed -n "${n}p" "$JOBS_FILE")"
    rc=$(cat "$WORK/$n.rc")
    ok=0
    for a in $allowed; do [[ $rc == "$a" ]] && ok=1; done
    if ((ok)); then
        printf '  ok    %s\n' "$name"
    else
        fail=1
        case $rc in
        99) why="memcheck errors or definite leaks" ;;
        1[2-9][0-9]) why="killed by signal $((rc - 128))" ;;
        *) why="exit status $rc" ;;
        esac
        printf '  FAIL  %s (%s)\n' "$name" "$why"
        sed 's/^/        /' "$WORK/$n.log" | tail -n 80
    fi
done
exit "$fail"
