#!/bin/bash
# Runs inside dom0 (started by xenp2m-testbed.service once the Xen daemons are up) and
# reports on the serial console with "XTB:" marker lines, which the host-side run.sh
# parses. Never exits early: every scenario reports PASS, FAIL or SKIP, then dom0 powers
# off and QEMU exits.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LIB=/usr/local/lib/xenp2m-testbed
WORK=/run/xenp2m-testbed
CONLOG=/var/log/xen/console
mkdir -p "$WORK"
CONSOLE=/dev/hvc0
[ -w "$CONSOLE" ] || CONSOLE=/dev/console

# Options from the dom0 kernel command line (xtb.KEY=VALUE), set by run.sh.
ONLY="" MODE=auto
for a in $(cat /proc/cmdline); do
  case $a in
    xtb.only=*) ONLY=${a#xtb.only=} ;;
    xtb.mode=*) MODE=${a#xtb.mode=} ;;
    xtb.debug=1) exec 9> "$CONSOLE"; BASH_XTRACEFD=9; set -x ;;
  esac
done

# Kernel messages can interleave with ours on the shared serial line: one write per line.
# stderr, not stdout: markers are also printed from inside $(...) captures.
mark() { printf 'XTB: %s\n' "$*" > "$CONSOLE"; printf 'XTB: %s\n' "$*" >&2; }
info() { mark "INFO $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
result() { # NUM NAME STATUS DETAIL...
  local n=$1 name=$2 st=$3; shift 3
  mark "RESULT $n $name $st $*"
}
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------------------------------
# Guests

GUEST_KERNEL=$LIB/vmlinux
GUEST_INITRD=$LIB/guest-initrd.cpio.gz

# create NAME MEMORY_MIB MAXMEM_MIB [EXTRA_CMDLINE]: boots a PV guest and waits until its
# init reports on the console; prints its domid.
create_guest() {
  local name=$1 mem=$2 maxmem=$3 extra=${4:-} cfg=$WORK/$1.cfg i
  cat > "$cfg" <<EOF
name = "$name"
type = "pv"
kernel = "$GUEST_KERNEL"
ramdisk = "$GUEST_INITRD"
extra = "console=hvc0 loglevel=4 $extra"
memory = $mem
maxmem = $maxmem
vcpus = 1
on_crash = "preserve"
EOF
  rm -f "$CONLOG/guest-$name.log"
  if ! timeout -k 5 "${CREATE_TIMEOUT:-120}" xl create -q "$cfg" > "$WORK/$name.create.log" 2>&1; then
    info "xl create $name failed: $(tail -3 "$WORK/$name.create.log" | tr '\n' ' ')"
    return 1
  fi
  for i in $(seq 1 ${GUEST_WAIT:-90}); do
    grep -q GUEST-UP "$CONLOG/guest-$name.log" 2>/dev/null && break
    sleep 1
  done
  grep -q GUEST-UP "$CONLOG/guest-$name.log" 2>/dev/null ||
    { info "guest $name did not report GUEST-UP: $(xl list 2>&1 | tr -s ' \n' ' |') consoled=$(pgrep -a xenconsoled | tr '\n' ' ') logs=$(ls -la "$CONLOG" 2>&1 | tr -s ' \n' ' |') console: $(tail -c 600 "$CONLOG/guest-$name.log" 2>/dev/null | tr '\n' ' ')"; return 1; }
  xl domid "$name"
}

destroy_guest() { xl destroy "$1" >/dev/null 2>&1 || true; }

# ---------------------------------------------------------------------------------------
# xenp2m access: through the daemon and xenp2mctl when the daemon runs, else one-shot.

# 1 once the package's units run xenp2md (scenario 9); else scans fall back to --once.
DAEMON=0

# report DOMID: the current report of one domain as JSON on stdout (a fresh scan).
report() {
  local d=$1
  if [ $DAEMON = 1 ]; then
    timeout -k 5 300 xenp2mctl scan "$d" --timeout 280 --json
  else
    timeout -k 5 300 xenp2md --backend xen --once --json | jq -e ".[] | select(.domid == $d)"
  fi
}

# ArgumentParser answers "--help" of an unknown subcommand with the top-level help and
# status 0, so a subcommand exists only if its own usage line comes back.
has_subcommand() { xenp2mctl "$1" --help 2>&1 | grep -qi "usage: xenp2mctl $1"; }

# jq wrapper for checks on a saved report: prints the value, never fails the script.
jv() { jq -r "$2" "$1" 2>/dev/null; }

# ---------------------------------------------------------------------------------------
# Scenario 1: small PV guest

s1() {
  local d r=$WORK/s1.json why=""
  d=$(create_guest s1 256 256) || { result 1 small-pv FAIL "guest did not boot"; return; }
  S1_DOMID=$d
  report "$d" > "$r" || { result 1 small-pv FAIL "no report: $(head -c 300 "$r")"; return; }
  [ "$(jv "$r" .severity)" = ok ] || why+=" severity=$(jv "$r" .severity)"
  [ "$(jv "$r" '.findings | length')" = 0 ] || why+=" findings=$(jv "$r" '[.findings[].kind] | join(",")')"
  [ "$(jv "$r" '.tree.published and .tree.walked')" = true ] || why+=" tree-not-walked"
  [ "$(jv "$r" '.linear_list.published and .linear_list.walked')" = true ] || why+=" list-not-walked"
  [ "$(jv "$r" '.tree.leaf_frames == .linear_list.leaf_frames')" = true ] || why+=" leaf-frames-differ"
  [ "$(jv "$r" '.populated == .tot_pages')" = true ] || why+=" populated=$(jv "$r" .populated)!=tot_pages=$(jv "$r" .tot_pages)"
  [ "$(jv "$r" .migration.verdict)" = legacy_ok ] || why+=" migration=$(jv "$r" .migration.verdict)"
  if [ $DAEMON = 1 ]; then
    # The operator's views of the same guest: list and check (exit 0 = nothing to do).
    [ "$(xenp2mctl list --json 2>/dev/null | jq -r ".[] | select(.domid == $d) | .severity")" = ok ] || why+=" list-severity-not-ok"
    # dom0 is the daemon's own domain: listed as not applicable (Xen cannot map it), never an error.
    [ "$(xenp2mctl list --json 2>/dev/null | jq -r '.[] | select(.domid == 0) | .severity')" = not_applicable ] || why+=" dom0-not-listed-as-not_applicable"
    xenp2mctl check "$d" > "$WORK/s1.check" 2>&1 || why+=" check-rc=$?:$(head -c 120 "$WORK/s1.check" | tr '\n' ' ')"
  fi
  local nums
  nums="max_pfn=$(jv "$r" .max_pfn.published)/$(jv "$r" .max_pfn.effective) populated=$(jv "$r" .populated) tot_pages=$(jv "$r" .tot_pages) leaves=$(jv "$r" .tree.leaf_frames)/$(jv "$r" .linear_list.leaf_frames) scan_ms=$(jv "$r" .stats.duration_ms) map_calls=$(jv "$r" .stats.map_calls)"
  if [ -z "$why" ]; then result 1 small-pv PASS "$nums"; else result 1 small-pv FAIL "$why | $nums"; fi
}

# ---------------------------------------------------------------------------------------
# Scenario 2: xen-mfndump dump-p2m against xenp2m's walk

MFNDUMP=$(command -v xen-mfndump || ls /usr/lib/xen-*/bin/xen-mfndump 2>/dev/null | head -1)

# entries_diff MFNDUMP_OUTPUT DOMID LABEL: every entry of `xenp2mctl dump-p2m DOMID` (which
# prints xen-mfndump's own "pfn=.. ==> mfn=.." lines, without the type column) against
# xen-mfndump dump-p2m's, both reduced to "pfn mfn" pairs without leading zeros. Prints
# "XENP2M_ENTRIES MFNDUMP_ENTRIES DIFFERING", or "ERR why". Its files go beside
# MFNDUMP_OUTPUT, named after LABEL: a ballooned guest's dumps (1.4 M entries on Linux 6.12)
# outgrow dom0's /run.
entries_diff() {
  local dump=$1 d=$2 l; l=$(dirname "$1")/$3
  timeout -k 5 120 xenp2mctl dump-p2m "$d" > "$l.xenp2m" 2> "$l.xenp2m.err" ||
    { echo "ERR xenp2mctl-dump-p2m-failed:$(head -c 200 "$l.xenp2m.err" | tr '\n' ' ')"; return; }
  pairs() { awk '/==> mfn=/ { split($1, a, "="); split($3, b, "="); p = tolower(a[2]); m = tolower(b[2])
                 sub(/^0x0*/, "", p); sub(/^0x0*/, "", m); print (p == "" ? 0 : p), (m == "" ? 0 : m) }' "$1" | sort; }
  pairs "$dump" > "$l.mfndump.pairs"
  pairs "$l.xenp2m" > "$l.xenp2m.pairs"
  echo "$(wc -l < "$l.xenp2m.pairs") $(wc -l < "$l.mfndump.pairs") $(comm -3 "$l.mfndump.pairs" "$l.xenp2m.pairs" | wc -l)"
}

s2() {
  local d=${S1_DOMID:-} r=$WORK/s1.json dump=$WORK/s2.mfndump why="" nums
  [ -n "$d" ] && [ -s "$r" ] || { result 2 mfndump-peer FAIL "no scenario-1 guest/report to compare"; return; }
  local t0 t1
  t0=$(up)
  timeout -k 5 120 "$MFNDUMP" dump-p2m "$d" > "$dump" 2> "$WORK/s2.err" ||
    { result 2 mfndump-peer FAIL "xen-mfndump failed: $(tail -2 "$WORK/s2.err" | tr '\n' ' ')"; return; }
  t1=$(up)
  # pfn=0x0 ==> mfn=0xbaa00 (type 0x0): classify like xenp2m's pfn map (bit 1 valid,
  # 2 invalid, 4 identity, 8 foreign) per cell of the report's pfns_per_cell.
  local ppc cells
  ppc=$(jv "$r" .pfn_map.pfns_per_cell)
  cells=$(jv "$r" .pfn_map.cells)
  awk -v ppc="$ppc" -v cells="$cells" -v out="$WORK/s2.cmp" '
    function hex(s,   n, i, c) { n = 0; s = tolower(s); sub(/^0x/, "", s)
      for (i = 1; i <= length(s); i++) { c = index("0123456789abcdef", substr(s, i, 1)) - 1; n = n * 16 + c }
      return n }
    /==> mfn=/ {
      split($1, a, "="); split($3, b, "="); pfn = hex(a[2]); m = tolower(b[2]); sub(/^0x/, "", m)
      n++
      if (m == "ffffffffffffffff") cls = 2
      else if (length(m) == 16 && substr(m, 1, 1) ~ /[89a-f]/) cls = 8
      else if (length(m) == 16 && substr(m, 1, 1) ~ /[4-7]/) cls = 4
      else { cls = 1; valid++; if (seen[m]++) dup++ }
      c = int(pfn / ppc); if (!((c, cls) in has)) { has[c, cls] = 1; mask[c] += cls }; if (c > maxc) maxc = c
    }
    END {
      bad = 0
      for (c = 0; c <= maxc; c++) {
        want = hex(substr(cells, 2 * c + 1, 2))
        if (want % 16 != mask[c] + 0) { bad++; if (bad <= 3) badlist = badlist " cell" c ":" mask[c] "/" want }
      }
      printf "entries=%d valid=%d dup=%d cells=%d cell_mismatch=%d%s\n", n, valid, dup + 0, maxc + 1, bad, badlist > out
    }' "$dump"
  local st
  st=$(cat "$WORK/s2.cmp")
  local entries valid dup badc
  entries=$(sed -n 's/.*entries=\([0-9]*\).*/\1/p' "$WORK/s2.cmp")
  valid=$(sed -n 's/.*valid=\([0-9]*\).*/\1/p' "$WORK/s2.cmp")
  dup=$(sed -n 's/.*dup=\([0-9]*\).*/\1/p' "$WORK/s2.cmp")
  badc=$(sed -n 's/.*cell_mismatch=\([0-9]*\).*/\1/p' "$WORK/s2.cmp")
  [ "$valid" = "$(jv "$r" .populated)" ] || why+=" valid:mfndump=$valid/xenp2m=$(jv "$r" .populated)"
  [ "$valid" = "$(jv "$r" .entries.valid)" ] || why+=" entries.valid=$(jv "$r" .entries.valid)"
  [ "$entries" = "$(jv "$r" .max_pfn.effective)" ] || why+=" size:mfndump=$entries/xenp2m_effective=$(jv "$r" .max_pfn.effective)"
  [ "$dup" = 0 ] || why+=" mfndump-duplicates=$dup"
  [ "$badc" = 0 ] || why+=" $st"
  # Entry for entry (entries_diff). Without dump-p2m in the CLI, counts and per-cell
  # classes are what can be compared.
  local full="no 'xenp2mctl dump-p2m' in this build: compared counts, sizes and per-cell classes, not every entry"
  if [ $DAEMON = 1 ] && has_subcommand dump-p2m; then
    local ed nx nm ndiff; ed=$(entries_diff "$dump" "$d" s2)
    case $ed in
      ERR*) why+=" ${ed#ERR }" ;;
      *) read -r nx nm ndiff <<< "$ed"
         full="entry for entry: $nx xenp2m entries vs $nm xen-mfndump entries, $ndiff differing"
         [ "$ndiff" = 0 ] || why+=" entries-differ=$ndiff" ;;
    esac
  fi
  nums="mfndump_entries=$entries mfndump_valid=$valid xenp2m_populated=$(jv "$r" .populated) cells=$(jv "$r" '.pfn_map.cells | length / 2')x$ppc mfndump_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')"
  if [ -z "$why" ]; then result 2 mfndump-peer PASS "$nums"; else result 2 mfndump-peer FAIL "$why | $nums"; fi
  info "s2 $full"
  # Benchmark item 5: both tools on this guest, alternated in one run (a measurement,
  # not a pass/fail criterion).
  if command -v xenp2m-bench > /dev/null; then
    local bench
    if bench=$(timeout -k 5 300 xenp2m-bench --xen "$d" --repeats 5 --mfndump "$MFNDUMP" 2>&1); then
      while IFS= read -r l; do [ -n "$l" ] && info "s2 bench: $l"; done <<< "$bench"
    else
      info "s2 bench: xenp2m-bench --xen $d failed: $(printf '%s' "$bench" | tail -2 | tr '\n' ' ')"
    fi
  fi
}

