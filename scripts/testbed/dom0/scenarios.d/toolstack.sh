# Scenarios 20-24: xenp2mctl preflight against what the toolstack really does (issue 12).
#
# Each boots its own guest, takes the preflight before anything touches the guest, then runs
# the real operations in the order that keeps the guest usable for the next one:
#   xl dump-core (live)  ->  xenp2mctl check-core --preflight on that core  ->
#   xl save  ->  xl restore, when the save succeeded.
# An outcome matches when the toolstack behaves as predicted:
#   works, risky, aborts_if_changing, copies_wrong_memory: the command exits 0;
#   incomplete (dump-core): exits 0 and the core has exactly the predicted number of
#     frames fewer than the domain's tot_pages (check-core's "(D dumped, P padding)");
#   fails: the command exits non-zero and the predicted messages are, in order and word for
#     word, a run of its "xc: error: MESSAGE: Internal error" lines.
# The path (list or tree) is checked too: with -vvv, libxenguest's save logs "p2m list from"
# exactly when it maps the linear list.
# copies_wrong_memory is proven, not only exit 0: the prediction must name the pfn the
# module damaged, and the saved image must hold the donor's page twice and the victim's own
# page nowhere (the module marks both pages; see p2mcorrupt.c). What the restored guest
# does with that image is recorded, not judged.
# Each scenario also names the outcomes the issue measured on real Xen for its guest
# (EXPECT): a prediction that differs fails the scenario even when the toolstack agrees
# with it, so a module that damaged nothing cannot pass as "predicted works, worked".
# Output: one result line per scenario; TS rows (scenario, operation, prediction, real
# outcome, message match) as INFO lines, which the README's table is made from.

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
# "op=outcome ..." (outcome may be a|b).
ts_compare() {
  local n=$1 name=$2 d=$3 expect=$4 pre=$WORK/$2.preflight.json core=/var/tmp/$2.core save=/var/tmp/$2.save
  TS_WHY="" TS_DETAIL=""
  timeout -k 5 300 xenp2mctl preflight "$d" --json > "$pre" 2> "$WORK/$name.preflight.err"
  jq -e '.predictions | length > 0' "$pre" > /dev/null 2>&1 ||
    { TS_WHY+=" no-preflight:$(head -c 200 "$WORK/$name.preflight.err" | tr '\n' ' ')"; destroy_guest "$name"; return; }
  local e
  for e in $expect; do
    local got_outcome; got_outcome=$(prediction "$pre" "${e%%=*}" .outcome)
    [[ "|${e#*=}|" == *"|$got_outcome|"* ]] || TS_WHY+=" predicted-${e%%=*}=$got_outcome(expected ${e#*=})"
  done
  info "TS $n $name | tree_only_toolstack | $(prediction "$pre" tree_only_toolstack '.outcome + (if .detail then ": " + .detail else "" end)') | (not run: no pre-4.6 toolstack here) | -"

  # xl dump-core, live.
  # (one `local` expands all its words first: op must exist before exp and got use it)
  local op=dump_core want rc real match="-" exp got
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

  # xl save, then xl restore when it worked.
  op=save exp=$WORK/$name.$op.expected got=$WORK/$name.$op.got match="-"
  want=$(prediction "$pre" $op .outcome)
  prediction "$pre" $op '.messages[]' > "$exp"
  local path; path=$(prediction "$pre" $op .path)
  rm -f "$save"
  timeout -k 5 300 xl -vvv save "$name" "$save" > "$WORK/$name.$op.log" 2>&1; rc=$?
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
  info "TS $n $name | $op (path $path) | $want$( [ -s "$exp" ] && echo ": $(head -1 "$exp")") | $real, path $real_path | $match"
  [ "$want" = fails ] && [ "$match" = no ] && info "TS $n $name $op: expected lines: $(tr '\n' '|' < "$exp") real lines: $(tr '\n' '|' < "$got")"
  TS_DETAIL="save $want/$real, dump_core $(prediction "$pre" dump_core .outcome)$image"
  if [ "$rc" = 0 ]; then
    local rd conlog=$CONLOG/guest-$name.log seen
    seen=$(stat -c %s "$conlog" 2>/dev/null || echo 0)
    timeout -k 5 300 xl restore "$save" > "$WORK/$name.restore.log" 2>&1; rc=$?
    rd=$(xl domid "$name" 2>/dev/null)
    if [ "$rc" = 0 ] && [ -n "$rd" ]; then
      sleep 2
      local st; st=$(xl list "$name" 2>/dev/null | awk 'NR == 2 { print $5 }')
      TS_DETAIL+=", restore exit 0 (domid $rd, state ${st:-?})"
      # What the restored kernel said (its log continues the saved one's).
      sleep 3
      info "TS $n $name restored console: $(tail -c +"$((seen + 1))" "$conlog" 2>/dev/null | tr -d '\r' | grep -a -E 'BUG|Oops|WARNING|panic|RIP:|[Ss]uspend|[Rr]esum|Freez|Restarting|OOM|segfault' | head -25 | cut -c1-160 | tr '\n' '|')"
      # A guest restored from a faithful image is still a healthy guest.
      if [ "$want" = works ]; then
        local after; after=$(report "$rd" | jq -r .severity)
        [ "$after" = ok ] || TS_WHY+=" restored-guest-severity=$after"
        TS_DETAIL+=", restored guest $after"
      fi
      if [ "$want" = copies_wrong_memory ]; then
        local oops
        oops=$(tail -c +"$((seen + 1))" "$conlog" 2>/dev/null | tr -d '\r' | grep -a -m1 -E 'BUG: |Oops|panic' | sed 's/^\[ *[0-9.]*\] //')
        TS_DETAIL+=", restored guest: ${oops:-no oops on its console}"
        info "TS $n $name | restore of that image | (not predicted) | exit 0; restored kernel: ${oops:-no oops on its console} | -"
      fi
    else
      TS_DETAIL+=", restore exit $rc: $(grep -v '^ *$' "$WORK/$name.restore.log" | tail -1 | cut -c1-120)"
      [ "$want" = works ] && TS_WHY+=" restore-failed"
    fi
  fi
  rm -f "$save"
  destroy_guest "$name"
}

