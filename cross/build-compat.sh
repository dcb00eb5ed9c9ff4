#!/usr/bin/env bash
# The "compat" device builds, for boards without glibc 2.34 or OpenSSL 3 (Debian 11, Raspberry
# Pi OS bullseye, Ubuntu 20.04, and older down to glibc 2.17): OpenSSL built from source and
# linked in statically (the `vendored-openssl` cargo feature), glibc symbols no newer than 2.17
# (cargo-zigbuild, with zig from PyPI's `ziglang`). No Docker, no foreign-architecture apt packages.
# Usage: cross/build-compat.sh [TRIPLE]   (aarch64-unknown-linux-gnu by default, or
#        armv7-unknown-linux-gnueabihf). Output: target/compat/TRIPLE/release/gatelet.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
triple=${1:-aarch64-unknown-linux-gnu}
glibc=2.17

step "zig (PyPI ziglang), cargo-zigbuild (crates.io), rustup target $triple"
export PATH=$HOME/.cargo/bin:$PATH
python3 -c 'import ziglang' 2>/dev/null || pip install -q ziglang 2>&1 | grep -v "^WARNING: Running pip as" || true
echo "zig $(python3 -m ziglang version)"
command -v cargo-zigbuild >/dev/null || cargo install cargo-zigbuild --locked 2>&1 | tail -n 1
cargo-zigbuild --version
rustup target add "$triple" >/dev/null 2>&1 || rustup target list --installed | grep -x "$triple" >/dev/null
# OpenSSL's own build wants perl and make.
need_apt perl:perl make:make

step "cargo zigbuild --release --features vendored-openssl --target $triple.$glibc"
t=$(date +%s)
cargo zigbuild --release --locked --features vendored-openssl --target "$triple.$glibc" --bin gatelet \
  --target-dir target/compat
bin=target/compat/$triple/release/gatelet
echo "build took $(( $(date +%s) - t )) s"
ls -l "$bin"
file "$bin"
echo "glibc floor: $(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -n 1)"
echo "needs: $(objdump -p "$bin" | awk '/NEEDED/ {printf "%s ", $2}')"