# ---------------------------------------------------------------------------------------
# Helpers for the daemon scenarios

# events [AFTER]: the daemon's kept events (incident log included), one JSON per line.
events() { timeout -k 5 30 xenp2mctl watch --since "${1:-0}" --no-follow --json 2>/dev/null; }
# status DOMID: the daemon's current report (no new scan), JSON.
status() { timeout -k 5 30 xenp2mctl status "$1" --json 2>/dev/null; }
tot_kib() { xl list "$1" 2>/dev/null | awk 'NR == 2 { print $3 * 1024 }'; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# wait_tot NAME MIB: until the guest's memory has settled within 2 MiB of MIB (balloon).
wait_tot() {
  local i cur
  for i in $(seq 1 180); do
    cur=$(xl list "$1" 2>/dev/null | awk 'NR == 2 { print $3 }')
    [ -n "$cur" ] && [ $(( cur > $2 ? cur - $2 : $2 - cur )) -le 2 ] && return 0
    sleep 0.5
  done
  return 1
}

# ---------------------------------------------------------------------------------------
# Scenario 3: ballooning (maxmem well above memory, xl mem-set down and up)
#
# Linux sizes its P2M at boot to min(maxmem, 11 x memory) (EXTRA_MEM_RATIO), with leaves
# for all of it, so ballooning inside that range changes entries only. Going above it
# makes the balloon driver hotplug memory: the P2M grows (new leaves replace the shared
# missing page, p2m_generation moves, the published max_pfn rises).

s3() {
  local d why="" r0=$WORK/s3.0.json r1=$WORK/s3.1.json r2=$WORK/s3.2.json seq0=0
  d=$(create_guest s3 128 2048 memhp_default_state=online) || { result 3 balloon FAIL "guest did not boot"; return; }
  [ $DAEMON = 1 ] && { seq0=$(events | tail -1 | jq -r '.seq // 0'); seq0=${seq0:-0}; }
  report "$d" > "$r0" || { result 3 balloon FAIL "no report"; destroy_guest s3; return; }
  xl mem-set s3 112m; wait_tot s3 112 || why+=" mem-set-down-did-not-settle($(xl list s3 | awk 'NR==2{print $3}'))"
  report "$d" > "$r1"
  xl mem-set s3 1792m; wait_tot s3 1792 || why+=" mem-set-up-did-not-settle($(xl list s3 | awk 'NR==2{print $3}'))"
  report "$d" > "$r2"
  local f
  for f in "$r0" "$r1" "$r2"; do
    [ "$(jv "$f" .severity)" = ok ] || why+=" $(basename "$f" .json):severity=$(jv "$f" .severity):$(jv "$f" '[.findings[].kind] | join(",")')"
    [ "$(jv "$f" '.populated == .tot_pages')" = true ] || why+=" $(basename "$f" .json):populated=$(jv "$f" .populated)/tot=$(jv "$f" .tot_pages)"
  done
  [ "$(jv "$r1" .populated)" -lt "$(jv "$r0" .populated)" ] 2>/dev/null || why+=" populated-did-not-shrink"
  [ "$(jv "$r2" .populated)" -gt "$(jv "$r0" .populated)" ] 2>/dev/null || why+=" populated-did-not-grow"
  [ "$(jv "$r2" .max_pfn.published)" -gt "$(jv "$r0" .max_pfn.published)" ] 2>/dev/null || why+=" published-max_pfn-did-not-grow"
  [ "$(jv "$r2" .generation.after)" != "$(jv "$r0" .generation.after)" ] || why+=" generation-unchanged($(jv "$r0" .generation.after))"
  local evs="one-shot mode: no events"
  if [ $DAEMON = 1 ]; then
    sleep 4
    evs=$(events "$seq0" | jq -r "select(.domid == $d) | .kind" | sort | uniq -c | awk '{printf "%s%s=%s", (NR>1?",":""), $2, $1}')
    [[ $evs == *memory_changed* ]] || why+=" no-memory_changed-event($evs)"
  fi
  local nums="max_pfn published/effective/nr_gpfns: $(jv "$r0" '"\(.max_pfn.published)/\(.max_pfn.effective)/\(.max_pfn.nr_gpfns)"') -> $(jv "$r1" '"\(.max_pfn.published)/\(.max_pfn.effective)"') -> $(jv "$r2" '"\(.max_pfn.published)/\(.max_pfn.effective)/\(.max_pfn.nr_gpfns)"'); populated $(jv "$r0" .populated) -> $(jv "$r1" .populated) -> $(jv "$r2" .populated); generation $(jv "$r0" .generation.after) -> $(jv "$r1" .generation.after) -> $(jv "$r2" .generation.after); list leaves $(jv "$r0" .linear_list.leaf_frames) -> $(jv "$r2" .linear_list.leaf_frames); retries $(jv "$r2" .stats.retries); events: $evs"
  # The toolstack comparison every guest gets (toolstack-compare.sh), on a smaller guest:
  # a 1.8 GiB image does not fit dom0's disk.
  if has_subcommand preflight; then
    xl mem-set s3 256m; wait_tot s3 256 || why+=" mem-set-256m-did-not-settle"
    TS_PFN="" TS_DONOR="" ts_compare 3 s3 "$d" "save=works migrate=works|aborts_if_changing dump_core=works"
    why+=${TS_WHY:+ toolstack:$TS_WHY} nums+="; at 256 MiB: $TS_DETAIL"
  fi
  if [ -z "$why" ]; then result 3 balloon PASS "$nums"; else result 3 balloon FAIL "$why | $nums"; fi
  destroy_guest s3
}

# ---------------------------------------------------------------------------------------
# Scenario 4: a guest beyond the 3-level tree's reach (512 GiB of pfns, 64-bit)

s4() {
  local mem=${S4_MEM:-48128} maxmem=${S4_MAXMEM:-614400} d r=$WORK/s4.json why="" t0 t1 t2
  local free; free=$(xl info free_memory 2>/dev/null)
  info "s4: host free memory ${free} MiB; guest memory=${mem} MiB maxmem=${maxmem} MiB"
  if [ -n "$free" ] && [ "$free" -lt $((mem + 64)) ]; then
    mem=$(( (free - 256) / 1024 * 1024 ))
    info "s4: not enough host memory, guest memory lowered to ${mem} MiB"
  fi
  t0=$(up)
  # Populating and booting ~47 GiB under TCG takes minutes, not seconds. Debian's kernel
  # (CONFIG_XEN_512GB=y) caps a PV domU at exactly 512 GiB of pfns unless told otherwise.
  d=$(CREATE_TIMEOUT=600 GUEST_WAIT=400 create_guest s4 "$mem" "$maxmem" "${S4_EXTRA-xen_512gb_limit=0}") || { result 4 beyond-tree FAIL "guest did not boot (memory=$mem maxmem=$maxmem)"; return; }
  t1=$(up)
  report "$d" > "$r" || { result 4 beyond-tree FAIL "no report: $(head -c 300 "$r")"; return; }
  t2=$(up)
  local cap=$((512 * 512 * 512)) mp fll_pub verdict reason
  mp=$(jv "$r" .max_pfn.published)
  fll_pub=$(jv "$r" .tree.published)
  verdict=$(jv "$r" .migration.verdict)
  reason=$(jv "$r" .migration.reason)
  [ "$(jv "$r" '.linear_list.published and .linear_list.walked')" = true ] || why+=" list-not-walked"
  [ "$(jv "$r" '.populated == .tot_pages')" = true ] || why+=" populated=$(jv "$r" .populated)/tot=$(jv "$r" .tot_pages)"
  local kinds; kinds=$(jv "$r" '[.findings[].kind] | join(",")')
  if [ "$mp" -gt "$cap" ] 2>/dev/null; then
    # Beyond the tree: migration-v2 tools only, whatever the guest did with its fll.
    [ "$verdict" = needs_migration_v2 ] || why+=" verdict=$verdict(expected needs_migration_v2)"
    if [ "$fll_pub" = true ]; then
      [[ ",$kinds," == *",tree_capacity_exceeded,"* ]] || why+=" tree-published-but-no-tree_capacity_exceeded"
    else
      [ -z "$kinds" ] || why+=" findings=$kinds"
    fi
  else
    info "s4: Linux published max_pfn=$mp, within the tree (capacity $cap): the guest stays tree-describable"
    [ "$verdict" = legacy_ok ] || why+=" verdict=$verdict(expected legacy_ok: max_pfn within the tree)"
    why+=" guest-not-beyond-tree(max_pfn=$mp)"
  fi
  local nums="memory=${mem}MiB maxmem=${maxmem}MiB max_pfn=$mp ($(awk -v p="$mp" 'BEGIN{printf "%.1f", p*4096/2^30}') GiB) effective=$(jv "$r" .max_pfn.effective) nr_gpfns=$(jv "$r" .max_pfn.nr_gpfns) max_pages=$(jv "$r" .max_pages) tree_published=$fll_pub list_levels=$(jv "$r" .linear_list.levels) populated=$(jv "$r" .populated) tot_pages=$(jv "$r" .tot_pages) findings=[${kinds}] verdict=$verdict reason=\"$reason\" create_s=$(secs "$t0" "$t1") scan_s=$(secs "$t1" "$t2")"
  # The toolstack comparison, within what this machine holds: no core, 90 s of the save.
  if has_subcommand preflight; then
    TS_PFN="" TS_DONOR="" TS_SAVE_SECONDS=90 ts_compare 4 s4 "$d" "save=works tree_only_toolstack=fails"
    why+=${TS_WHY:+ toolstack:$TS_WHY} nums+="; $TS_DETAIL"
  fi
  if [ -z "$why" ]; then result 4 beyond-tree PASS "$nums"; else result 4 beyond-tree FAIL "$why | $nums"; fi
  destroy_guest s4
}

# ---------------------------------------------------------------------------------------
# Scenario 5: xl dump-core checked offline

# core_one DOMID LABEL: dump-core, check offline, compare with a live scan; prints
# "OK detail" or "BAD detail".
core_one() {
  local d=$1 label=$2 core=/var/tmp/s5.core live=$WORK/s5.$2.live.json off=$WORK/s5.$2.core.json why="" t0 t1 rc k
  report "$d" > "$live"
  t0=$(up)
  # Not under /run: a 256 MiB guest's core does not fit dom0's tmpfs.
  timeout -k 5 300 xl dump-core "$d" "$core" > "$WORK/s5.err" 2>&1 ||
    { echo "BAD [$label: xl dump-core failed: $(tail -2 "$WORK/s5.err" | tr '\n' ' ')]"; rm -f "$core"; return; }
  t1=$(up)
  timeout -k 5 300 xenp2mctl check-core "$core" --domid "$d" --json > "$off" 2> "$WORK/s5.check.err"; rc=$?
  if ! jq -e . "$off" > /dev/null 2>&1; then
    echo "BAD [$label: check-core rc=$rc gave no JSON: $(head -c 200 "$WORK/s5.check.err" | tr '\n' ' ')]"; rm -f "$core"; return
  fi
  jq 'if type == "array" then .[0] else . end' "$off" > "$off.1"
  local keys=(.severity .populated .entries.invalid .entries.identity .max_pfn.published .max_pfn.effective .migration.verdict)
  # A dump has no M2P: offline, a rewritten entry shows only as the duplicate frame, so for
  # the corrupted guest verdict and counts are compared, not the per-kind findings.
  [ "$label" = healthy ] && keys+=(.entries.valid .entries.faulty '[.findings[] | "\(.kind):\(.count)"] | sort | join(",")')
  for k in "${keys[@]}"; do
    [ "$(jv "$off.1" "$k")" = "$(jv "$live" "$k")" ] || why+=" $k:core=$(jv "$off.1" "$k")/live=$(jv "$live" "$k")"
  done
  local detail="[$label: core $(( $(stat -c %s "$core") / 1048576 )) MiB in $(secs "$t0" "$t1") s, check-core rc=$rc: severity=$(jv "$off.1" .severity) populated=$(jv "$off.1" .populated) valid=$(jv "$off.1" .entries.valid) findings=$(jv "$off.1" '[.findings[] | "\(.kind):\(.count)"] | join(",")') (live: $(jv "$live" '[.findings[] | "\(.kind):\(.count)"] | join(",")'))]"
  rm -f "$core"
  if [ -z "$why" ]; then echo "OK $detail"; else echo "BAD$why $detail"; fi
}

s5() {
  if ! has_subcommand check-core; then
    result 5 dump-core SKIP "no check-core (xenp2mctl check-core --help fails in this build)"; return
  fi
  [ -n "${S1_DOMID:-}" ] || { result 5 dump-core FAIL "no scenario-1 guest"; return; }
  local a b=""
  a=$(core_one "$S1_DOMID" healthy)
  # The corrupted guest of scenario 7, when it ran: the offline verdict must match too.
  [ -n "${S7_DOMID:-}" ] && b=$(core_one "$S7_DOMID" corrupted)
  if [[ $a == OK* ]] && [[ -z $b || $b == OK* ]]; then
    result 5 dump-core PASS "${a#OK } ${b#OK }"
  else
    result 5 dump-core FAIL "$a $b"
  fi
}

# ---------------------------------------------------------------------------------------
# Scenario 6: guests destroyed while scans run

s6() {
  [ $DAEMON = 1 ] || { result 6 destroy-during-scan SKIP "xenp2md is not running as a service in this build"; return; }
  local pid0 seq0 why="" i d ids="" ts_detail=""
  : > "$WORK/s6.scans"
  pid0=$(systemctl show -p MainPID --value xenp2md)
  seq0=$(events | tail -1 | jq -r .seq); seq0=${seq0:-0}
  for i in 1 2 3; do
    d=$(create_guest s6 128 128) || { why+=" guest-$i-did-not-boot"; continue; }
    ids+=" $d"
    # The toolstack comparison every guest gets; the guest stays for the destroy.
    if has_subcommand preflight; then
      TS_PFN="" TS_DONOR="" TS_KEEP=1 ts_compare 6 s6 "$d" "save=works migrate=works|aborts_if_changing dump_core=works"
      why+=${TS_WHY:+ guest-$i-toolstack:$TS_WHY} ts_detail+=" [guest $i: $TS_DETAIL]"
    fi
    # Back-to-back manual scans on top of the 2 s polls; one letter per answered request.
    ( while :; do if xenp2mctl scan "$d" --json > /dev/null 2>&1; then printf o; else printf e; fi >> "$WORK/s6.scans"; done ) &
    local sp=$!
    sleep $((i))
    xl destroy s6
    sleep 1
    kill "$sp" 2>/dev/null; wait "$sp" 2>/dev/null
    # The destroyed guest must not be served as current.
    local st; st=$(status "$d")
    if [ -n "$st" ] && [ "$(echo "$st" | jq -r '.domid // empty')" = "$d" ]; then
      why+=" status-$d-still-served"
    fi
    if xenp2mctl list --json 2>/dev/null | jq -e ".[] | select(.domid == $d and .state == \"running\")" > /dev/null; then
      why+=" list-shows-$d-running"
    fi
  done
  sleep 3
  local pid1 nr active gone
  pid1=$(systemctl show -p MainPID --value xenp2md)
  nr=$(systemctl show -p NRestarts --value xenp2md)
  active=$(systemctl is-active xenp2md)
  [ "$active" = active ] || why+=" daemon-$active"
  [ "$pid1" = "$pid0" ] || why+=" daemon-pid-changed($pid0->$pid1)"
  [ "${nr:-0}" = 0 ] || why+=" NRestarts=$nr"
  # A domain_gone comes from the next poll or the scan that finds the domain vanished.
  local try
  for try in 1 2 3 4 5 6; do
    events "$seq0" > "$WORK/s6.events"
    gone=0
    for d in $ids; do
      [ "$(jq -s "[.[] | select(.domid == $d and .kind == \"domain_gone\")] | length" "$WORK/s6.events")" -ge 1 ] && gone=$((gone + 1))
    done
    [ "$gone" = "$(echo $ids | wc -w)" ] && break
    sleep 2
  done
  if [ "$gone" != "$(echo $ids | wc -w)" ]; then
    why+=" domain_gone-events=$gone/$(echo $ids | wc -w)"
    for d in $ids; do
      info "s6 events of domid $d: $(jq -r "select(.domid == $d) | \"#\(.seq) \(.kind) \(.message)\"" "$WORK/s6.events" | tr '\n' '|')"
    done
  fi
  local errl; errl=$(journalctl -u xenp2md --no-pager -q 2>/dev/null | grep -i 'error' | tail -3 | tr '\n' '|')
  [ -n "$errl" ] && info "s6 xenp2md journal error lines: $errl"
  local nums="destroyed domids:$ids while scanning ($(tr -cd o < "$WORK/s6.scans" | wc -c) manual scans answered, $(tr -cd e < "$WORK/s6.scans" | wc -c) refused once the domain was gone); domain_gone events $gone; daemon pid $pid1, NRestarts ${nr:-?}, $(journalctl -u xenp2md --no-pager -q 2>/dev/null | grep -ci 'error') error lines in its journal; toolstack:$ts_detail"
  if [ -z "$why" ]; then result 6 destroy-during-scan PASS "$nums"; else result 6 destroy-during-scan FAIL "$why | $nums"; fi
}

# ---------------------------------------------------------------------------------------
# Scenario 7: a guest corrupts one of its own P2M entries
#
# The guest module points pfn V's entry at the frame of another pfn D of the same guest.
# Then m2p[mfn] names D, not V: V must be flagged m2p_mismatch, and D is healthy. Both
# orders are run (V below D, V above D), because a walker going upwards meets the frame
# first at whichever pfn is lower.

# corrupt_one NAME ORDER: boots a corrupting guest, waits for the daemon to see it, checks
# the verdict; prints "OK detail" or "BAD detail" on stdout.
corrupt_one() {
  local name=$1 order=$2 d line pfn oldm newm donor t0 t1 r=$WORK/$1.json i sev="" why=""
  d=$(create_guest "$name" 256 256 "xtb_corrupt=$order") || { echo "BAD $order: guest did not boot"; return; }
  for i in $(seq 1 40); do grep -q 'P2MCORRUPT' "$CONLOG/guest-$name.log" && break; sleep 0.5; done
  line=$(grep -a -m1 'P2MCORRUPT' "$CONLOG/guest-$name.log" | tr -d '\r')
  t0=$(up)
  case $line in
    *"P2MCORRUPT pfn="*) ;;
    *) echo "BAD $order: module did not report: ${line:-nothing on the guest console}"; return ;;
  esac
  pfn=$(echo "$line" | sed -n 's/.*pfn=\(0x[0-9a-f]*\) .*/\1/p')
  oldm=$(echo "$line" | sed -n 's/.*mfn=\(0x[0-9a-f]*\)->.*/\1/p')
  newm=$(echo "$line" | sed -n 's/.*->\(0x[0-9a-f]*\) .*/\1/p')
  donor=$(echo "$line" | sed -n 's/.*donor_pfn=\(0x[0-9a-f]*\).*/\1/p')
  if [ $DAEMON = 1 ]; then
    # Found by the daemon's own polling (interval 2 s here), not by a scan we trigger.
    for i in $(seq 1 60); do
      status "$d" > "$r"; sev=$(jv "$r" .severity)
      [ "$sev" = critical ] && break
      sleep 0.5
    done
  else
    report "$d" > "$r"; sev=$(jv "$r" .severity)
  fi
  t1=$(up)
  local mm_count mm_pfns dup_pfns
  mm_count=$(jv "$r" '[.findings[] | select(.kind == "m2p_mismatch") | .count] | add // 0')
  mm_pfns=$(jv "$r" '[.findings[] | select(.kind == "m2p_mismatch") | .samples[].pfn] | map(tostring) | join(",")')
  dup_pfns=$(jv "$r" '[.findings[] | select(.kind == "duplicate_mfn") | .samples[].pfn] | map(tostring) | join(",")')
  [ "$sev" = critical ] || why+=" severity=$sev"
  [ "$mm_count" = 1 ] && [ "$mm_pfns" = "$((pfn))" ] || why+=" m2p_mismatch=$mm_count@[$mm_pfns](expected 1@$((pfn)))"
  if [ $DAEMON = 1 ]; then
    xenp2mctl check "$d" > /dev/null 2>&1 && why+=" xenp2mctl-check-exit-0"
  fi
  # What the toolstack does with this guest: ts_compare (scenario 7 for s7b, 25 for s7).
  local detail="[$order: pfn $((pfn)) mfn $oldm->$newm (donor pfn $((donor))); xenp2m $sev after $(secs "$t0" "$t1") s, m2p_mismatch@[$mm_pfns] duplicate_mfn@[$dup_pfns] migration=$(jv "$r" .migration.verdict)]"
  if [ -z "$why" ]; then echo "OK $detail"; else echo "BAD$why $detail"; fi
  echo "$d" > "$WORK/$name.domid"
}

