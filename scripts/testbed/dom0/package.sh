# The package scenarios: xenp2m enters dom0 only as its .deb, the way an operator installs
# it, and leaves it the same way. Sourced by scenarios.sh (uses mark/info/result/events).
# The .debs: $LIB/debs/install/*.deb (this build) and $LIB/debs/upgrade/*.deb (the same
# build repacked with a higher version by the host, to exercise the upgrade path).

DEB_INSTALL=$(ls "$LIB"/debs/install/xenp2m_*_amd64.deb 2>/dev/null | head -1)
DEB_UPGRADE=$(ls "$LIB"/debs/upgrade/xenp2m_*_amd64.deb 2>/dev/null | head -1)
CONF=/etc/xenp2m/xenp2md.yaml

# Everything on dom0's disk (and in /run) that names xenp2m, except the bed's own files.
xenp2m_files() {
  find / -xdev \( -path /proc -o -path /sys -o -path "$LIB" -o -path "$WORK" \) -prune -o \
    -iname '*xenp2m*' -print 2>/dev/null |
    grep -v -e '^/etc/systemd/system/xenp2m-testbed.service$' -e '^/etc/systemd/system/multi-user.target.wants/xenp2m-testbed.service$' \
            -e '^/usr/local/bin/xenp2m-bench$' -e '^/var/log/journal/' | sort
  find /run -iname '*xenp2m*' ! -path "$WORK*" 2>/dev/null | grep -v '^/run/systemd/' | sort
}

# Scenario 9: dpkg -i; the package's own maintainer scripts and units start the daemon.
s9() {
  local why="" t0 t1 out ver active sock hv
  [ -n "$DEB_INSTALL" ] || { result 9 package-install FAIL "no .deb in $LIB/debs/install"; return; }
  t0=$(up)
  out=$(timeout -k 5 300 dpkg -i "$DEB_INSTALL" 2>&1) || why+=" dpkg-i-rc=$?:$(echo "$out" | tail -3 | tr '\n' ' ')"
  t1=$(up)
  # Nothing in the bed starts it: the package's postinst did, or nothing did.
  for i in $(seq 1 60); do [ "$(systemctl is-active xenp2md.service)" = active ] && break; sleep 1; done
  active=$(systemctl is-active xenp2md.service); sock=$(systemctl is-active xenp2md.socket)
  [ "$active" = active ] || why+=" service-$active:$(systemctl status xenp2md --no-pager 2>&1 | tail -5 | tr '\n' '|')"
  [ "$sock" = active ] || why+=" socket-$sock"
  [ "$(systemctl is-enabled xenp2md.service 2>/dev/null)" = enabled ] || why+=" service-not-enabled"
  ver=$(xenp2mctl --version 2>&1)
  case $ver in *"built for Xen $(xl info xen_version 2>/dev/null | cut -d. -f1,2) "*) ;; *) why+=" version:'$ver'-vs-hypervisor-$(xl info xen_version 2>/dev/null)" ;; esac
  hv=$(journalctl -u xenp2md --no-pager -q -o cat 2>/dev/null | grep -m1 'Xen hypervisor' | tr -d '\r')
  [ -n "$hv" ] || why+=" no-hypervisor-version-in-journal"
  # The daemon answers on the package's socket, as root and as any member of its group.
  xenp2mctl list > "$WORK/s9.list" 2>&1 || why+=" xenp2mctl-list-rc=$?:$(head -c 200 "$WORK/s9.list" | tr '\n' ' ')"
  local pkgs depends
  depends=$(dpkg-query -W -f '${Depends}' xenp2m 2>/dev/null)
  # The bed's only deviation from the shipped setup, made the way an operator would: edit
  # the conffile (a 2 s poll so changes show within seconds) and reload. Scenario 10 checks
  # the edit survives the upgrade.
  sed -i 's/^  interval_seconds: .*/  interval_seconds: 2/; s/^  jitter_seconds: .*/  jitter_seconds: 0/' "$CONF"
  grep -q '^  interval_seconds: 2$' "$CONF" || why+=" config-edit-failed"
  systemctl reload xenp2md || why+=" reload-failed"
  sleep 1
  [ "$(systemctl is-active xenp2md.service)" = active ] && DAEMON=1
  info "s9 dpkg -i output: $(echo "$out" | tr '\n' '|' | cut -c1-400)"
  info "s9 $hv"
  local nums="$(basename "$DEB_INSTALL") installed in $(secs "$t0" "$t1") s; service $active, socket $sock; '$ver'; Depends: $depends; xenp2mctl list: $(($(wc -l < "$WORK/s9.list") - 1)) domains"
  if [ -z "$why" ]; then result 9 package-install PASS "$nums"; else result 9 package-install FAIL "$why | $nums"; fi
}

