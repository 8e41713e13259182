#!/usr/bin/env bash
# run_rules_tests.sh - the default playbook's own tests: `touchd test
# --require-coverage rules/` (every rules/*.test against the rules/*.rules
# ruleset; docs/rules-testing.md). Every rule and guard of rules/ must be
# exercised by some case. Writes JUnit XML to $TD_BINARY_DIR/rules-junit.xml
# when TD_BINARY_DIR is set (CMake sets it).
#
# Environment: TD_TOUCHD (the touchd binary), TD_SOURCE_DIR (the repo root).
# The last line is touchd's own "N passed, M failed"; exits non-zero on any
# failure (or incomplete coverage).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${TD_SOURCE_DIR:-$(cd "$here/../.." && pwd)}"
touchd="${TD_TOUCHD:-$src/build/touchd}"
if [[ ! -x "$touchd" ]]; then
  echo "run_rules_tests.sh: touchd binary not found: $touchd (set TD_TOUCHD)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
cd "$src" || exit 1
args=(test --require-coverage -q)
if [[ -n "${TD_BINARY_DIR:-}" && -d "$TD_BINARY_DIR" ]]; then
  args+=(--junit "$TD_BINARY_DIR/rules-junit.xml")
fi
# touchd prints the failures, the coverage and "N passed, M failed" last
"$touchd" "${args[@]}" rules/
