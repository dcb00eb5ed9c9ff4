#!/usr/bin/env bash
# What one proxied request costs: requests/s, CPU time, system calls and backend connects per
# request, for nginx as a plain keep-alive proxy, HAProxy verifying an ES256 JWT with a stick
# table, and gatelet with its whole pipeline (cached EdDSA token, subscription check, two
# throttle levels, usage record), in one run on this machine, as ratios to nginx.
#
#   bench/cost.sh [seconds per load, default 8]
#   GATELET_BASELINE=/path/to/other/gatelet bench/cost.sh   # also measure another gatelet build
#
# Each proxy runs with one worker pinned to CPU 0; the backend and wrk (1 thread, 32 connections)
# share CPU 1. CPU per request is the proxy's utime+stime over a load (from /proc) divided by the
# requests wrk counted, also shown split into user and kernel time. Syscalls and backend
# connects per request come from a second, shorter load under `strace -c -f` (strace slows the
# proxy, so only counts per request are read from it); backend connects per 1,000 requests from
# a window in the middle of a third load. Last, gatelet with `threads = 2`, on both CPUs (sharing
# CPU 1 with wrk and the backend) and both on CPU 0, to show how a second worker changes
# throughput and CPU per request.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh
need_apt wrk:wrk nginx:nginx-light strace:strace haproxy:haproxy

step "build and bundle"
build_release
bport=$(free_port)
taskset -c 1 "$backend" "127.0.0.1:$bport" >/dev/null &
make_bundle "$bport"
token=$(cat "$work/token")
tick=$(getconf CLK_TCK)

