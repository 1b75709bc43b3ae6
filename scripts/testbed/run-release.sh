#!/usr/bin/env bash
# The real-Xen test bed on one Debian release (run.sh runs it per release): host packages,
# cached dom0 image of that release, xenp2m's .deb built for it (scripts/package.sh),
# Xen under QEMU (TCG), the scenarios in dom0, results.
# Prints one line per scenario and, last, "testbed RELEASE: N passed, M failed, K skipped".
# Exit status: 0 when nothing failed, 1 when a scenario failed, 2 when the bed broke.
# Usage: run-release.sh bookworm|trixie   (environment: see run.sh)
XENP2M_TESTBED_RELEASE=${1:?usage: run-release.sh bookworm|trixie}
export XENP2M_TESTBED_RELEASE
. "$(dirname "$0")/lib.sh"
tb_need_root
T_START=$(date +%s)
ONLY=${XENP2M_TESTBED_ONLY:-}
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
# The scenario list, in run order, from the registrations in dom0's scenario files.
declare -A NAMES=()
NUMS=()
while read -r n name; do NAMES[$n]=$name; NUMS+=("$n"); done < <(
  cat "$TB_DIR/dom0/scenarios.sh" "$TB_DIR/dom0/scenarios.d/"*.sh 2>/dev/null |
    awk '$1 == "scenario" && $2 ~ /^[0-9]+$/ { print $2, $3 }')
# The large-memory boot (scenario 4) needs ~13 GiB of host RAM: one release only.
BIG_RELEASE=${XENP2M_TESTBED_BIG_RELEASE:-trixie}
BIG=${XENP2M_TESTBED_BIG:-1}

# --- 1. host packages -------------------------------------------------------------------
need=()
for pc in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils debootstrap:debootstrap cpio:cpio \
          mkfs.ext4:e2fsprogs xz:xz-utils zstd:zstd gcc:gcc pkg-config:pkg-config jq:jq; do
  command -v "${pc%%:*}" >/dev/null 2>&1 || need+=("${pc#*:}")
