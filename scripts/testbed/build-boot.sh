#!/usr/bin/env bash
# Boot artifacts derived from the cached dom0 rootfs: dom0 initramfs, the guests'
# uncompressed kernel, the guest-side corruption module (built in the rootfs against the
# Debian headers of the guest kernel) and the guest initramfs. Cheap; keyed on the
# rootfs and the files below scripts/testbed/{guest,initramfs}.
# Usage: build-boot.sh ROOTFS-CACHE-DIR   (prints the artifact directory)
. "$(dirname "$0")/lib.sh"
tb_need_root
RF=$1
ROOT=$RF/rootfs
KVER=$(cat "$RF/kernel.release")
KEY=$( { echo "$RF"; cat "$TB_DIR/build-boot.sh"; find "$TB_DIR/guest" "$TB_DIR/initramfs" -type f | sort | xargs cat; } | sha256sum | cut -c1-16)
OUT=$RF/boot-$KEY
if [ -f "$OUT/.complete" ]; then
  tb_log "boot artifacts cache hit: $OUT"; printf '%s\n' "$OUT"; exit 0
fi
rm -rf "$RF"/boot-*; mkdir -p "$OUT"
t0=$(date +%s)

"$TB_DIR/initramfs/mkinitramfs.sh" "$ROOT" "$KVER" "$OUT/dom0-initrd.cpio.gz" virtio_pci virtio_blk ext4 crc32c_generic

# Guest kernel: the bzImage's payload, uncompressed (xl create 4.7 s instead of 9.5 s).
# Debian 12's 6.1 kernel packs it with xz, Debian 13's 6.12 with zstd.
off=$(LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a\x00' "$ROOT/boot/vmlinuz-$KVER" | awk -F: 'NR == 1 { print $1 }' || true)
if [ -n "$off" ]; then
  # xz complains about the trailing bzImage bytes after the stream; the ELF check decides.
  tail -c +"$((off + 1))" "$ROOT/boot/vmlinuz-$KVER" | xz -dc 2>/dev/null > "$OUT/vmlinux" || true
else
  off=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$ROOT/boot/vmlinuz-$KVER" | awk -F: 'NR == 1 { print $1 }' || true)
  [ -n "$off" ] || tb_die "no xz or zstd stream in vmlinuz-$KVER"
  tail -c +"$((off + 1))" "$ROOT/boot/vmlinuz-$KVER" | zstd -dcq 2>/dev/null > "$OUT/vmlinux" || true
fi
[ "$(head -c 4 "$OUT/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || tb_die "extracted vmlinux is not ELF"

mounts=()
cleanup_mounts() { local m; for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done; mounts=(); }
trap cleanup_mounts EXIT
for m in proc dev; do mount --bind "/$m" "$ROOT/$m"; mounts+=("$ROOT/$m"); done
rm -rf "$ROOT/tmp/p2mcorrupt"; cp -r "$TB_DIR/guest/p2mcorrupt" "$ROOT/tmp/p2mcorrupt"
chroot "$ROOT" make -s -C "/lib/modules/$KVER/build" M=/tmp/p2mcorrupt modules > "$OUT/module.log" 2>&1 ||
  { cat "$OUT/module.log" >&2; tb_die "building p2mcorrupt.ko failed"; }
cp "$ROOT/tmp/p2mcorrupt/p2mcorrupt.ko" "$OUT/p2mcorrupt.ko"
rm -rf "$ROOT/tmp/p2mcorrupt"
cleanup_mounts; trap - EXIT

"$TB_DIR/initramfs/mkguest.sh" "$OUT/p2mcorrupt.ko" "$OUT/guest-initrd.cpio.gz"
touch "$OUT/.complete"
tb_log "boot artifacts built in $(( $(date +%s) - t0 )) s"
printf '%s\n' "$OUT"
