#!/usr/bin/python3
"""A real Prometheus and Alertmanager against three xenp2md daemons, on loopback only.

Started by scripts/prometheus-test.sh (which builds the binaries). Everything listens on
127.0.0.1 on ports picked free at start, in a scratch directory, and is stopped at the end:

  host-a, host-b, host-c   xenp2md --backend sim, three different simulated fleets, each
                           serving /metrics on its TCP listener (metrics.port); host-c's
                           guest 2 (payroll) is the one that breaks
  prometheus               its own config and data dir, scraping the three every second,
                           config/prometheus-alerts.yaml loaded (see TEST OVERRIDES)
  prometheus-alertmanager  its own config and data dir, clustering off, routing every
                           alert to the webhook below
  webhook receiver         an HTTP server in this process recording every notification

Checks, all through Prometheus's and Alertmanager's HTTP APIs:
  1. every daemon's /metrics keeps the metric conventions (scripts/metrics_conventions.py:
     a real exposition-format parser and promtool check metrics);
  2. on a healthy start no P2M alert is pending or firing;
  3. the fault is injected (host-c restarted on the broken fleet): XenP2MCritical fires for
     exactly host-c's guest 2, labelled host/domid/name, and Alertmanager posts it to the
     webhook with host, domid, name, the finding kinds and a runbook line;
  4. every expression of every panel in config/grafana-dashboard.json, and every templating
     query, evaluates without error and returns at least one series;
  5. `xenp2mctl fleet --prometheus URL` (table and --json) puts that guest first and exits 2;
  6. the fault is cleared (host-c restarted on the repaired fleet): the alert resolves and
     the resolved notification arrives;
  7. host-b's daemon is stopped: XenP2MDaemonDown fires for host-b only, and is delivered;
     `xenp2mctl fleet` names it as down and exits 3 (UNKNOWN).
Timings (fault injected -> alert firing -> notification received, and for resolution and
the down alert) are printed. Every wait is bounded; the last line is
`prometheus-test: N passed, M failed`.

TEST OVERRIDES: the rules are config/prometheus-alerts.yaml with every `for:` shortened to
FOR_SECONDS (the production durations are minutes, unit-tested by promtool test rules);
scrape and evaluation intervals are 1 s and the daemons poll every second. Nothing else in
the rules changes.

Standard library plus prometheus_client (Debian's python3-prometheus-client).
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics_conventions  # noqa: E402

FOR_SECONDS = 3
LOOPBACK = "127.0.0.1"
ARGS = None
RESULTS = []  # (name, ok, detail)
TIMINGS = []  # (what, seconds)
PROCS = []  # every process this test started, stopped in reverse order at the end
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def result(name, ok, detail=""):
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}: {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_until(what, fn, timeout, interval=0.1):
    """Calls fn until it returns a truthy value or `timeout` seconds pass; returns the
    value, or None on timeout (logged)."""
    end = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except (OSError, ValueError, KeyError, urllib.error.URLError) as e:
            last_error = e
        time.sleep(interval)
    log(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))
    return None


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def prom_api(path, **params):
    """GET on Prometheus's HTTP API; returns `data` or raises ValueError with its error."""
    url = f"http://{LOOPBACK}:{ARGS.prom_port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        body = http_get(url)
    except urllib.error.HTTPError as e:
        body = e.read().decode()
    doc = json.loads(body)
    if doc.get("status") != "success":
        raise ValueError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
    return doc["data"]


def alerts(name):
    """Prometheus's active alerts (pending or firing) with this alertname."""
    return [a for a in prom_api("/api/v1/alerts")["alerts"] if a["labels"].get("alertname") == name]


def firing(name):
    return [a for a in alerts(name) if a["state"] == "firing"]


# ----------------------------------------------------------------------------- processes

class Proc:
    def __init__(self, name, argv, logfile):
        self.name = name
        self.argv = argv
        self.logfile = logfile
        out = open(logfile, "ab")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC")}
        self.p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        out.close()
        PROCS.append(self)

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit status."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout} s: SIGKILL")
                self.p.kill()
                self.p.wait(5)
        return self.p.returncode

    def tail(self, n=15):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def stop_all():
    for p in reversed(PROCS):
        p.stop()


