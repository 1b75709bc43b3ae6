# Debian releases xenp2m is built and tested for, and a private apt view of each.
# Sourced by scripts/package.sh and scripts/testbed/*. Sets, for rel_init RELEASE:
#   SUITE       bookworm | trixie
#   XEN_SERIES  the release's Xen (4.17 | 4.20): package names carry it
#   REL_APT     directory of that release's private apt state (lists, cache, sources)
# The host's own apt configuration is never modified: each release gets a sources list
# built from the mirrors the machine already uses (read from apt's view of
# /etc/apt/sources.list*, one-line and deb822 alike), with only the suite name changed.
# That works for the release the host runs and for the next one alike (this Debian 12
# machine's mirror serves trixie too).

REL_CACHE_ROOT=${XENP2M_APT_CACHE:-/var/cache/xenp2m-apt}
REL_KNOWN="bookworm trixie"

rel_log() { printf '[%s %s] %s\n' "${REL_TAG:-xenp2m}" "$(date +%T)" "$*" >&2; }
rel_die() { rel_log "FATAL: $*"; exit 2; }

rel_init() {
  SUITE=$1
  case $SUITE in
    bookworm) XEN_SERIES=4.17 ;;
    trixie) XEN_SERIES=4.20 ;;
    *) rel_die "unknown release '$SUITE' (known: $REL_KNOWN)" ;;
  esac
  REL_APT=$REL_CACHE_ROOT/$SUITE
}

# "URL SUITE" lines for $SUITE, its -updates and its -security, derived from the host's
# Debian sources of the release it runs (whatever mirror or snapshot it points at).
rel_sources() {
  local host
  host=$(. /etc/os-release && echo "$VERSION_CODENAME")
  apt-cache policy | awk -v h="$host" -v s="$SUITE" '
    $3 ~ "^" h "(-security|-updates)?/main$" && $4 == "amd64" && $5 == "Packages" {
      split($3, a, "/"); suite = a[1]; sub("^" h, s, suite)
      if (!seen[$2 " " suite]++) print $2, suite }'
}

rel_mirror() {
  local m
  m=$(rel_sources | awk -v s="$SUITE" '$2 == s { print $1; exit }')
  [ -n "$m" ] || rel_die "no Debian 'main' source in the machine's apt configuration to derive $SUITE from (apt-get update run?)"
  printf '%s\n' "$m"
}

rel_apt_opts() {
  printf '%s\n' -o "Dir::Etc::sourcelist=$REL_APT/sources.list" -o Dir::Etc::sourceparts=/dev/null \
    -o "Dir::State::Lists=$REL_APT/lists" -o "Dir::State::status=$REL_APT/status" \
    -o "Dir::Cache=$REL_APT/cache" -o APT::Sandbox::User=root -o APT::Architecture=amd64
}
rel_apt_get() { local o; mapfile -t o < <(rel_apt_opts); apt-get "${o[@]}" "$@"; }
rel_apt_cache() { local o; mapfile -t o < <(rel_apt_opts); apt-cache "${o[@]}" "$@"; }

# Refreshes the release's package lists (once per process tree: REL_UPDATED_<suite>).
rel_apt_update() {
  local flag=REL_UPDATED_$SUITE
  [ -n "${!flag:-}" ] && return 0
  mkdir -p "$REL_APT/lists/partial" "$REL_APT/cache/archives/partial"
  : >> "$REL_APT/status"
  rel_sources | while read -r url suite; do echo "deb $url $suite main"; done > "$REL_APT/sources.list.new"
  [ -s "$REL_APT/sources.list.new" ] || rel_die "could not derive $SUITE sources from the host's apt configuration"
  mv "$REL_APT/sources.list.new" "$REL_APT/sources.list"
  rel_apt_get -qq update >/dev/null 2>"$REL_APT/update.err" ||
    { cat "$REL_APT/update.err" >&2; rel_die "apt-get update for $SUITE failed"; }
  export "$flag=1"
}

rel_candidate() { rel_apt_cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2; exit }'; }

# Downloads PKG... (the release's candidates) into DIR.
rel_download() {
  local dir=$1; shift
  mkdir -p "$dir"
  ( cd "$dir" && rel_apt_get -q download "$@" >/dev/null 2>"$dir/download.err" ) ||
    { cat "$dir/download.err" >&2; rel_die "apt-get download $* ($SUITE) failed"; }
}

rel_need_root() { [ "$(id -u)" = 0 ] || rel_die "needs root (apt, debootstrap, chroot)"; }

# Host tools, installed from the host's own release when missing: rel_need_tools CMD:PKG...
rel_need_tools() {
  local need=() pc
  for pc in "$@"; do command -v "${pc%%:*}" >/dev/null 2>&1 || need+=("${pc#*:}"); done
  [ ${#need[@]} = 0 ] && return 0
  rel_log "installing host packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    rel_die "apt-get install ${need[*]} failed"
}
