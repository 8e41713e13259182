#!/usr/bin/env bash
# run_explain.sh - tests `touchd explain` on crafted histories:
#   tests/cli/explain/history.jsonl  prospects p-1 (the story below), p-2
#                                    (interleaved, must be ignored), p-3 (a
#                                    gift with a private description), one
#                                    undecodable line
#   tests/cli/explain/state.txt      a flat state (--state)
#   tests/cli/explain/plan-state.txt a flat state with a plan: a follow-up of
#                                    the sequence and a gift (--state)
#   tests/cli/explain/errors.rules   rules that fail at run time (added with a
#                                    second --rules)
# with the rules of tests/cli/testrunner/pass/basic.rules.
#
# p-1: e1, e2 email.sent (e2 arms tr.silence, due 11-27 09:00); e3 opened:
# tr.pivot-whatsapp blocked by guard.consent, tr.pivot-linkedin wins the
# group over tr.follow-up; e4 consent; e5 opened: tr.pivot-whatsapp fires
# (cooldown 3d) and supersedes e3's tr.pivot-linkedin; e6 opened:
# tr.pivot-whatsapp in cooldown until 11-27 12:00, tr.pivot-linkedin fires
# and supersedes e5's tr.pivot-whatsapp (the plan: e6's tr.pivot-linkedin).
#
# Environment: TD_TOUCHD, TD_SOURCE_DIR. Prints "N passed, M failed" last.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${TD_SOURCE_DIR:-$(cd "$here/../.." && pwd)}"
touchd="${TD_TOUCHD:-$src/build/touchd}"
if [[ ! -x "$touchd" ]]; then
  echo "run_explain.sh: touchd binary not found: $touchd (set TD_TOUCHD)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
if ! command -v jq >/dev/null 2>&1; then
  echo "run_explain.sh: jq is required" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
cd "$src" || exit 1
R=tests/cli/testrunner/pass
H=tests/cli/explain/history.jsonl
S=tests/cli/explain/state.txt
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

pass=0
fail=0
ok() { pass=$((pass + 1)); }
ko() {
  fail=$((fail + 1))
  echo "FAILED: $1" >&2
  if [[ -n "${2:-}" && -f "$2" ]]; then sed 's/^/    | /' "$2" | head -60 >&2; fi
}
run() { # NAME ARGS...: stdout in NAME.out, stderr in NAME.err, exit code in NAME.rc
  local name="$1"
  shift
  "$touchd" explain "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
  echo $? >"$tmp/$name.rc"
}
expect_rc() {
  local got
  got="$(cat "$tmp/$1.rc")"
  if [[ "$got" == "$2" ]]; then ok; else ko "$1: exit $got, expected $2" "$tmp/$1.err"; fi
}
expect_has() {
  if grep -qF -- "$2" "$tmp/$1.out"; then ok; else ko "$1: output lacks: $2" "$tmp/$1.out"; fi
}
expect_line() { # NAME REGEX (extended) on stdout
  if grep -qE -- "$2" "$tmp/$1.out"; then ok; else ko "$1: no line matches: $2" "$tmp/$1.out"; fi
}
expect_jq() { # NAME JQ-EXPR EXPECTED (jq -c output)
  local got
  got="$(jq -c "$2" "$tmp/$1.out" 2>&1)"
  if [[ "$got" == "$3" ]]; then ok; else ko "$1: jq '$2' gave '$got', expected '$3'"; fi
}

# ---- human output at e3: the guard that blocked, the group winner
run at_e3 --rules $R --events $H --prospect p-1 --at e3
expect_rc at_e3 0
expect_has at_e3 "prospect p-1, trigger email.opened e3 at 2026-11-24T10:00:00Z"
expect_line at_e3 "^rule +tr\.pivot-whatsapp +BLOCKED by guard\.consent: no consent on this channel$"
expect_line at_e3 "^ +guard +[-+?] rec\.channel in \['whatsapp', 'sms'\] += true +rec\.channel=\"whatsapp\"$"
expect_line at_e3 "^ +[-+?] !\(target\.consent \?\? false\) += true +target\.consent=null$"
expect_line at_e3 "^rule +tr\.pivot-linkedin +FIRED$"
expect_line at_e3 "^rule +tr\.follow-up +LOST IN GROUP follow-up to tr\.pivot-linkedin$"
expect_line at_e3 "^ +when +\+ email\.unanswered >= 2 += true +email\.unanswered=2$"
expect_line at_e3 "^rule +tr\.reply +NOT TRIGGERED \(on: email\.replied\)$"
expect_line at_e3 "^guard +guard\.consent +BLOCKED tr\.pivot-whatsapp: no consent on this channel$"
expect_line at_e3 "^guard +guard\.cap-daily +PASSED"
expect_line at_e3 "pending timer due 2026-11-27T09:00:00Z \(armed by e2\)"
expect_has at_e3 "1 undecodable lines of the input were skipped"

