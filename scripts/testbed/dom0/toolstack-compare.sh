# xenp2mctl preflight against what the toolstack really does, on one guest (issue 12):
# ts_compare, sourced by scenarios.sh and used by every scenario that creates a guest
# (3, 4, 6, 7 on theirs; scenarios.d/toolstack.sh's 20-25). What matches is described at
# the top of scenarios.d/toolstack.sh.

# The toolstack's error lines of LOG, one message each, prefix and suffix removed.
xc_errors() { sed -n 's/^xc: error: \(.*\): Internal error$/\1/p' "$1"; }

# msgs_match EXPECTED_FILE ACTUAL_FILE: the expected lines are a contiguous run of the actual.
msgs_match() {
  local n; n=$(wc -l < "$1")
  [ "$n" -gt 0 ] || return 1
  local i total; total=$(wc -l < "$2")
  for i in $(seq 1 $((total - n + 1))); do
    sed -n "${i},$((i + n - 1))p" "$2" | cmp -s - "$1" && return 0
  done
  return 1
}

# prediction FILE OP FIELD: one field of an operation's prediction in a toolstack section.
prediction() { jq -r --arg op "$2" ".predictions[] | select(.operation == \$op) | $3" "$1" 2>/dev/null; }

# ts_compare NUM NAME DOMID EXPECT: sets TS_WHY (mismatches) and TS_DETAIL. EXPECT is
# "op=outcome ..." (outcome may be a|b). Options, set for one call:
#   TS_KEEP=1  the guest outlives the comparison (a later step needs it): `xl save -c` (the
#              guest resumes) and the image is restored as a copy, NAME-r, destroyed after
#              its checks. Otherwise the save stops the guest, the restore brings it back
#              under its own name, and it is destroyed at the end.
#   TS_UNMAP=1 the module cleared its mapping of the victim page: the restored guest must
#              run and print P2MRESTORED for the damaged pfn, holding the donor's page.
#   TS_SAVE_SECONDS=N  a guest too large to copy on this machine (scenario 4): no dump-core;
#              the save writes to /dev/null and is stopped after N seconds, which matches
#              `works` when it mapped the P2M (path line), copied frames and printed no
#              error by then; and a xen-mfndump that cannot hold the guest's pfn types
#              in dom0 leaves the entries uncompared (said so), not failed.
ts_compare() {
  local n=$1 name=$2 d=$3 expect=$4 pre=$WORK/$2.preflight.json core=/var/tmp/$2.core save=/var/tmp/$2.save
  TS_WHY="" TS_DETAIL="" TS_DETAIL_ENTRIES=""
  timeout -k 5 300 xenp2mctl preflight "$d" --json > "$pre" 2> "$WORK/$name.preflight.err"
  jq -e '.predictions | length > 0' "$pre" > /dev/null 2>&1 ||
    { TS_WHY+=" no-preflight:$(head -c 200 "$WORK/$name.preflight.err" | tr '\n' ' ')"; [ "${TS_KEEP:-0}" = 1 ] || destroy_guest "$name"; return; }
  local e
  for e in $expect; do
    local got_outcome; got_outcome=$(prediction "$pre" "${e%%=*}" .outcome)
    [[ "|${e#*=}|" == *"|$got_outcome|"* ]] || TS_WHY+=" predicted-${e%%=*}=$got_outcome(expected ${e#*=})"
  done
  info "TS $n $name | tree_only_toolstack | $(prediction "$pre" tree_only_toolstack '.outcome + (if .detail then ": " + .detail else "" end)') | (not run: no pre-4.6 toolstack here) | -"
  ts_entries "$n" "$name" "$d"
  if [ -n "${TS_SAVE_SECONDS:-}" ]; then
    info "TS $n $name | dump_core | $(prediction "$pre" dump_core .outcome) | (not run: a core of this guest does not fit this machine's disk) | -"
    ts_save_partial "$n" "$name" "$pre"
    TS_DETAIL+=", $TS_DETAIL_ENTRIES"
    destroy_guest "$name"
    return
  fi
  ts_dump_core "$n" "$name" "$d" "$pre" "$core"
  ts_save_restore "$n" "$name" "$d" "$pre" "$save"
  TS_DETAIL+=", $TS_DETAIL_ENTRIES"
  rm -f "$save"
  [ "${TS_KEEP:-0}" = 1 ] || destroy_guest "$name"
}

