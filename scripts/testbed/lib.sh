# Shared by the test bed's host-side scripts. Sourced, not run.
set -euo pipefail

TB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$TB_DIR/../.." && pwd)
# Outside the git tree so a bed run never dirties the checkout; override for CI caches.
TB_CACHE=${XENP2M_TESTBED_CACHE:-/var/cache/xenp2m-testbed}
SUITE=bookworm
XEN_SERIES=4.17

tb_log() { printf '[testbed %s] %s\n' "$(date +%T)" "$*" >&2; }
tb_die() { tb_log "FATAL: $*"; exit 2; }

# The Debian archive URLs this machine is configured to use, as "URL SUITE" lines, read
# from apt's own view of /etc/apt/sources.list(.d) (both one-line and deb822 formats), so
# the bed follows whatever mirror or snapshot the machine points at.
tb_apt_sources() {
  apt-cache policy | awk -v s="$SUITE" '
    $3 ~ "^" s "(-security|-updates)?/main$" && $4 == "amd64" && $5 == "Packages" {
      split($3, a, "/"); if (!seen[$2 " " a[1]]++) print $2, a[1] }'
}

tb_mirror() {
  local m
  m=$(tb_apt_sources | awk -v s="$SUITE" '$2 == s { print $1; exit }')
  [ -n "$m" ] || tb_die "no '$SUITE main' Debian source in the machine's apt configuration (apt-get update run?)"
  printf '%s\n' "$m"
}

tb_candidate() { apt-cache policy "$1" | awk '/Candidate:/ { print $2; exit }'; }

tb_need_root() { [ "$(id -u)" = 0 ] || tb_die "the test bed needs root (apt, debootstrap, chroot)"; }
