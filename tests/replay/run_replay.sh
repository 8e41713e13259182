#!/usr/bin/env bash
# CLI behaviour of `touchd replay` and `touchd check`: output formats, exit
# codes, bad lines reported with their line numbers, timers on the virtual
# clock, withdrawals and the final plans, lateness at a given wall clock,
# stdin. Needs TD_TOUCHD (the binary) and TD_SOURCE_DIR (set by ctest).
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
# pending: p-3's rule timer and the plan timer of p-1's recommendation (it
# expires 7 days after its not_before: the plan's own timer, docs/state.md)
check "timers: summary counts" grep -q 'timers: 2 run, 1 stale, 2 pending' "$tmp/err"
"$touchd" replay --brief --advance 3d --rules "$data/timer-rules" "$data/timers.jsonl" >"$tmp/out" 2>"$tmp/err"
check "advance: p-3 fires 72h after its last send (Saturday), not_before moved to Monday 09:00" grep -qxP 'p-3\tsilence.nudge\tlinkedin\tfollow_up\t2026-11-09T09:00:00Z\ttimer' "$tmp/out"
# no rule timer left: only the plan timers of the two pending recommendations
check "advance: only plan timers pending" grep -q 'timers: 3 run, 1 stale, 2 pending' "$tmp/err"

# JSON output is the recommendation contract, one object per line
"$touchd" replay --advance 3d --rules "$data/timer-rules" "$data/timers.jsonl" >"$tmp/json" 2>/dev/null
check "json: two lines" test "$(wc -l <"$tmp/json")" -eq 2
check "json: timer trigger" bash -c "jq -s -e 'map(select(.prospect_id==\"p-1\")) | length==1 and .[0].trigger.type==\"timer\" and .[0].trigger.armed_by==\"a1\" and .[0].trigger.due_at==\"2026-11-05T09:00:00Z\"' '$tmp/json' >/dev/null"
check "json: ids are r- + 32 hex" bash -c "jq -e -s 'all(.id | test(\"^r-[0-9a-f]{32}$\"))' '$tmp/json' >/dev/null"
check "json: ruleset hash" bash -c "jq -e -s 'all(.ruleset | test(\"^sha256:[0-9a-f]{64}$\"))' '$tmp/json' >/dev/null"
# same input, same ids (determinism)
"$touchd" replay --advance 3d --rules "$data/timer-rules" "$data/timers.jsonl" >"$tmp/json2" 2>/dev/null
check "json: replay is deterministic" diff <(jq -r .id "$tmp/json") <(jq -r .id "$tmp/json2")

# the plan: withdrawals interleaved with recommendations, each before the
# recommendations of its trigger; --plans prints the final plans
"$touchd" replay --brief --plans --rules "$data/plan-rules" "$data/plan.jsonl" >"$tmp/out" 2>"$tmp/err"
check "plan brief: exit 0" test $? -eq 0
cat >"$tmp/want" <<'EOF'
q-1	p.follow	email	follow_up	2026-11-03T10:00:00Z	q1-o1
q-2	p.follow	email	follow_up	2026-11-03T10:00:00Z	q2-o1
q-3	p.follow	email	follow_up	2026-11-03T10:00:00Z	q3-o1
withdrawn	q-1	p.follow	superseded	r-814ceaa70d4fcfa88741931506f35153	q1-o2
q-1	p.follow	email	follow_up	2026-11-03T11:00:00Z	q1-o2
withdrawn	q-1	p.follow	replied	r-af4dc4f95ebc0460150631c51842a415	q1-r1
q-1	p.answer	email	human_reply	2026-11-02T12:00:00Z	q1-r1
withdrawn	q-2	p.follow	expired	r-c9700f09c4d14632166bfc4c4c9f475e	timer
withdrawn	q-3	p.follow	expired	r-ebc68484860eeadfe9f4b13ec2ae3fb9	timer
q-2	p.follow	email	follow_up	2026-11-07T10:00:00Z	q2-o2
pending	q-1	p.answer	email	human_reply	2026-11-02T12:00:00Z	2026-11-09T12:00:00Z	r-87c4cfe910bcda0608cb23175710f602
pending	q-2	p.follow	email	follow_up	2026-11-07T10:00:00Z	2026-11-09T10:00:00Z	r-ed15b209315f4dd96f4e033dfef60a2f
EOF
check "plan brief: withdrawals in order, then the plans sorted by prospect" diff "$tmp/want" "$tmp/out"
check "plan brief: summary counts withdrawals" grep -q '6 recommendations, 4 withdrawals,' "$tmp/err"
check "plan brief: summary per reason" grep -q '^withdrawals: replied 1, opted_out 0, bounced 0, superseded 1, stage 0, rule 0, expired 2; plans: 2 recommendations pending for 2 prospects$' "$tmp/err"
check "plan brief: withdrawn column per rule" grep -qE '^p\.follow +5 +0 +0 +0 +0 +0 +4$' "$tmp/err"
"$touchd" replay --brief --rules "$data/plan-rules" "$data/plan.jsonl" >"$tmp/out2" 2>/dev/null
check "plan brief: no pending lines without --plans" bash -c "! grep -q '^pending' '$tmp/out2' && test \$(wc -l <'$tmp/out2') -eq 10"

