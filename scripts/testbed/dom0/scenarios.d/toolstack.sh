# Scenarios 20-25: xenp2mctl preflight against what the toolstack really does (issue 12).
#
# ts_compare is run on every guest the bed creates (scenarios 3, 4, 6 and 7 call it on
# theirs, 25 on the guests of 1 and 7, 20-24 boot their own): it takes the preflight before
# anything touches the guest, then runs the real operations in the order that keeps the
# guest usable for the next one:
#   xenp2mctl dump-p2m against xen-mfndump dump-p2m, entry by entry  ->
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
# page nowhere (the module marks both pages; see p2mcorrupt.c). Where the module also cleared
# its own mapping of the victim page (TS_UNMAP), the restored guest runs and must report
# that the victim pfn now holds the donor's page; otherwise the restored kernel faults (see
# p2mcorrupt.c) and what it printed is recorded, not judged.
# Each scenario also names the outcomes the issue measured on real Xen for its guest
# (EXPECT): a prediction that differs fails the scenario even when the toolstack agrees
# with it, so a module that damaged nothing cannot pass as "predicted works, worked".
# Output: one result line per scenario; TS rows (scenario, operation, prediction, real
# outcome, message match) as INFO lines, which the README's table is made from.

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
# One entry names another frame of the guest: the save succeeds and copies the wrong frame;
# the module also drops its own mapping of the victim page, so the restored guest runs and
# shows what the restore put at that pfn.
s23() { TS_UNMAP=1 ts_scenario 23 toolstack-one-entry "xtb_corrupt=low xtb_unmap=1" P2MCORRUPT "save=copies_wrong_memory"; }
# fll = ~0: only the linear list describes the P2M; the pre-4.6 tree-only toolstack cannot.
s24() { ts_scenario 24 toolstack-list-only "xtb_fll=none" P2MFLL "save=works dump_core=works tree_only_toolstack=fails"; }

# The guests of scenarios 1 (healthy) and 7 (one rewritten entry, victim below the donor),
# which scenarios 2, 5 and 8 needed alive: compared last, then destroyed.
s25() {
  local n=25 sname=toolstack-earlier-guests why="" detail="" d
  has_subcommand preflight || { result $n $sname SKIP "no preflight in this build"; return; }
  d=$(xl domid s1 2>/dev/null)
  if [ -n "$d" ]; then
    TS_PFN="" TS_DONOR="" ts_compare $n s1 "$d" "save=works migrate=works|aborts_if_changing dump_core=works tree_only_toolstack=works"
    why+=${TS_WHY:+ s1:$TS_WHY} detail+="s1: $TS_DETAIL; "
  fi
  d=$(xl domid s7 2>/dev/null)
  if [ -n "$d" ]; then
    local line; line=$(grep -a -m1 'P2MCORRUPT pfn=' "$CONLOG/guest-s7.log" | tr -d '\r')
    TS_PFN=$(echo "$line" | sed -n 's/.*P2MCORRUPT pfn=\(0x[0-9a-f]*\) .*/\1/p')
    TS_DONOR=$(echo "$line" | sed -n 's/.*donor_pfn=\(0x[0-9a-f]*\).*/\1/p')
    ts_compare $n s7 "$d" "save=copies_wrong_memory migrate=copies_wrong_memory"
    why+=${TS_WHY:+ s7:$TS_WHY} detail+="s7: $TS_DETAIL"
  fi
  [ -n "$detail" ] || { result $n $sname SKIP "neither scenario 1's nor scenario 7's guest is running (run without them)"; return; }
  if [ -z "$why" ]; then result $n $sname PASS "$detail"; else result $n $sname FAIL "$why | $detail"; fi
}

scenario 20 toolstack-healthy s20
scenario 21 toolstack-leaf-invalid s21
scenario 22 toolstack-leaf-other s22
scenario 23 toolstack-one-entry s23
scenario 24 toolstack-list-only s24
scenario 25 toolstack-earlier-guests s25
