#!/usr/bin/env bash
# A minimal chroot of a Debian release with what building and checking xenp2m's package
# needs there: that release's libxen-dev (headers and libraries of its Xen), the
# libraries the Swift toolchain itself links (it is bind-mounted from /opt/swift at build
# time, never copied), dpkg-dev for dpkg-shlibdeps, and lintian. Cached under
# /var/cache/xenp2m-build/, keyed by the candidate versions of those packages and this
# script, so a new Debian point release or security update rebuilds it.
# Usage: build-chroot.sh RELEASE   (prints the chroot directory)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/release.sh"
REL_TAG=build-chroot
rel_init "${1:?usage: build-chroot.sh bookworm|trixie}"
rel_need_root
rel_need_tools debootstrap:debootstrap
CACHE=${XENP2M_BUILD_CACHE:-/var/cache/xenp2m-build}

# The toolchain's own dependencies (readelf -d /opt/swift/usr/bin/*): curl, xml2, edit,
# sqlite, ncurses; libstdc++ headers for the C++ interop modules Foundation imports.
case $SUITE in
  bookworm) TOOLCHAIN_LIBS=(libcurl4 libxml2 libedit2 libsqlite3-0 libncurses6 libstdc++-12-dev libpython3.11) ;;
  trixie) TOOLCHAIN_LIBS=(libcurl4t64 libxml2 libedit2 libsqlite3-0 libncurses6 libstdc++-14-dev libpython3.13) ;;
esac
PKGS=(gcc libc6-dev libxen-dev pkg-config git dpkg-dev binutils lintian "${TOOLCHAIN_LIBS[@]}")

rel_apt_update
KEY=$( { for p in "${PKGS[@]}"; do echo "$p $(rel_candidate "$p")"; done; rel_sources; cat "$0" "$HERE/../lib/release.sh"; } | sha256sum | cut -c1-16)
OUT=$CACHE/chroot-$SUITE-$KEY
if [ -f "$OUT/.complete" ]; then
  rel_log "$SUITE build chroot cache hit: $OUT"; printf '%s\n' "$OUT"; exit 0
fi
rel_log "building the $SUITE build chroot $KEY (no cache hit)"
rm -rf "$OUT"; mkdir -p "$OUT"
t0=$(date +%s)
MIRROR=$(rel_mirror)
debootstrap --variant=minbase "$SUITE" "$OUT/root" "$MIRROR" > "$OUT/debootstrap.log" 2>&1 ||
  { tail -30 "$OUT/debootstrap.log" >&2; rel_die "debootstrap $SUITE failed"; }
rel_sources | while read -r url suite; do echo "deb $url $suite main"; done > "$OUT/root/etc/apt/sources.list"
rm -f "$OUT/root/etc/apt/sources.list.d/"*.sources
printf '#!/bin/sh\nexit 101\n' > "$OUT/root/usr/sbin/policy-rc.d"; chmod +x "$OUT/root/usr/sbin/policy-rc.d"
mounts=()
cleanup() { local m; for m in $(printf '%s\n' "${mounts[@]}" | tac); do umount -l "$m" 2>/dev/null || true; done; mounts=(); }
trap cleanup EXIT
for m in proc sys dev; do mount --bind "/$m" "$OUT/root/$m"; mounts+=("$OUT/root/$m"); done
cp /etc/resolv.conf "$OUT/root/etc/resolv.conf" 2>/dev/null || true
{ chroot "$OUT/root" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
  chroot "$OUT/root" env DEBIAN_FRONTEND=noninteractive apt-get -y -q dist-upgrade &&
  chroot "$OUT/root" env DEBIAN_FRONTEND=noninteractive apt-get -y -q install --no-install-recommends "${PKGS[@]}"; } > "$OUT/apt.log" 2>&1 ||
  { tail -30 "$OUT/apt.log" >&2; rel_die "apt-get in the $SUITE build chroot failed"; }
chroot "$OUT/root" apt-get clean
cleanup; trap - EXIT
chroot "$OUT/root" dpkg-query -W -f '${Version}\n' libxen-dev > "$OUT/libxen-dev.version"
touch "$OUT/.complete"
rel_log "$SUITE build chroot built in $(( $(date +%s) - t0 )) s: $OUT"
for d in "$CACHE"/chroot-"$SUITE"-*; do [ "$d" = "$OUT" ] || rm -rf "$d"; done
printf '%s\n' "$OUT"