# ts_scenario NUM NAME GUEST-CMDLINE MODULE-MARKER EXPECT: boot, wait for the module's
# line, compare.
ts_scenario() {
  local n=$1 sname=$2 extra=$3 marker=$4 expect=$5 name=ts$1 d line=""
  has_subcommand preflight || { result "$n" "$sname" SKIP "no preflight in this build"; return; }
  d=$(create_guest "$name" 256 256 "$extra") || { result "$n" "$sname" FAIL "guest did not boot"; return; }
  if [ -n "$marker" ]; then
    local i
    for i in $(seq 1 40); do grep -q "$marker" "$CONLOG/guest-$name.log" && break; sleep 0.5; done
    line=$(grep -a -m1 "$marker" "$CONLOG/guest-$name.log" | tr -d '\r')
    case $line in
      *"$marker "*) ;;
      *) destroy_guest "$name"; result "$n" "$sname" FAIL "module did not report: ${line:-nothing on the guest console}"; return ;;
    esac
    line=" [${line#*"$marker "}]"
  fi
  # The damaged pfn, for scenarios whose prediction must name it.
  TS_PFN="" TS_DONOR=""
  if [ "$marker" = P2MCORRUPT ]; then
    TS_PFN=$(echo "$line" | sed -n 's/.*\[pfn=\(0x[0-9a-f]*\) .*/\1/p')
    TS_DONOR=$(echo "$line" | sed -n 's/.*donor_pfn=\(0x[0-9a-f]*\).*/\1/p')
  fi
  ts_compare "$n" "$name" "$d" "$expect"
  if [ -z "$TS_WHY" ]; then result "$n" "$sname" PASS "$TS_DETAIL$line"; else result "$n" "$sname" FAIL "$TS_WHY | $TS_DETAIL$line"; fi
}

s20() { ts_scenario 20 toolstack-healthy "" "" "save=works migrate=works|aborts_if_changing dump_core=works tree_only_toolstack=works"; }
# The leaf's own frame outside the pseudo-physical map (entry INVALID, or another frame).
s21() { ts_scenario 21 toolstack-leaf-invalid "xtb_leaf=3" P2MLEAF "save=fails migrate=fails dump_core=incomplete"; }
s22() { ts_scenario 22 toolstack-leaf-other "xtb_leaf=3 xtb_leaf_to=other" P2MLEAF "save=fails migrate=fails"; }
# One entry names another frame of the guest: the save succeeds and copies the wrong frame.
s23() { ts_scenario 23 toolstack-one-entry "xtb_corrupt=low" P2MCORRUPT "save=copies_wrong_memory"; }
# fll = ~0: only the linear list describes the P2M; the pre-4.6 tree-only toolstack cannot.
s24() { ts_scenario 24 toolstack-list-only "xtb_fll=none" P2MFLL "save=works dump_core=works tree_only_toolstack=fails"; }

scenario 20 toolstack-healthy s20
scenario 21 toolstack-leaf-invalid s21
scenario 22 toolstack-leaf-other s22
scenario 23 toolstack-one-entry s23
scenario 24 toolstack-list-only s24