done
# The guest initramfs copies /bin/busybox: it must be the static build.
dpkg -s busybox-static > /dev/null 2>&1 || need+=(busybox-static)
[ -e /usr/include/xenctrl.h ] || need+=(libxen-dev)
if [ ${#need[@]} -gt 0 ]; then
  tb_log "installing host packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null || tb_die "apt-get install ${need[*]} failed"
fi
if ! qemu-system-x86_64 -accel help 2>/dev/null | grep -qx tcg; then
  echo "SKIP all: qemu-system-x86_64 cannot run here (no TCG accelerator); the real-Xen bed did not run" >&2
  for n in "${NUMS[@]}"; do echo "SKIP $SUITE $n ${NAMES[$n]}"; echo "  reason: QEMU cannot run on this machine"; done
  echo "testbed $SUITE: 0 passed, 0 failed, ${#NUMS[@]} skipped"
  exit 0
fi
T_PKGS=$(date +%s)

# --- 2. dom0 image (cached) and 3. the package ---------------------------------------------
RF=$("$TB_DIR/build-rootfs.sh")
BOOT=$("$TB_DIR/build-boot.sh" "$RF")
T_IMAGE=$(date +%s)
DIST=$TB_REL_CACHE/dist
DEB=$(XENP2M_PACKAGE_TEST_TOOLS=1 bash "$REPO_DIR/scripts/package.sh" "$SUITE" "$DIST") || tb_die "scripts/package.sh $SUITE failed"
T_SWIFT=$(date +%s)
RUN=$TB_REL_CACHE/run
mkdir -p "$RUN"
rm -f "$RUN"/serial-*.log "$RUN"/*.seconds
"$TB_DIR/install-dom0.sh" "$RF" "$BOOT" "$DEB" "$DIST/test-tools" "$RUN/dom0.img"
T_INSTALL=$(date +%s)

# --- 4./5./6. boot, scenarios, results over the serial console ------------------------------
# follow LOG: echo scenario markers live (CI logs show progress while TCG crawls).
follow() {
  local n=0 lines
  while sleep 2; do
    mapfile -t lines < <(grep -a -o 'XTB: .*' "$1" 2>/dev/null | tr -d '\r')
    for (( ; n < ${#lines[@]}; n++ )); do tb_log "  dom0 ${lines[n]#XTB: }"; done
  done
}
boot_once() { # NAME TIMEOUT EXTRA-CMDLINE
  local name=$1 limit=$2 extra=$3 log=$RUN/serial-$1.log t0 rc fp
  t0=$(date +%s)
  tb_log "booting Xen $XEN_SERIES ($name), hard timeout ${limit} s; serial log: $log"
  follow "$log" & fp=$!
  set +e
  "$TB_DIR/boot.sh" "$RF" "$BOOT" "$RUN/dom0.img" "$log" "$limit" "$extra"
  rc=$?
  set -e
  sleep 2.5; kill "$fp" 2>/dev/null; wait "$fp" 2>/dev/null || true
  tb_log "QEMU ($name) exited with $rc after $(( $(date +%s) - t0 )) s"
  echo $(( $(date +%s) - t0 )) > "$RUN/$name.seconds"
}

main_only=""
for n in "${NUMS[@]}"; do [ "$n" != 4 ] && wanted "$n" && main_only+="$n,"; done
[ -n "$main_only" ] && boot_once main "${XENP2M_TESTBED_TIMEOUT:-1500}" "xtb.only=${main_only%,}"
T_MAIN=$(date +%s)
if wanted 4 && [ "$BIG" = 1 ] && [ "$SUITE" = "$BIG_RELEASE" ]; then
  # Only a guest with ~47 GiB of boot memory outgrows the 3-level tree (Linux clamps
  # balloonable memory to 10x boot memory), so scenario 4 boots a host with room for it.
  # QEMU's RAM is reserve=off (lazily backed) and Xen skips the boot scrub, so only the
  # pages dom0 and the guest touch cost host memory.
  big_mem=${XENP2M_TESTBED_BIG_MEM:-52G}
  XENP2M_TESTBED_QEMU_MEM=$big_mem \
  XENP2M_TESTBED_QEMU_ARGS="-object memory-backend-ram,id=ram0,size=$big_mem,reserve=off -machine memory-backend=ram0" \
  XENP2M_TESTBED_XEN_ARGS="bootscrub=0" \
    boot_once big "${XENP2M_TESTBED_BIG_TIMEOUT:-900}" "xtb.only=4"
fi
T_END=$(date +%s)

# --- 7. summary -------------------------------------------------------------------------------
pass=0 fail=0 skip=0
declare -A line=()
# Each boot reports only the scenarios it was asked for (the package install, 9, runs in
# every boot; its result counts from the main boot).
for log in "$RUN"/serial-*.log; do
  [ -f "$log" ] || continue
  while IFS= read -r l; do
    l=${l#*XTB: RESULT }
    n=${l%% *}
    [[ $log == *serial-big.log ]] && [ "$n" != 4 ] && continue
    line[$n]=$l
  done < <(grep -a -o 'XTB: RESULT .*' "$log" | tr -d '\r')
done
echo
for n in "${NUMS[@]}"; do
  wanted "$n" || continue
  if [ -z "${line[$n]:-}" ]; then
    if [ "$n" = 4 ] && [ "$SUITE" != "$BIG_RELEASE" ]; then
      echo "SKIP $SUITE $n ${NAMES[$n]}"; echo "  reason: the large-memory boot (~13 GiB of host RAM) runs on $BIG_RELEASE only (XENP2M_TESTBED_BIG_RELEASE)"; skip=$((skip + 1)); continue
    fi
    if [ "$n" = 4 ] && [ "$BIG" != 1 ]; then
      echo "SKIP $SUITE $n ${NAMES[$n]}"; echo "  reason: XENP2M_TESTBED_BIG=0"; skip=$((skip + 1)); continue
    fi
    echo "FAIL $SUITE $n ${NAMES[$n]}: no result from dom0 (crash or timeout; see $RUN/serial-*.log)"
    fail=$((fail + 1)); continue
  fi
  read -r _ name st detail <<< "${line[$n]}"
  case $st in
    PASS) echo "PASS $SUITE $n $name: $detail"; pass=$((pass + 1)) ;;
    SKIP) echo "SKIP $SUITE $n $name"; echo "  reason: $detail"; skip=$((skip + 1)) ;;
    *)    echo "FAIL $SUITE $n $name: $detail"; fail=$((fail + 1)) ;;
  esac
done
for log in "$RUN"/serial-*.log; do
  [ -f "$log" ] || continue
  grep -a -o 'XTB: \(INFO\|XEN\|BEGIN\) .*' "$log" | tr -d '\r' | sed "s|^XTB: INFO ||; s|^XTB: |  |; s|^|  info ($SUITE $(basename "$log" .log)): |"
done
for log in "$RUN"/serial-*.log; do
  [ -f "$log" ] || continue
  echo "  dom0 uptime at each step ($SUITE $(basename "$log" .log)): $(grep -a -o 'XTB: T .*' "$log" | tr -d '\r' | awk '{printf "%s%s %ss", (NR>1?", ":""), $3, $4}')"
done
echo "  versions ($SUITE): xen-hypervisor $(cat "$RF/xen.version"), xen-utils $(cat "$RF/xen-utils.version"), kernel $(cat "$RF/kernel.release") ($(cat "$RF/kernel.version")), package $(basename "$DEB") ($(( $(stat -c %s "$DEB") / 1024 )) KiB)"
echo "timings ($SUITE): packages $((T_PKGS - T_START)) s, dom0 image $((T_IMAGE - T_PKGS)) s, package build $((T_SWIFT - T_IMAGE)) s, image write $((T_INSTALL - T_SWIFT)) s, main boot $((T_MAIN - T_INSTALL)) s, big boot $((T_END - T_MAIN)) s, total $((T_END - T_START)) s"
echo "testbed $SUITE: $pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
