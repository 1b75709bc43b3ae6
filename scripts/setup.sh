#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test xenp2m: libxenctrl and
# friends (libxen-dev), pkg-config, systemd's tools, setpriv and libfaketime (wall clock
# jumps, HostFaultTests) for the end-to-end tests; Prometheus, promtool, Alertmanager and
# Python's prometheus_client (Debian's own packages) for the monitoring stage
# (scripts/prometheus-test.sh). Services are not started: the packages' own units stay
# off where policy-rc.d says so, and the suite runs its own instances on loopback.
# Swift itself is expected on PATH (or in /opt/swift/usr/bin).
set -euo pipefail
if [ -d /opt/swift/usr/bin ] && ! command -v swift >/dev/null 2>&1; then
  export PATH=/opt/swift/usr/bin:$PATH
fi
command -v swift >/dev/null 2>&1 || { echo "setup: swift is not on PATH (Swift 6 toolchain required)" >&2; exit 1; }
need=()
[ -e /usr/include/xenctrl.h ] || need+=(libxen-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# The end-to-end tests verify the units and exercise socket activation and an
# unprivileged peer.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || need+=(faketime)
# The monitoring stage: a real Prometheus (and promtool) and Alertmanager, and a real
# exposition-format parser for the metric-convention check (Debian's python3 has it).
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
/usr/bin/python3 -c 'import prometheus_client.parser' 2>/dev/null || need+=(python3-prometheus-client)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=300
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  # No recommends: prometheus recommends node-exporter, which the suite does not use.
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null
fi
pkg-config --exists xencontrol xenforeignmemory xenguest xenstore || {
  echo "setup: libxen-dev is installed but pkg-config cannot find xencontrol/xenforeignmemory/xenguest/xenstore" >&2
  exit 1
}
