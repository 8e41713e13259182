#!/usr/bin/env bash
# run_test_runner.sh - tests `touchd test` itself, with crafted rules and test
# files in tests/cli/testrunner/:
#   pass/       basic.rules + basic.test: every case passes (one untested rule
#               and one untested guard, for the coverage listing)
#   fail/       wrong.test: wrong expectations against pass/basic.rules
#   malformed/  syntax.test (not libconfig), semantic.test (mistakes on known lines)
#   extra/      test files with extra rules (inline, from a file, not compiling)
#   plan/       withdrawals and plan expectations against pass/basic.rules:
#               pass.test (all pass), fail.test (wrong ones), bad.test (mistakes)
#
# Environment: TD_TOUCHD (the touchd binary), TD_SOURCE_DIR (the repo root).
# Prints "N passed, M failed" last; exits 1 when any check fails.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${TD_SOURCE_DIR:-$(cd "$here/../.." && pwd)}"
touchd="${TD_TOUCHD:-$src/build/touchd}"
if [[ ! -x "$touchd" ]]; then
  echo "run_test_runner.sh: touchd binary not found: $touchd (set TD_TOUCHD)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
cd "$src" || exit 1
T=tests/cli/testrunner
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

pass=0
fail=0
ok() { pass=$((pass + 1)); }
ko() {
  fail=$((fail + 1))
  echo "FAILED: $1" >&2
  if [[ -n "${2:-}" && -f "$2" ]]; then sed 's/^/    | /' "$2" | head -40 >&2; fi
}
# run NAME ARGS...: runs touchd, output in $tmp/NAME.out (stdout+stderr), exit in $tmp/NAME.rc
run() {
  local name="$1"
  shift
  "$touchd" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
  echo $? >"$tmp/$name.rc"
  cat "$tmp/$name.err" >>"$tmp/$name.out"
}
expect_rc() { # NAME CODE
  local got
  got="$(cat "$tmp/$1.rc")"
  if [[ "$got" == "$2" ]]; then ok; else ko "$1: exit $got, expected $2" "$tmp/$1.out"; fi
}
expect_has() { # NAME FIXED-STRING
  if grep -qF -- "$2" "$tmp/$1.out"; then ok; else ko "$1: output lacks: $2" "$tmp/$1.out"; fi
}
expect_not() { # NAME FIXED-STRING
  if grep -qF -- "$2" "$tmp/$1.out"; then ko "$1: output should not contain: $2" "$tmp/$1.out"; else ok; fi
}
# stdout's last line, for the exact summary (stderr may follow in .out)
expect_summary() { # NAME LINE
  local got
  got="$("$touchd" "${@:3}" 2>/dev/null | tail -n 1)"
  if [[ "$got" == "$2" ]]; then ok; else ko "$1: summary '$got', expected '$2'"; fi
}

# ---- a passing suite
run pass test $T/pass
expect_rc pass 0
expect_summary pass "8 passed, 0 failed" test $T/pass
for c in pivot-whatsapp-with-consent no-consent-falls-to-linkedin follow-up-in-cooldown \
         silence-timer-fires-after-72h silence-timer-quiet-after-reply daily-cap-blocks-follow-up; do
  expect_has pass "PASS $T/pass/basic.test:$c"
done
expect_not pass "FAIL"

# ---- coverage: the untested rule and guard are listed, the tested ones are not
expect_has pass "coverage: 5 of 6 rules and 2 of 3 guards exercised"
expect_has pass "not exercised: rule tr.untested ($T/pass/basic.rules:48)"
expect_has pass "not exercised: guard guard.never-used ($T/pass/basic.rules:63)"
expect_not pass "not exercised: rule tr.pivot-whatsapp"
expect_not pass "not exercised: rule tr.silence"
expect_not pass "not exercised: guard guard.consent"
run cov test --require-coverage $T/pass
expect_rc cov 1
expect_has cov "coverage: FAILED (--require-coverage): 1 rules and 1 guards not exercised"
expect_summary cov "8 passed, 0 failed" test --require-coverage $T/pass

# ---- test files given alone: the rules are the *.rules beside them
run alone test $T/pass/basic.test
expect_rc alone 0
expect_summary alone "8 passed, 0 failed" test $T/pass/basic.test

# ---- -k filter
run filter test -k silence $T/pass
expect_rc filter 0
expect_summary filter "2 passed, 0 failed" test -k silence $T/pass
expect_not filter "pivot-whatsapp-with-consent"

