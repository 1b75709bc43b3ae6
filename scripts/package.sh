#!/usr/bin/env bash
# Builds the Debian package of xenp2m for one Debian release, on this Debian 12 machine:
#
#   bash scripts/package.sh bookworm|trixie [OUTDIR]     (default OUTDIR: dist/RELEASE)
#
# prints the path of OUTDIR/xenp2m_<version>_amd64.deb and writes lintian's output next
# to it (lintian-RELEASE.txt); exits non-zero on a build failure or a lintian error.
#
# - bookworm (Xen 4.17) builds natively: this machine is Debian 12, its libxen-dev is
#   bookworm's. trixie (Xen 4.20) builds in a chroot of trixie packages
#   (scripts/packaging/build-chroot.sh, cached under /var/cache/xenp2m-build/) with the
#   Swift toolchain (/opt/swift) and SwiftPM's repository cache bind-mounted: the
#   binaries link trixie's libxenctrl and are checked by trixie's dpkg-shlibdeps and
#   lintian.
# - The tree is built from a clean copy of the git checkout's files (tracked and
#   untracked-but-not-ignored; no .build*), release mode, Swift runtime linked statically.
#   The copy and SwiftPM's scratch directory stay under /var/cache/xenp2m-build/RELEASE,
#   so a second run rebuilds only what changed; an empty cache works, it is just slower.
# - XENP2M_PACKAGE_TEST_TOOLS=1 also builds xenp2m-bench for the test bed into
#   OUTDIR/test-tools/ (a test tool, never part of the package).
#
# Timings on this 2-core machine (2026-12-03): see README, "Install on a Xen host".
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/lib/release.sh"
REL_TAG=package
rel_init "${1:?usage: package.sh bookworm|trixie [OUTDIR]}"
rel_need_root
OUT=$(mkdir -p "${2:-$REPO/dist/$SUITE}" && cd "${2:-$REPO/dist/$SUITE}" && pwd)
CACHE=${XENP2M_BUILD_CACHE:-/var/cache/xenp2m-build}
WORK=$CACHE/$SUITE
PKGDIR=$REPO/scripts/packaging
VERSION_BASE=$(sed -n 's/.*static let string = "\([^"]*\)".*/\1/p' "$REPO/Sources/XenP2MAPI/Version.swift")
[ -n "$VERSION_BASE" ] || rel_die "no version in Sources/XenP2MAPI/Version.swift"
head -1 "$PKGDIR/debian/changelog" | grep -q "($VERSION_BASE)" ||
  rel_die "scripts/packaging/debian/changelog's top entry is not $VERSION_BASE (Version.swift): add an entry"
# One source version, one package per release: +debNN orders a trixie build above the
# bookworm one, so a dist-upgrade of the host moves to the package built for its new Xen.
case $SUITE in bookworm) VERSION=$VERSION_BASE+deb12 ;; trixie) VERSION=$VERSION_BASE+deb13 ;; esac
DEB=$OUT/xenp2m_${VERSION}_amd64.deb
T0=$(date +%s)

rel_need_tools git:git dpkg-shlibdeps:dpkg-dev fakeroot:fakeroot
[ -d /opt/swift/usr/bin ] || rel_die "no Swift toolchain in /opt/swift"

# --- the build environment ------------------------------------------------------------
if [ "$SUITE" = bookworm ]; then
  [ "$(. /etc/os-release && echo "$VERSION_CODENAME")" = bookworm ] || rel_die "bookworm packages build natively on Debian 12"
  rel_need_tools lintian:lintian pkg-config:pkg-config
  [ -e /usr/include/xenctrl.h ] || rel_need_tools xenctrl-headers-missing:libxen-dev
  ROOT=""
  B=$WORK          # the work directory, as the build sees it
else
  ROOT=$("$PKGDIR/build-chroot.sh" "$SUITE")/root
  B=/build
fi
mkdir -p "$WORK"
mounts=()
cleanup() { local m; for m in $(printf '%s\n' "${mounts[@]}" | tac); do umount -l "$m" 2>/dev/null || true; done; mounts=(); }
trap cleanup EXIT
bind() { # SRC DEST-IN-ROOT [ro]
  mkdir -p "$ROOT$2"
  mount --bind "$1" "$ROOT$2"; mounts+=("$ROOT$2")
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$ROOT$2"
  return 0
}
if [ -n "$ROOT" ]; then
  for m in proc dev sys; do bind "/$m" "/$m"; done
  bind /opt/swift /opt/swift ro
  [ -d /opt/swift-packages ] && bind /opt/swift-packages /opt/swift-packages ro
  # SwiftPM resolves this machine's packages from its repository cache.
  mkdir -p /root/.cache/org.swift.swiftpm
  bind /root/.cache/org.swift.swiftpm /root/.cache/org.swift.swiftpm
  bind "$WORK" /build