s7() {
  local a b
  a=$(corrupt_one s7 low)
  b=$(corrupt_one s7b high)
  S7_DOMID=$(cat "$WORK/s7.domid" 2>/dev/null)
  # The toolstack comparison for s7b, which nothing later needs (s7's guest is compared by
  # scenario 25, after the scenarios that use it).
  local d7b ts="" line
  d7b=$(xl domid s7b 2>/dev/null)
  if [ -n "$d7b" ] && has_subcommand preflight; then
    line=$(grep -a -m1 'P2MCORRUPT pfn=' "$CONLOG/guest-s7b.log" | tr -d '\r')
    TS_PFN=$(echo "$line" | sed -n 's/.*P2MCORRUPT pfn=\(0x[0-9a-f]*\) .*/\1/p')
    TS_DONOR=$(echo "$line" | sed -n 's/.*donor_pfn=\(0x[0-9a-f]*\).*/\1/p')
    ts_compare 7 s7b "$d7b" "save=copies_wrong_memory migrate=copies_wrong_memory"
    ts=" [s7b toolstack: $TS_DETAIL]"
    [ -z "$TS_WHY" ] || b="BAD toolstack:$TS_WHY ${b#OK }"
  fi
  destroy_guest s7b
  if [[ $a == OK* && $b == OK* ]]; then
    result 7 corruption PASS "${a#OK } ${b#OK }$ts"
  else
    result 7 corruption FAIL "${a} ${b}$ts"
  fi
}