# ---- -v: what each step produced and why the others did not fire
run verbose test -v -k cooldown $T/pass
expect_rc verbose 0
expect_has verbose "tr.follow-up: in cooldown until 2026-11-25T09:00:00Z"
expect_has verbose "tr.pivot-whatsapp: not matched: \`email.unanswered >= 2\` is false (email.unanswered=1)"

# ---- a failing suite: exit 1, a readable diff per failure
run fail test $T/pass/basic.rules $T/fail/wrong.test
expect_rc fail 1
expect_summary fail "1 passed, 5 failed" test $T/pass/basic.rules $T/fail/wrong.test
expect_has fail "PASS $T/fail/wrong.test:passes"
expect_has fail "FAIL $T/fail/wrong.test:wrong-rule"
expect_has fail "step 1 ($T/fail/wrong.test:15, email.opened e-1): recommendations differ (- expected, + actual)"
expect_has fail "- tr.follow-up                         email     *                 *"
expect_has fail "+ tr.pivot-whatsapp                    whatsapp  micro_question    2026-11-23T11:00:00Z  (trigger e-1)"
expect_has fail "why tr.follow-up: lost in its group to tr.pivot-whatsapp"
expect_has fail "FAIL $T/fail/wrong.test:unexpected-recommendation"
expect_has fail "- (none)"
expect_has fail "FAIL $T/fail/wrong.test:blocked-by-another-guard"
expect_has fail "expected tr.pivot-whatsapp to be blocked by guard.cap-daily"
expect_has fail "why tr.pivot-whatsapp: blocked by guard.consent"
expect_has fail "FAIL $T/fail/wrong.test:wrong-not-before"
expect_has fail "- tr.silence                           *         *                 2026-11-27T09:00:00Z"
expect_has fail "+ tr.silence                           email     reengage          2026-11-26T09:00:00Z  (trigger timer)"
expect_has fail "FAIL $T/fail/wrong.test:fired-but-expected-not"
expect_has fail "tr.follow-up fired, expected it not to"

# ---- JUnit XML: well-formed, right counts, escaped names
"$touchd" test --junit "$tmp/fail.xml" $T/pass/basic.rules $T/fail/wrong.test >/dev/null 2>&1
"$touchd" test --junit "$tmp/pass.xml" $T/pass >/dev/null 2>&1
for x in fail pass; do
  if [[ ! -s "$tmp/$x.xml" ]]; then
    ko "junit: $x.xml was not written"
  elif command -v xmllint >/dev/null 2>&1; then
    if xmllint --noout "$tmp/$x.xml" 2>"$tmp/xmllint.err"; then ok; else ko "junit: $x.xml is not well-formed" "$tmp/xmllint.err"; fi
  else
    if python3 -c 'import sys,xml.etree.ElementTree as E; E.parse(sys.argv[1])' "$tmp/$x.xml" 2>"$tmp/xmllint.err"; then ok; else ko "junit: $x.xml is not well-formed" "$tmp/xmllint.err"; fi
  fi
done
junit_counts() { # FILE -> "suites tests failures testcases failure-elements"
  python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as E
r = E.parse(sys.argv[1]).getroot()
cases = r.findall('./testsuite/testcase')
print(r.tag, r.get('tests'), r.get('failures'), len(cases), sum(1 for c in cases if c.find('failure') is not None))
PY
}
got="$(junit_counts "$tmp/fail.xml" 2>&1)"
if [[ "$got" == "testsuites 6 5 6 5" ]]; then ok; else ko "junit fail counts: '$got', expected 'testsuites 6 5 6 5'"; fi
got="$(junit_counts "$tmp/pass.xml" 2>&1)"
if [[ "$got" == "testsuites 8 0 8 0" ]]; then ok; else ko "junit pass counts: '$got', expected 'testsuites 8 0 8 0'"; fi
got="$(python3 -c 'import sys,xml.etree.ElementTree as E; print([c.get("name") for c in E.parse(sys.argv[1]).getroot().iter("testcase")][-1])' "$tmp/pass.xml" 2>&1)"
if [[ "$got" == "escaping <&> \"quotes\" 'apos'" ]]; then ok; else ko "junit: escaped name round trip: '$got'"; fi
if grep -q 'why tr.follow-up: lost in its group to tr.pivot-whatsapp' "$tmp/fail.xml"; then ok; else ko "junit: failure text lacks the diff"; fi
"$touchd" test --require-coverage --junit "$tmp/cov.xml" $T/pass >/dev/null 2>&1
got="$(python3 -c 'import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1]).getroot(); print(r.get("tests"), r.get("failures"), [s.get("name") for s in r.findall("testsuite")][-1])' "$tmp/cov.xml" 2>&1)"
if [[ "$got" == "9 1 coverage" ]]; then ok; else ko "junit with --require-coverage: '$got', expected '9 1 coverage'"; fi