fi
# in_env CMD...: runs a shell command in the release's build environment, cwd $B/src.
in_env() {
  if [ -n "$ROOT" ]; then
    chroot "$ROOT" env -i HOME=/root PATH=/opt/swift/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
      bash -c "cd $B/src && $1"
  else
    env PATH=/opt/swift/usr/bin:$PATH bash -c "cd $B/src && $1"
  fi
}

# --- a clean tree -----------------------------------------------------------------------
# Files git knows or would add, copied with their mtimes (SwiftPM rebuilds by mtime).
rm -rf "$WORK/src"; mkdir -p "$WORK/src"
( cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    grep -zv -e '^\.build' -e '^dist/' | tar --null -T - -cf - ) | tar -xf - -C "$WORK/src"

# --- release build ------------------------------------------------------------------------
rel_log "swift release build for $SUITE (Xen $XEN_SERIES)"
t=$(date +%s)
# -z now gives BIND_NOW. -z relro is asked for too, but the Swift driver's static link
# (gold) still emits no PT_GNU_RELRO segment: lintian's hardening-no-relro stays (README).
SW="swift build -c release --static-swift-stdlib -Xlinker -z -Xlinker relro -Xlinker -z -Xlinker now --scratch-path $B/scratch --config-path $B/swiftpm-config --security-path $B/swiftpm-security"
products="xenp2md xenp2mctl"
[ "${XENP2M_PACKAGE_TEST_TOOLS:-0}" = 1 ] && products+=" xenp2m-bench"
for p in $products; do
  in_env "$SW --product $p" > "$WORK/build-$p.log" 2>&1 || { tail -40 "$WORK/build-$p.log" >&2; rel_die "swift build of $p for $SUITE failed"; }
done
BIN=$WORK/scratch/release
T_BUILD=$(( $(date +%s) - t ))
built=$(in_env "$B/scratch/release/xenp2md --version")
case $built in *"Xen $XEN_SERIES "*) ;; *) rel_die "the $SUITE build says '$built', not Xen $XEN_SERIES" ;; esac
rel_log "built in ${T_BUILD} s: $built"

# generate-manual (swift-argument-parser's man page generator), built once per version of
# the checkout SwiftPM resolved, in the same environment.
gm=$WORK/generate-manual/release/generate-manual
if [ ! -x "$gm" ] || ! cmp -s "$WORK/scratch/checkouts/swift-argument-parser/Package.swift" "$WORK/generate-manual/Package.swift.built"; then
  rel_log "building generate-manual"
  rm -rf "$WORK/gm-src"; cp -a "$WORK/scratch/checkouts/swift-argument-parser" "$WORK/gm-src"
  in_env "cd $B/gm-src && swift build -c release --static-swift-stdlib --product generate-manual --scratch-path $B/generate-manual" \
    > "$WORK/build-generate-manual.log" 2>&1 || { tail -20 "$WORK/build-generate-manual.log" >&2; rel_die "building generate-manual failed"; }
  cp "$WORK/scratch/checkouts/swift-argument-parser/Package.swift" "$WORK/generate-manual/Package.swift.built"
fi

# --- the package tree ------------------------------------------------------------------------
S=$WORK/pkg
rm -rf "$S"; mkdir -p "$S/DEBIAN"
inst() { install -D -m "$1" "$2" "$S$3"; }
inst 755 "$BIN/xenp2md" /usr/sbin/xenp2md
inst 755 "$BIN/xenp2mctl" /usr/bin/xenp2mctl
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$S/usr/sbin/xenp2md" "$S/usr/bin/xenp2mctl"
UNITDIR=/lib/systemd/system
# trixie's systemd and lintian want units under /usr (the /usr merge is complete there).
[ "$SUITE" = trixie ] && UNITDIR=/usr/lib/systemd/system
inst 644 "$REPO/systemd/xenp2md.service" $UNITDIR/xenp2md.service
inst 644 "$REPO/systemd/xenp2md.socket" $UNITDIR/xenp2md.socket
grep -q '^ExecStart=/usr/sbin/xenp2md ' "$S$UNITDIR/xenp2md.service" || rel_die "systemd/xenp2md.service's ExecStart is not /usr/sbin/xenp2md"
inst 644 "$REPO/config/xenp2md.yaml" /etc/xenp2m/xenp2md.yaml
echo /etc/xenp2m/xenp2md.yaml > "$S/DEBIAN/conffiles"