# ts_entries NUM NAME DOMID: scenario 2's entry-for-entry comparison, on this guest.
# The dumps go to disk, not dom0's small /run, and are removed once counted.
ts_entries() {
  local n=$1 name=$2 d=$3 ed nx nm ndiff dir=/var/tmp/xenp2m-entries
  mkdir -p "$dir"
  if ! timeout -k 5 120 "$MFNDUMP" dump-p2m "$d" > "$dir/$name.mfndump" 2> "$WORK/$name.mfndump.err"; then
    local err; err=$(grep -v '^ *$' "$WORK/$name.mfndump.err" | tr '\n' '|' | cut -c1-300)
    rm -rf "$dir"
    if [ -n "${TS_SAVE_SECONDS:-}" ]; then
      # A guest too large for this machine: xen-mfndump keeps a pfn-type array of 8 bytes
      # per pfn (xc_map_domain_meminfo) in dom0's heap, more than dom0 has here.
      info "TS $n $name | xenp2mctl dump-p2m vs xen-mfndump dump-p2m | every entry equal | not compared: xen-mfndump failed ($err), its 8 bytes per pfn do not fit this dom0 | -"
      TS_DETAIL_ENTRIES="entries not compared: xen-mfndump failed ($err)"
      return
    fi
    TS_WHY+=" xen-mfndump-failed:$err"
    info "TS $n $name | xenp2mctl dump-p2m vs xen-mfndump dump-p2m | every entry equal | xen-mfndump failed: $err | no"
    return
  fi
  ed=$(entries_diff "$dir/$name.mfndump" "$d" "$name")
  rm -rf "$dir"
  case $ed in
    ERR*) TS_WHY+=" ${ed#ERR }"; info "TS $n $name | xenp2mctl dump-p2m vs xen-mfndump dump-p2m | every entry equal | ${ed#ERR } | no"; return ;;
  esac
  read -r nx nm ndiff <<< "$ed"
  local ok=yes
  [ "$ndiff" = 0 ] && [ "$nx" = "$nm" ] && [ "$nx" -gt 0 ] || { ok=no; TS_WHY+=" entries:$nx-xenp2m-$nm-mfndump-$ndiff-differ"; }
  info "TS $n $name | xenp2mctl dump-p2m vs xen-mfndump dump-p2m | every entry equal | $nx entries compared, $ndiff differ | $ok"
  TS_DETAIL_ENTRIES="$nx entries compared, $ndiff differ"
}

