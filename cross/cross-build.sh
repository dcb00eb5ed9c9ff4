#!/usr/bin/env bash
# `cross build --release --target aarch64-unknown-linux-gnu`, exactly as a user runs it with
# Cross.toml, on a machine whose Docker engine reaches no registry: the base image the
# Dockerfile starts FROM (debian:bookworm) is made here, from a debootstrap'd Debian 12 root
# (cross/rootfs.sh) and `docker import`. cross itself comes from crates.io.
# Usage: cross/cross-build.sh [TARGET]   (default aarch64-unknown-linux-gnu; armv7-unknown-linux-gnueabihf
#        also has a Dockerfile). Output: target/cross/TARGET/release/gatelet. Prints each step's time.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
triple=${1:-aarch64-unknown-linux-gnu}
command -v docker >/dev/null || { echo "cross-build.sh: no docker here" >&2; exit 1; }

step "base image debian:bookworm (debootstrap'd root, docker import)"
from=$(sed -n 's/^FROM //p' cross/Dockerfile.aarch64 | head -n 1)
if docker image inspect "$from" >/dev/null 2>&1; then
  echo "$from: already there"
else
  root=$(cross/rootfs.sh bookworm amd64)
  tar -C "$root" --exclude=./.complete -c . | docker import - "$from"
fi
docker image ls "$from"

step "cross (crates.io)"
export PATH=$HOME/.cargo/bin:$PATH
if ! command -v cross >/dev/null; then
  cargo install cross --locked --version 0.2.5 2>&1 | tail -n 1
fi
{ cross --version 2>/dev/null || true; } | sed -n 1p
rustup target add "$triple" >/dev/null 2>&1 || true
# cross 0.2.5 reads `rustup toolchain list` expecting "NAME (default)"; rustup 1.28+ prints
# "NAME (active, default)", so cross takes the toolchain in use for a missing one and tries to
# install (update) it. A `rustup` in front of the real one prints the old form for cross only.
# cross also adds `rust-src` when the target is installed (for xargo, which a built-in target does
# not use); on a channel toolchain `rustup component add` updated the whole toolchain mid-run
# (1.95 to 1.99, with new lints), so the front skips that one call.
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
real_rustup=$(command -v rustup)
cat >"$shim/rustup" <<SHIM
#!/bin/sh
if [ "\$1 \$2" = "toolchain list" ]; then
  "$real_rustup" "\$@" | sed 's/ (active, default)\$/ (default)/; s/ (active)\$//'
elif [ "\$1 \$2 \$3" = "component add rust-src" ]; then
  echo "cross-build.sh: not adding rust-src (xargo only; it would update the toolchain)" >&2
else
  exec "$real_rustup" "\$@"
fi
SHIM
chmod +x "$shim/rustup"

step "cross build --release --target $triple (target dir target/cross)"
# Its own target dir: build scripts compiled inside the image must not churn the host's target/release.
t=$(date +%s)
before=$(rustc -V)
PATH=$shim:$PATH cross build --release --locked --target "$triple" --bin gatelet --target-dir target/cross
after=$(rustc -V)
if [ "$before" != "$after" ]; then
  echo "WARNING: the host toolchain changed during the cross build: $before -> $after" >&2
fi
bin=target/cross/$triple/release/gatelet
echo "cross build took $(( $(date +%s) - t )) s"
ls -l "$bin"
file "$bin"
echo "glibc floor: $(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -n 1)"
echo "needs: $(objdump -p "$bin" | awk '/NEEDED/ {printf "%s ", $2}')"