# Man pages: generated from the argument parser, plus what it cannot know.
man=$WORK/man; rm -rf "$man"; mkdir -p "$man"
date=$(date -u -d "@$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)" +%Y-%m-%d)
in_env "$B/generate-manual/release/generate-manual $B/scratch/release/xenp2md --section 8 --date $date -o $B/man && $B/generate-manual/release/generate-manual $B/scratch/release/xenp2mctl --section 1 --date $date -o $B/man" \
  > "$WORK/man.log" 2>&1 || { cat "$WORK/man.log" >&2; rel_die "generate-manual failed"; }
[ -s "$man/xenp2md.8" ] && [ -s "$man/xenp2mctl.1" ] || rel_die "generate-manual wrote no xenp2md.8/xenp2mctl.1 ($(ls "$man"))"
roff_literal() { sed -e 's/\\/\\e/g' -e 's/^\([.'"'"']\)/\\\&\1/'; }
finding_kinds() { # the README's table, as an mdoc list
  echo ".Sh FINDING KINDS"
  echo "Each report lists findings by kind (see also /usr/share/doc/xenp2m/README.md.gz):"
  echo ".Bl -tag -width Ds"
  awk -F'|' '/^### Finding kinds/ { on = 1; next } on && /^## / { exit }
    on && $2 ~ /`/ { k = $2; gsub(/[` ]/, "", k); s = $3; gsub(/^ +| +$/, "", s)
      m = $4; gsub(/^ +| +$/, "", m); w = $5; gsub(/^ +| +$/, "", w); gsub(/`/, "", m); gsub(/`/, "", w)
      printf ".It Sy %s Pq %s\n%s.\nWhat to do: %s.\n", k, s, m, w }' "$REPO/README.md" | roff_literal_body
  echo ".El"
}
roff_literal_body() { sed -e 's/\\/\\e/g' -e '/^\.It /!s/^\([.'"'"']\)/\\\&\1/'; }
{
  cat "$man/xenp2md.8"
  echo ".Sh CONFIGURATION"
  echo "The service reads"
  echo ".Pa /etc/xenp2m/xenp2md.yaml"
  echo "(a conffile: your edits survive upgrades). Every key, with its default and meaning:"
  echo ".Bd -literal"
  roff_literal < "$REPO/config/xenp2md.yaml"
  echo ".Ed"
  finding_kinds
  echo ".Sh EXIT STATUS"
  echo "0 after a clean stop; 1 on a runtime error (no Xen, socket, state directory); 2 on a bad"
  echo "config or scenario file; 3 when the hypervisor refuses the Xen interface this build speaks"
  echo "(a package built for another Xen release; the unit does not restart on it)."
  echo ".Sh FILES"
  echo ".Bl -tag -width Ds -compact"
  echo ".It Pa /etc/xenp2m/xenp2md.yaml"
  echo "configuration"
  echo ".It Pa /var/lib/xenp2m/incidents.jsonl"
  echo "incident log (kept across restarts and upgrades; removed on purge)"
  echo ".It Pa /run/xenp2m/xenp2md.sock"
  echo "API socket (xenp2md.socket)"
  echo ".El"
  echo ".Sh SEE ALSO"
  echo ".Xr xenp2mctl 1 ,"
  echo ".Xr xl 1"
} > "$man/xenp2md.8.full"
{ cat "$man/xenp2mctl.1"; finding_kinds
  echo ".Sh SEE ALSO"; echo ".Xr xenp2md 8"; } > "$man/xenp2mctl.1.full"
mkdir -p "$S/usr/share/man/man8" "$S/usr/share/man/man1"
gzip -9nc "$man/xenp2md.8.full" > "$S/usr/share/man/man8/xenp2md.8.gz"
gzip -9nc "$man/xenp2mctl.1.full" > "$S/usr/share/man/man1/xenp2mctl.1.gz"

# Shell completions (ArgumentParser writes them).
mkdir -p "$S/usr/share/bash-completion/completions" "$S/usr/share/zsh/vendor-completions" "$S/usr/share/fish/vendor_completions.d"
for tool in xenp2mctl xenp2md; do
  in_env "$B/scratch/release/$tool --generate-completion-script bash" > "$S/usr/share/bash-completion/completions/$tool"
  in_env "$B/scratch/release/$tool --generate-completion-script zsh" > "$S/usr/share/zsh/vendor-completions/_$tool"
  in_env "$B/scratch/release/$tool --generate-completion-script fish" > "$S/usr/share/fish/vendor_completions.d/$tool.fish"
