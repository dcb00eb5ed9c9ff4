#!/usr/bin/env bash
# Installs gatelet's amd64 .deb into a debootstrap'd Debian 12 root, boots that root with
# `systemd-nspawn -b`, and checks the unit as a board would run it: up before its first bundle
# (/readyz 503 "waiting for the first bundle", no restart loop), then /readyz 200 once a bundle is
# dropped into its inbox. Prints each step's time.
# Usage: packaging/nspawn-test.sh [DEB]   (default: builds one from target/release/gatelet)
# The root is cached (cross/rootfs.sh); each run boots a fresh copy of it under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_apt systemd-nspawn:systemd-container curl:curl debootstrap:debootstrap
work=$(mktemp -d)
target=${CARGO_TARGET_DIR:-target}
machine=$target/nspawn-bookworm
nspawn_pid=""
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step "package (amd64)"
deb=${1:-}
if [ -z "$deb" ]; then
  [ -x "$target/release/gatelet" ] || cargo build --release --locked --bin gatelet 2>&1 | tail -n 1
  deb=$(packaging/build-deb.sh amd64 "$target/release/gatelet" "$target/deb")
fi
gatelet=${HOST_GATELET:-$target/release/gatelet}
[ -x "$gatelet" ] || gatelet=$target/debug/gatelet
dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
dpkg-deb --contents "$deb" | awk '{print $1, $2, $6}'

step "Debian 12 root (cached), fresh copy"
base=$(cross/rootfs.sh bookworm amd64)
rm -rf "$machine"
cp -a "$base" "$machine"
mkdir -p "$machine/var/log/journal"   # a persistent journal the host reads afterwards

step "dpkg -i, provision: publisher key, listener ports (/etc/gatelet/env), enable"
cp "$deb" "$machine/tmp/gatelet.deb"
chroot "$machine" dpkg -i /tmp/gatelet.deb
chroot "$machine" stat -c '%n %U:%G %a' /etc/gatelet /etc/gatelet/gatelet.toml /var/lib/gatelet /var/lib/gatelet/inbox
[ "$(chroot "$machine" stat -c '%U:%G %a' /etc/gatelet)" = "root:gatelet 750" ] || { echo "FAIL: /etc/gatelet" >&2; exit 1; }
# An upgrade must keep a changed config: reinstall over an edited one.
echo "# edited on the board" >>"$machine/etc/gatelet/gatelet.toml"
chroot "$machine" dpkg -i --force-confold /tmp/gatelet.deb >/dev/null
grep -q "edited on the board" "$machine/etc/gatelet/gatelet.toml" || { echo "FAIL: config overwritten" >&2; exit 1; }
"$gatelet" keygen --out "$work/pub" >/dev/null
cp "$work/pub.pub" "$machine/etc/gatelet/publisher.pub"
http_port=$(free_port); admin_port=$(free_port)
printf 'GATELET_SERVER_LISTEN=127.0.0.1:%s\nGATELET_SERVER_ADMIN_LISTEN=127.0.0.1:%s\n' "$http_port" "$admin_port" \
  >"$machine/etc/gatelet/env"
chroot "$machine" sh -c 'chown root:gatelet /etc/gatelet/publisher.pub /etc/gatelet/env && chmod 0640 /etc/gatelet/publisher.pub /etc/gatelet/env'
chroot "$machine" systemctl enable gatelet.service

step "boot: systemd-nspawn -b (host network, ports $http_port/$admin_port)"
t=$(date +%s.%N)
systemd-nspawn -q -b -D "$machine" --register=no --keep-unit -M gatelet-ci >"$work/console.log" 2>&1 &
nspawn_pid=$!
journal() { journalctl -q --directory="$machine/var/log/journal" "$@" 2>/dev/null || true; }
waiting=""
for _ in $(seq 1 600); do
  body=$(curl -s "http://127.0.0.1:$admin_port/readyz" || true)
  case "$body" in *"waiting for the first bundle"*) waiting=1; break ;; esac
  kill -0 "$nspawn_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$waiting" ]; then
  tail -n 60 "$work/console.log" >&2; journal -u gatelet.service | tail -n 40 >&2
  echo "FAIL: the unit did not come up waiting for its first bundle" >&2; exit 1
fi
echo "booted, unit up before its first bundle: /readyz $body ($(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s)"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/any")
[ "$code" = 503 ] || { echo "FAIL: data plane before the first bundle: $code" >&2; exit 1; }

step "first bundle into the inbox (as an update agent would: .name, then rename)"
mkdir -p "$work/project/apis" "$work/project/keys"
printf 'label = "nspawn"\n' >"$work/project/gatelet.toml"
cat >"$work/project/apis/p.yaml" <<YAML
openapi: 3.0.3
info: {title: P, version: "1"}
x-wso2-basePath: /p/{version}
x-wso2-production-endpoints: {urls: ["http://127.0.0.1:9"]}
paths:
  /open:
    get:
      x-wso2-disable-security: true
      responses: {'200': {description: ok}}
YAML
"$gatelet" bundle build "$work/project" --key "$work/pub.key" --out "$work/b.glb" --serial 1 >/dev/null
t=$(date +%s.%N)
cp "$work/b.glb" "$machine/var/lib/gatelet/inbox/.first.glb"
mv "$machine/var/lib/gatelet/inbox/.first.glb" "$machine/var/lib/gatelet/inbox/first.glb"
ok=""
for _ in $(seq 1 300); do
  body=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$admin_port/readyz" || true)
  case "$body" in *'"bundle_serial":1'*' 200') ok=1; break ;; esac
  sleep 0.1
done
journal -u gatelet.service | tail -n 15
[ -n "$ok" ] || { echo "FAIL: /readyz after the first bundle: $body" >&2; exit 1; }
echo "/readyz $body ($(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s after the drop)"
[ -f "$machine/var/lib/gatelet/bundle.glb" ] || { echo "FAIL: not installed at bundle.path" >&2; exit 1; }
starts=$(journal -u gatelet.service | grep -c 'Started gatelet' || true)
echo "unit starts: $starts (1 = no restart loop)"
[ "$starts" = 1 ] || { echo "FAIL: the unit restarted" >&2; exit 1; }

step "poweroff"
kill -TERM "$nspawn_pid"
for _ in $(seq 1 300); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$nspawn_pid" 2>/dev/null; then echo "container still up after 30 s" >&2; fi
wait "$nspawn_pid" 2>/dev/null || true
nspawn_pid=""
journal -u gatelet.service | grep -E 'shutting down|Stopped|Deactivated' | tail -n 3 || true
step "nspawn test passed"
