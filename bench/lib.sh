# Helpers shared by the scripts under bench/ (sourced, not run).
#
# They expect `set -euo pipefail`, the repository root as the working directory, and `$work`
# (a scratch directory the caller removes on exit).

bench_t0=$(date +%s.%N)
bench_last=$bench_t0

# step NAME: prints the time since the start and how long the previous step took.
step() {
  local now
  now=$(date +%s.%N)
  awk -v s="$1" -v n="$now" -v t0="$bench_t0" -v l="$bench_last" \
    'BEGIN {printf "\n==> %s  (at %.1f s; previous step took %.1f s)\n", s, n - t0, n - l}'
  bench_last=$now
}

# need_apt CMD:PACKAGE...: installs the Debian packages whose command is missing.
need_apt() {
  local want=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || want+=("${pair#*:}")
  done
  if [ ${#want[@]} -gt 0 ]; then
    echo "installing: ${want[*]}"
    # A foreign architecture's lists caught mid-sync fail the update without harming ours.
    apt-get update -qq || echo "apt-get update reported errors; installing from the lists it has"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
  fi
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now (other engineers run benches
# and tests on this machine too, so fixed ports would collide).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# build_release: the binaries under test (a no-op when they are up to date).
build_release() {
  cargo build --release --locked --bin gatelet --example bench_backend 2>&1 | tail -1
  target=${CARGO_TARGET_DIR:-target}
  gatelet=$target/release/gatelet
  backend=$target/release/examples/bench_backend
}

# make_bundle BACKEND_PORT: keys, a one-API project (GET /bench/1/hello, POST /bench/1/echo),
# a signed bundle in $work/bundle.glb, and a valid token in $work/token. The tiers are high
# enough never to throttle: these benches measure the gateway, not its quotas.
make_bundle() {
  local port=$1
  mkdir -p "$work/project/apis" "$work/project/keys"
  $gatelet keygen --out "$work/pub" >/dev/null
  $gatelet keygen --out "$work/iss" >/dev/null
  cp "$work/iss.pub" "$work/project/keys/iss.pub"
  cat >"$work/project/gatelet.toml" <<TOML
label = "bench"
[[issuer]]
name = "bench"
issuer = "https://bench/"
keys = ["keys/iss.pub"]
validate_subscription = true
[policies.api]
Huge = { requests = 1000000000, per = "1m" }
[policies.subscription]
HugeSub = { requests = 1000000000, per = "1m" }
TOML
  cat >"$work/project/apis/bench.yaml" <<YAML
openapi: 3.0.3
info: {title: Bench, version: "1"}
x-wso2-basePath: /bench/{version}
x-wso2-production-endpoints: {urls: ["http://127.0.0.1:$port"]}
x-wso2-throttling-tier: Huge
paths:
  /hello:
    get: {responses: {'200': {description: ok}}}
  /echo:
    post: {responses: {'200': {description: ok}}}
YAML
  $gatelet bundle build "$work/project" --key "$work/pub.key" --out "$work/bundle.glb" --serial 1 >/dev/null
  $gatelet token mint --key "$work/iss.key" --issuer https://bench/ --subject bench --api Bench:1 \
    --tier HugeSub --app-id a1 --ttl 7200 >"$work/token"
}

# wait_healthy ADMIN_ADDR PID: until /healthz answers (at most 10 s), or the process died.
wait_healthy() {
  local i
  for i in $(seq 1 200); do
    curl -sf "http://$1/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "gatelet exited during start-up" >&2; return 1; }
    sleep 0.05
  done
  echo "gatelet not healthy after 10 s" >&2
  return 1
}

# stop_gatelet PID: SIGTERM, then wait at most 30 s for the exit (SIGKILL after that); the exit
# status is left in $stopped_rc (137 when it had to be killed).
stop_gatelet() {
  local pid=$1 state=gone i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
    if [ "$state" = Z ] || [ "$state" = gone ]; then break; fi
    sleep 0.1
  done
  if [ "$state" != Z ] && [ "$state" != gone ]; then
    echo "gatelet $pid still running 30 s after SIGTERM: killed" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  set +e
  wait "$pid"
  stopped_rc=$?
  set -e
}

# haproxy_jwt PORT BACKEND_PORT: the HAProxy 2.6 the benches compare with, verifying ES256 JWTs
# (HAProxy has no EdDSA) with a stick table counting requests per token subject, in front of the
# backend; pinned to CPU 0 with one thread. Sets $es_token (a valid token for it) and $haproxy_pid.
haproxy_jwt() {
  local port=$1 bport=$2
  openssl ecparam -name prime256v1 -genkey -noout -out "$work/es.key" 2>/dev/null
  openssl ec -in "$work/es.key" -pubout -out "$work/es.pub" 2>/dev/null
  es_token=$(python3 - "$work/es.key" <<'PY'
import base64, json, subprocess, sys, time
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
h = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
p = b64(json.dumps({"iss": "https://bench/", "sub": "bench", "exp": int(time.time()) + 3600}).encode())
der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", sys.argv[1]], input=f"{h}.{p}".encode(), capture_output=True, check=True).stdout
# DER ECDSA signature (30 len 02 rlen r 02 slen s) → raw r||s, the JWS form.
i = 2 if der[1] < 0x80 else 3
rl = der[i + 1]; r = der[i + 2:i + 2 + rl]; i += 2 + rl
sl = der[i + 1]; s = der[i + 2:i + 2 + sl]
r = r.lstrip(b"\0").rjust(32, b"\0"); s = s.lstrip(b"\0").rjust(32, b"\0")
print(f"{h}.{p}.{b64(r + s)}")
PY
)
  cat >"$work/haproxy.cfg" <<CFG
global
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$port
  stick-table type string len 64 size 100k expire 60s store http_req_rate(60s)
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_header_query('\$.alg') -m str ES256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("ES256","$work/es.pub") -m int 1 }
  http-request track-sc0 var(txn.bearer),jwt_payload_query('\$.sub')
  http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000000 }
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$bport
CFG
  taskset -c 0 haproxy -f "$work/haproxy.cfg" &
  haproxy_pid=$!
  local _
  for _ in $(seq 50); do
    curl -sf -H "Authorization: Bearer $es_token" "http://127.0.0.1:$port/hello" >/dev/null && return 0
    sleep 0.1
  done
  echo "HAProxy did not answer on port $port"
  return 1
}
