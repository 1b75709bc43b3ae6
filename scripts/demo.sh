#!/usr/bin/env bash
# The main job: set up, build, and run xenp2md on the simulated host with the demo fleet.
# Stop it with Ctrl-C (SIGTERM/SIGINT stop it gracefully).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
swift build --product xenp2md
swift build --product xenp2mctl
run=${XENP2M_DEMO_DIR:-/tmp/xenp2m}
mkdir -p "$run/state"
sock="$run/xenp2md.sock"
bin=$(swift build --show-bin-path)
cat <<MSG
xenp2md is starting on the simulated demo fleet (config/demo-fleet.yaml).
In another terminal:
  export XENP2M_SOCKET=$sock
  $bin/xenp2mctl list
  $bin/xenp2mctl status 6
  $bin/xenp2mctl map 6
  $bin/xenp2mctl check; echo "exit code \$?"
  $bin/xenp2mctl watch
  curl --unix-socket $sock http://x/metrics
MSG
exec "$bin/xenp2md" --backend sim --socket "$sock" --state-dir "$run/state" "$@"
