#!/usr/bin/env bash
# The real-Xen test bed, on each Debian release xenp2m is packaged for:
#   bash scripts/testbed/run.sh [bookworm|trixie]     (default: both, bookworm first)
# Per release (run-release.sh): a dom0 built from that release's packages (Xen 4.17 +
# Linux 6.1 on bookworm, Xen 4.20 + Linux 6.12 on trixie), xenp2m's .deb for that release
# installed in dom0 with dpkg -i (the package's units start the daemon), the scenarios,
# then an upgrade and dpkg -r / dpkg -P. Each release ends with
#   testbed RELEASE: N passed, M failed, K skipped
# and the last line of the run is the sum over the releases run:
#   testbed: N passed, M failed, K skipped
# Exit status: 0 when nothing failed, 1 when a scenario failed, 2 when the bed broke.
#
# Adding a scenario: put a file in scripts/testbed/dom0/scenarios.d/ (see the README
# there and the "scenario list" comment in dom0/scenarios.sh): it defines a function that
# ends in one `result NUM NAME PASS|FAIL|SKIP detail` and registers it with
# `scenario NUM NAME FUNCTION`. Nothing here needs to change: this script reads the
# registrations to know which results to expect, on every release.
#
# Environment (all optional):
#   XENP2M_TESTBED_CACHE        cache directory (default /var/cache/xenp2m-testbed)
#   XENP2M_TESTBED_ONLY         comma-separated scenario numbers to run (default: all)
#   XENP2M_TESTBED_TIMEOUT      hard limit in seconds for each main QEMU run (default 1500)
#   XENP2M_TESTBED_BIG          0 skips scenario 4's large-memory boot (default 1)
#   XENP2M_TESTBED_BIG_RELEASE  the one release that runs it (default trixie: it needs
#                               ~13 GiB of host RAM, twice would not fit CI's machine)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
releases=("$@")
[ ${#releases[@]} = 0 ] && releases=(bookworm trixie)
for r in "${releases[@]}"; do
  case $r in bookworm|trixie) ;; *) echo "run.sh: unknown release '$r' (bookworm or trixie)" >&2; exit 2 ;; esac
done
P=0 F=0 K=0 broke=0
for r in "${releases[@]}"; do
  echo "=== testbed on $r"
  out=$(mktemp)
  bash "$here/run-release.sh" "$r" | tee "$out"
  rc=${PIPESTATUS[0]}
  summary=$(grep -E "^testbed $r: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$" "$out" | tail -1)
  rm -f "$out"
  if [ -z "$summary" ]; then
    # The bed itself broke (image, package build, QEMU): every scenario of the release failed.
    n=$(cat "$here/dom0/scenarios.sh" "$here/dom0/scenarios.d/"*.sh 2>/dev/null | awk '$1 == "scenario" && $2 ~ /^[0-9]+$/' | wc -l)
    echo "testbed $r: 0 passed, $n failed, 0 skipped (the bed broke before any result: exit $rc)"
    F=$((F + n)); broke=1; continue
  fi
  read -r p f k < <(echo "$summary" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped/\1 \2 \3/')
  P=$((P + p)) F=$((F + f)) K=$((K + k))
done
echo "testbed: $P passed, $F failed, $K skipped"
[ "$F" = 0 ] || exit 1
[ "$broke" = 0 ] || exit 2
exit 0