# ----------------------------------------------------------------------------- fleets

# Three different simulated fleets. host-c's guest 2 is the broken one; host-a and host-b
# also have a domain 2, so "exactly that guest" means the host label matters.
FLEETS = {
    "host-a": """
host: {memory_gib: 16}
domains:
  - {domid: 1, name: web-tree, memory_mib: 512}
  - {domid: 2, name: db-balloon, memory_mib: 1024, maxmem_mib: 4096, balloon: {min_mib: 512, max_mib: 2048, step_mib: 256}}
  - {domid: 4, name: legacy32, width: 32, memory_mib: 256, identity: [{start_pfn: 0xa0, count: 0x60}]}
  - {domid: 5, name: win-hvm, type: hvm, memory_mib: 2048}
""",
    "host-b": """
host: {memory_gib: 24}
domains:
  - {domid: 1, name: bigmem-list, memory_mib: 1024, maxmem_mib: 65536, formats: list_only}
  - {domid: 2, name: tree-only, memory_mib: 512, formats: tree_only}
  - {domid: 3, name: resizing, memory_mib: 512, faults: [{kind: populated_mismatch, count: 5}]}
  - {domid: 7, name: pvh-guest, type: pvh, memory_mib: 1024}
""",
    "host-c": """
host: {memory_gib: 16}
domains:
  - {domid: 1, name: app, memory_mib: 512}
  - {domid: 2, name: payroll, memory_mib: 1024%s}
  - {domid: 3, name: win-hvm, type: hvm, memory_mib: 1024}
""",
}
BROKEN_FAULTS = ", faults: [{kind: m2p_mismatch, pfn: 4096}, {kind: duplicate_mfn, pfn: 9001, same_as: 9000}]"
BROKEN = {"host": "host-c", "domid": "2", "name": "payroll"}


class Daemon:
    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.dir = os.path.join(ARGS.work, host)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "xenp2md.sock")
        self.config = os.path.join(self.dir, "xenp2md.yaml")
        with open(self.config, "w") as f:
            f.write(f"backend: sim\nscenario: {self.dir}/fleet.yaml\n"
                    f"metrics:\n  port: {port}\n  address: {LOOPBACK}\n"
                    "poll:\n  interval_seconds: 1\n  jitter_seconds: 0\n")
        self.proc = None

    def start(self, broken=False):
        text = FLEETS[self.host]
        if self.host == "host-c":
            text = text % (BROKEN_FAULTS if broken else "")
        with open(os.path.join(self.dir, "fleet.yaml"), "w") as f:
            f.write(text)
        self.proc = Proc(self.host, [os.path.join(ARGS.bin, "xenp2md"), "--config", self.config, "--socket", self.socket,
                                     "--state-dir", os.path.join(self.dir, "state")], os.path.join(self.dir, "xenp2md.log"))

    def metrics(self):
        return http_get(f"http://{LOOPBACK}:{self.port}/metrics")

    def ready(self):
        return self.proc.alive() and re.search(r"^xenp2m_up 1(\.0)?$", self.metrics(), re.M)

    def stop(self):
        return self.proc.stop()


# ----------------------------------------------------------------------------- webhook

class Webhook:
    """Alertmanager's receiver: records (arrival time, payload) of every POST."""

    def __init__(self, port):
        self.lock = threading.Lock()
        self.received = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(min(n, 1 << 20))
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {"unparsable": body.decode(errors="replace")}
                with hook.lock:
                    hook.received.append((time.monotonic(), doc))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def find(self, since, alertname, status, **labels):
        """First (time, alert) received after `since` for this alert and status."""
        with self.lock:
            got = list(self.received)
        for t, doc in got:
            if t < since:
                continue
            for a in doc.get("alerts", []):
                l = a.get("labels", {})
                if a.get("status") == status and l.get("alertname") == alertname and all(l.get(k) == v for k, v in labels.items()):
                    return t, a
        return None

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# ----------------------------------------------------------------------------- configs

