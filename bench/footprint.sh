#!/usr/bin/env bash
# Footprint: binary size, time from exec to READY=1 with a 100-API bundle, and the idle process
# with `threads = 1`: RSS split into private (anonymous) and file-backed pages, and its threads by
# name. Usage:
#   bench/footprint.sh                                     # the release build (CARGO_TARGET_DIR honoured)
#   GATELET_BASELINE=/path/to/other/gatelet bench/footprint.sh   # also another build, same run
# Each build runs a bundle its own toolkit made. The usage spooler runs (its default spool
# directory under the work directory), as on a device.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bin gatelet 2>&1 | tail -1
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# setup NAME BINARY: a 100-API project, its bundle and a device config under $work/NAME.
setup() {
  local d=$work/$1 g=$2 i
  mkdir -p "$d/project/apis"
  $g keygen --out "$d/pub" >/dev/null
  printf 'label = "footprint"\n' > "$d/project/gatelet.toml"
  for i in $(seq 1 100); do
    cat > "$d/project/apis/api$i.yaml" <<YAML
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
  $g bundle build "$d/project" --key "$d/pub.key" --out "$d/bundle.glb" --serial 1 >/dev/null
  cat > "$d/gatelet.toml" <<TOML
[server]
listen = "127.0.0.1:0"
admin_listen = ""
threads = 1
[bundle]
path = "$d/bundle.glb"
trusted_keys = ["$d/pub.pub"]
inbox = ""
[state]
dir = "$d/state"
[usage]
spool_dir = "$d/spool"
[log]
level = "warn"
TOML
}

builds=("this:$t/release/gatelet")
[ -n "${GATELET_BASELINE:-}" ] && builds+=("baseline:$GATELET_BASELINE")
for b in "${builds[@]}"; do setup "${b%%:*}" "${b#*:}"; done

python3 - "$work" "${builds[@]}" <<'PY'
import collections, os, socket, subprocess, sys, time
work, builds = sys.argv[1], [b.split(":", 1) for b in sys.argv[2:]]

def kib(path, key):
    for line in open(path):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0

def measure(name, g):
    d = os.path.join(work, name)
    sock_path = os.path.join(d, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sock_path); s.settimeout(10)
    times, idle = [], None
    for run in range(5):
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        t0 = time.perf_counter()
        p = subprocess.Popen([g, "run", "--config", os.path.join(d, "gatelet.toml")], env=env)
        while s.recv(256).strip() != b"READY=1":
            pass
        times.append((time.perf_counter() - t0) * 1000)
        time.sleep(1.0)  # idle: start-up done, the spooler's first flush timer armed
        st = f"/proc/{p.pid}/status"
        names = collections.Counter(open(f"/proc/{p.pid}/task/{t}/comm").read().strip()
                                    for t in os.listdir(f"/proc/{p.pid}/task"))
        sample = dict(rss=kib(st, "VmRSS"), anon=kib(st, "RssAnon"), file=kib(st, "RssFile"),
                      private=kib(f"/proc/{p.pid}/smaps_rollup", "Private_Clean")
                      + kib(f"/proc/{p.pid}/smaps_rollup", "Private_Dirty"),
                      threads=sum(names.values()), names=names)
        if idle is None or sample["anon"] < idle["anon"]:
            idle = sample  # the least of 5 runs: allocator noise only ever adds
        p.terminate(); p.wait()
        while True:
            try:
                s.settimeout(0.2); s.recv(256)
            except socket.timeout:
                break
        s.settimeout(10)
    s.close()
    times.sort()
    return dict(size=os.path.getsize(g), ready=times[2], **idle)

rows = [(name, g, measure(name, g)) for name, g in builds]
for name, g, m in rows:
    print(f"\n{name}: {g}")
    print(f"  binary: {m['size']/1048576:.2f} MiB")
    print(f"  exec to READY=1 with a 100-API bundle: median {m['ready']:.1f} ms")
    print(f"  idle, threads = 1 (least of 5 runs): RSS {m['rss']/1024:.2f} MiB = private (RssAnon) "
          f"{m['anon']/1024:.2f} MiB + file-backed (RssFile) {m['file']/1024:.2f} MiB; "
          f"{m['threads']} threads: " + ", ".join(f"{n} x{c}" if c > 1 else n for n, c in sorted(m["names"].items())))
if len(rows) == 2:
    (_, _, a), (_, _, b) = rows
    print("\nthis / baseline: binary {:.2f}x, RSS {:.2f}x, private {:.2f}x, file-backed {:.2f}x, threads {} vs {}".format(
        a["size"] / b["size"], a["rss"] / b["rss"], a["anon"] / b["anon"], a["file"] / b["file"], a["threads"], b["threads"]))
PY
