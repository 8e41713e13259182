#!/usr/bin/env bash
# run_golden.sh - data-driven golden tests of the rules (no C needed to add one).
#
# Every directory tests/golden/<case>/ is one case:
#   events.jsonl        input events (JSON lines, may contain malformed lines)
#   expected.txt        expected stdout of
#                         touchd replay --rules <rules> --holidays $TD_SOURCE_DIR/config/holidays \
#                           --brief events.jsonl
#                       (one line per recommendation, tab-separated:
#                        prospect_id rule channel touch not_before trigger_event_id;
#                        one per withdrawal, in the order they happen:
#                        withdrawn prospect_id rule reason withdrawn_id trigger_event_id;
#                        empty = no recommendation and no withdrawal)
#   advance             optional: a duration (e.g. 30d): replay runs with
#                       --advance DUR, so timers due after the last event fire
#                       (silence and quiet-partner timer rules)
#   plans               optional (empty): replay runs with --plans, so
#                       expected.txt ends with the final plans, one line per
#                       pending recommendation:
#                        pending prospect_id rule channel touch not_before expires_at id
#   expected-exit       optional: expected exit code of replay (default 0;
#                       3 = some input lines were rejected)
#   rules/              optional: use these rules INSTEAD of the repo's rules/
#   extra-rules/        optional: use the repo's rules/ PLUS these files
#                       (--rules given twice; e.g. a deliberately naive rule
#                       that a guard of the repo must block)
#   expected-blocked.txt optional: "guard_id count" per guard that blocked at
#                       least one candidate, in ruleset order, read from the
#                       per-rule table replay prints on stderr; proves a guard
#                       case is empty because of THAT guard
#   description         optional: one paragraph, what the case shows
#   (owner-level lines, prospect_id "owner:..." (recommendations, withdrawals
#    and pending lines), are compared only in cases named owners-*; elsewhere
#    they are left out of the comparison)
#   expected-check.txt  makes it a diagnostics case instead: expected stderr
#                       lines of `touchd check rules` (run in the case
#                       directory; only lines starting with "rules/" are
#                       compared) and exit code 1
#
# Environment: TD_TOUCHD (the touchd binary), TD_SOURCE_DIR (the repo root);
# both default to this checkout (build-h5/touchd).
# Usage: run_golden.sh [case...]     (default: every case)
# Prints a unified diff for each failing case and "N passed, M failed" last;
# exits 1 when any case fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${TD_SOURCE_DIR:-$(cd "$here/../.." && pwd)}"
touchd="${TD_TOUCHD:-$src/build-h5/touchd}"
if [[ ! -x "$touchd" ]]; then
  echo "run_golden.sh: touchd binary not found or not executable: $touchd" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cases=()
if (($#)); then
  for c in "$@"; do cases+=("$here/${c%/}"); done
else
  for d in "$here"/*/; do cases+=("${d%/}"); done
fi

pass=0
fail=0
failed=()

for dir in "${cases[@]}"; do
  name="$(basename "$dir")"
  out="$tmp/$name.out"
  err="$tmp/$name.err"
  ok=1
  if [[ -f "$dir/expected-check.txt" ]]; then
    # Diagnostics case: touchd check must fail with exactly these lines.
    rc=0
    (cd "$dir" && "$touchd" check rules) >"$out" 2>"$err" || rc=$?
    grep '^rules/' "$err" >"$tmp/$name.diag" || true
    if [[ $rc -ne 1 ]]; then
      echo "FAIL $name: touchd check exited $rc, expected 1"
      ok=0
    fi
    if ! diff -u --label "$name/expected-check.txt" --label "$name/actual" \
        "$dir/expected-check.txt" "$tmp/$name.diag"; then
      echo "FAIL $name: diagnostics differ (full stderr below)"
      sed 's/^/  | /' "$err"
      ok=0
    fi
  elif [[ -f "$dir/events.jsonl" ]]; then
    rules=(--rules "$src/rules")
    if [[ -d "$dir/rules" ]]; then
      rules=(--rules rules)
    elif [[ -d "$dir/extra-rules" ]]; then
      rules+=(--rules extra-rules)
    fi
    adv=()
    [[ -f "$dir/advance" ]] && adv=(--advance "$(tr -d '[:space:]' <"$dir/advance")")
    [[ -f "$dir/plans" ]] && adv+=(--plans)
    want_rc=0
    [[ -f "$dir/expected-exit" ]] && want_rc="$(tr -d '[:space:]' <"$dir/expected-exit")"
    rc=0
    # Holidays explicitly: replay runs in the case directory, where its default
    # (config/holidays of the current directory) does not exist.
    (cd "$dir" && "$touchd" replay "${rules[@]}" --holidays "$src/config/holidays" \
      ${adv[@]+"${adv[@]}"} --brief events.jsonl) >"$out" 2>"$err" || rc=$?
    # Owner-level recommendations (prospect_id "owner:<id>", rules/owners.rules)
    # are compared only in cases about them (name starting with "owners-"):
    # every other case checks the prospects' own recommendations.
    if [[ "$name" != owners-* ]]; then
      grep -v -E $'^((withdrawn|pending)\t)?owner:' "$out" >"$out.p" || true
      mv "$out.p" "$out"
    fi
    if [[ "$rc" != "$want_rc" ]]; then
      echo "FAIL $name: touchd replay exited $rc, expected $want_rc; stderr:"
      sed 's/^/  | /' "$err"
      ok=0
    fi
    if ! diff -u --label "$name/expected.txt" --label "$name/actual" \
        "$dir/expected.txt" "$out"; then
      echo "FAIL $name: recommendations or withdrawals differ"
      ok=0
    fi
    if [[ -f "$dir/expected-blocked.txt" ]]; then
      # rows of the stats table: rule fired blocked lost cooldown armed errors (guard: blocks)
      awk '/\(guard: blocks\)$/ && $3 + 0 > 0 { print $1, $3 }' "$err" >"$tmp/$name.blocked"
      if ! diff -u --label "$name/expected-blocked.txt" --label "$name/actual-blocked" \
          "$dir/expected-blocked.txt" "$tmp/$name.blocked"; then
        echo "FAIL $name: guards that blocked differ"
        ok=0
      fi
    fi
  else
    continue # not a case directory
  fi
  if ((ok)); then
    echo "PASS $name"
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    failed+=("$name")
  fi
done

if ((fail)); then
  echo "failed: ${failed[*]}"
fi
echo "$pass passed, $fail failed"
((fail == 0))
