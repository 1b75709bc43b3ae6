#!/usr/bin/env bash
# Builds (or reuses) the cached dom0 root filesystem and the hypervisor binary of one
# Debian release (XENP2M_TESTBED_RELEASE), from that release's packages through the
# mirrors this machine uses (scripts/lib/release.sh). Prints the cache directory.
# Cache key: candidate versions of every package that makes up dom0, the apt sources and
# this script; a new Debian point release or security update rebuilds it.
# xenp2m itself is not in here: it goes into dom0 only through its .deb (install-dom0.sh).
. "$(dirname "$0")/lib.sh"
tb_need_root

rel_apt_update
PKGS_IMAGE=(xen-utils-$XEN_SERIES xen-utils-common xenstore-utils libxenmisc$XEN_SERIES
  linux-image-amd64 linux-headers-amd64 initramfs-tools systemd systemd-sysv udev kmod
  busybox iproute2 procps less gcc make libc6-dev jq)

key_material() {
  local p
  for p in xen-hypervisor-$XEN_SERIES-amd64 "${PKGS_IMAGE[@]}"; do
    printf '%s %s\n' "$p" "$(tb_candidate "$p")"
  done
  tb_apt_sources
  cat "$TB_DIR/build-rootfs.sh" "$TB_DIR/lib.sh"
}
KEY=$(key_material | sha256sum | cut -c1-16)
OUT=$TB_REL_CACHE/rootfs-$KEY
if [ -f "$OUT/.complete" ]; then
  tb_log "dom0 rootfs cache hit: $OUT"
  printf '%s\n' "$OUT"
  exit 0
fi

tb_log "building dom0 rootfs $KEY (no cache hit)"
rm -rf "$OUT"
mkdir -p "$OUT"
ROOT=$OUT/rootfs
MIRROR=$(tb_mirror)
t0=$(date +%s)

# --- hypervisor: unpacked from the .deb, never installed on this machine -------------
work=$OUT/work; mkdir -p "$work"
rel_download "$work" "xen-hypervisor-$XEN_SERIES-amd64"
dpkg -x "$work"/xen-hypervisor-*.deb "$work/xen"
# QEMU's multiboot loader boots the unpacked ELF; given the .gz it hangs silently.
gunzip -c "$work/xen/boot/xen-$XEN_SERIES-amd64.gz" > "$OUT/xen"
dpkg-deb -f "$work"/xen-hypervisor-*.deb Version > "$OUT/xen.version"

# --- dom0 root filesystem -------------------------------------------------------------
tb_log "debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" > "$work/debootstrap.log" 2>&1 ||
  { tail -30 "$work/debootstrap.log" >&2; tb_die "debootstrap failed"; }
t1=$(date +%s); tb_log "debootstrap took $((t1 - t0)) s"

# debootstrap only knows the main suite; the hypervisor comes from -security and the
# tools must match it, so the chroot gets the same suites the machine uses.
tb_apt_sources | while read -r url suite; do echo "deb $url $suite main"; done > "$ROOT/etc/apt/sources.list"
rm -f "$ROOT/etc/apt/sources.list.d/"*.sources
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"
echo 'APT::Install-Recommends "false";' > "$ROOT/etc/apt/apt.conf.d/90testbed"

mounts=()
cleanup_mounts() { local m; for m in $(printf '%s\n' "${mounts[@]}" | tac); do umount -l "$m" 2>/dev/null || true; done; mounts=(); }
trap cleanup_mounts EXIT
for m in proc sys dev; do mount --bind "/$m" "$ROOT/$m"; mounts+=("$ROOT/$m"); done
# INITRD=No: the kernel hooks skip Debian's 35 MB initramfs (12 s of boot under TCG);
# dom0 boots from the bed's tiny one.
in_root() { DEBIAN_FRONTEND=noninteractive INITRD=No chroot "$ROOT" "$@"; }
{ in_root apt-get update -q && in_root apt-get -y -q dist-upgrade &&
  in_root apt-get -y -q install "${PKGS_IMAGE[@]}"; } > "$work/apt.log" 2>&1 ||
  { tail -30 "$work/apt.log" >&2; tb_die "apt-get in the dom0 chroot failed"; }
in_root apt-get clean
rm -f "$ROOT/usr/sbin/policy-rc.d"
t2=$(date +%s); tb_log "dom0 packages took $((t2 - t1)) s"

KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -1)")
echo "$KVER" > "$OUT/kernel.release"
in_root dpkg-query -W -f '${Version}\n' "linux-image-$KVER" > "$OUT/kernel.version"
in_root dpkg-query -W -f '${Version}\n' "xen-utils-$XEN_SERIES" > "$OUT/xen-utils.version"

# --- dom0 system configuration -----------------------------------------------------------
echo dom0 > "$ROOT/etc/hostname"
printf '/dev/vda / ext4 rw,noatime 0 1\n' > "$ROOT/etc/fstab"
sed -i 's/^root:[^:]*:/root::/' "$ROOT/etc/shadow"
# Guest consoles go to files: the bed reads what guests print (markers, module output).
if grep -q 'XENCONSOLED_ARGS' "$ROOT/etc/default/xen" 2>/dev/null; then
  sed -i 's|^#\?XENCONSOLED_ARGS=.*|XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"|' "$ROOT/etc/default/xen"
else
  echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >> "$ROOT/etc/default/xen"
fi
# Nothing in dom0 needs these under TCG, and each costs boot seconds.
for u in systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
         fstrim.timer dpkg-db-backup.timer systemd-networkd.service xendomains.service \
         xen-watchdog.service getty@tty1.service; do
  in_root systemctl mask "$u" >/dev/null 2>&1 || true
done
in_root systemctl set-default multi-user.target >/dev/null 2>&1 || true
cleanup_mounts; trap - EXIT

t3=$(date +%s)
echo "$((t3 - t0))" > "$OUT/build.seconds"
rm -rf "$work"
touch "$OUT/.complete"
tb_log "dom0 rootfs built in $((t3 - t0)) s: $OUT"
# Older rootfs builds are dead weight (each ~1.5 GB).
for d in "$TB_REL_CACHE"/rootfs-*; do [ "$d" = "$OUT" ] || rm -rf "$d"; done
printf '%s\n' "$OUT"