# ts_dump_core NUM NAME DOMID PREFLIGHT CORE: xl dump-core (live), then check-core
# --preflight of that core against the live save prediction.
ts_dump_core() {
  local n=$1 name=$2 d=$3 pre=$4 core=$5 op=dump_core want rc real match="-" exp got
  exp=$WORK/$name.$op.expected got=$WORK/$name.$op.got
  want=$(prediction "$pre" $op .outcome)
  prediction "$pre" $op '.messages[]' > "$exp"
  rm -f "$core"
  timeout -k 5 300 xl -vvv dump-core "$d" "$core" > "$WORK/$name.$op.log" 2>&1; rc=$?
  xc_errors "$WORK/$name.$op.log" > "$got"
  local dumped="" padding=0 desc
  if [ "$rc" = 0 ]; then
    desc=$(timeout -k 5 300 xenp2mctl check-core "$core" --domid "$d" 2>/dev/null | head -1)
    dumped=$(echo "$desc" | sed -n 's/.* \([0-9]*\) pages.*/\1/p')
    padding=$(echo "$desc" | sed -n 's/.*dumped, \([0-9]*\) padding).*/\1/p'); padding=${padding:-0}
    real="exit 0, $dumped pages, $padding missing"
  else
    real="exit $rc: $(head -1 "$got")"
  fi
  case $want in
    fails) [ "$rc" != 0 ] && msgs_match "$exp" "$got" && match=yes || match=no ;;
    incomplete) [ "$rc" = 0 ] && [ "$padding" = "$(prediction "$pre" $op .pfn_count)" ] && [ "$padding" -gt 0 ] && match=yes || match=no ;;
    *) [ "$rc" = 0 ] && [ "$padding" = 0 ] && match=yes || match=no ;;
  esac
  [ "$match" = yes ] || TS_WHY+=" $op:predicted-$want-real-[$real]"
  info "TS $n $name | $op | $want$( [ -s "$exp" ] && echo ": $(head -1 "$exp")") | $real | $match"
  [ "$want" = fails ] && [ "$match" = no ] && info "TS $n $name $op: expected lines: $(tr '\n' '|' < "$exp") real lines: $(tr '\n' '|' < "$got")"

  # check-core --preflight of that core predicts the same save outcome and first message.
  if [ "$rc" = 0 ] && [ -s "$core" ]; then
    local off=$WORK/$name.core-preflight.json
    timeout -k 5 300 xenp2mctl check-core "$core" --domid "$d" --preflight --json > "$off" 2>/dev/null
    local lo lm oo om
    lo=$(prediction "$pre" save .outcome); lm=$(prediction "$pre" save '.messages[0] // ""')
    oo=$(prediction "$off" save .outcome); om=$(prediction "$off" save '.messages[0] // ""')
    if [ "$lo" = "$oo" ] && [ "$lm" = "$om" ]; then
      info "TS $n $name | save from the core (check-core --preflight) | $oo${om:+: $om} | same as live | yes"
    else
      TS_WHY+=" check-core-preflight-save=$oo[$om]-live=$lo[$lm]"
      info "TS $n $name | save from the core (check-core --preflight) | $oo${om:+: $om} | live said $lo${lm:+: $lm} | no"
    fi
  fi
  rm -f "$core"
}