# ---- default trigger = the prospect's last event (e6): the cooldown end
run last --rules $R --events $H --prospect p-1
expect_rc last 0
expect_has last "trigger email.opened e6 at 2026-11-25T10:00:00Z"
expect_line last "^rule +tr\.pivot-whatsapp +COOLDOWN until 2026-11-27T12:00:00Z$"

# ---- --json at e3
run json_e3 --rules $R --events $H --prospect p-1 --at e3 --json
expect_rc json_e3 0
expect_jq json_e3 '.trigger' '{"type":"email.opened","event_id":"e3","occurred_at":"2026-11-24T10:00:00Z","duplicate":false}'
expect_jq json_e3 '.history_events' '2'
expect_jq json_e3 '.rules[] | select(.rule=="tr.pivot-whatsapp") | [.outcome, .by, .reason]' '["blocked","guard.consent","no consent on this channel"]'
expect_jq json_e3 '.rules[] | select(.rule=="tr.pivot-whatsapp") | .guard_conditions[1] | [.value, .facts]' '[true,{"target.consent":null}]'
expect_jq json_e3 '.rules[] | select(.rule=="tr.follow-up") | [.outcome, .by, .group]' '["lost_group","tr.pivot-linkedin","follow-up"]'
expect_jq json_e3 '.rules[] | select(.rule=="tr.pivot-linkedin") | [.outcome, .recommendation.channel, .conditions[0].facts["email.unanswered"]]' '["fired","linkedin",2]'
expect_jq json_e3 '[.recommendations[] | .rule]' '["tr.pivot-linkedin"]'
expect_jq json_e3 '.recommendations[0].trigger' '{"type":"email.opened","event_id":"e3","occurred_at":"2026-11-24T10:00:00Z"}'
expect_jq json_e3 '.rules[] | select(.rule=="guard.consent") | [.kind, .outcome, .blocked]' '["guard","blocked",["tr.pivot-whatsapp"]]'
expect_jq json_e3 '.rules[] | select(.rule=="tr.silence") | [.kind, .outcome, .pending_timer.due_at]' '["timer","not_triggered","2026-11-27T09:00:00Z"]'

# ---- --json at the last event: cooldown until
run json_last --rules $R --events $H --prospect p-1 --json
expect_jq json_last '.rules[] | select(.rule=="tr.pivot-whatsapp") | [.outcome, .until]' '["cooldown","2026-11-27T12:00:00Z"]'
expect_jq json_last '[.recommendations[] | .rule]' '["tr.pivot-linkedin"]'

# ---- run-time errors: a rule's (ERROR) and a guard's (it blocks, to be safe)
E=tests/cli/explain/errors.rules
run err --rules $R --rules $E --events $H --prospect p-1 --at e3
expect_rc err 0
expect_line err "^rule +x\.divide +ERROR: when: division by zero"
expect_line err "^rule +x\.linkedin-nudge +BLOCKED by x\.guard-divide: fails at run time$"
expect_line err "^ +error +block: division by zero .*\(blocked to be safe\)$"
expect_line err "^rule +tr\.follow-up +FIRED$"
run errj --rules $R --rules $E --events $H --prospect p-1 --at e3 --json
expect_jq errj '.rules[] | select(.rule=="x.divide") | [.outcome, (.error | test("division by zero"))]' '["error",true]'
expect_jq errj '.rules[] | select(.rule=="x.guard-divide") | [.outcome, .blocked, (.error | test("blocked to be safe"))]' '["blocked",["tr.pivot-linkedin","x.linkedin-nudge"],true]'

# ---- a timer armed, and guards with nothing to judge (e1 only arms tr.silence)
run at_e1 --rules $R --events $H --prospect p-1 --at e1
expect_line at_e1 "^rule +tr\.silence +TIMER ARMED, due 2026-11-26T09:00:00Z$"
expect_line at_e1 "^guard +guard\.consent +NO CANDIDATE to judge$"
run at_e1j --rules $R --events $H --prospect p-1 --at e1 --json
expect_jq at_e1j '[.rules[] | select(.kind=="guard") | .outcome] | unique' '["no_candidates"]'
expect_jq at_e1j '.rules[] | select(.rule=="tr.silence") | [.outcome, .until]' '["armed","2026-11-26T09:00:00Z"]'

