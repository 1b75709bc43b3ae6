#!/usr/bin/env bash
# Installs xenp2m into the dom0 root filesystem the way an operator would (binaries into
# the path the unit's ExecStart names, units into /etc/systemd/system, config into
# /etc/xenp2m), plus the bed's own scenario runner and guest images, then writes the dom0
# disk image. Files installed by an earlier run are removed first (the rootfs is cached).
# Usage: install-dom0.sh ROOTFS-CACHE-DIR BOOT-DIR SWIFT-BIN-DIR IMAGE
. "$(dirname "$0")/lib.sh"
RF=$1 BOOT=$2 BIN=$3 IMG=$4
ROOT=$RF/rootfs
manifest=$RF/installed.files
if [ -f "$manifest" ]; then
  while read -r f; do rm -rf "${ROOT:?}$f"; done < "$manifest"
fi
: > "$manifest"
put() { # MODE SRC DEST(absolute in dom0)
  install -D -m "$1" "$2" "$ROOT$3"; echo "$3" >> "$manifest"
}

# --- xenp2m, as the repository ships it --------------------------------------------------
unit=$REPO_DIR/systemd/xenp2md.service
daemon_path=/usr/local/bin/xenp2md
if [ -f "$unit" ]; then
  p=$(sed -n 's/^ExecStart=-\?\([^ ]*\).*/\1/p' "$unit" | head -1)
  [ -n "$p" ] && daemon_path=$p
fi
put 755 "$BIN/xenp2md" "$daemon_path"
put 755 "$BIN/xenp2mctl" "$(dirname "$daemon_path")/xenp2mctl"
[ -x "$BIN/xenp2m-bench" ] && put 755 "$BIN/xenp2m-bench" /usr/local/bin/xenp2m-bench
for u in "$REPO_DIR"/systemd/*.service "$REPO_DIR"/systemd/*.socket; do
  [ -f "$u" ] && put 644 "$u" "/etc/systemd/system/$(basename "$u")"
done
[ -f "$REPO_DIR/config/xenp2md.yaml" ] && put 644 "$REPO_DIR/config/xenp2md.yaml" /etc/xenp2m/xenp2md.yaml
# The bed's only deviations from the shipped setup, as an operator's drop-in: the Xen
# backend (the point of the bed) and a short poll interval so changes show within seconds.
if [ -f "$unit" ]; then
  exec_line=$(sed -n 's/^ExecStart=//p' "$unit" | head -1)
  mkdir -p "$ROOT/etc/systemd/system/xenp2md.service.d"
  printf '[Service]\nExecStart=\nExecStart=%s --backend xen --poll-interval %s\n' \
    "$exec_line" "${XENP2M_TESTBED_POLL:-2}" > "$ROOT/etc/systemd/system/xenp2md.service.d/testbed.conf"
  echo /etc/systemd/system/xenp2md.service.d >> "$manifest"
fi

# --- the bed ---------------------------------------------------------------------------------
L=/usr/local/lib/xenp2m-testbed
put 755 "$TB_DIR/dom0/scenarios.sh" $L/scenarios.sh
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
