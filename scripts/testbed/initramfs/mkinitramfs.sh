#!/usr/bin/env bash
# dom0 initramfs: static busybox and just the modules (with their dependencies, in load
# order) needed to mount the virtio root disk. Debian's own initramfs works too but costs
# ~12 s of boot under TCG.
# Usage: mkinitramfs.sh ROOTFS KERNEL-RELEASE OUT.cpio.gz MODULE...
set -euo pipefail
root=$1 kver=$2 out=$3; shift 3
moddir=$root/lib/modules/$kver
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
mkdir -p "$d"/{bin,proc,sys,dev,newroot,modules}

declare -A seen=()
order=()
# modules.dep lists a module's dependencies deepest-last: visit them first, then itself.
visit() {
  local name=$1 path deps dep
  path=$(awk -F: -v n="$name" '{ f = $1; sub(/.*\//, "", f); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", f); gsub(/-/, "_", f) } f == n { print $1; exit }' "$moddir/modules.dep")
  if [ -z "$path" ]; then
    grep -q "/${name//_/[-_]}\.ko" "$moddir/modules.builtin" && return 0
    echo "mkinitramfs: module $name not found for $kver" >&2; exit 1
  fi
  [ -n "${seen[$path]:-}" ] && return 0
  seen[$path]=1
  deps=$(awk -F': *' -v p="$path" '$1 == p { print $2; exit }' "$moddir/modules.dep")
  for dep in $deps; do
    dep=${dep##*/}; dep=${dep%%.ko*}; visit "${dep//-/_}"
  done
  order+=("$path")
}
for m in "$@"; do visit "${m//-/_}"; done

: > "$d/modules/order"
for p in "${order[@]}"; do
  f=${p##*/}
  case $f in
    *.ko.xz) xz -dc "$moddir/$p" > "$d/modules/${f%.xz}"; f=${f%.xz} ;;
    *.ko.zst) zstd -qdc "$moddir/$p" > "$d/modules/${f%.zst}"; f=${f%.zst} ;;
    *) cp "$moddir/$p" "$d/modules/$f" ;;
  esac
  echo "$f" >> "$d/modules/order"
done
cp /bin/busybox "$d/bin/busybox"
ln -s busybox "$d/bin/sh"
cat > "$d/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/modules/$m" 2>/dev/null; done < /modules/order
init=/sbin/init
for a in $(cat /proc/cmdline); do case $a in init=*) init=${a#init=} ;; esac; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; exec sh; }
umount /sys /proc
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot "$init"
INIT
chmod 755 "$d/init"
( cd "$d" && find . | cpio -o -H newc --quiet ) | gzip -1 > "$out"
echo "mkinitramfs: ${#order[@]} modules: $(tr '\n' ' ' < "$d/modules/order")" >&2
