#!/usr/bin/env bash
# Footprint: binary size, time from exec to READY=1 with a 100-API bundle, idle RSS.
# Usage: bench/footprint.sh  (uses the release build; CARGO_TARGET_DIR honoured)
set -euo pipefail
cd "$(dirname "$0")/.."
t=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bin gatelet 2>&1 | tail -1
g=$t/release/gatelet
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/project/apis"
$g keygen --out "$work/pub" >/dev/null
printf 'label = "footprint"\n' > "$work/project/gatelet.toml"
for i in $(seq 1 100); do
  cat > "$work/project/apis/api$i.yaml" <<YAML
openapi: 3.0.3
info: {title: Api$i, version: "1"}
x-wso2-basePath: /api$i/{version}
x-wso2-production-endpoints: {urls: ["http://127.0.0.1:18080/svc$i"]}
x-wso2-throttling-tier: 10kPerMin
paths:
  /items: {get: {responses: {'200': {description: ok}}}}
  /items/{id}: {get: {responses: {'200': {description: ok}}}, put: {responses: {'200': {description: ok}}}}
  /orders: {post: {responses: {'200': {description: ok}}}}
YAML
done
$g bundle build "$work/project" --key "$work/pub.key" --out "$work/bundle.glb" --serial 1 >/dev/null
cat > "$work/gatelet.toml" <<TOML
[server]
listen = "127.0.0.1:18190"
admin_listen = ""
[bundle]
path = "$work/bundle.glb"
trusted_keys = ["$work/pub.pub"]
inbox = ""
[state]
dir = "$work/state"
[log]
level = "warn"
TOML
python3 - "$g" "$work" <<'PY'
import os, socket, subprocess, sys, time
g, work = sys.argv[1], sys.argv[2]
sock_path = os.path.join(work, "notify.sock")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sock_path); s.settimeout(10)
times = []
for run in range(5):
    env = dict(os.environ, NOTIFY_SOCKET=sock_path)
    t0 = time.perf_counter()
    p = subprocess.Popen([g, "run", "--config", os.path.join(work, "gatelet.toml")], env=env)
    while s.recv(256).strip() != b"READY=1":
        pass
    times.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.5)
    rss = int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0])
    p.terminate(); p.wait()
    while True:
        try:
            s.settimeout(0.2); s.recv(256)
        except socket.timeout:
            break
    s.settimeout(10)
times.sort()
print(f"binary: {os.path.getsize(g)/1048576:.2f} MiB ({g})")
print(f"exec to READY=1 with a 100-API bundle: median {times[2]:.1f} ms (min {times[0]:.1f}, max {times[-1]:.1f})")
print(f"idle RSS: {rss/1024:.2f} MiB ({rss} KiB)")
PY