"$touchd" replay --plans --rules "$data/plan-rules" "$data/plan.jsonl" >"$tmp/pj" 2>/dev/null
check "plan json: every line has a kind, in stream order" bash -c "test \"\$(jq -r .kind '$tmp/pj' | tr '\n' ' ')\" = 'recommendation recommendation recommendation withdrawal recommendation withdrawal recommendation withdrawal withdrawal recommendation plan plan '"
check "plan json: a withdrawal is its body with generated_at" bash -c "jq -e -s '[.[] | select(.kind==\"withdrawal\")] | length == 4 and all(.id | test(\"^w-[0-9a-f]{32}$\")) and all(.generated_at == .trigger.occurred_at) and (map(.reason) == [\"superseded\", \"replied\", \"expired\", \"expired\"]) and all(.ruleset | test(\"^sha256:\"))' '$tmp/pj' >/dev/null"
check "plan json: each withdrawal names an earlier recommendation" bash -c "jq -e -s '. as \$all | [range(length) as \$i | \$all[\$i] | select(.kind==\"withdrawal\") | .withdraws as \$w | [\$all[0:\$i][] | select(.kind==\"recommendation\" and .id==\$w)] | length == 1] | length == 4 and all' '$tmp/pj' >/dev/null"
check "plan json: reply withdrawal's because" bash -c "jq -e -s '[.[] | select(.reason==\"replied\")][0].because[0].facts == {\"event.type\":\"email.replied\",\"event.sentiment\":\"positive\"}' '$tmp/pj' >/dev/null"
check "plan json: plans are the plan topic's objects, sorted" bash -c "jq -e -s '[.[] | select(.kind==\"plan\")] | map(.prospect_id) == [\"q-1\",\"q-2\"] and (map(.version) == [3, 3]) and (.[0].pending | map(.rule)) == [\"p.answer\"] and (.[0].updated_at == \"2026-11-02T12:00:00Z\") and all(.[].pending[]; has(\"generated_at\") | not)' '$tmp/pj' >/dev/null"
"$touchd" replay --plans --rules "$data/plan-rules" "$data/plan.jsonl" >"$tmp/pj2" 2>/dev/null
check "plan json: withdrawal ids are deterministic" bash -c "test \$(grep -c '\"kind\":\"withdrawal\"' '$tmp/pj') -eq 4 && diff '$tmp/pj' '$tmp/pj2'"

# --wall: lateness judged at that wall clock, with the late policy (default mark)
"$touchd" replay --brief --plans --wall 2026-11-06T00:00:00Z --rules "$data/plan-rules" "$data/plan.jsonl" >"$tmp/out" 2>"$tmp/err"
check "wall mark: the Monday ones are late, the Friday one is not" test "$(grep -c $'\tlate$' "$tmp/out")" -eq 5
check "wall mark: late ones stay out of the plan (nothing superseded, no reply withdrawal)" bash -c "test \"\$(grep '^withdrawn' '$tmp/out')\" = '' && test \"\$(grep -c '^pending' '$tmp/out')\" = 1"
check "wall mark: summary" grep -q '^late: 5 recommendations late at wall clock 2026-11-06T00:00:00Z (policy mark: 0 dropped)$' "$tmp/err"
"$touchd" replay --wall 2026-11-06T00:00:00Z --rules "$data/plan-rules" "$data/plan.jsonl" >"$tmp/json" 2>/dev/null
check "wall mark: late: true in the JSON" bash -c "jq -e -s 'map(select(.late == true)) | length == 5' '$tmp/json' >/dev/null"
"$touchd" replay --brief --plans --wall 2026-11-06T00:00:00Z --late-policy drop --rules "$data/plan-rules" "$data/plan.jsonl" >"$tmp/out" 2>"$tmp/err"
check "wall drop: only the one not late is printed" test "$(grep -vc '^pending' "$tmp/out")" -eq 1
check "wall drop: summary counts the dropped" grep -q '(policy drop: 5 dropped)' "$tmp/err"
check "wall drop: 1 recommendation" grep -q ', 1 recommendations, 0 withdrawals,' "$tmp/err"
"$touchd" replay --brief --plans --wall 2026-11-06T00:00:00Z --late-policy publish --rules "$data/plan-rules" "$data/plan.jsonl" >"$tmp/out" 2>"$tmp/err"
check "wall publish: late ones join the plan (the same withdrawals as without --wall)" test "$(grep -c '^withdrawn' "$tmp/out")" -eq 4
"$touchd" replay --brief --wall now --rules "$data/plan-rules" "$data/plan.jsonl" >"$tmp/out" 2>/dev/null
check "wall now: everything of 2026-11 is late" test "$(grep -c $'\tlate$' "$tmp/out")" -eq 6
"$touchd" replay --rules "$data/plan-rules" --late-policy drop "$data/plan.jsonl" >/dev/null 2>"$tmp/err"
rc=$?
check "usage: --late-policy needs --wall" bash -c "test $rc -eq 2 && grep -q -- '--late-policy needs --wall' '$tmp/err'"
"$touchd" replay --rules "$data/plan-rules" --wall tomorrow "$data/plan.jsonl" >/dev/null 2>&1
check "usage: bad --wall" test $? -eq 2
"$touchd" replay --rules "$data/plan-rules" --wall now --late-policy keep "$data/plan.jsonl" >/dev/null 2>&1
check "usage: bad --late-policy" test $? -eq 2

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
"$touchd" replay --help >"$tmp/help"
check "help: replay documents --plans, --wall and --late-policy" bash -c "grep -q -- '--plans' '$tmp/help' && grep -q -- '--wall TIME' '$tmp/help' && grep -q -- '--late-policy' '$tmp/help'"

echo "$pass passed, $fail failed"
test "$fail" -eq 0
