#!/usr/bin/env bash
# Usage files against real analytics engines, with no code of ours on the reading side:
#   1. DuckDB (from PyPI): read_json_auto over the spooled *.ndjson.gz files; row count and fields
#      checked against Python's own gzip+json reading of the same files.
#   2. ClickHouse (Debian's clickhouse-server, started here on loopback with its own config): the
#      real uploader POSTs each file straight into its HTTP interface
#      (INSERT ... FORMAT JSONEachRow, Content-Encoding: gzip); every record lands as a row, and
#      the spool empties (files are deleted only after ClickHouse's 200).
# Spooling and uploading are driven by examples/usage_load.rs (the real Spooler, synthetic events).
# Installs what it needs; skips the ClickHouse half, saying so, where apt has no clickhouse-server.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
work="$CARGO_TARGET_DIR/usage-interop"
rm -rf "$work/spool" "$work/spool2" "$work/ch"
mkdir -p "$work"
EVENTS=5000

say() { printf 'usage interop: %s\n' "$*"; }

cargo build --quiet --example usage_load
load="$CARGO_TARGET_DIR/debug/examples/usage_load"

# ---- 1. DuckDB ---------------------------------------------------------------------------------
"$load" --spool-dir "$work/spool" --events "$EVENTS" --rotate-bytes 65536 --device-id interop-1 >"$work/load.json"
files=$(find "$work/spool" -name "usage-*.ndjson.gz" | wc -l)
say "spooled $EVENTS events into $files files ($(cat "$work/load.json"))"
[ "$files" -ge 2 ] || { say "expected several files"; exit 1; }
for f in "$work/spool"/usage-*.ndjson.gz; do zcat "$f" >/dev/null; done

if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
fi
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check duckdb
"$work/venv/bin/python" - "$work/spool" "$EVENTS" <<'PY'
import glob, gzip, json, sys
import duckdb

spool, events = sys.argv[1], int(sys.argv[2])
files = sorted(glob.glob(f"{spool}/usage-*.ndjson.gz"))
# The reference reading: Python's gzip (multi-member) and json.
rows = [json.loads(l) for f in files for l in gzip.open(f, "rt")]
req = [r for r in rows if r["kind"] == "request"]
assert len(req) == events, (len(req), events)

con = duckdb.connect()
rel = f"read_json_auto('{spool}/*.ndjson.gz')"
n, distinct_ids, resp_bytes, throttled, served = con.execute(
    f"""SELECT count(*), count(DISTINCT request_id), sum(response_bytes),
               count(*) FILTER (WHERE throttled), count(*) FILTER (WHERE status = 200 AND error_code IS NULL)
        FROM {rel} WHERE kind = 'request'"""
).fetchone()
assert n == events, n
assert distinct_ids == events, distinct_ids
assert resp_bytes == sum(r["response_bytes"] for r in req), resp_bytes
assert throttled == sum(1 for r in req if r["throttled"]), throttled
assert served == sum(1 for r in req if r["status"] == 200 and r["error_code"] is None), served
# ts is recognised as a timestamp (RFC 3339 UTC with milliseconds), and matches the text.
ts_type = con.execute(f"SELECT typeof(ts) FROM {rel} LIMIT 1").fetchone()[0]
assert ts_type.startswith("TIMESTAMP"), ts_type
first = con.execute(
    f"SELECT strftime(ts, '%Y-%m-%dT%H:%M:%S.%g') || 'Z', request_id, api, client_ip, device_id, bundle_serial "
    f"FROM {rel} WHERE request_id = ?", [req[0]["request_id"]]
).fetchone()
assert first == (req[0]["ts"], req[0]["request_id"], req[0]["api"], req[0]["client_ip"], "interop-1", 17), first
by_api = dict(con.execute(f"SELECT api, count(*) FROM {rel} WHERE kind = 'request' GROUP BY api").fetchall())
want = {}
for r in req:
    want[r["api"]] = want.get(r["api"], 0) + 1
assert by_api == want, (by_api, want)
print(f"usage interop: DuckDB {duckdb.__version__} read {n} request rows from {len(files)} files; "
      f"ids, bytes, throttled, statuses, timestamps and per-API counts match")
PY