# ---- withdrawals and the plan (plan/, against pass/basic.rules)
P=$T/plan
run plan test $T/pass/basic.rules $P/pass.test
expect_rc plan 0
expect_summary plan "2 passed, 0 failed" test $T/pass/basic.rules $P/pass.test
expect_has plan "PASS $P/pass.test:a reply withdraws the scheduled follow-up"
expect_has plan "PASS $P/pass.test:a newer one of the group supersedes, the plan is in not_before order"
expect_not plan "not exercised: rule tr.reply"
run planv test -v -k supersedes $T/pass/basic.rules $P/pass.test
expect_has planv "step 3 (line 32, email.opened e-3): 1 recommendation, 1 withdrawal"
expect_has planv "x tr.follow-up                         superseded  (withdraws r-d56913b7f0bffdba79173c2e439c3d14, trigger e-3)"
expect_has planv "plan after the step: 2 pending"
expect_has planv "= tr.silence                           email     reengage          2026-11-26T10:00:00Z  expires 2026-12-03T10:00:00Z"

run planfail test $T/pass/basic.rules $P/fail.test
expect_rc planfail 1
expect_summary planfail "1 passed, 7 failed" test $T/pass/basic.rules $P/fail.test
expect_has planfail "PASS $P/fail.test:passes"
expect_has planfail "FAIL $P/fail.test:wrong-reason"
expect_has planfail "step 2 ($P/fail.test:17, email.replied e-2): withdrawals differ (- expected, + actual)"
expect_has planfail "- tr.follow-up                         superseded"
expect_has planfail "+ tr.follow-up                         replied  (withdraws r-d56913b7f0bffdba79173c2e439c3d14, trigger e-2)"
expect_has planfail "FAIL $P/fail.test:withdrawal-that-does-not-come"
expect_has planfail "why tr.follow-up: r-d56913b7f0bffdba79173c2e439c3d14 is still pending after the step (no trigger of the step withdrew it; it expires at 2026-12-01T09:00:00Z)"
expect_has planfail "FAIL $P/fail.test:unexpected-withdrawal"
expect_has planfail "step 2 ($P/fail.test:34, email.replied e-2): withdrawals differ"
expect_has planfail "FAIL $P/fail.test:plan-in-the-wrong-order"
expect_has planfail "after step 3 ($P/fail.test:43, advance to 2026-11-26T10:00:00Z): plan differs (- expected, + pending; soonest not_before first)"
expect_has planfail "- tr.silence                           *         *                 *                     expires *"
expect_has planfail "  tr.pivot-linkedin                    linkedin  micro_question    2026-11-23T10:00:00Z  expires 2026-11-30T10:00:00Z  (r-ed913076326836e60abd99c08e2121e2)"
expect_has planfail "+ tr.silence                           email     reengage          2026-11-26T09:00:00Z  expires 2026-12-03T09:00:00Z"
expect_has planfail "FAIL $P/fail.test:plan-not-empty"
expect_has planfail "- (nothing pending)"
expect_has planfail "FAIL $P/fail.test:wrong-expiry"
expect_has planfail "- tr.follow-up                         *         *                 *                     expires 2026-11-30T09:00:00Z"
expect_has planfail "FAIL $P/fail.test:plan-at-the-end"
expect_has planfail "at the end of the case ($P/fail.test:64): plan differs"
expect_has planfail "+ tr.reply                             email     human_reply       2026-11-23T11:00:00Z  expires 2026-11-30T11:00:00Z"

