#!/usr/bin/env bash
# Boots Xen with the bed's dom0 under QEMU (TCG: this machine's /dev/kvm is a software PVM
# that Xen cannot run on) and waits until dom0 powers off or the hard timeout hits.
# Everything Xen, dom0 and the scenarios print lands in the serial log.
# Usage: boot.sh ROOTFS-CACHE-DIR BOOT-DIR IMAGE SERIAL-LOG TIMEOUT-SECONDS [DOM0-EXTRA-CMDLINE]
. "$(dirname "$0")/lib.sh"
RF=$1 BOOT=$2 IMG=$3 LOG=$4 LIMIT=$5 EXTRA=${6:-}
KVER=$(cat "$RF/kernel.release")
QEMU_MEM=${XENP2M_TESTBED_QEMU_MEM:-4G}
DOM0_MEM=${XENP2M_TESTBED_DOM0_MEM:-1024M}
# -cpu qemu64: "max" exposes SMAP, which crashes dom0 at its first exception under TCG.
# No Xen "noreboot": with it QEMU hangs after dom0 powers off; -no-reboot makes it exit.
xen_cmd="console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=$DOM0_MEM,max:$DOM0_MEM dom0_max_vcpus=1 ${XENP2M_TESTBED_XEN_ARGS:-}"
dom0_cmd="root=/dev/vda rw console=hvc0 earlyprintk=xen init=/lib/systemd/systemd systemd.show_status=0 $EXTRA"
# Multiboot module list: "file cmdline,file2"; a literal comma in a cmdline is ",,".
mods="$RF/rootfs/boot/vmlinuz-$KVER ${dom0_cmd//,/,,},$BOOT/dom0-initrd.cpio.gz"
: > "$LOG"
set +e
timeout --signal=KILL "$LIMIT" qemu-system-x86_64 -accel tcg -cpu qemu64 -smp 2 -m "$QEMU_MEM" \
  -display none -no-reboot -monitor none -serial "file:$LOG" -nodefaults \
  -kernel "$RF/xen" -append "$xen_cmd" -initrd "$mods" \
  -drive "file=$IMG,if=virtio,format=raw,cache=unsafe" ${XENP2M_TESTBED_QEMU_ARGS:-}
rc=$?
set -e
[ $rc = 137 ] && tb_log "QEMU killed by the hard timeout (${LIMIT} s)"
exit $rc