done
# bash-completion files are sourced, not run: no #! line (lintian's bash-completion-with-hashbang).
sed -i '1{/^#!/d}' "$S"/usr/share/bash-completion/completions/*
chmod 644 "$S"/usr/share/*/*completions*/* "$S"/usr/share/fish/vendor_completions.d/*

D=$S/usr/share/doc/xenp2m
mkdir -p "$D"
gzip -9nc "$REPO/README.md" > "$D/README.md.gz"
gzip -9nc "$PKGDIR/debian/changelog" > "$D/changelog.gz"
install -m 644 "$PKGDIR/debian/copyright" "$D/copyright"
for f in postinst prerm postrm; do install -m 755 "$PKGDIR/debian/$f" "$S/DEBIAN/$f"; done
# The one lintian override; its file says why (Yams vendors libyaml, linked in statically).
install -D -m 644 "$PKGDIR/debian/lintian-overrides" "$S/usr/share/lintian/overrides/xenp2m"

# --- control: Depends from dpkg-shlibdeps of this release ---------------------------------------
mkdir -p "$WORK/shlibs/debian"
printf 'Source: xenp2m\n\nPackage: xenp2m\nArchitecture: amd64\n' > "$WORK/shlibs/debian/control"
cp "$S/usr/sbin/xenp2md" "$S/usr/bin/xenp2mctl" "$WORK/shlibs/"
deps=$(in_env "cd $B/shlibs && dpkg-shlibdeps -O -e xenp2md -e xenp2mctl 2>$B/shlibs/err" | sed -n 's/^shlibs:Depends=//p') ||
  { cat "$WORK/shlibs/err" >&2; rel_die "dpkg-shlibdeps failed"; }
[ -n "$deps" ] || { cat "$WORK/shlibs/err" >&2; rel_die "dpkg-shlibdeps found no dependencies"; }
# Debian's own helpers run in the maintainer scripts.
deps="$deps, init-system-helpers (>= 1.52)"
size=$(du -sk --exclude=DEBIAN "$S" | cut -f1)
cat > "$S/DEBIAN/control" <<EOF
Package: xenp2m
Version: $VERSION
Architecture: amd64
Maintainer: xenp2m maintainers <maintainers@users.noreply.r-seed-b1796cb0.example>
Installed-Size: $size
Depends: $deps
Section: admin
Priority: optional
Description: P2M consistency monitor for Xen PV guests
 xenp2md runs in a Xen dom0 (Xen $XEN_SERIES, as in Debian $SUITE), reads every
 paravirtualized guest's P2M table (pfn to mfn) through libxenctrl, checks it
 against Xen's M2P and against itself, and serves the reports on a Unix
 socket, to Prometheus and to scripts. xenp2mctl is its command-line client
 and also checks xl dump-core files offline.
 .
 Built for Xen $XEN_SERIES; the daemon refuses, with exit status 3, a hypervisor
 whose interface its libraries cannot drive.
EOF
( cd "$S" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum ) > "$S/DEBIAN/md5sums"
chmod 644 "$S/DEBIAN/control" "$S/DEBIAN/conffiles" "$S/DEBIAN/md5sums"
find "$S" -type d -exec chmod 755 {} +
rm -f "$OUT"/xenp2m_*_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$S" "$DEB" >/dev/null
if [ "${XENP2M_PACKAGE_TEST_TOOLS:-0}" = 1 ]; then
  mkdir -p "$OUT/test-tools"; install -m 755 "$BIN/xenp2m-bench" "$OUT/test-tools/xenp2m-bench"
fi

# --- lintian, the release's own ------------------------------------------------------------------
cp "$DEB" "$WORK/check.deb"
set +e
in_env "lintian --no-tag-display-limit --info --display-level '>=pedantic' $B/check.deb" > "$OUT/lintian-$SUITE.txt" 2>&1
set -e
rm -f "$WORK/check.deb"
errors=$(grep -c '^E: ' "$OUT/lintian-$SUITE.txt" || true)
warnings=$(grep -c '^W: ' "$OUT/lintian-$SUITE.txt" || true)
rel_log "lintian ($SUITE): $errors errors, $warnings warnings (all tags: $OUT/lintian-$SUITE.txt)"
grep -E '^(E|W): ' "$OUT/lintian-$SUITE.txt" | sed 's/^/  /' >&2 || true
cleanup; trap - EXIT
rel_log "$(basename "$DEB"): $(( $(stat -c %s "$DEB") / 1024 )) KiB, Installed-Size $size KiB, Depends: $deps; $(( $(date +%s) - T0 )) s in all"
[ "$errors" = 0 ] || rel_die "lintian reports $errors errors"
printf '%s\n' "$DEB"
