#!/usr/bin/env bash
# run_config.sh - `touchd run -c FILE` rejects bad configuration files before
# connecting to anything: exit code 2 and one message naming the file, the
# line, the key and what is allowed (docs/config.md).
#
# Environment: TD_TOUCHD, TD_SOURCE_DIR. Prints "N passed, M failed" last.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${TD_SOURCE_DIR:-$(cd "$here/../.." && pwd)}"
touchd="${TD_TOUCHD:-$src/build/touchd}"
if [[ ! -x "$touchd" ]]; then
  echo "run_config.sh: touchd binary not found: $touchd (set TD_TOUCHD)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0

# expect NAME WANT_TEXT CONFIG_TEXT: exit 2, WANT_TEXT in stderr, in < 5 s
expect() {
  local name="$1" want="$2" text="$3"
  printf '%s\n' "$text" > "$tmp/$name.conf"
  local out rc
  out="$(timeout 5 "$touchd" run -c "$tmp/$name.conf" 2>&1 >/dev/null)"
  rc=$?
  if [[ $rc -eq 2 && "$out" == *"$want"* ]]; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAIL $name: exit $rc, want 2 and '$want' in: $out" >&2
  fi
}

expect pipeline-not-bool "$tmp/pipeline-not-bool.conf:3: engine.pipeline: expected true or false, got 3" \
'kafka = { brokers = "embedded"; };
engine = { batch_max_events = 100;
  pipeline = 3; };'
expect pipeline-string "engine.pipeline: expected true or false" \
'engine = { pipeline = "yes"; };'
expect engine-unknown "engine.pipelin: unknown key (allowed here: batch_max_events, batch_max_ms, state_cache, pipeline, store_connections, dedup_window)" \
'engine = { pipelin = true; };'
expect store-connections-range "engine.store_connections: expected an integer from 1 to 2, got 3" \
'engine = { store_connections = 3; };'
expect batch-range "engine.batch_max_events: expected an integer from 1 to 100000, got 0" \
'engine = { batch_max_events = 0; };'
expect verify-writes-not-bool "redis.verify_writes: expected true or false" \
'redis = { verify_writes = "on"; };'
expect redis-unknown "redis.verify_write: unknown key (allowed here: host, port, unix_socket, password, username, db, connect_timeout_ms, command_timeout_ms, backoff_min_ms, backoff_max_ms, key_prefix, verify_writes)" \
'redis = { verify_write = true; };'
expect syntax "syntax.conf:2:" \
'engine = { batch_max_events = 10;
  pipeline = = true; };'

# a good engine group passes validation (then fails later on Redis, not 2)
printf 'kafka = { brokers = "embedded"; bootstrap_file = "%s/b"; };\nredis = { host = "127.0.0.1"; port = 1; connect_timeout_ms = 100; };\nrules = { dir = "%s/rules"; };\nengine = { pipeline = false; store_connections = 1; };\n' "$tmp" "$src" > "$tmp/good.conf"
out="$(timeout 20 "$touchd" run -c "$tmp/good.conf" 2>&1 >/dev/null)"
rc=$?
if [[ $rc -ne 2 && "$out" != *"engine.pipeline"* ]]; then
  pass=$((pass + 1))
else
  fail=$((fail + 1))
  echo "FAIL good-engine: exit $rc: $out" >&2
fi

# --check-config looks at the paths too: a missing rules directory and an
# unreadable CA file are named (key, path), exit 2; with them fixed, exit 0
# and the printed config
printf 'kafka = { brokers = "embedded";\n  consumer = { ssl_ca_location = "%s/ca.pem"; }; };\nrules = { dir = "%s/no-rules"; };\n' "$tmp" "$tmp" > "$tmp/paths.conf"
out="$(timeout 5 "$touchd" run -c "$tmp/paths.conf" --check-config 2>&1)"
rc=$?
if [[ $rc -eq 2 && "$out" == *"paths.conf: rules.dir: cannot read the directory \"$tmp/no-rules\": No such file or directory"* &&
  "$out" == *"paths.conf:2: kafka.consumer.ssl_ca_location: cannot read the file \"$tmp/ca.pem\" (librdkafka ssl.ca.location)"* &&
  "$out" != *"config $tmp/paths.conf: ok"* ]]; then
  pass=$((pass + 1))
else
  fail=$((fail + 1))
  echo "FAIL check-config-paths: exit $rc: $out" >&2
fi
mkdir "$tmp/no-rules" && : > "$tmp/ca.pem"
out="$(timeout 5 "$touchd" run -c "$tmp/paths.conf" --check-config 2>&1)"
rc=$?
if [[ $rc -eq 0 && "$out" == *"config $tmp/paths.conf: ok"* ]]; then
  pass=$((pass + 1))
else
  fail=$((fail + 1))
  echo "FAIL check-config-paths-fixed: exit $rc: $out" >&2
fi

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