# ---------------------------------------------------------------------------------------
# Scenario 8: systemctl restart xenp2md keeps the incident history

s8() {
  [ $DAEMON = 1 ] || { result 8 daemon-restart SKIP "xenp2md is not running as a service in this build"; return; }
  local before=$WORK/s8.before after=$WORK/s8.after why="" pid0 pid1 t0 t1
  events > "$before"
  [ -s "$before" ] || { result 8 daemon-restart FAIL "no events before the restart"; return; }
  pid0=$(systemctl show -p MainPID --value xenp2md)
  t0=$(up)
  timeout -k 5 60 systemctl restart xenp2md || why+=" restart-failed"
  t1=$(up)
  pid1=$(systemctl show -p MainPID --value xenp2md)
  [ "$(systemctl is-active xenp2md)" = active ] || why+=" not-active"
  [ "$pid1" != "$pid0" ] || why+=" same-pid"
  events > "$after"
  local nb na kept
  nb=$(jq -s '[.[] | select(.kind != "memory_changed")] | length' "$before")
  na=$(jq -s 'length' "$after")
  # Every incident from before the restart is still served afterwards, same seq and kind.
  kept=$(jq -rs '.[] | select(.kind != "memory_changed") | "\(.seq) \(.kind) \(.domid)"' "$before" |
         while read -r k; do jq -rs '.[] | "\(.seq) \(.kind) \(.domid)"' "$after" | grep -qx "$k" && echo ok; done | wc -l)
  [ "$kept" = "$nb" ] || why+=" incidents-kept=$kept/$nb"
  if [ -n "${S7_DOMID:-}" ]; then
    # One document per event: -s, because jq 1.6 (bookworm) takes -e's status from the
    # last input alone, so a match followed by another domain's event read as "missing".
    if ! jq -se "any(.[]; .domid == $S7_DOMID and .severity == \"critical\")" "$after" > /dev/null; then
      why+=" s7-critical-incident-missing"
      info "s8 events of s7's domid $S7_DOMID before: $(jq -rc "select(.domid == $S7_DOMID) | [.seq, .kind, .severity]" "$before" | tr '\n' ' ')"
      info "s8 events of s7's domid $S7_DOMID after: $(jq -rc "select(.domid == $S7_DOMID) | [.seq, .kind, .severity]" "$after" | tr '\n' ' ')"
      info "s8 s7 status now: $(status "$S7_DOMID" | jq -c '{severity, findings: [.findings[].kind]}' 2>&1)"
    fi
  fi
  local nums="incidents before=$nb, events after=$na, kept=$kept; pid $pid0->$pid1; restart took $(secs "$t0" "$t1") s; Type=$(systemctl show -p Type --value xenp2md)"
  if [ -z "$why" ]; then result 8 daemon-restart PASS "$nums"; else result 8 daemon-restart FAIL "$why | $nums"; fi
}