# ---- the plan: what the trigger withdrew, what is still pending, and why
# p-1: e3 puts tr.pivot-linkedin in the plan; e5's tr.pivot-whatsapp
# supersedes it; e6's tr.pivot-linkedin supersedes that one in turn.
expect_has last "withdrawn by this trigger: 1"
expect_line last "^withdrawn +tr\.pivot-whatsapp +superseded by tr\.pivot-linkedin: a newer recommendation of its group$"
expect_line last "^ +id +w-[0-9a-f]{32} withdraws r-[0-9a-f]{32}$"
expect_has last "plan: 1 pending (plan version 3), soonest not_before first"
expect_line last "^pending +tr\.pivot-linkedin +linkedin micro_question, not before 2026-11-25T10:00:00Z, expires 2026-12-02T10:00:00Z, group follow-up$"
expect_line last "^ +from +email\.opened e6 at 2026-11-25T10:00:00Z$"
expect_line last "^ +why +pending: no trigger since its publication withdrew it \(no reply and no won/lost stage, no opt-out, unsubscribe or hard bounce on linkedin, nothing newer in group follow-up, no rule whose withdraws names it fired\); not expired: it expires at 2026-12-02T10:00:00Z, in 1w$"
run at_e5j --rules $R --events $H --prospect p-1 --at e5 --json
expect_jq json_last '[.withdrawals[] | [.kind, .rule, .reason, .trigger.event_id, .generated_at]]' '[["withdrawal","tr.pivot-whatsapp","superseded","e6","2026-11-25T10:00:00Z"]]'
got="$(jq -r '.withdrawals[0].withdraws' "$tmp/json_last.out")"
want="$(jq -r '.recommendations[0].id' "$tmp/at_e5j.out")"
if [[ -n "$want" && "$got" == "$want" ]]; then ok; else ko "json_last: withdraws '$got', expected e5's recommendation '$want'"; fi
expect_jq json_last '.plan_version' '3'
expect_jq json_last '[.plan[] | [.rule, .status, .not_before, .expires_at, .trigger.event_id, .group, .audience]]' '[["tr.pivot-linkedin","pending","2026-11-25T10:00:00Z","2026-12-02T10:00:00Z","e6","follow-up","prospect"]]'
expect_jq json_last '.plan[0].withdrawn_on' '["expired","replied","opted_out","bounced","stage","superseded","rule"]'
got="$(jq -r '.plan[0].id' "$tmp/json_last.out")"
want="$(jq -r '.recommendations[0].id' "$tmp/json_last.out")"
if [[ -n "$want" && "$got" == "$want" ]]; then ok; else ko "json_last: the plan holds '$got', expected the trigger's recommendation '$want'"; fi
# e3: nothing was pending before, nothing withdrawn
expect_jq json_e3 '[(.withdrawals | length), [.plan[] | .rule]]' '[0,["tr.pivot-linkedin"]]'
# e1: nothing pending at all
run at_e1h --rules $R --events $H --prospect p-1 --at e1
expect_has at_e1h "plan: nothing pending (the plan topic holds a tombstone)"
expect_jq at_e1j '[.withdrawals, .plan]' '[[],[]]'
# a now evaluation past the expiry: still in the plan, said expired; no
# "withdrawals" (a now evaluation withdraws nothing)
run now_exp --rules $R --events $H --prospect p-1 --now 2026-12-05T00:00:00Z --json
# the plan's own timer withdrew both at their expiry, with no other trigger
expect_jq now_exp '[has("withdrawals"), [.plan[] | [.rule, .status]]]' '[false,[]]'
run now_exph --rules $R --events $H --prospect p-1 --now 2026-12-05T00:00:00Z
expect_line now_exph "^timer ~plan \(armed by e6\) came due at 2026-12-02T10:00:00Z before the trigger: the plan's own timer \(expiries, snoozes\); withdrew tr\.pivot-linkedin expired$"
expect_line now_exph "^timer ~plan \(armed by e6\) came due at 2026-12-04T09:00:00Z before the trigger: the plan's own timer \(expiries, snoozes\); withdrew tr\.silence expired$"
run now_pend --rules $R --events $H --prospect p-1 --now 2026-12-01T00:00:00Z --json
expect_jq now_pend '.plan[1].trigger' '{"type":"timer","rule":"tr.silence","armed_by":"e2","due_at":"2026-11-27T09:00:00Z","occurred_at":"2026-11-27T09:00:00Z"}'
# a state with a plan, and a hypothetical reply: the sequence's follow-up is
# withdrawn (replied), the gift stays (a reply does not withdraw gifts)
PS=tests/cli/explain/plan-state.txt
run plan_reply --rules $R --state $PS --json --event '{"id":"r1","type":"email.replied","prospect_id":"p-8","occurred_at":"2026-11-24T10:00:00Z"}'
expect_rc plan_reply 0
expect_jq plan_reply '[.withdrawals[] | [.withdraws, .reason, .rule]]' '[["r-0000000000000000000000000000f011","replied","tr.follow-up"]]'
expect_jq plan_reply '[.plan[] | [.rule, .status]]' '[["tr.reply","pending"],["x.gift","pending"]]'
expect_jq plan_reply '.plan[] | select(.rule=="x.gift") | [.intent, .withdrawn_on]' '["gift",["expired","opted_out","bounced","superseded","rule"]]'
run plan_replyh --rules $R --state $PS --event '{"id":"r1","type":"email.replied","prospect_id":"p-8","occurred_at":"2026-11-24T10:00:00Z"}'
expect_line plan_replyh "^withdrawn +tr\.follow-up +replied: a reply \(not out_of_office\) ends the sequence$"
expect_line plan_replyh "^ +why +pending: no trigger since its publication withdrew it \(no opt-out, unsubscribe or hard bounce on gift, nothing newer in group gift, no rule whose withdraws names it fired\); not expired: it expires at 2026-12-07T09:00:00Z, in 1w5d23h$"

