#!/usr/bin/env bash
# run_gifts.sh - `touchd gifts --events` (the offline gift register) end to end:
# rows, exactly-once per event id, the prospect's local year, totals, tax caps,
# filters, JSON, exit codes, and that no description reaches the output.
# Env: TD_TOUCHD (the binary), TD_SOURCE_DIR (the source tree); set by CTest.
set -u
T=${TD_TOUCHD:-touchd}
SRC=${TD_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
EV=$SRC/tests/gifts/events.jsonl
RULES=$SRC/rules
pass=0 fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ok() { pass=$((pass + 1)); echo "ok   $1"; }
ko() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { # name, condition (evaluated)
    if eval "$2"; then ok "$1"; else ko "$1"; fi
}

"$T" gifts --events "$EV" --rules "$RULES" >"$tmp/out" 2>"$tmp/err"; rc=$?
check "bad line -> exit 3" "[ $rc -eq 3 ]"
check "bad line reported with its line number" "grep -q 'events.jsonl:6: rejected' '$tmp/err'"
check "four gifts (duplicate event id once)" "grep -q '^4 gifts, 3 prospect-years$' '$tmp/out'"
check "g-2 printed once" "[ \$(grep -c ' g-2\$' '$tmp/out') -eq 1 ]"
check "row g-1: date, prospect, owner, kind, value, items, wrapping" \
    "grep -Eq '^2026-02-10T10:00:00Z +p-fr +rep-7 +book +24.9 +1 +blue +g-1\$' '$tmp/out'"
check "FR 2026: 2 gifts, 79.9 EUR over the 73 EUR cap" \
    "grep -Eq '^2026 +p-fr +2 +79.9 +FR +73 +EXCEEDED\$' '$tmp/out'"
check "local year: 2026-12-31T23:30Z is 2027 in Paris" \
    "grep -Eq '^2027 +p-fr +1 +3 +FR +73 +within\$' '$tmp/out'"
check "no cap for a prospect without a capped country" "grep -Eq '^2026 +p-us +1 +120 +- +- +no cap\$' '$tmp/out'"
check "owner from the prospect's state when the event has none" \
    "grep -Eq '^2026-12-31T23:30:00Z +p-fr +rep-7 +card' '$tmp/out'"
check "no description in the output" "! grep -qi 'signed\\|free text' '$tmp/out' '$tmp/err'"

"$T" gifts --events "$EV" --rules "$RULES" --prospect p-fr --year 2026 >"$tmp/out2" 2>/dev/null
check "--prospect --year filter" "grep -q '^2 gifts, 1 prospect-year\$' '$tmp/out2' && ! grep -q p-us '$tmp/out2'"

"$T" gifts --events "$EV" --year 2026 --tax-cap 150 --json >"$tmp/json" 2>/dev/null
check "--json parses" "python3 -c 'import json,sys; json.load(open(sys.argv[1]))' '$tmp/json' 2>/dev/null || jq . '$tmp/json' >/dev/null"
check "--json totals with --tax-cap" \
    "grep -q '\"prospect_id\":\"p-fr\",\"year\":2026,\"count\":2,\"spend_eur\":\"79.9\",\"country\":\"FR\",\"tax_cap_eur\":\"150\",\"cap_exceeded\":false' '$tmp/json'"
check "--json value_eur exact decimal string" "grep -q '\"value_eur\":\"24.9\"' '$tmp/json'"

grep -v '^not json' "$EV" >"$tmp/clean.jsonl"
"$T" gifts --events "$tmp/clean.jsonl" >/dev/null 2>&1; rc=$?
check "clean file -> exit 0" "[ $rc -eq 0 ]"
"$T" gifts --events - <"$tmp/clean.jsonl" >"$tmp/stdin" 2>/dev/null
check "events from stdin" "grep -q '^4 gifts' '$tmp/stdin'"
"$T" gifts --events "$tmp/missing.jsonl" >/dev/null 2>&1; rc=$?
check "missing file -> exit 1" "[ $rc -eq 1 ]"
"$T" gifts >/dev/null 2>&1; rc=$?
check "no source -> exit 2" "[ $rc -eq 2 ]"
"$T" gifts --events "$EV" --year 20x6 >/dev/null 2>&1; rc=$?
check "bad --year -> exit 2" "[ $rc -eq 2 ]"
"$T" gifts --events "$EV" --tax-cap 7,3 >/dev/null 2>&1; rc=$?
check "bad --tax-cap -> exit 2" "[ $rc -eq 2 ]"
"$T" gifts --help >"$tmp/help"; rc=$?
check "--help -> exit 0" "[ $rc -eq 0 ] && grep -q 'touchd gifts' '$tmp/help'"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
