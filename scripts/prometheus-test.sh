#!/usr/bin/env bash
# The monitoring stage (issue 16): a real Prometheus and Alertmanager against three
# xenp2md daemons on loopback (scripts/prometheus_test.py says what it checks), after the
# alert rules' own unit tests (promtool test rules). Builds xenp2md and xenp2mctl if
# needed; every process it starts is stopped before it exits. About a minute once built.
# XENP2M_SCRATCH_PATH=DIR builds into DIR instead of .build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
for tool in prometheus promtool prometheus-alertmanager; do
    command -v "$tool" >/dev/null 2>&1 || { echo "prometheus-test: $tool missing (bash scripts/setup.sh installs it)" >&2; exit 1; }
done
/usr/bin/python3 -c 'import prometheus_client.parser' 2>/dev/null \
    || { echo "prometheus-test: python3-prometheus-client missing (bash scripts/setup.sh installs it)" >&2; exit 1; }

promtool check rules config/prometheus-alerts.yaml
promtool test rules config/prometheus-alerts.test.yaml

build=(swift build)
[ -n "${XENP2M_SCRATCH_PATH:-}" ] && build+=(--scratch-path "$XENP2M_SCRATCH_PATH")
"${build[@]}" --product xenp2md >/dev/null
"${build[@]}" --product xenp2mctl >/dev/null
bin=$("${build[@]}" --show-bin-path)

work=$(mktemp -d /tmp/xenp2m-prometheus-XXXXXX)
trap 'rm -rf "$work"' EXIT
status=0
PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 scripts/prometheus_test.py --bin "$bin" --config-dir config --work "$work" || status=$?
if [ "$status" -ne 0 ]; then
    for f in "$work"/prometheus.log "$work"/alertmanager.log "$work"/host-*/xenp2md.log; do
        [ -s "$f" ] && { echo "--- tail of ${f#"$work"/}"; tail -n 15 "$f"; }
    done
fi
exit "$status"
