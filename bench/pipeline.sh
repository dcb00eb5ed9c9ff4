#!/usr/bin/env bash
# Throughput and latency through the whole pipeline (token check, throttle, usage record,
# forwarding) against the same backend reached directly, and against HAProxy doing JWT
# verification (ES256: HAProxy has no EdDSA) and stick-table rate limiting in front of it.
# All in one run on this machine; results as ratios to the direct backend.
#
# Usage: bench/pipeline.sh [seconds per run, default 10] — installs wrk and haproxy if missing.
# Pinning: the proxy under test gets CPU 0; the backend and wrk share CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=32
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh
need_apt wrk:wrk haproxy:haproxy
build_release
g=$gatelet
taskset -c 1 "$backend" 127.0.0.1:18080 &
sleep 0.3

# A bundle whose API forwards to the backend, with a tier high enough never to refuse.
make_bundle 18080
cat > "$work/gatelet.toml" <<TOML
[server]
listen = "127.0.0.1:18090"
admin_listen = "127.0.0.1:18091"
threads = 1
[bundle]
path = "$work/bundle.glb"
trusted_keys = ["$work/pub.pub"]
inbox = ""
[state]
dir = "$work/state"
[log]
level = "warn"
TOML
token=$(cat "$work/token")
taskset -c 0 $g run --config "$work/gatelet.toml" &
sleep 0.5
curl -sf -H "Authorization: Bearer $token" http://127.0.0.1:18090/bench/1/hello >/dev/null

run() { # name url [header]
  local name=$1 url=$2; shift 2
  local out
  out=$(taskset -c 1 wrk -t1 -c$conns -d${secs}s --latency "$@" "$url")
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  printf '%-34s %12s req/s   p99 %s\n' "$name" "$rps" "$p99"
  echo "$rps" > "$work/$name.rps"
}

# HAProxy 2.6: jwt_verify with an ES256 key, a stick table counting per token, then the backend.
haproxy_jwt 18095 18080

echo "wrk: 1 thread, $conns connections, ${secs}s each"
run direct-backend http://127.0.0.1:18080/hello
run gatelet http://127.0.0.1:18090/bench/1/hello -H "Authorization: Bearer $token"
run haproxy-jwt-ratelimit http://127.0.0.1:18095/hello -H "Authorization: Bearer $es_token"
d=$(cat "$work/direct-backend.rps"); gt=$(cat "$work/gatelet.rps"); h=$(cat "$work/haproxy-jwt-ratelimit.rps")
python3 -c "d,g,h=$d,$gt,$h; print(f'gatelet / direct = {g/d:.2f}   gatelet / haproxy = {g/h:.2f}   haproxy / direct = {h/d:.2f}')"
ps -o rss=,comm= -p "$(pgrep -f "gatelet run --config $work" | head -1)" | awk '{printf "gatelet RSS after load: %.1f MiB\n", $1/1024}'