# Scenario 10: upgrade to a newer build keeps the edited conffile and the incident log,
# and the postinst restarts the daemon (a new process serving the old history).
s10() {
  local why="" before=$WORK/s10.before after=$WORK/s10.after pid0 pid1 v0 v1 out sum0 sum1 nb kept
  [ -n "$DEB_UPGRADE" ] || { result 10 package-upgrade FAIL "no upgrade .deb in $LIB/debs/upgrade"; return; }
  dpkg -s xenp2m > /dev/null 2>&1 || { result 10 package-upgrade FAIL "xenp2m is not installed (scenario 9 failed)"; return; }
  events > "$before"
  nb=$(jq -s '[.[] | select(.kind != "memory_changed")] | length' "$before" 2>/dev/null)
  [ "${nb:-0}" -gt 0 ] || why+=" no-incidents-before-upgrade"
  sum0=$(md5sum < "$CONF"); v0=$(dpkg-query -W -f '${Version}' xenp2m)
  pid0=$(systemctl show -p MainPID --value xenp2md)
  out=$(timeout -k 5 300 dpkg -i "$DEB_UPGRADE" 2>&1) || why+=" dpkg-i-rc=$?:$(echo "$out" | tail -3 | tr '\n' ' ')"
  v1=$(dpkg-query -W -f '${Version}' xenp2m)
  [ "$v1" != "$v0" ] || why+=" version-unchanged($v0)"
  for i in $(seq 1 60); do [ "$(systemctl is-active xenp2md.service)" = active ] && break; sleep 1; done
  pid1=$(systemctl show -p MainPID --value xenp2md)
  [ "$(systemctl is-active xenp2md.service)" = active ] || why+=" service-$(systemctl is-active xenp2md.service)"
  [ "$pid1" != "$pid0" ] || why+=" not-restarted(pid $pid0)"
  sum1=$(md5sum < "$CONF")
  [ "$sum1" = "$sum0" ] && grep -q '^  interval_seconds: 2$' "$CONF" || why+=" config-edit-lost"
  ls /etc/xenp2m/*.dpkg-* > /dev/null 2>&1 && why+=" conffile-prompt-leftovers:$(ls /etc/xenp2m/)"
  events > "$after"
  kept=$(jq -rs '.[] | select(.kind != "memory_changed") | "\(.seq) \(.kind) \(.domid)"' "$before" |
         while read -r k; do jq -rs '.[] | "\(.seq) \(.kind) \(.domid)"' "$after" | grep -qx "$k" && echo ok; done | wc -l)
  [ "$kept" = "$nb" ] || why+=" incidents-kept=$kept/$nb"
  local nums="$v0 -> $v1; pid $pid0 -> $pid1; edited $CONF kept; incidents before $nb, kept $kept; $(wc -c < /var/lib/xenp2m/incidents.jsonl 2>/dev/null || echo 0) bytes of incident log"
  if [ -z "$why" ]; then result 10 package-upgrade PASS "$nums"; else result 10 package-upgrade FAIL "$why | $nums"; fi
}

# Scenario 11: dpkg -r stops the daemon and leaves only the conffile (and state);
# dpkg -P then leaves no xenp2m file at all.
s11() {
  local why="" out left_r left_p
  dpkg -s xenp2m > /dev/null 2>&1 || { result 11 package-remove-purge FAIL "xenp2m is not installed"; return; }
  out=$(timeout -k 5 120 dpkg -r xenp2m 2>&1) || why+=" dpkg-r-rc=$?:$(echo "$out" | tail -2 | tr '\n' ' ')"
  [ "$(systemctl is-active xenp2md.service)" != active ] || why+=" service-still-active"
  pgrep -x xenp2md > /dev/null && why+=" xenp2md-still-running"
  [ -e /usr/sbin/xenp2md ] && why+=" binary-left"
  [ -f "$CONF" ] || why+=" remove-dropped-the-conffile"
  left_r=$(xenp2m_files | tr '\n' ' ')
  out=$(timeout -k 5 120 dpkg -P xenp2m 2>&1) || why+=" dpkg-P-rc=$?:$(echo "$out" | tail -2 | tr '\n' ' ')"
  systemctl daemon-reload
  left_p=$(xenp2m_files | tr '\n' ' ')
  [ -z "$left_p" ] || why+=" left-after-purge:[$left_p]"
  dpkg -s xenp2m > /dev/null 2>&1 && why+=" still-known-to-dpkg"
  local nums="after dpkg -r: [${left_r% }]; after dpkg -P: [${left_p% }]"
  if [ -z "$why" ]; then result 11 package-remove-purge PASS "$nums"; else result 11 package-remove-purge FAIL "$why | $nums"; fi
}

# Scenario 12: a build for the other Xen release is refused with one line and exit 3.
s12() {
  local f=$LIB/foreign rc out
  if [ "$(xl info xen_version 2>/dev/null | cut -d. -f1,2)" = 4.17 ]; then
    result 12 wrong-release-refused SKIP "on bookworm the other build is trixie's: linked against glibc 2.41 and libxenctrl 4.20, it cannot even be loaded here (and dpkg refuses its Depends), so the hypervisor check is never reached; checked on trixie with the bookworm build"
    return
  fi
  [ -x "$f/xenp2md" ] || { result 12 wrong-release-refused SKIP "no bookworm build in this run's cache (run.sh runs bookworm first)"; return; }
  out=$(LD_LIBRARY_PATH=$f/lib timeout -k 5 60 "$f/xenp2md" --backend xen --once 2>&1); rc=$?
  local ver; ver=$(LD_LIBRARY_PATH=$f/lib "$f/xenp2md" --version 2>&1)
  local lines; lines=$(printf '%s\n' "$out" | grep -c .)
  local nums="$(cat "$f/from" 2>/dev/null) ('$ver') on Xen $(xl info xen_version 2>/dev/null): exit $rc, $lines line(s): $(printf '%s' "$out" | tr '\n' '|' | cut -c1-300)"
  if [ "$rc" = 3 ] && [[ $out == *"refuses the interface of this build"* ]]; then
    result 12 wrong-release-refused PASS "$nums"
  else
    result 12 wrong-release-refused FAIL "expected exit 3 and 'refuses the interface' | $nums"
  fi
}
