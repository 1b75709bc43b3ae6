#!/usr/bin/env bash
# Guest initramfs: static busybox, the bed's guest init and the corruption module.
# Usage: mkguest.sh P2MCORRUPT.KO OUT.cpio.gz
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ko=$1 out=$2
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
mkdir -p "$d"/{bin,proc,sys,dev,tmp}
cp /bin/busybox "$d/bin/busybox"
ln -s busybox "$d/bin/sh"
install -m 755 "$here/../guest/init" "$d/init"
cp "$ko" "$d/p2mcorrupt.ko"
( cd "$d" && find . | cpio -o -H newc --quiet ) | gzip -1 > "$out"
