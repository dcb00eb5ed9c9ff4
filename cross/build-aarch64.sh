#!/usr/bin/env bash
# Builds gatelet for aarch64 without Docker, with Debian 12's cross gcc and libssl-dev:arm64 and
# rustup's aarch64 standard library, then smoke-runs it under qemu-user.
# Usage: cross/build-aarch64.sh [--install-deps [--allow-libssl-upgrade]]
# Output: target/aarch64-unknown-linux-gnu/release/gatelet (stripped by the release profile); it
# needs glibc 2.34+ and OpenSSL 3 on the board (Debian 12, Ubuntu 22.04+). For older boards:
# cross/build-compat.sh. With Docker: cross/cross-build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--install-deps" ]; then
  export DEBIAN_FRONTEND=noninteractive
  dpkg --add-architecture arm64
  apt-get update -qq || echo "apt-get update reported errors (a mirror in mid-sync?); going on with the lists it has" >&2
  pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libssl-dev:arm64 qemu-user-static)
  # libssl3:arm64 must be exactly the host's libssl3 version (Multi-Arch: same). When the host's
  # is older than the archive's, apt upgrades the host's libssl3 as well: say so, and only go on
  # when asked to.
  upgrade=$(apt-get -s install "${pkgs[@]}" 2>/dev/null | grep -E '^Inst libssl3(:amd64)? ' || true)
  if [ -n "$upgrade" ]; then
    echo "note: libssl-dev:arm64 needs this machine's own libssl3 upgraded to the same version:" >&2
    echo "  $upgrade" >&2
    if [ "${2:-}" != "--allow-libssl-upgrade" ]; then
      echo "re-run with --install-deps --allow-libssl-upgrade to accept that, or build without host" >&2
      echo "packages: cross/cross-build.sh (Docker) or cross/build-compat.sh (zig, static OpenSSL)" >&2
      exit 1
    fi
  fi
  apt-get install -y -qq "${pkgs[@]}" >/dev/null
  rustup target add aarch64-unknown-linux-gnu
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig
cargo build --release --locked --target aarch64-unknown-linux-gnu --bin gatelet
bin=${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/release/gatelet
ls -l "$bin"
file "$bin" 2>/dev/null || true
# qemu-user without -L: the binary's loader is /lib/ld-linux-aarch64.so.1 from libc6:arm64, with
# its own libc beside it. (-L /usr/aarch64-linux-gnu would load the cross toolchain's loader next
# to libc6:arm64's libc.so.6, a mismatched glibc that spins in pthread_create.)
qemu-aarch64-static "$bin" keygen --out "$(mktemp -d)/k"
echo "the daemon itself: cross/qemu-smoke.sh $bin bookworm arm64"