def test_rules():
    """config/prometheus-alerts.yaml with every `for:` shortened (the only change)."""
    with open(os.path.join(ARGS.config_dir, "prometheus-alerts.yaml")) as f:
        text = f.read()
    out, n = re.subn(r"^(\s+for:\s*)\S+\s*$", lambda m: f"{m.group(1)}{FOR_SECONDS}s", text, flags=re.M)
    if n == 0:
        raise SystemExit("no `for:` found in prometheus-alerts.yaml: the override would do nothing")
    path = os.path.join(ARGS.work, "prometheus-alerts.yaml")
    with open(path, "w") as f:
        f.write(out)
    return path


def prometheus_config(daemons, rules):
    targets = "\n".join(f"      - targets: ['{LOOPBACK}:{d.port}']\n        labels: {{host: {d.host}}}" for d in daemons)
    path = os.path.join(ARGS.work, "prometheus.yml")
    with open(path, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: ['{rules}']
alerting:
  alertmanagers:
    - static_configs: [{{targets: ['{LOOPBACK}:{ARGS.am_port}']}}]
scrape_configs:
  - job_name: xenp2md
    static_configs:
{targets}
""")
    return path


def alertmanager_config(webhook_port):
    path = os.path.join(ARGS.work, "alertmanager.yml")
    with open(path, "w") as f:
        f.write(f"""route:
  receiver: webhook
  group_by: [alertname, host, domid]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: webhook
    webhook_configs:
      - url: 'http://{LOOPBACK}:{webhook_port}/alerts'
        send_resolved: true
""")
    return path


# ----------------------------------------------------------------------------- checks

def check_conventions(daemons):
    for d in daemons:
        problems = metrics_conventions.check(d.metrics())
        result(f"metric conventions on {d.host}", not problems, "; ".join(problems[:10]))


def labels_of(a, keys=("host", "domid", "name")):
    return {k: a["labels"].get(k) for k in keys}


def check_dashboard():
    """Every panel expression and templating query of the Grafana dashboard."""
    with open(os.path.join(ARGS.config_dir, "grafana-dashboard.json")) as f:
        dash = json.load(f)
    hosts = []
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var["query"] if isinstance(var["query"], str) else var["query"].get("query", "")
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", q)
        if not m:
            result(f"dashboard variable ${var['name']}", False, f"query form not understood by this test: {q}")
            continue
        try:
            values = prom_api(f"/api/v1/label/{m.group(2)}/values", **{"match[]": m.group(1)})
        except ValueError as e:
            result(f"dashboard variable ${var['name']}", False, str(e))
            continue
        if var["name"] == "host":
            hosts = values
        result(f"dashboard variable ${var['name']} ({q})", len(values) >= 1, f"values {values}")
    if sorted(hosts) != ["host-a", "host-b", "host-c"]:
        result("dashboard $host lists the three hosts", False, f"got {hosts}")
    # Grafana sends the variable's allValue for All (the dashboard sets it: ".*").
    all_value = next((v.get("allValue") for v in dash["templating"]["list"] if v["name"] == "host"), None)
    if not all_value:
        result("dashboard $host has an allValue", False)
    all_hosts = all_value or ".*"
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$host", all_hosts)
            name = f"panel {panel['id']} '{panel['title']}' {t['refId']}"
            try:
                data = prom_api("/api/v1/query", query=expr)
            except ValueError as e:
                result(name, False, str(e))
                continue
            n = len(data["result"]) if data["resultType"] in ("vector", "matrix") else 1
            result(name, n >= 1, f"{n} series")


def check_fleet(daemons):
    """`xenp2mctl fleet` against this Prometheus while host-c's guest 2 is broken."""
    ctl = os.path.join(ARGS.bin, "xenp2mctl")
    url = f"http://{LOOPBACK}:{ARGS.prom_port}"
    p = subprocess.run([ctl, "fleet", "--prometheus", url], capture_output=True, text=True, timeout=30)
    log("xenp2mctl fleet --prometheus URL:\n" + p.stdout)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    rows = [l.split() for l in lines[1:] if l.startswith("host-")]
    first = rows[0] if rows else []
    ok = (p.returncode == 2 and first[:3] == ["host-c", "2", "payroll"] and "critical" in first
          and lines[-1].startswith("P2M CRITICAL - 3 hosts (0 down), %d guests: 1 critical" % ARGS.guests))
    result("xenp2mctl fleet: broken guest first, summary line, exit 2", ok,
           f"exit {p.returncode}; " + " | ".join(lines[:3] + lines[-1:]) + p.stderr.strip())
    hosts = {r[0] for r in rows}
    result("xenp2mctl fleet: one row per guest, from every host", hosts == {"host-a", "host-b", "host-c"} and len(rows) == ARGS.guests,
           f"hosts {sorted(hosts)}, {len(rows)} rows")
    p = subprocess.run([ctl, "fleet", "--prometheus", url, "--json"], capture_output=True, text=True, timeout=30)
    try:
        doc = json.loads(p.stdout)
        rows = doc["guests"]
        top = rows[0]
        ok = (p.returncode == 2 and top["host"] == "host-c" and top["domid"] == 2 and top["name"] == "payroll"
              and top["severity"] == "critical" and len(rows) == ARGS.guests)
        detail = f"exit {p.returncode}, {len(rows)} rows (expected {ARGS.guests}), first {top}"
    except (ValueError, KeyError, IndexError) as e:
        ok, detail = False, f"exit {p.returncode}: {e}: {p.stdout[:300]} {p.stderr[:300]}"
    result("xenp2mctl fleet --json", ok, detail)
    if ok:
        check_fleet_preflight(rows, {d.host: d for d in daemons})
    return ok


# preflight's exit status per outcome (README, "Say what the toolstack will do")
OUTCOME_LEVEL = {"works": 0, "aborts_if_changing": 1, "risky": 1, "incomplete": 1, "copies_wrong_memory": 2, "fails": 2}


def check_fleet_preflight(rows, daemons):
    """The PREFLIGHT column, through Prometheus, against each daemon's own report (its socket)."""
    ctl = os.path.join(ARGS.bin, "xenp2mctl")
    wrong, seen = [], set()
    for row in rows:
        p = subprocess.run([ctl, "--socket", daemons[row["host"]].socket, "preflight", str(row["domid"]), "--cached", "--json"],
                           capture_output=True, text=True, timeout=30)
        section = json.loads(p.stdout) if p.stdout.strip() else None
        expected = {pr["operation"]: OUTCOME_LEVEL[pr["outcome"]] for pr in (section or {}).get("predictions", [])}
        if row.get("toolstack") != expected:
            wrong.append(f"{row['host']}/{row['domid']}: fleet {row.get('toolstack')} vs daemon {expected} (preflight exit {p.returncode})")
        seen.add(row.get("preflight", "-"))
    payroll = next(r for r in rows if r["host"] == "host-c" and r["domid"] == 2)
    ok = not wrong and payroll.get("preflight", "").startswith("unsafe(") and "safe" in seen and "-" in seen
    result("xenp2mctl fleet: PREFLIGHT per guest equals the daemon's own prediction", ok,
           "; ".join(wrong[:4]) or f"payroll {payroll.get('preflight')} {payroll.get('toolstack')}; column values {sorted(seen)}")


def check_fleet_errors():
    """Before Prometheus runs: unreachable, and a URL it cannot use, are one line and UNKNOWN."""
    ctl = os.path.join(ARGS.bin, "xenp2mctl")
    for url, words in ((f"http://{LOOPBACK}:{ARGS.prom_port}", "cannot connect"), ("https://prometheus.invalid:9090", "only http")):
        p = subprocess.run([ctl, "fleet", "--prometheus", url], capture_output=True, text=True, timeout=30)
        err = p.stderr.strip().splitlines()
        result(f"xenp2mctl fleet --prometheus {url.split(':')[0]}://...: one line, exit 3",
               p.returncode == 3 and len(err) == 1 and words in err[0] and not p.stdout, f"exit {p.returncode}: {err}")


def check_fleet_down():
    ctl = os.path.join(ARGS.bin, "xenp2mctl")
    p = subprocess.run([ctl, "fleet", "--prometheus", f"http://{LOOPBACK}:{ARGS.prom_port}", "--json"],
                       capture_output=True, text=True, timeout=30)
    try:
        doc = json.loads(p.stdout)
        down = [t["host"] for t in doc["targets"] if not t["up"]]
        ok = down == ["host-b"] and p.returncode == 3
        detail = f"exit {p.returncode}, down targets {down}"
    except (ValueError, KeyError) as e:
        ok, detail = False, f"exit {p.returncode}: {e}: {p.stdout[:300]} {p.stderr[:300]}"
    result("xenp2mctl fleet: a host that stopped answering is named, exit 3 (UNKNOWN)", ok, detail)


# ----------------------------------------------------------------------------- the run

def run():
    ARGS.prom_port, ARGS.am_port, webhook_port = free_port(), free_port(), free_port()
    hook = Webhook(webhook_port)
    daemons = [Daemon(h, free_port()) for h in ("host-a", "host-b", "host-c")]
    ARGS.guests = sum(FLEETS[h].count("domid:") for h in FLEETS)
    try:
        for d in daemons:
            d.start(broken=False)
        if not wait_until("three daemons' first polls", lambda: all(d.ready() for d in daemons), 60):
            for d in daemons:
                log(f"{d.host} log:\n{d.proc.tail()}")
            return result("three daemons up", False)
        result("three daemons up", True)
        check_conventions(daemons)

        check_fleet_errors()
        am_dir = os.path.join(ARGS.work, "alertmanager")
        am = Proc("alertmanager", ["prometheus-alertmanager", f"--config.file={alertmanager_config(webhook_port)}",
                                   f"--storage.path={am_dir}", f"--web.listen-address={LOOPBACK}:{ARGS.am_port}",
                                   "--cluster.listen-address=", "--log.level=warn"],
                  os.path.join(ARGS.work, "alertmanager.log"))
        prom = Proc("prometheus", ["prometheus", f"--config.file={prometheus_config(daemons, test_rules())}",
                                   f"--storage.tsdb.path={os.path.join(ARGS.work, 'prometheus-data')}",
                                   f"--web.listen-address={LOOPBACK}:{ARGS.prom_port}", "--log.level=warn"],
                    os.path.join(ARGS.work, "prometheus.log"))
        if not wait_until("Alertmanager ready", lambda: http_get(f"http://{LOOPBACK}:{ARGS.am_port}/-/ready"), 30):
            log(am.tail())
            return result("alertmanager ready", False)
        if not wait_until("Prometheus ready", lambda: http_get(f"http://{LOOPBACK}:{ARGS.prom_port}/-/ready"), 30):
            log(prom.tail())
            return result("prometheus ready", False)

        def all_up():
            r = prom_api("/api/v1/query", query='up{job="xenp2md"} == 1 and on(instance) xenp2m_up == 1')["result"]
            return len(r) == 3
        ok = wait_until("three targets scraped and up", all_up, 30)
        result("prometheus scrapes the three daemons", bool(ok))
        if not ok:
            log(prom.tail())
            return
        am_seen = wait_until("Prometheus to discover Alertmanager",
                             lambda: prom_api("/api/v1/alertmanagers")["activeAlertmanagers"], 30)
        result("prometheus sends to the alertmanager", bool(am_seen))

        # 2. Healthy start: quiet for longer than the shortened `for:`.
        time.sleep(FOR_SECONDS + 2)
        crit = alerts("XenP2MCritical")
        result("healthy fleet: no XenP2MCritical", not crit, f"{[labels_of(a) for a in crit]}")

        # 3. Inject the fault: host-c's daemon comes back on the broken fleet.
        host_c = daemons[2]
        host_c.stop()
        t_inject = time.monotonic()
        host_c.start(broken=True)
        fired = wait_until("XenP2MCritical firing", lambda: firing("XenP2MCritical"), 60)
        t_firing = time.monotonic()
        if fired:
            TIMINGS.append(("fault injected -> XenP2MCritical firing in Prometheus", t_firing - t_inject))
            # Give any other (wrong) candidate the same time to show up before judging "exactly".
            time.sleep(FOR_SECONDS)
        crit = alerts("XenP2MCritical")
        result("XenP2MCritical fires for exactly host-c's guest 2 (host, domid, name labels)",
               len(crit) == 1 and labels_of(crit[0]) == BROKEN and crit[0]["state"] == "firing",
               f"{[(labels_of(a), a['state']) for a in crit]}")
        note = wait_until("the webhook notification", lambda: hook.find(t_inject, "XenP2MCritical", "firing", **BROKEN), 60)
        if note:
            t_note, a = note
            TIMINGS.append(("fault injected -> notification received by the webhook", t_note - t_inject))
            TIMINGS.append(("alert firing -> notification received", t_note - t_firing))
            ann = a.get("annotations", {})
            ok = ("m2p_mismatch" in ann.get("kinds", "") and "duplicate_mfn" in ann.get("kinds", "")
                  and "xenp2mctl status 2" in ann.get("runbook", "") and "host-c" in ann.get("summary", ""))
            result("notification has host, domid, name, kinds and a runbook line", ok,
                   f"labels {labels_of(a)}, kinds {ann.get('kinds')!r}, runbook {ann.get('runbook', '')[:80]!r}")
        else:
            result("notification received", False)

        # 4. Every dashboard query on this fleet (the broken guest included).
        check_dashboard()
        # 5. The fleet view.
        check_fleet(daemons)

        # 6. Clear the fault: host-c back on the repaired fleet.
        host_c.stop()
        t_clear = time.monotonic()
        host_c.start(broken=False)
        gone = wait_until("XenP2MCritical to resolve", lambda: not alerts("XenP2MCritical"), 60)
        t_resolved = time.monotonic()
        result("XenP2MCritical resolves after the fault is cleared", bool(gone))
        if gone:
            TIMINGS.append(("fault cleared -> alert resolved in Prometheus", t_resolved - t_clear))
        note = wait_until("the resolved notification", lambda: hook.find(t_clear, "XenP2MCritical", "resolved", **BROKEN), 60)
        result("resolved notification received", bool(note))
        if note:
            TIMINGS.append(("fault cleared -> resolved notification received", note[0] - t_clear))

        # 7. A daemon stops: the down alert for that host only.
        host_b = daemons[1]
        rc = host_b.stop()
        t_down = time.monotonic()
        result("host-b's daemon stops on SIGTERM", rc == 0, f"exit {rc}")
        fired = wait_until("XenP2MDaemonDown firing", lambda: firing("XenP2MDaemonDown"), 60)
        t_fired = time.monotonic()
        if fired:
            TIMINGS.append(("daemon stopped -> XenP2MDaemonDown firing", t_fired - t_down))
            time.sleep(FOR_SECONDS)
        down = alerts("XenP2MDaemonDown")
        result("XenP2MDaemonDown fires for host-b only",
               [a["labels"].get("host") for a in down] == ["host-b"] and down[0]["state"] == "firing",
               f"{[(a['labels'].get('host'), a['state']) for a in down]}")
        note = wait_until("the down notification", lambda: hook.find(t_down, "XenP2MDaemonDown", "firing", host="host-b"), 60)
        result("down notification received", bool(note) and "host-b" in note[1]["annotations"].get("summary", ""),
               note[1]["annotations"].get("summary", "") if note else "")
        if note:
            TIMINGS.append(("daemon stopped -> down notification received", note[0] - t_down))
        check_fleet_down()
    finally:
        stop_all()
        hook.stop()
        stray = [p.name for p in PROCS if p.alive()]
        result("everything stopped (daemons, prometheus, alertmanager)", not stray, f"still running: {stray}" if stray else "")


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="directory with xenp2md and xenp2mctl")
    ap.add_argument("--config-dir", required=True, help="the repository's config/")
    ap.add_argument("--work", required=True, help="scratch directory (emptied by the caller)")
    ARGS = ap.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (stop_all(), sys.exit(1)))
    try:
        run()
    except Exception as e:  # a bug in the test itself still fails loudly, after cleanup
        result("the test ran to the end", False, f"{type(e).__name__}: {e}")
    print("timings (s, loopback, 1 s scrape/evaluation, for: %d s):" % FOR_SECONDS)
    for what, s in TIMINGS:
        print(f"  {s:6.2f}  {what}")
    failed = sum(1 for _, ok, _ in RESULTS if not ok)
    print(f"total time {time.monotonic() - T0:.1f} s")
    print(f"prometheus-test: {len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
