#!/usr/bin/env bash
# Guest-memory fuzzer: builds P2MFuzz with libFuzzer + AddressSanitizer and runs it for
# SECONDS (default 60) on the committed seed corpus. Last line of output, always:
#   executions: N, crashes: C
# C counts crash/timeout/oom/leak artifacts written by this run (into .fuzz/artifacts,
# gitignored); exit status is non-zero when C > 0 or the build fails.
# Replay an artifact without the fuzzer: swift build --product P2MFuzz && .build/debug/P2MFuzz FILE
set -uo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH

seconds=${1:-60}
case "$seconds" in (''|*[!0-9]*) echo "usage: scripts/fuzz.sh SECONDS" >&2; echo "executions: 0, crashes: 0"; exit 2;; esac

scratch=.build-fuzz
work=.fuzz
mkdir -p "$work/corpus" "$work/artifacts"
log="$work/last-run.log"

# Libraries and the fuzz target built with coverage + ASan; -D P2M_FUZZ drops the
# replayer's main so libFuzzer's driver runs instead. ld.gold's "Cannot export local
# symbol __asan_*" warnings are harmless and filtered.
if ! swift build -c release --scratch-path "$scratch" --product P2MFuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -D -Xswiftc P2M_FUZZ >"$work/build.log" 2>&1; then
  grep -v "Cannot export local symbol" "$work/build.log" | tail -30 >&2
  echo "fuzz.sh: build failed (full log: $work/build.log)" >&2
  echo "executions: 0, crashes: 0"
  exit 1
fi
bin="$scratch/release/P2MFuzz"

# Mutations accumulate in the gitignored working corpus; the committed seeds are read-only input.
# Swift's own backtracer would race libFuzzer's crash handler on abort() and garble the report.
# ASan's default 256 MB quarantine of multi-MB frame mappings held RSS at 1.2-1.4 GB (near
# -rss_limit_mb); 32 MB keeps it near 250 MB and still catches use-after-unmap in the window.
before=$(find "$work/artifacts" -type f | wc -l)
SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=32}" "$bin" "$work/corpus" Fuzz/corpus \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=4096 \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" >"$log" 2>&1
status=$?
after=$(find "$work/artifacts" -type f | wc -l)
crashes=$((after - before))

# "Done N runs" on a clean finish; otherwise the last "#N" status line before the crash.
execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
if [ -z "$execs" ]; then
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
fi
if [ -z "$execs" ]; then
  execs=$(sed -n 's/^#\([0-9]*\)[[:space:]].*/\1/p' "$log" | tail -1)
fi
execs=${execs:-0}
rate=$(sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p' "$log" | tail -1)

grep -E "^(INFO: Seed|#[0-9]+.*(INITED|DONE))|P2MFuzz invariant|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY|artifact_prefix|Test unit written" "$log" | tail -15
if [ "$crashes" -gt 0 ]; then
  echo "new artifacts in $work/artifacts (replay: .build/debug/P2MFuzz FILE):"
  find "$work/artifacts" -type f -newer "$work/build.log" -printf '  %p\n'
elif [ "$status" -ne 0 ]; then
  echo "fuzz.sh: libFuzzer exited $status without an artifact (see $log)" >&2
  crashes=1
fi
echo "fuzzed ${seconds}s, ${rate:-?} exec/s (log: $log)"
echo "executions: $execs, crashes: $crashes"
[ "$crashes" -eq 0 ]