# User and system ticks, summed over every thread of the process (so worker threads count).
# PIDS: one process id, or several separated by commas (nginx's workers).
proc_ticks() {
  local u=0 s=0 f fu fs pid
  for pid in ${1//,/ }; do
    for f in /proc/"$pid"/task/*/stat; do
      read -r fu fs < <(awk '{print $14, $15}' "$f")
      u=$((u + fu)); s=$((s + fs))
    done
  done
  echo "$u $s"
}

# strace_pids PIDS: the -p arguments for each process of PIDS.
strace_pids() { local pid; for pid in ${1//,/ }; do printf -- '-p %s ' "$pid"; done; }

# measure NAME PIDS URL [wrk args...]: prints and records µs/request and syscalls/request.
measure() {
  local name=$1 pid=$2 url=$3; shift 3
  taskset -c 1 wrk -t1 -c32 -d2s "$@" "$url" >/dev/null # warm-up
  local before after out reqs
  before=$(proc_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" "$@" "$url")
  after=$(proc_ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  # shellcheck disable=SC2046
  strace -c -f $(strace_pids "$pid") -o "$work/$name.strace" &
  local st=$!
  sleep 0.5
  local sout sreqs
  sout=$(taskset -c 1 wrk -t1 -c32 -d3s "$@" "$url")
  sreqs=$(awk '/requests in/ {print $1}' <<<"$sout")
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  # The total line: % time, seconds, usecs/call, calls, [errors,] total.
  local calls; calls=$(awk '$NF == "total" {print $4}' "$work/$name.strace")
  if [ -z "$calls" ] || [ "$calls" = 0 ]; then
    echo "strace counted no system calls of $name (pid $pid)"; cat "$work/$name.strace"; exit 1
  fi
  # Connections opened to the backend in steady load: counted in the middle of a load, because
  # wrk's start and end open and cut connections (a request cut mid-answer closes its backend
  # connection, in nginx as in gatelet). Only connect(2) is traced, so the load runs at speed.
  taskset -c 1 wrk -t1 -c32 -d5s "$@" "$url" >"$work/$name.steady" &
  local w=$!
  sleep 1.5
  # shellcheck disable=SC2046
  timeout -s INT 2 strace -f -c -e trace=connect $(strace_pids "$pid") -o "$work/$name.connects" 2>/dev/null || true
  wait "$w"
  local connects; connects=$(awk '$NF == "connect" {print $4}' "$work/$name.connects")
  local steady_rps; steady_rps=$(awk '/Requests\/sec/ {print $2}' "$work/$name.steady")
  connects=$(python3 -c "print(${connects:-0} * 1000 / max(1.0, float('$steady_rps') * 2))")
  python3 - "$name" "$before" "$after" "$reqs" "$tick" "$calls" "$sreqs" "$rps" "$connects" >>"$work/results" <<'PY'
import sys
name, b, a, reqs, tick, calls, sreqs, rps, connects = sys.argv[1:]
(bu, bs), (au, as_) = map(int, b.split()), map(int, a.split())
per = lambda t: t / int(tick) * 1e6 / int(reqs)
user, system = per(au - bu), per(as_ - bs)
print(f"{name} {user + system:.1f} {int(calls) / int(sreqs):.1f} {float(rps):.0f} {float(connects):.2f} {user:.1f} {system:.1f}")
PY
  echo "top system calls of $name (calls per request):"
  awk -v n="$sreqs" 'NR > 2 && $NF != "total" && $1 !~ /^-/ {printf "  %-16s %6.2f\n", $NF, $4 / n}' "$work/$name.strace" | sort -k2 -rn | head -8
  tail -1 "$work/results"
}

step "nginx, plain proxy, upstream keep-alive"
nport=$(free_port)
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  upstream be { server 127.0.0.1:$bport; keepalive 64; }
  server {
    listen 127.0.0.1:$nport;
    location /bench/1/ { proxy_pass http://be/; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
taskset -c 0 nginx -c "$work/nginx.conf" -g 'daemon off;' &
nmaster=$!
for _ in $(seq 50); do npid=$(pgrep -P "$nmaster" || true); [ -n "$npid" ] && break; sleep 0.1; done
[ -n "$npid" ] || { echo "nginx started no worker"; exit 1; }
measure nginx "$npid" "http://127.0.0.1:$nport/bench/1/hello"
kill "$nmaster"; wait "$nmaster" 2>/dev/null || true

# The same nginx with two workers on both CPUs: how a second worker changes a plain proxy's CPU per
# request in this machine's shape (CPU 1 shared with wrk and the backend), beside gatelet's below.
step "nginx, two workers on both CPUs"
sed -i 's/^worker_processes 1;/worker_processes 2;/' "$work/nginx.conf"
taskset -c 0,1 nginx -c "$work/nginx.conf" -g 'daemon off;' &
nmaster=$!
npids=""
for _ in $(seq 50); do
  npids=$(pgrep -P "$nmaster" | paste -sd, || true)
  [ "$(tr ',' '\n' <<<"$npids" | grep -c .)" = 2 ] && break
  sleep 0.1
done
[ -n "$npids" ] || { echo "nginx started no workers"; exit 1; }
measure nginx-2-workers "$npids" "http://127.0.0.1:$nport/bench/1/hello"
kill "$nmaster"; wait "$nmaster" 2>/dev/null || true

step "HAProxy, ES256 jwt_verify and a stick table per token"
hport=$(free_port)
haproxy_jwt "$hport" "$bport"
hpid=$haproxy_pid
measure haproxy-jwt "$hpid" "http://127.0.0.1:$hport/hello" -H "Authorization: Bearer $es_token"
kill "$hpid"; wait "$hpid" 2>/dev/null || true

run_gatelet() { # NAME BINARY [THREADS CPUS]
  local name=$1 bin=$2 threads=${3:-1} cpus=${4:-0} gport aport
  gport=$(free_port); aport=$(free_port)
  rm -rf "$work/state" "$work/spool"
  # Each build runs a bundle its own toolkit made: an older build may read an older format.
  "$bin" bundle build "$work/project" --key "$work/pub.key" --out "$work/$name.glb" --serial 1 >/dev/null
  cat >"$work/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$gport"
admin_listen = "127.0.0.1:$aport"
threads = $threads
[bundle]
path = "$work/$name.glb"
trusted_keys = ["$work/pub.pub"]
inbox = ""
[state]
dir = "$work/state"
[usage]
spool_dir = "$work/spool"
[log]
level = "warn"
TOML
  taskset -c "$cpus" "$bin" run --config "$work/$name.toml" &
  local pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$aport/readyz" >/dev/null && break; sleep 0.1; done
  measure "$name" "$pid" "http://127.0.0.1:$gport/bench/1/hello" -H "Authorization: Bearer $token"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

if [ -n "${GATELET_BASELINE:-}" ]; then
  step "gatelet baseline ($GATELET_BASELINE)"
  run_gatelet gatelet-baseline "$GATELET_BASELINE"
fi
step "gatelet (this build)"
run_gatelet gatelet "$gatelet"
step "gatelet (this build), threads = 2 on both CPUs"
run_gatelet gatelet-2-threads "$gatelet" 2 0,1
# On two cores the run above shares CPU 1 with wrk and the backend, which are then the limit; two
# workers on CPU 0 alone show what a second worker itself costs per request.
step "gatelet (this build), threads = 2 both on CPU 0"
run_gatelet gatelet-2-on-1-cpu "$gatelet" 2 0

step "results"
python3 - "$work/results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
by = {r[0]: r for r in rows}
base = by["nginx"]
print(f"{'proxy':18} {'req/s':>8} {'CPU µs/req':>11} {'(user':>6} {'kernel)':>8} {'vs nginx':>9} {'syscalls/req':>13} {'vs nginx':>9} {'connects/1k req':>16}")
for name, us, sc, rps, conn, user, system in rows:
    print(f"{name:18} {rps:>8} {us:>11} {user:>6} {system:>8} {float(us)/float(base[1]):>8.2f}x {sc:>13} {float(sc)/float(base[2]):>8.2f}x {conn:>16}")
g, h = by["gatelet"], by["haproxy-jwt"]
print()
print(f"targets (issue 11), gatelet threads = 1:")
print(f"  CPU per request <= nginx's:            {float(g[1])/float(base[1]):.2f}x  {'met' if float(g[1]) <= float(base[1]) else 'NOT met'}")
print(f"  requests/s >= 3x HAProxy-with-JWT's:   {float(g[3])/float(h[3]):.2f}x  {'met' if float(g[3]) >= 3*float(h[3]) else 'NOT met'}")
print(f"  syscalls per request <= 8:             {float(g[2]):.1f}  {'met' if float(g[2]) <= 8 else 'NOT met'}")
print(f"  no backend connects in steady load:    {g[4]} per 1k  {'met' if float(g[4]) == 0 else 'NOT met'}")
if "nginx-2-workers" in by:
    t = by["nginx-2-workers"]
    print(f"  (nginx 1 -> 2 workers on both CPUs: req/s {float(t[3])/float(base[3]):.2f}x, CPU per request {float(t[1])/float(base[1]):.2f}x)")
if "gatelet-2-threads" in by:
    t = by["gatelet-2-threads"]
    print(f"  threads 1 -> 2 on both CPUs: req/s {float(t[3])/float(g[3]):.2f}x, CPU per request {float(t[1])/float(g[1]):.2f}x")
if "gatelet-2-on-1-cpu" in by:
    t = by["gatelet-2-on-1-cpu"]
    print(f"  threads 1 -> 2 on CPU 0:     req/s {float(t[3])/float(g[3]):.2f}x, CPU per request {float(t[1])/float(g[1]):.2f}x")
PY
