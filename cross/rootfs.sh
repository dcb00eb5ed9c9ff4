#!/usr/bin/env bash
# A Debian root file system for the device checks, made once with debootstrap and kept under
# ${GATELET_ROOTFS_CACHE:-/var/cache/gatelet-ci} so that a re-run takes seconds.
# Usage: cross/rootfs.sh SUITE ARCH   (e.g. bookworm amd64, bookworm arm64, bullseye arm64,
#        bullseye armhf). Prints the root's path.
# amd64 roots carry systemd (booted with systemd-nspawn -b, and the base image of the cross build);
# the others carry what a board's gatelet loads (libc, libgcc, OpenSSL) and run under qemu-user.
set -euo pipefail
suite=${1:?usage: rootfs.sh SUITE ARCH}
arch=${2:?usage: rootfs.sh SUITE ARCH}
cache=${GATELET_ROOTFS_CACHE:-/var/cache/gatelet-ci}
root=$cache/$suite-$arch
if [ -e "$root/.complete" ]; then echo "$root"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
command -v debootstrap >/dev/null || { apt-get update -qq >&2 || true; apt-get install -y -qq debootstrap >&2; }
case "$arch" in
  amd64) include=systemd,systemd-sysv,dbus,ca-certificates ;;
  *)
    # A foreign root runs its maintainer scripts under qemu-user through binfmt_misc.
    command -v qemu-aarch64-static >/dev/null && command -v update-binfmts >/dev/null ||
      { apt-get update -qq >&2 || true; apt-get install -y -qq qemu-user-static binfmt-support >&2; }
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    q=$( [ "$arch" = arm64 ] && echo qemu-aarch64 || echo qemu-arm )
    [ -e /proc/sys/fs/binfmt_misc/$q ] || update-binfmts --enable "$q" >&2
    case "$suite" in bullseye) include=libssl1.1,ca-certificates ;; *) include=libssl3,ca-certificates ;; esac ;;
esac
rm -rf "$root.tmp"
mkdir -p "$cache"
t0=$(date +%s)
debootstrap --arch="$arch" --variant=minbase --include="$include" "$suite" "$root.tmp" \
  http://deb.debian.org/debian >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; exit 1; }
rm -rf "$root"
mv "$root.tmp" "$root"
touch "$root/.complete"
echo "debootstrap $suite $arch: $(( $(date +%s) - t0 )) s" >&2
echo "$root"
