#!/usr/bin/env bash
# Runs a device build of gatelet under qemu-user inside a Debian root of the board's architecture
# (cross/rootfs.sh), as the board would: the root's own loader, libc and OpenSSL, no `-L` (the
# hang the README once described came from `-L /usr/aarch64-linux-gnu` mixing the cross loader
# with another glibc). Checks: `check`, `run`, one authenticated request through to a backend,
# one refused, a SIGHUP reload, a SIGTERM drain of a request in flight. Prints each step's time.
# Usage: cross/qemu-smoke.sh BINARY SUITE ARCH     (e.g. ... bookworm arm64)
# The bundle, keys and token come from a host build of gatelet ($HOST_GATELET, else
# target/release/gatelet or target/debug/gatelet); the backend is a small python3 server.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:?usage: qemu-smoke.sh BINARY SUITE ARCH}")
suite=${2:?usage: qemu-smoke.sh BINARY SUITE ARCH}
arch=${3:?usage: qemu-smoke.sh BINARY SUITE ARCH}
source bench/lib.sh
case "$arch" in arm64) qemu=qemu-aarch64-static ;; armhf) qemu=qemu-arm-static ;;
  *) echo "qemu-smoke.sh: arch $arch?" >&2; exit 2 ;; esac
need_apt curl:curl "$qemu:qemu-user-static"

step "root file system: $suite $arch"
root=$(cross/rootfs.sh "$suite" "$arch")
gatelet=${HOST_GATELET:-}
if [ -z "$gatelet" ]; then
  for g in target/release/gatelet target/debug/gatelet; do [ -x "$g" ] && { gatelet=$g; break; }; done
fi
if [ -z "$gatelet" ]; then cargo build --locked --bin gatelet 2>&1 | tail -n 1; gatelet=target/debug/gatelet; fi
work=$root/smoke-$$   # seen as /smoke-$$ inside the root
inside=/smoke-$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/inbox" "$work/state" "$work/spool"
cp "$bin" "$work/gatelet"
install -m 0755 "$(command -v "$qemu")" "$root/usr/bin/$qemu"
# Runs the device binary: chroot into the board's root, qemu-user explicitly, no -L.
device() { chroot "$root" "/usr/bin/$qemu" "$inside/gatelet" "$@"; }
echo "binary: $(file -b "$bin" | cut -d, -f1-2); $(du -h "$bin" | cut -f1)"
echo "needs: $(objdump -p "$bin" 2>/dev/null | awk '/NEEDED/ {printf "%s ", $2}')"
echo "root: $(chroot "$root" /usr/bin/"$qemu" /bin/sh -c 'ls /lib/*/libc.so.6 /usr/lib/*/libssl.so.* 2>/dev/null | tr "\n" " "' 2>/dev/null || true)"

step "keys, bundle, token (host build $gatelet); backend on 127.0.0.1"
backend_port=$(free_port)
python3 - "$backend_port" <<'PY' &
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if "slow" in self.path:
            time.sleep(1.5)
        body = b'{"backend":"smoke"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)
make_bundle "$backend_port"
cat >>"$work/project/apis/bench.yaml" <<'YAML'
  /slow:
    get: {responses: {'200': {description: ok}}}
YAML
$gatelet bundle build "$work/project" --key "$work/pub.key" --out "$work/bundle.glb" --serial 1 >/dev/null
$gatelet bundle build "$work/project" --key "$work/pub.key" --out "$work/bundle-2.glb" --serial 2 >/dev/null
http_port=$(free_port); admin_port=$(free_port)
cat >"$work/gatelet.toml" <<TOML
[server]
listen = "127.0.0.1:$http_port"
admin_listen = "127.0.0.1:$admin_port"
threads = 2
drain_timeout_s = 10
[bundle]
path = "$inside/bundle.glb"
trusted_keys = ["$inside/pub.pub"]
inbox = "$inside/inbox"
[state]
dir = "$inside/state"
[usage]
spool_dir = "$inside/spool"
TOML

step "gatelet check (under $qemu)"
t=$(date +%s.%N)
device check --config "$inside/gatelet.toml"
echo "check took $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s"

step "gatelet run: until /readyz 200"
t=$(date +%s.%N)
chroot "$root" "/usr/bin/$qemu" "$inside/gatelet" run --config "$inside/gatelet.toml" 2>"$work/run.log" &
pid=$!
pids+=("$pid")
ready=""
for _ in $(seq 1 600); do
  if curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$ready" ] || { cat "$work/run.log" >&2; echo "FAIL: not ready" >&2; exit 1; }
echo "ready after $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s"

step "one authenticated request through to the backend, one refused"
t=$(date +%s.%N)
out=$(curl -s -w ' %{http_code}' -H "Authorization: Bearer $(cat "$work/token")" "http://127.0.0.1:$http_port/bench/1/hello")
[ "$out" = '{"backend":"smoke"} 200' ] || { echo "FAIL: authenticated request: $out" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/bench/1/hello")
[ "$code" = 401 ] || { echo "FAIL: request without a token: $code" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer x$(cat "$work/token")" "http://127.0.0.1:$http_port/bench/1/hello")
[ "$code" = 401 ] || { echo "FAIL: request with a broken token: $code" >&2; exit 1; }
echo "200 with the token, 401 without and with a broken one ($(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s for the three)"

step "SIGHUP: the bundle at bundle.path replaced by serial 2"
t=$(date +%s.%N)
cp "$work/bundle-2.glb" "$work/bundle.glb"
kill -HUP "$pid"
serial=""
for _ in $(seq 1 200); do
  serial=$(curl -s "http://127.0.0.1:$admin_port/readyz" | grep -o '"bundle_serial":[0-9]*' || true)
  [ "$serial" = '"bundle_serial":2' ] && break
  sleep 0.05
done
[ "$serial" = '"bundle_serial":2' ] || { cat "$work/run.log" >&2; echo "FAIL: reload: $serial" >&2; exit 1; }
echo "serving serial 2 after $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s"

step "SIGTERM while a request is in flight: it finishes, exit 0"
curl -s -o "$work/slow.out" -w '%{http_code}' -H "Authorization: Bearer $(cat "$work/token")" \
  "http://127.0.0.1:$http_port/bench/1/slow" >"$work/slow.code" &
slow=$!
for _ in $(seq 1 200); do
  curl -s "http://127.0.0.1:$admin_port/metrics" | grep '^gatelet_requests_in_flight 1' >/dev/null && break
  sleep 0.05
done
t=$(date +%s.%N)
stop_gatelet "$pid"
wait "$slow" || true
echo "exit $stopped_rc after $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s; in-flight request: $(cat "$work/slow.code")"
[ "$stopped_rc" = 0 ] || { cat "$work/run.log" >&2; echo "FAIL: exit $stopped_rc" >&2; exit 1; }
[ "$(cat "$work/slow.code")" = 200 ] || { cat "$work/run.log" >&2; echo "FAIL: in-flight request" >&2; exit 1; }
grep -q "shutting down" "$work/run.log" || { cat "$work/run.log" >&2; echo "FAIL: no shutdown line" >&2; exit 1; }

step "qemu smoke passed: $suite $arch"
