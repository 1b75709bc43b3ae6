#!/usr/bin/env bash
# Soak: the real xenp2md on a churning simulated fleet for MINUTES (default 3), with
# clients polling, following events and vanishing and a SIGHUP every minute; then RSS,
# descriptors, threads and incident-log size after warm-up and at the end, events lost,
# health latency, and a last line `soak: M minutes, flat: yes|no` (exit status non-zero
# unless flat with nothing lost). scripts/soak.py does the measuring.
# XENP2M_SCRATCH_PATH=DIR builds into DIR instead of .build; XENP2M_BIN_DIR=DIR runs the
# xenp2md in DIR (a copy, or the package's /usr/sbin) and builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
minutes=${1:-3}
build=(swift build)
[ -n "${XENP2M_SCRATCH_PATH:-}" ] && build+=(--scratch-path "$XENP2M_SCRATCH_PATH")
if [ -n "${XENP2M_BIN_DIR:-}" ]; then
    bin=$XENP2M_BIN_DIR
else
    "${build[@]}" --product xenp2md >/dev/null
    bin=$("${build[@]}" --show-bin-path)
fi

work=$(mktemp -d /tmp/xenp2m-soak-XXXXXX)
daemon=
cleanup() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then kill -KILL "$daemon" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The demo fleet plus churn: a guest created, destroyed, corrupted or repaired after
# every poll, once a second.
{ cat config/demo-fleet.yaml; printf 'churn:\n  first_domid: 100\n  last_domid: 115\n  max_domains: 8\n  memory_mib: 64\n'; } > "$work/fleet.yaml"
cat > "$work/xenp2md.yaml" <<YAML
poll:
  interval_seconds: 1
  jitter_seconds: 0
YAML
env -u NOTIFY_SOCKET -u LISTEN_FDS -u LISTEN_PID -u WATCHDOG_USEC \
    "$bin/xenp2md" --backend sim --scenario "$work/fleet.yaml" --socket "$work/xenp2md.sock" \
    --state-dir "$work/state" --config "$work/xenp2md.yaml" >"$work/xenp2md.log" 2>&1 </dev/null &
daemon=$!
status=0
python3 scripts/soak.py --socket "$work/xenp2md.sock" --pid "$daemon" --state "$work/state" --minutes "$minutes" \
    >"$work/out" 2>&1 || status=$?
head -n -1 "$work/out"
kill -TERM "$daemon" 2>/dev/null || true
rc=0
wait "$daemon" || rc=$?
daemon=
if [ "$rc" -ne 0 ]; then
    echo "soak: daemon exit status $rc after SIGTERM; log tail:"; tail -n 20 "$work/xenp2md.log"
    status=1
fi
warnings=$(grep -c -E '^[^ ]+ (warning|error|critical) ' "$work/xenp2md.log" || true)
echo "daemon log: $(wc -l <"$work/xenp2md.log") lines, $warnings warning/error lines"
if [ "$warnings" -gt 0 ]; then grep -E '^[^ ]+ (warning|error|critical) ' "$work/xenp2md.log" | head -n 5; fi
[ "$rc" -eq 0 ] || sed -i 's/flat: yes/flat: yes (but the daemon did not stop cleanly)/' "$work/out"
tail -n 1 "$work/out"
exit "$status"
