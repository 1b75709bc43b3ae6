#!/usr/bin/env bash
# Prepares the dom0 disk image: xenp2m's .deb (not installed: dom0 installs it with
# dpkg -i in scenario 9, as an operator would), a copy repacked with a higher version for
# the upgrade scenario, and the bed's own test tools (scenario runner, guest kernel and
# initramfs, xenp2m-bench). Files from an earlier run are removed first (the rootfs is
# cached), then the image is written.
# Usage: install-dom0.sh ROOTFS-CACHE-DIR BOOT-DIR DEB TEST-TOOLS-DIR IMAGE
. "$(dirname "$0")/lib.sh"
RF=$1 BOOT=$2 DEB=$3 TOOLS=$4 IMG=$5
ROOT=$RF/rootfs
manifest=$RF/installed.files
if [ -f "$manifest" ]; then
  while read -r f; do rm -rf "${ROOT:?}$f"; done < "$manifest"
fi
: > "$manifest"
put() { # MODE SRC DEST(absolute in dom0)
  install -D -m "$1" "$2" "$ROOT$3"; echo "$3" >> "$manifest"
}
# The bed must not smuggle xenp2m in: the cached rootfs holds no trace of it.
if ls "$ROOT"/usr/sbin/xenp2md "$ROOT"/usr/bin/xenp2mctl "$ROOT"/etc/xenp2m "$ROOT"/var/lib/dpkg/info/xenp2m.* > /dev/null 2>&1; then
  tb_die "the cached dom0 rootfs already contains xenp2m files; delete $RF"
fi

# --- the package, and the upgrade copy ----------------------------------------------------
L=/usr/local/lib/xenp2m-testbed
put 644 "$DEB" "$L/debs/install/$(basename "$DEB")"
up=$(mktemp -d); trap 'rm -rf "$up"' EXIT
dpkg-deb -R "$DEB" "$up/x"
v=$(sed -n 's/^Version: //p' "$up/x/DEBIAN/control")
sed -i "s/^Version: .*/Version: $v+bedupgrade1/" "$up/x/DEBIAN/control"
dpkg-deb --root-owner-group -Zxz -b "$up/x" "$up/xenp2m_${v}+bedupgrade1_amd64.deb" > /dev/null
put 644 "$up/xenp2m_${v}+bedupgrade1_amd64.deb" "$L/debs/upgrade/xenp2m_${v}+bedupgrade1_amd64.deb"

# --- the bed's test tools (not the product) -------------------------------------------------
# Scenario 12: the bookworm build (Xen 4.17 libraries) run on trixie's Xen 4.20 must refuse
# with exit 3. Its binary and bookworm's Xen libraries (this Debian 12 host's) go into a
# private directory, used only with LD_LIBRARY_PATH; the host's copies are bookworm's.
if [ "$SUITE" = trixie ]; then
  other=$(ls "$TB_CACHE"/bookworm/dist/xenp2m_*+deb12_amd64.deb 2>/dev/null | head -1 || true)
  if [ -n "$other" ] && [ "$(. /etc/os-release && echo "$VERSION_CODENAME")" = bookworm ]; then
    fx=$(mktemp -d); dpkg-deb -x "$other" "$fx"
    put 755 "$fx/usr/sbin/xenp2md" $L/foreign/xenp2md
    rm -rf "$fx"
    for f in /usr/lib/x86_64-linux-gnu/libxen*.so.*; do
      [ -f "$f" ] && [ ! -L "$f" ] || continue
      put 644 "$f" "$L/foreign/lib/$(basename "$f")"
      # The sonames the loader looks for (libxenctrl.so.4.17, libxencall.so.1, ...).
      so=$(objdump -p "$f" 2>/dev/null | awk '$1 == "SONAME" { print $2 }')
      [ -n "$so" ] && [ "$so" != "$(basename "$f")" ] && ln -sf "$(basename "$f")" "$ROOT$L/foreign/lib/$so" && echo "$L/foreign/lib/$so" >> "$manifest"
    done
    echo "$(basename "$other")" > "$ROOT$L/foreign/from"; echo "$L/foreign/from" >> "$manifest"
  fi
fi

[ -x "$TOOLS/xenp2m-bench" ] && put 755 "$TOOLS/xenp2m-bench" /usr/local/bin/xenp2m-bench
put 755 "$TB_DIR/dom0/scenarios.sh" $L/scenarios.sh
put 644 "$TB_DIR/dom0/package.sh" $L/package.sh
put 644 "$TB_DIR/dom0/toolstack-compare.sh" $L/toolstack-compare.sh
for f in "$TB_DIR"/dom0/scenarios.d/*.sh; do [ -f "$f" ] && put 644 "$f" "$L/scenarios.d/$(basename "$f")"; done
put 644 "$BOOT/vmlinux" $L/vmlinux
put 644 "$BOOT/guest-initrd.cpio.gz" $L/guest-initrd.cpio.gz
put 644 "$TB_DIR/dom0/xenp2m-testbed.service" /etc/systemd/system/xenp2m-testbed.service
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/xenp2m-testbed.service "$ROOT/etc/systemd/system/multi-user.target.wants/xenp2m-testbed.service"
echo /etc/systemd/system/multi-user.target.wants/xenp2m-testbed.service >> "$manifest"

# A login prompt on hvc0 would interleave with the markers on the serial line.
ln -sf /dev/null "$ROOT/etc/systemd/system/serial-getty@hvc0.service"
echo /etc/systemd/system/serial-getty@hvc0.service >> "$manifest"

rm -f "$IMG"
truncate -s 3G "$IMG"
mkfs.ext4 -q -F -L dom0 -d "$ROOT" "$IMG"
