#!/usr/bin/env bash
# Builds gatelet's Debian package from a built binary, with dpkg-deb alone (no cargo-deb, no
# debhelper): the binary, the systemd unit, the sysusers and tmpfiles files, and
# /etc/gatelet/gatelet.toml as a conffile.
# Usage: packaging/build-deb.sh ARCH BINARY [OUT_DIR] [NAME_SUFFIX]
#   ARCH: amd64, arm64 or armhf (Debian's names); BINARY: the gatelet built for it.
#   NAME_SUFFIX: e.g. "+compat" for the build that needs neither glibc 2.34 nor OpenSSL 3.
# The Depends line is read off the binary: libc6 (>= its glibc floor), libssl3 when it links
# libssl.so.3, libssl1.1 for libssl.so.1.1, libgcc-s1 for libgcc_s.
# Prints the path of the .deb it wrote.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
arch=${1:?usage: build-deb.sh ARCH BINARY [OUT_DIR] [NAME_SUFFIX]}
bin=${2:?usage: build-deb.sh ARCH BINARY [OUT_DIR] [NAME_SUFFIX]}
out=${3:-$root/target/deb}
suffix=${4:-}
case "$arch" in amd64|arm64|armhf) ;; *) echo "build-deb.sh: unknown arch $arch" >&2; exit 2 ;; esac
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
[ -n "$version" ] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }

# What the binary needs, from its dynamic section (objdump from binutils-multiarch or the
# target's binutils; plain objdump reads the dynamic section of any ELF it knows).
objdump=objdump
for o in objdump aarch64-linux-gnu-objdump arm-linux-gnueabihf-objdump; do
  if command -v "$o" >/dev/null && "$o" -p "$bin" >/dev/null 2>&1; then objdump=$o; break; fi
done
glibc=$("$objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
needed=$("$objdump" -p "$bin" | awk '/NEEDED/ {print $2}')
depends="libc6 (>= $glibc)"
case "$needed" in *libssl.so.3*) depends="$depends, libssl3" ;; esac
case "$needed" in *libssl.so.1.1*) depends="$depends, libssl1.1" ;; esac
case "$needed" in *libgcc_s*) depends="$depends, libgcc-s1 | libgcc1" ;; esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
install -D -m 0755 "$bin" "$stage/usr/bin/gatelet"
install -D -m 0644 "$root/systemd/gatelet.service" "$stage/lib/systemd/system/gatelet.service"
install -D -m 0644 "$root/systemd/gatelet.sysusers" "$stage/usr/lib/sysusers.d/gatelet.conf"
install -D -m 0644 "$root/systemd/gatelet.tmpfiles" "$stage/usr/lib/tmpfiles.d/gatelet.conf"
install -D -m 0640 "$here/gatelet.toml" "$stage/etc/gatelet/gatelet.toml"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/gatelet/README.md"
install -d -m 0755 "$stage/DEBIAN"
echo /etc/gatelet/gatelet.toml > "$stage/DEBIAN/conffiles"
size=$(du -k -s "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: gatelet
Version: $version$suffix
Architecture: $arch
Maintainer: gatelet developers <gatelet@localhost>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Homepage: https://github.com/gatelet/gatelet
Description: offline API microgateway for Linux boards
 Serves APIs from a signed bundle: local JWT and API-key checks, throttling,
 usage records spooled to flash. Runs as a sandboxed systemd service.
CONTROL
install -m 0755 "$here/postinst" "$stage/DEBIAN/postinst"
install -m 0755 "$here/prerm" "$stage/DEBIAN/prerm"
install -m 0755 "$here/postrm" "$stage/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/gatelet_$version${suffix}_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
