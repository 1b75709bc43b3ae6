#!/usr/bin/env bash
# Client abuse suite and host/process faults against the real xenp2md (issue 7).
# Builds xenp2md and xenp2mctl if needed, starts the daemon on the simulated demo fleet
# with a world-accessible socket (so an unprivileged peer can be tried), a 3 s idle
# limit, a 5 s request-head deadline and a 2 s body deadline, and runs scripts/abuse.py against it. Only the
# local Unix socket is a target. XENP2M_SCRATCH_PATH=DIR builds into DIR instead of .build.
# Last line: `abuse cases: N, daemon survived: yes|no`; exit status non-zero on any failure.
# XENP2M_ABUSE_ONLY=REGEX runs only the cases whose name matches (the others print SKIP).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
start=$(date +%s)
build=(swift build)
[ -n "${XENP2M_SCRATCH_PATH:-}" ] && build+=(--scratch-path "$XENP2M_SCRATCH_PATH")
"${build[@]}" --product xenp2md >/dev/null
"${build[@]}" --product xenp2mctl >/dev/null
bin=$("${build[@]}" --show-bin-path)

work=$(mktemp -d /tmp/xenp2m-abuse-XXXXXX)
chmod 0755 "$work" # the unprivileged peer (nobody) must reach the socket
daemon=
cleanup() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then kill -KILL "$daemon" 2>/dev/null || true; fi
    [ -n "$daemon" ] && wait "$daemon" 2>/dev/null || true
    umount "$work/state-full/state" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

sock=$work/xenp2md.sock
cat > "$work/xenp2md.yaml" <<YAML
socket:
  mode: "0666"
http:
  idle_timeout_seconds: 3
  request_head_timeout_seconds: 5
  request_body_timeout_seconds: 2
poll:
  interval_seconds: 1
  jitter_seconds: 0
YAML
env -u NOTIFY_SOCKET -u LISTEN_FDS -u LISTEN_PID -u WATCHDOG_USEC \
    "$bin/xenp2md" --backend sim --socket "$sock" --state-dir "$work/state" --config "$work/xenp2md.yaml" \
    >"$work/xenp2md.log" 2>&1 </dev/null &
daemon=$!
for _ in $(seq 100); do
    if "$bin/xenp2mctl" --socket "$sock" check >/dev/null 2>&1; then break; fi
    sleep 0.1
done
status=0
python3 scripts/abuse.py --socket "$sock" --pid "$daemon" --config "$work/xenp2md.yaml" --log "$work/xenp2md.log" \
    --bin "$bin" --work "$work" --idle 3 --head-timeout 5 --body-timeout 2 >"$work/out" 2>&1 || status=$?
rc=0
wait "$daemon" || rc=$?
daemon=
# Everything but the suite's last line, then the daemon's exit, then the last line.
head -n -1 "$work/out"
echo "main daemon exit status after SIGTERM: $rc; total time $(( $(date +%s) - start )) s"
if [ "$rc" -ne 0 ]; then
    echo "daemon log tail:"; tail -n 20 "$work/xenp2md.log"
    sed -i 's/daemon survived: yes/daemon survived: no/' "$work/out"
    status=1
fi
tail -n 1 "$work/out"
exit "$status"
