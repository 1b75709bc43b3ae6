#!/usr/bin/env bash
# Release build of xenp2md, xenp2mctl and xenp2m-bench (item 5 of the benchmarks runs in
# dom0) with the Swift runtime linked statically, so the
# binaries need nothing in dom0 beyond glibc and the Xen libraries (libxenmisc4.17).
# Own scratch path: other builds of the tree (.build, .build-*) run concurrently.
# Usage: build-xenp2m.sh   (prints the directory holding the binaries)
. "$(dirname "$0")/lib.sh"
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
command -v swift >/dev/null || tb_die "swift is not on PATH"
SCRATCH=${XENP2M_TESTBED_SCRATCH:-$TB_CACHE/swift-build}
mkdir -p "$SCRATCH"
# Dependencies come from SwiftPM's shared repository cache (this machine has no route to
# GitHub): the default --cache-path is kept on purpose; config and security state stay
# with the scratch directory so a bed run does not edit ~/.swiftpm.
args=(-c release --static-swift-stdlib --scratch-path "$SCRATCH"
      --config-path "$SCRATCH/swiftpm-config" --security-path "$SCRATCH/swiftpm-security")
cd "$REPO_DIR"
t0=$(date +%s)
for p in xenp2md xenp2mctl xenp2m-bench; do
  swift build "${args[@]}" --product "$p" >&2 || tb_die "swift build of $p failed"
done
bin=$(swift build "${args[@]}" --show-bin-path)
tb_log "swift release build took $(( $(date +%s) - t0 )) s"
printf '%s\n' "$bin"
