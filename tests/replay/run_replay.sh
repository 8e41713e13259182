#!/usr/bin/env bash
# CLI behaviour of `touchd replay` and `touchd check`: output formats, exit
# codes, bad lines reported with their line numbers, timers on the virtual
# clock, stdin. Needs TD_TOUCHD (the binary) and TD_SOURCE_DIR (set by ctest).
set -uo pipefail
touchd=${TD_TOUCHD:?set TD_TOUCHD}
src=${TD_SOURCE_DIR:?set TD_SOURCE_DIR}
data="$src/tests/replay/data"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { # name, command...
  local name=$1; shift
  if "$@"; then ok "$name"; else bad "$name"; fi
}

# timers fire on the virtual clock, at their due time; re-armed ones are stale
"$touchd" replay --brief --rules "$data/timer-rules" "$data/timers.jsonl" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "timers: exit 0" test "$rc" -eq 0
check "timers: p-1 fires at due time" grep -qxP 'p-1\tsilence.nudge\tlinkedin\tfollow_up\t2026-11-05T09:00:00Z\ttimer' "$tmp/out"
check "timers: p-2 replied, no fire" bash -c "! grep -q '^p-2' '$tmp/out'"
check "timers: p-3 re-armed, pending at the end" bash -c "! grep -q '^p-3' '$tmp/out'"
check "timers: summary counts" grep -q 'timers: 2 run, 1 stale, 1 pending' "$tmp/err"
"$touchd" replay --brief --advance 3d --rules "$data/timer-rules" "$data/timers.jsonl" >"$tmp/out" 2>"$tmp/err"
check "advance: p-3 fires 72h after its last send (Saturday), not_before moved to Monday 09:00" grep -qxP 'p-3\tsilence.nudge\tlinkedin\tfollow_up\t2026-11-09T09:00:00Z\ttimer' "$tmp/out"
check "advance: nothing pending" grep -q '0 pending' "$tmp/err"

# JSON output is the recommendation contract, one object per line
"$touchd" replay --advance 3d --rules "$data/timer-rules" "$data/timers.jsonl" >"$tmp/json" 2>/dev/null
check "json: two lines" test "$(wc -l <"$tmp/json")" -eq 2
check "json: timer trigger" bash -c "jq -s -e 'map(select(.prospect_id==\"p-1\")) | length==1 and .[0].trigger.type==\"timer\" and .[0].trigger.armed_by==\"a1\" and .[0].trigger.due_at==\"2026-11-05T09:00:00Z\"' '$tmp/json' >/dev/null"
check "json: ids are r- + 32 hex" bash -c "jq -e -s 'all(.id | test(\"^r-[0-9a-f]{32}$\"))' '$tmp/json' >/dev/null"
check "json: ruleset hash" bash -c "jq -e -s 'all(.ruleset | test(\"^sha256:[0-9a-f]{64}$\"))' '$tmp/json' >/dev/null"
# same input, same ids (determinism)
"$touchd" replay --advance 3d --rules "$data/timer-rules" "$data/timers.jsonl" >"$tmp/json2" 2>/dev/null
check "json: replay is deterministic" diff <(jq -r .id "$tmp/json") <(jq -r .id "$tmp/json2")

# bad lines: reported with their line numbers and reasons, skipped, exit 3
"$touchd" replay --brief --rules "$data/timer-rules" "$data/mixed.jsonl" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "bad lines: exit 3" test "$rc" -eq 3
check "bad lines: line 3 bad time" grep -q 'mixed.jsonl:3: rejected: occurred_at' "$tmp/err"
check "bad lines: line 4 unknown type" grep -q 'mixed.jsonl:4: rejected: type' "$tmp/err"
check "bad lines: line 6 not an object" grep -q 'mixed.jsonl:6: rejected' "$tmp/err"
check "bad lines: blank line skipped silently" bash -c "! grep -q 'mixed.jsonl:2:' '$tmp/err'"
check "bad lines: duplicate counted" grep -q '1 events applied, 3 rejected, 1 duplicates' "$tmp/err"

# stdin
"$touchd" replay --brief --advance 3d --rules "$data/timer-rules" - <"$data/timers.jsonl" >"$tmp/out" 2>/dev/null
check "stdin: same output" test "$(wc -l <"$tmp/out")" -eq 2

# rules that do not compile: exit 1, diagnostics with file:line:col, nothing replayed
"$touchd" replay --rules "$data/bad-rules" "$data/timers.jsonl" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "bad rules: exit 1" test "$rc" -eq 1
check "bad rules: file:line:col" grep -q 'bad.rules:3:13: error E201' "$tmp/err"
check "bad rules: no output" test ! -s "$tmp/out"
"$touchd" check "$data/bad-rules" >/dev/null 2>"$tmp/err"
rc=$?
check "check: exit 1" test "$rc" -eq 1
check "check: suggestion" grep -q "did you mean 'email.unanswered'" "$tmp/err"
check "check: caret" grep -q '\^~~~' "$tmp/err"
"$touchd" check "$data/timer-rules" >/dev/null 2>"$tmp/err"
check "check: clean ruleset exit 0" test $? -eq 0
check "check: summary" grep -q 'ok: 1 rules (0 guards, 1 timer rules)' "$tmp/err"
"$touchd" check "$src/rules" >/dev/null 2>&1
check "check: default rules are clean" test $? -eq 0

# usage errors: exit 2 with a message saying what to fix
"$touchd" replay "$data/timers.jsonl" >/dev/null 2>"$tmp/err"
rc=$?
check "usage: --rules required" test "$rc" -eq 2
check "usage: message" grep -q -- '--rules DIR is required' "$tmp/err"
"$touchd" replay --rules "$data/timer-rules" --advance soon "$data/timers.jsonl" >/dev/null 2>"$tmp/err"
check "usage: bad --advance" test $? -eq 2
"$touchd" replay --rules "$data/timer-rules" /nonexistent.jsonl >/dev/null 2>"$tmp/err"
check "usage: missing input file" test $? -eq 2
"$touchd" frobnicate >/dev/null 2>&1
check "usage: unknown command" test $? -eq 2
"$touchd" replay --help | grep -q -- '--advance' 
check "help: replay documents --advance" test $? -eq 0

echo "$pass passed, $fail failed"
test "$fail" -eq 0
