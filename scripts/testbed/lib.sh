# Shared by the test bed's host-side scripts. Sourced, not run.
# The release (bookworm | trixie) comes from XENP2M_TESTBED_RELEASE, set by run.sh for
# each release it runs; every cache, image and log is per release.
set -euo pipefail

TB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$TB_DIR/../.." && pwd)
. "$REPO_DIR/scripts/lib/release.sh"
REL_TAG=testbed
# Outside the git tree so a bed run never dirties the checkout; override for CI caches.
TB_CACHE=${XENP2M_TESTBED_CACHE:-/var/cache/xenp2m-testbed}
rel_init "${XENP2M_TESTBED_RELEASE:-bookworm}"
TB_REL_CACHE=$TB_CACHE/$SUITE

tb_log() { printf '[testbed %s %s] %s\n' "$SUITE" "$(date +%T)" "$*" >&2; }
tb_die() { tb_log "FATAL: $*"; exit 2; }
tb_apt_sources() { rel_sources; }
tb_mirror() { rel_mirror; }
tb_candidate() { rel_candidate "$1"; }
tb_need_root() { [ "$(id -u)" = 0 ] || tb_die "the test bed needs root (apt, debootstrap, chroot)"; }