# ---------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------
# The scenario list. A scenario is a shell function that ends with exactly one
# `result NUM NAME PASS|FAIL|SKIP detail` (SKIP says why); `scenario NUM NAME FUNCTION`
# registers it, and scenarios run in registration order. More scenarios live in
# scenarios.d/*.sh (copied next to this file): each file defines its functions and calls
# `scenario` for them; they run after the built-in ones and before the package's upgrade
# and removal checks, with the daemon running from the installed package. Numbers:
# 1-19 this file and package.sh, 20-39 toolstack checks (issue 12), 40-59 benchmarks.
# run.sh learns the expected list from these `scenario` lines (a scenario that prints no
# result fails), so adding a file here is all it takes.
ORDER=()
declare -A SC_NAME=() SC_FUNC=()
scenario() { ORDER+=("$1"); SC_NAME[$1]=$2; SC_FUNC[$1]=$3; }

. "$LIB/package.sh"
. "$LIB/toolstack-compare.sh"
scenario 9 package-install s9
scenario 1 small-pv s1
scenario 2 mfndump-peer s2
scenario 4 beyond-tree s4
scenario 3 balloon s3
scenario 7 corruption s7
scenario 6 destroy-during-scan s6
scenario 8 daemon-restart s8
scenario 5 dump-core s5
scenario 12 wrong-release-refused s12
for f in "$LIB"/scenarios.d/*.sh; do [ -f "$f" ] && . "$f"; done
scenario 10 package-upgrade s10
scenario 11 package-remove-purge s11

mark "BEGIN uptime=$(up) dom0=$(uname -r) mode=$MODE only=${ONLY:-all}"
# xl blocks forever without a xenstored; say plainly what is missing instead.
for i in $(seq 1 60); do timeout -k 2 5 xenstore-ls /local/domain/0 > /dev/null 2>&1 && break; sleep 1; done
if ! timeout -k 2 5 xenstore-ls /local/domain/0 > /dev/null 2>&1; then
  info "xenstore not answering: xen.service=$(systemctl is-active xen.service) $(systemctl status xen.service --no-pager 2>&1 | tail -6 | tr '\n' '|')"
fi
mark "XEN $(timeout -k 2 20 xl info xen_version 2>&1) free_mib=$(timeout -k 2 20 xl info free_memory 2>&1) uptime=$(up)"
# xenconsoled --log=guest does not create its log directory; it opens a guest's log when
# the guest appears, so creating it before the first xl create is enough.
mkdir -p "$CONLOG"
rm -f "$CONLOG"/guest-*.log

S1_DOMID="" S7_DOMID=""
for n in "${ORDER[@]}"; do
  # The package is installed (scenario 9) whenever anything else runs: the daemon under
  # test is the one the package's units started.
  if [ "$n" = 9 ] || wanted "$n"; then
    "${SC_FUNC[$n]}"; mark "T s$n $(up)"
  fi
done

mark "END uptime=$(up)"