# ---- --now: the due timer fires on the way, then every rule is evaluated
run now --rules $R --events $H --prospect p-1 --now 2026-11-28T00:00:00Z --json
expect_rc now 0
expect_jq now '.trigger.type' '"now"'
expect_jq now '.timers_fired' '[{"rule":"tr.silence","due_at":"2026-11-27T09:00:00Z","armed_by":"e2","outcome":"fired"}]'
expect_jq now '.rules[] | select(.rule=="tr.pivot-whatsapp") | .outcome' '"would_fire"'
expect_jq now '.rules[] | select(.rule=="tr.follow-up") | [.outcome, .by]' '["lost_group","tr.pivot-whatsapp"]'
run now_h --rules $R --events $H --prospect p-1 --now 2026-11-28T00:00:00Z
expect_has now_h "timer tr.silence (armed by e2) came due at 2026-11-27T09:00:00Z before the trigger: fired"
run now_early --rules $R --events $H --prospect p-1 --now 2026-11-20T00:00:00Z
expect_rc now_early 2

# ---- --state: a flat state file instead of a history
run state --rules $R --state $S --now 2026-11-24T12:00:00Z
expect_rc state 0
expect_has state "prospect p-9"
expect_line state "^rule +tr\.pivot-whatsapp +COOLDOWN until 2026-11-27T08:00:00Z$"
expect_line state "^rule +tr\.pivot-linkedin +BLOCKED by guard\.cap-daily: two touches in 24 hours already$"
expect_line state "^ +guard +[-+?] touches\.1d >= 2 += true +touches\.1d=2$"
run state_ev --rules $R --state $S --json --event '{"id":"h1","type":"email.opened","prospect_id":"p-9","occurred_at":"2026-11-24T10:30:00Z"}'
expect_jq state_ev '[.trigger.event_id, (.rules[] | select(.rule=="tr.follow-up") | .outcome, .by)]' '["h1","blocked","guard.cap-daily"]'

# ---- only the prospect's own events
run p2 --rules $R --events $H --prospect p-2 --json
expect_jq p2 '[.trigger.event_id, .history_events]' '["x2",1]'

# ---- privacy: ids only, never payload text
run p3 --rules $R --events $H --prospect p-3
run p3j --rules $R --events $H --prospect p-3 --json
for n in p3 p3j; do
  expect_rc $n 0
  if grep -qE 'PRIVATE-TEXT|Jane|jane@' "$tmp/$n.out" "$tmp/$n.err"; then ko "$n: payload text leaked" "$tmp/$n.out"; else ok; fi
done

# ---- marks
run uni --rules $R --events $H --prospect p-1 --at e3 --unicode
expect_has uni "✓ email.unanswered >= 2"
run asc --rules $R --events $H --prospect p-1 --at e3 --ascii
if grep -q '✓' "$tmp/asc.out"; then ko "asc: non-ASCII mark with --ascii" "$tmp/asc.out"; else ok; fi

# ---- errors
run noprospect --rules $R --events $H --prospect p-404
expect_rc noprospect 1
grep -qF "no event for prospect 'p-404'" "$tmp/noprospect.err" && ok || ko "noprospect: message" "$tmp/noprospect.err"
run noid --rules $R --events $H --prospect p-1 --at e-404
expect_rc noid 1
run usage1 --rules $R --events $H
expect_rc usage1 2
run usage2 --rules $R --events $H --prospect p-1 --at e3 --now 2026-11-28T00:00:00Z
expect_rc usage2 2
run usage3 --events $H --prospect p-1
expect_rc usage3 2
run usage4 --rules $R --events $H --state $S --prospect p-1
expect_rc usage4 2

echo "$pass passed, $fail failed"
((fail == 0))
