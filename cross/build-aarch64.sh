#!/usr/bin/env bash
# Builds gatelet for aarch64 without Docker, with Debian's cross toolchain, and smoke-runs the
# result under qemu-user. Usage: cross/build-aarch64.sh [--install-deps]
# Output: target/aarch64-unknown-linux-gnu/release/gatelet (stripped by the release profile).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--install-deps" ]; then
  export DEBIAN_FRONTEND=noninteractive
  dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu \
    libssl-dev:arm64 qemu-user-static >/dev/null
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig
# Debian's cargo carries the aarch64 standard library (libstd-rust-web-dev:arm64); rustup's may not.
CARGO=/usr/bin/cargo
if [ -x "$CARGO" ] && [ -x /usr/bin/rustc ]; then
  export RUSTC=/usr/bin/rustc   # Debian's compiler, matching its aarch64 standard library
else
  CARGO=cargo                   # rustup: needs `rustup target add aarch64-unknown-linux-gnu`
fi
"$CARGO" build --release --locked --target aarch64-unknown-linux-gnu --bin gatelet
bin=${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/release/gatelet
ls -l "$bin"
file "$bin" 2>/dev/null || true
# OpenSSL's CPU probe hangs under qemu-user without this.
OPENSSL_armcap=0 qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" keygen --out "$(mktemp -d)/k"