run planbad test $T/pass/basic.rules $P/bad.test
expect_rc planbad 1
expect_summary planbad "1 passed, 7 failed" test $T/pass/basic.rules $P/bad.test
expect_has planbad "$P/bad.test:7: error: unknown withdrawal reason 'answered' (replied, opted_out, bounced, superseded, stage, rule, expired)"
expect_has planbad "$P/bad.test:12: error: give \`expect_plan\` or \`expect_plan_empty\`, not both"
expect_has planbad "$P/bad.test:16: error: write \`expect_no_withdrawal = true;\`"
expect_has planbad "$P/bad.test:20: error: unknown rule 'tr.folow-up' in the ruleset; did you mean 'tr.follow-up'?"
expect_has planbad "$P/bad.test:24: error: 'guard.consent' is a guard, not a recommending rule"
expect_has planbad "$P/bad.test:29: error: unknown key 'expires_at' in an expected recommendation"
expect_has planbad "$P/bad.test:34: error: give \`expect_withdrawn\` or \`expect_no_withdrawal\`, not both"
expect_has planbad "PASS $P/bad.test:still-runs"

# ---- malformed test files: file:line and what to fix
run bad test $T/pass/basic.rules $T/malformed/syntax.test $T/malformed/semantic.test
expect_rc bad 1
expect_summary bad "1 passed, 7 failed" test $T/pass/basic.rules $T/malformed/syntax.test $T/malformed/semantic.test
expect_has bad "FAIL $T/malformed/syntax.test"
expect_has bad "$T/malformed/syntax.test:7: error: syntax error"
expect_has bad "$T/malformed/semantic.test:7: error: unknown rule 'tr.pivot-whatsap' in the ruleset; did you mean 'tr.pivot-whatsapp'?"
expect_has bad "$T/malformed/semantic.test:11: error: \`at = \"tomorrow\"\` is not a time"
expect_has bad "$T/malformed/semantic.test:15: error: unknown key 'expcet_none' in a step"
expect_has bad "$T/malformed/semantic.test:19: error: event rejected by the decoder: type:"
expect_has bad "$T/malformed/semantic.test:23: error: unknown state field 'emial.sent'"
expect_has bad "$T/malformed/semantic.test:29: error: 'tr.pivot-linkedin' is not a guard"
expect_has bad "FAIL $T/malformed/semantic.test:unknown-rule"
expect_has bad "PASS $T/malformed/semantic.test:still-runs"

# ---- extra rules of a test file (inline and from a file): compiled with the
# ruleset for that file only; coverage maps back to the ruleset's rules
X=$T/extra
run extra test $T/pass/basic.rules $X/inline.test $X/fromfile.test $X/broken.test
expect_rc extra 1
expect_summary extra "2 passed, 1 failed" test $T/pass/basic.rules $X/inline.test $X/fromfile.test $X/broken.test
expect_has extra "PASS $X/inline.test:naive gift is blocked"
expect_has extra "PASS $X/fromfile.test:naive gift is blocked"
expect_has extra "FAIL $X/broken.test"
expect_has extra "$X/broken.test(extra_rules):2:11: error E201: in x.bad.when: unknown field 'emial.sent'"
expect_has extra "coverage: 1 of 6 rules and 1 of 3 guards exercised"
expect_not extra "not exercised: guard guard.never-used"
expect_not extra "x.naive-gift ("

# ---- events derived for the seller's state (owner:<id>) run too, with their timers
run owner test $T/pass/basic.rules $X/owner.test
expect_rc owner 0
expect_summary owner "2 passed, 0 failed" test $T/pass/basic.rules $X/owner.test

# ---- usage errors and rules that do not compile
run noargs test
expect_rc noargs 2
run badopt test --bogus $T/pass
expect_rc badopt 2
run nopath test "$tmp/does-not-exist"
expect_rc nopath 2
mkdir -p "$tmp/badrules"
printf 'rules = ( { id = "x"; on = [ "email.opened" ]; when = "emial.sent > 1"; recommend = { channel = "email"; touch = "follow_up"; }; } );\n' >"$tmp/badrules/x.rules"
cp $T/pass/basic.test "$tmp/badrules/"
run badrules test "$tmp/badrules"
expect_rc badrules 1
expect_has badrules "unknown field 'emial.sent'"
expect_summary badrules "0 passed, 1 failed" test "$tmp/badrules"
mkdir -p "$tmp/notests"
cp $T/pass/basic.rules "$tmp/notests/"
run notests test "$tmp/notests"
expect_rc notests 1
expect_has notests "no *.test files found"

echo "$pass passed, $fail failed"
((fail == 0))