# ts_save_restore NUM NAME DOMID PREFLIGHT IMAGE: xl save (-c with TS_KEEP), the image's
# content where the prediction says it is wrong, then xl restore and the restored guest.
ts_save_restore() {
  local n=$1 name=$2 d=$3 pre=$4 save=$5 op=save want rc real match="-" exp got
  exp=$WORK/$name.$op.expected got=$WORK/$name.$op.got
  want=$(prediction "$pre" $op .outcome)
  prediction "$pre" $op '.messages[]' > "$exp"
  local path; path=$(prediction "$pre" $op .path)
  local keep=(); [ "${TS_KEEP:-0}" = 1 ] && keep=(-c)
  rm -f "$save"
  timeout -k 5 300 xl -vvv save "${keep[@]}" "$name" "$save" > "$WORK/$name.$op.log" 2>&1; rc=$?
  xc_errors "$WORK/$name.$op.log" > "$got"
  local real_path=tree
  grep -q 'p2m list from' "$WORK/$name.$op.log" && real_path=linear_list
  if [ "$rc" = 0 ]; then real="exit 0"; else real="exit $rc: $(head -1 "$got")"; fi
  case $want in
    fails) [ "$rc" != 0 ] && msgs_match "$exp" "$got" && match=yes || match=no ;;
    *) [ "$rc" = 0 ] && match=yes || match=no ;;
  esac
  local image=""
  if [ "$want" = copies_wrong_memory ] && [ -n "$TS_PFN" ] && [ "$rc" = 0 ]; then
    local nv nd
    nv=$(grep -a -o "XTB-PAGE victim pfn=$TS_PFN" "$save" | wc -l)
    nd=$(grep -a -o "XTB-PAGE donor pfn=$TS_DONOR" "$save" | wc -l)
    if [ "$nv" = 0 ] && [ "$nd" = 2 ]; then
      image=", image: donor page twice, victim page nowhere"
      info "TS $n $name | saved image, content of pfn $TS_PFN | copied from the donor frame | the donor's page twice, the victim's own page nowhere | yes"
    else
      TS_WHY+=" image:victim-page-$nv-donor-page-$nd"
      info "TS $n $name | saved image, content of pfn $TS_PFN | copied from the donor frame | the victim's own page $nv time(s), the donor's $nd | no"
    fi
  fi
  if [ "$want" = copies_wrong_memory ] && [ -n "$TS_PFN" ] &&
     ! jq -e --argjson p "$((TS_PFN))" '.predictions[] | select(.operation == "save") | .pfns | index($p) != null' "$pre" > /dev/null; then
    TS_WHY+=" save-prediction-does-not-name-pfn-$TS_PFN"
  fi
  [ "$match" = yes ] || TS_WHY+=" $op:predicted-$want-real-[$real]"
  # A save that fails while mapping the P2M may stop before the line that names the path.
  if [ "$rc" = 0 ] && [ "$path" != "$real_path" ]; then TS_WHY+=" save-path:predicted-$path-real-$real_path"; fi
  info "TS $n $name | $op${keep:+ -c} (path $path) | $want$( [ -s "$exp" ] && echo ": $(head -1 "$exp")") | $real, path $real_path | $match"
  [ "$want" = fails ] && [ "$match" = no ] && info "TS $n $name $op: expected lines: $(tr '\n' '|' < "$exp") real lines: $(tr '\n' '|' < "$got")"
  TS_DETAIL="save $want/$real, dump_core $(prediction "$pre" dump_core .outcome)$image"
  [ "$rc" = 0 ] && ts_restore "$n" "$name" "$want" "$save"
}

# ts_restore NUM NAME PREDICTED IMAGE: xl restore of the saved image, as NAME (the saved
# guest is gone) or, with TS_KEEP, as the copy NAME-r beside the running original.
ts_restore() {
  local n=$1 name=$2 want=$3 save=$4 as=$2 cfg=() rd rc
  if [ "${TS_KEEP:-0}" = 1 ]; then
    as=$name-r
    sed "s/^name = .*/name = \"$as\"/" "$WORK/$name.cfg" > "$WORK/$as.cfg"
    cfg=("$WORK/$as.cfg")
    rm -f "$CONLOG/guest-$as.log"
  fi
  local conlog=$CONLOG/guest-$as.log seen
  seen=$(stat -c %s "$conlog" 2>/dev/null || echo 0)
  timeout -k 5 300 xl restore "${cfg[@]}" "$save" > "$WORK/$as.restore.log" 2>&1; rc=$?
  rd=$(xl domid "$as" 2>/dev/null)
  if [ "$rc" != 0 ] || [ -z "$rd" ]; then
    TS_DETAIL+=", restore exit $rc: $(grep -v '^ *$' "$WORK/$as.restore.log" | tail -1 | cut -c1-120)"
    [ "$want" = works ] && TS_WHY+=" restore-failed"
    [ "$as" != "$name" ] && destroy_guest "$as"
    return
  fi
  sleep 2
  local st; st=$(xl list "$as" 2>/dev/null | awk 'NR == 2 { print $5 }')
  TS_DETAIL+=", restore exit 0 (domid $rd, state ${st:-?})"
  # What the restored kernel said (its log continues the saved one's).
  sleep 3
  since() { tail -c +"$((seen + 1))" "$conlog" 2>/dev/null | tr -d '\r'; }
  info "TS $n $name restored console: $(since | grep -a -E 'BUG|Oops|WARNING|panic|RIP:|[Ss]uspend|[Rr]esum|Freez|Restarting|OOM|segfault|P2MRESTORED' | head -25 | cut -c1-160 | tr '\n' '|')"
  # A guest restored from a faithful image is still a healthy guest.
  if [ "$want" = works ]; then
    local after; after=$(report "$rd" | jq -r .severity)
    [ "$after" = ok ] || TS_WHY+=" restored-guest-severity=$after"
    TS_DETAIL+=", restored guest $after"
  fi
  if [ "$want" = copies_wrong_memory ] && [ "${TS_UNMAP:-0}" = 1 ]; then
    # The module's thread in the restored guest maps the victim pfn's new frame and prints
    # what it holds; it looks once a second.
    local i line
    for i in $(seq 1 30); do since | grep -aq 'P2MRESTORED' && break; sleep 1; done
    line=$(since | grep -a -m1 'P2MRESTORED' | sed 's/^\[ *[0-9.]*\] //')
    local ok=no
    case $line in
      "P2MRESTORED pfn=$TS_PFN "*"holds \"XTB-PAGE donor pfn=$TS_DONOR\""*) ok=yes ;;
    esac
    [ "$ok" = yes ] || TS_WHY+=" restored-victim:${line:-no-P2MRESTORED-line}"
    local after; after=$(report "$rd" | jq -r .severity)
    [ "$after" = ok ] || TS_WHY+=" restored-guest-severity=$after"
    TS_DETAIL+=", restored guest running, $after, ${line:-no P2MRESTORED line}"
    info "TS $n $name | inside the restored guest, page at pfn $TS_PFN | the donor pfn $TS_DONOR's page | ${line:-no P2MRESTORED line within 30 s}; restored guest scans $after | $ok"
  elif [ "$want" = copies_wrong_memory ]; then
    local oops
    oops=$(since | grep -a -m1 -E 'BUG: |Oops|panic' | sed 's/^\[ *[0-9.]*\] //')
    TS_DETAIL+=", restored guest: ${oops:-no oops on its console}"
    info "TS $n $name | restore of that image | (not predicted) | exit 0; restored kernel: ${oops:-no oops on its console} | -"
  fi
  [ "$as" != "$name" ] && destroy_guest "$as"
}

