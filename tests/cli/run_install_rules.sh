#!/usr/bin/env bash
# run_install_rules.sh - deploy/install-rules puts a rules directory in
# service by atomic renames, after `touchd check`: a good directory replaces
# the files and removes the ones it no longer has; a bad one (an empty,
# truncated file) leaves the destination exactly as it was.
#
# Environment: TD_TOUCHD, TD_SOURCE_DIR. Prints "N passed, M failed" last.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${TD_SOURCE_DIR:-$(cd "$here/../.." && pwd)}"
touchd="${TD_TOUCHD:-$src/build/touchd}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
ko() {
  fail=$((fail + 1))
  echo "FAILED: $*"
}

mkdir -p "$tmp/dest"
echo 'rules = ();' >"$tmp/dest/retired.rules"
out=$(TOUCHD=$touchd "$src/deploy/install-rules" "$src/rules" "$tmp/dest" 2>&1)
rc=$?
[[ $rc -eq 0 ]] && ok || ko "install of rules/: exit $rc: $out"
[[ ! -e $tmp/dest/retired.rules && $out == *"removed retired.rules"* ]] && ok ||
  ko "retired.rules not removed or not listed: $out"
if cmp -s "$src/rules/trust.rules" "$tmp/dest/trust.rules"; then ok; else ko "trust.rules differs"; fi
ls -A "$tmp/dest" | grep -q '^\.install-rules' && ko "staging directory left behind" || ok
"$touchd" check "$tmp/dest" >/dev/null 2>&1 && ok || ko "installed directory does not pass check"

# again, unchanged: nothing is written (the daemon sees no change), and a
# changed file is renamed in (a new inode), not written in place
ino=$(stat -c %i "$tmp/dest/trust.rules")
out=$(TOUCHD=$touchd "$src/deploy/install-rules" "$src/rules" "$tmp/dest" 2>&1)
[[ $out == *"(0 files written)"* && $(stat -c %i "$tmp/dest/trust.rules") == "$ino" ]] && ok ||
  ko "an unchanged install rewrote files: $out"
mkdir -p "$tmp/next"
cp "$src"/rules/*.rules "$tmp/next/"
echo '# a new comment' >>"$tmp/next/trust.rules"
out=$(TOUCHD=$touchd "$src/deploy/install-rules" "$tmp/next" "$tmp/dest" 2>&1)
[[ $out == *"(1 files written)"* && $(stat -c %i "$tmp/dest/trust.rules") != "$ino" ]] && ok ||
  ko "a changed file was not renamed in: $out"
cmp -s "$tmp/next/trust.rules" "$tmp/dest/trust.rules" && ok || ko "trust.rules not installed"

# a truncated file: refused, destination unchanged
mkdir -p "$tmp/bad"
cp "$src"/rules/*.rules "$tmp/bad/"
: >"$tmp/bad/trust.rules"
before=$(cd "$tmp/dest" && sha256sum ./* | sort)
out=$(TOUCHD=$touchd "$src/deploy/install-rules" "$tmp/bad" "$tmp/dest" 2>&1)
rc=$?
[[ $rc -eq 1 ]] && ok || ko "bad directory: exit $rc, want 1"
[[ $out == *"E115"* && $out == *"unchanged"* ]] && ok || ko "bad directory: no E115 / unchanged: $out"
after=$(cd "$tmp/dest" && sha256sum ./* | sort)
[[ $before == "$after" ]] && ok || ko "destination changed after a refused install"

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