# ---- 2. ClickHouse -----------------------------------------------------------------------------
# grep reads all of apt's output: `grep -q` would stop at the match, apt-cache would die of
# SIGPIPE, and pipefail would report the package missing.
ch_candidate() { apt-cache policy clickhouse-server 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null; }
if ! command -v clickhouse-server >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # A mirror hiccup during `apt-get update` can leave the lists without the package: retry.
    for attempt in 1 2 3; do
      ch_candidate && break
      apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed (attempt $attempt)"
      ch_candidate && break
      sleep 5
    done
    if ch_candidate; then
      apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
    else
      say "apt-cache policy clickhouse-server: $(apt-cache policy clickhouse-server 2>&1 | tr '\n' ' ')"
    fi
  fi
fi
if ! command -v clickhouse-server >/dev/null; then
  if [ -n "${CI:-}" ]; then
    say "FAILED: the ClickHouse half cannot run under CI: no clickhouse-server package in this machine's apt sources"
    exit 1
  fi
  say "SKIPPED the ClickHouse half: no clickhouse-server package in this machine's apt sources"
  exit 0
fi

ch="$work/ch"
mkdir -p "$ch/data/tmp" "$ch/data/user_files" "$ch/data/format_schemas"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$ch/server.log</log><errorlog>$ch/server.err.log</errorlog><size>10M</size><count>1</count></logger>
  <http_port>$port</http_port>
  <tcp_port>$tport</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <max_connections>64</max_connections>
  <max_concurrent_queries>16</max_concurrent_queries>
  <mark_cache_size>268435456</mark_cache_size>
  <path>$ch/data/</path>
  <tmp_path>$ch/data/tmp/</tmp_path>
  <user_files_path>$ch/data/user_files/</user_files_path>
  <format_schema_path>$ch/data/format_schemas/</format_schema_path>
  <users_config>$ch/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
</yandex>
XML
cat >"$ch/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>1000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
clickhouse-server --config-file="$ch/config.xml" >"$ch/stdout.log" 2>&1 &
ch_pid=$!
trap 'kill "$ch_pid" 2>/dev/null || true; wait "$ch_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/ping" >/dev/null 2>&1 && break
  sleep 0.2
done
q() { curl -fsS "http://127.0.0.1:$port/" --data-binary "$1"; }
say "ClickHouse $(q 'SELECT version()') on 127.0.0.1:$port"
q "CREATE TABLE usage (
  kind String, ts String, request_id String, api Nullable(String), api_version Nullable(String),
  context Nullable(String), resource String, method String, status UInt16, app_id Nullable(String),
  app_name Nullable(String), subscriber Nullable(String), keytype Nullable(String), tier Nullable(String),
  throttled UInt8, error_code Nullable(UInt32), latency_ms Float64, backend_latency_ms Nullable(Float64),
  request_bytes UInt64, response_bytes UInt64, client_ip String, device_id String, bundle_serial Nullable(UInt64)
) ENGINE = MergeTree ORDER BY (device_id, request_id)"

# The same kind of spool, uploaded by the real uploader. {file} goes into query_id (this
# ClickHouse predates insert_deduplication_token), which also exercises the substitution.
"$load" --spool-dir "$work/spool2" --events "$EVENTS" --first 100000 --rotate-bytes 65536 --device-id interop-2 \
  --upload-url "http://127.0.0.1:$port/?query=INSERT INTO usage FORMAT JSONEachRow&input_format_skip_unknown_fields=1&query_id={file}" \
  --drain-timeout-s 120 >"$work/upload.json"
say "uploader: $(cat "$work/upload.json")"
left=$(find "$work/spool2" -name "usage-*" | wc -l)
[ "$left" -eq 0 ] || { say "$left files left in the spool after upload"; exit 1; }
rows=$(q "SELECT count() FROM usage WHERE kind = 'request' AND device_id = 'interop-2'")
ids=$(q "SELECT uniqExact(request_id) FROM usage WHERE kind = 'request'")
[ "$rows" -eq "$EVENTS" ] || { say "ClickHouse holds $rows request rows, expected $EVENTS"; exit 1; }
[ "$ids" -eq "$EVENTS" ] || { say "ClickHouse holds $ids distinct request ids, expected $EVENTS"; exit 1; }
files_up=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["uploads_ok"])' "$work/upload.json")
check=$(q "SELECT countIf(status = 429) = countIf(throttled = 1), countIf(error_code IS NULL AND status = 200) > 0, min(bundle_serial), max(length(ts)) FROM usage WHERE kind = 'request' FORMAT TSV")
[ "$check" = "$(printf '1\t1\t17\t24')" ] || { say "unexpected field values: $check"; exit 1; }
say "ClickHouse: $rows request rows from $files_up uploaded files, one per record, fields as written"