# ts_save_partial NUM NAME PREFLIGHT: TS_SAVE_SECONDS of `xl save NAME /dev/null`.
ts_save_partial() {
  local n=$1 name=$2 pre=$3 op=save want path rc log=$WORK/$2.save.log got=$WORK/$2.save.got match=no
  want=$(prediction "$pre" $op .outcome); path=$(prediction "$pre" $op .path)
  prediction "$pre" $op '.messages[]' > "$WORK/$name.save.expected"
  timeout -k 5 "$TS_SAVE_SECONDS" xl -vvv save "$name" /dev/null > "$log" 2>&1; rc=$?
  xc_errors "$log" > "$got"
  local real_path=tree frames
  grep -q 'p2m list from' "$log" && real_path=linear_list
  # libxenguest's progress lines: "Frames: 123/456 x%"; the last one says how far it got.
  frames=$(tr '\r' '\n' < "$log" | grep -a -o 'Frames[^:]*: *[0-9]*/[0-9]*' | tail -1)
  local real
  if [ "$rc" = 124 ] && [ ! -s "$got" ] && [ -n "$frames" ]; then
    real="no error after $TS_SAVE_SECONDS s (stopped there), last progress \"$frames\", path $real_path"
    [ "$want" = works ] && [ "$path" = "$real_path" ] && match=yes
  elif [ "$rc" = 124 ]; then
    real="stopped after $TS_SAVE_SECONDS s: $(head -1 "$got")${frames:+ ($frames)}, path $real_path"
  else
    real="exit $rc: $(head -1 "$got"), path $real_path"
    [ "$want" = fails ] && msgs_match "$WORK/$name.save.expected" "$got" && match=yes
  fi
  [ "$match" = yes ] || TS_WHY+=" save:predicted-$want-path-$path-real-[$real]"
  info "TS $n $name | save to /dev/null, first $TS_SAVE_SECONDS s (path $path) | $want | $real | $match"
  TS_DETAIL="save $want/$real"
}

