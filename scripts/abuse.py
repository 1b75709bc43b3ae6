#!/usr/bin/env python3
"""Client abuse suite and host/process fault cases against the real xenp2md.

Started by scripts/abuse.sh, which builds the binaries and starts the main daemon
(simulated demo fleet, socket mode 0666, idle limit 3 s, request-head deadline 5 s, poll
every second). Every case is bounded in count and time; the only target is the daemon's
local Unix socket.
After each case the main daemon must answer GET /v1/health with 200 within its normal
latency (median of 5 requests <= min(10x baseline p50, 1 s)) and must have lost no
state (same domain count, incidents and last event seq not decreased, process alive).
Some cases start their own short-lived daemons (SIGTERM, kill -9, state directory,
scenario faults); those are checked by the case itself.

Standard library only. Last line: `abuse cases: N, daemon survived: yes|no`.
"""
import argparse
import json
import re
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ARGS = None
RESULTS = []  # (name, ok, measurement)
FINDINGS = []


# ----------------------------------------------------------------------------- HTTP bits

def connect(path, timeout=5.0):
    """Connects; a full accept backlog (EAGAIN on a Unix socket) is retried until `timeout`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    end = time.monotonic() + timeout
    while True:
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            if time.monotonic() >= end:
                s.close()
                raise
            time.sleep(0.002)


def read_response(s, deadline):
    """Reads one HTTP response (Content-Length or chunked). Returns
    (status, headers, body, closed) or (None, {}, raw, closed) when none arrived."""
    buf = b""
    closed = False
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, {}, buf, False
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            return None, {}, buf, False
        except (ConnectionResetError, BrokenPipeError):
            return None, {}, buf, True
        if not d:
            return None, {}, buf, True
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None, {}, buf, False
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(b":")
        headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    def more():
        nonlocal rest, closed
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return False
        if not d:
            closed = True
            return False
        rest += d
        return True
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n and more():
            pass
        body = rest[:n]
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest and more():
                pass
            if b"\r\n" not in rest:
                break
            size_line, _, after = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(after) < size + 2 and more():
                after = rest.partition(b"\r\n")[2]
            if len(after) < size + 2:
                break
            body += after[:size]
            rest = after[size + 2:]
            if size == 0:
                break
    else:
        while more():
            pass
        body = rest
    return status, headers, body, closed


def exchange(data, timeout=3.0, path=None):
    """Sends raw bytes, reads one response; then checks whether the server closed."""
    t0 = time.monotonic()
    s = connect(path or ARGS.socket, timeout)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body, closed = read_response(s, t0 + timeout)
        return status, headers, body, time.monotonic() - t0
    finally:
        s.close()


def request(method, target, body=b"", headers=None, timeout=5.0, path=None):
    h = {"Host": "x", "Connection": "close"}
    if body:
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    raw = ("%s %s HTTP/1.1\r\n" % (method, target)).encode("latin-1")
    raw += b"".join(("%s: %s\r\n" % kv).encode("latin-1") for kv in h.items()) + b"\r\n" + body
    return exchange(raw, timeout, path)


def health(path=None, timeout=5.0):
    st, _, body, dt = request("GET", "/v1/health", timeout=timeout, path=path)
    try:
        j = json.loads(body) if st == 200 else None
    except ValueError:
        j = None
    return st, j, dt


def error_code(body):
    try:
        return json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None


def daemon_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def daemon_rss_kb(pid):
    try:
        for l in open("/proc/%d/status" % pid):
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    except OSError:
        pass
    return -1


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie is not alive.
    try:
        return open("/proc/%d/stat" % pid).read().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


# ----------------------------------------------------------------------------- checking

class Watch:
    """Baseline and the after-each-case check of the main daemon."""

    def __init__(self):
        # The baseline is the state after the first poll: before it the domain list is
        # still filling up (slow on a loaded machine) and would look like lost state.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st, j, _ = health()
            if st == 200 and j and j.get("status") == "ok":
                break
            time.sleep(0.2)
        lat = []
        for _ in range(30):
            st, j, dt = health()
            assert st == 200, "baseline health failed: %s" % st
            lat.append(dt)
        self.p50 = statistics.median(lat)
        self.limit = min(10 * self.p50, 1.0)
        self.state = j
        self.fds = daemon_fds(ARGS.pid)
        print("baseline: health p50 %.2f ms (limit %.1f ms), domains %d, incidents %d, last seq %d, fds %d, rss %d KiB"
              % (self.p50 * 1e3, self.limit * 1e3, j["domains"], j["incidents"], j["last_event_seq"], self.fds,
                 daemon_rss_kb(ARGS.pid)), flush=True)
        self.survived = True

    def check(self):
        """Returns (ok, text)."""
        if not alive(ARGS.pid):
            self.survived = False
            return False, "DAEMON DIED"
        lat = []
        last = None
        for _ in range(5):
            try:
                st, j, dt = health()
            except OSError as e:
                self.survived = False
                return False, "health: %s" % e
            if st != 200 or j is None:
                self.survived = False
                return False, "health answered %s" % st
            lat.append(dt)
            last = j
        med = statistics.median(lat)
        probs = []
        if med > self.limit:
            probs.append("health median %.1f ms > %.1f ms" % (med * 1e3, self.limit * 1e3))
        if last["domains"] != self.state["domains"]:
            probs.append("domains %d -> %d" % (self.state["domains"], last["domains"]))
        if last["incidents"] < self.state["incidents"]:
            probs.append("incidents decreased %d -> %d" % (self.state["incidents"], last["incidents"]))
        if last["last_event_seq"] < self.state["last_event_seq"]:
            probs.append("last seq decreased %d -> %d" % (self.state["last_event_seq"], last["last_event_seq"]))
        text = "health %.1f ms, domains %d, incidents %d, seq %d" % (med * 1e3, last["domains"], last["incidents"],
                                                                   last["last_event_seq"])
        self.state = last
        if probs:
            self.survived = False
            return False, text + "; " + "; ".join(probs)
        return True, text


WATCH = None


def case(name):
    def wrap(fn):
        CASES.append((name, fn))
        return fn
    return wrap


CASES = []


def run_case(name, fn):
    t0 = time.monotonic()
    try:
        ok, msg = fn()
    except Exception as e:  # a case that cannot even run is a failure
        ok, msg = False, "exception %s: %s" % (type(e).__name__, e)
    hok, htext = WATCH.check()
    ok = ok and hok
    RESULTS.append((name, ok, msg))
    print("%s %s: %s [%.1f s] | after: %s" % ("PASS" if ok else "FAIL", name, msg, time.monotonic() - t0, htext),
          flush=True)


def finding(text):
    FINDINGS.append(text)
    print("FINDING: " + text, flush=True)


# ----------------------------------------------------------------------------- client cases

def expect_all(variants, timeout=3.0):
    """variants: (label, raw bytes, allowed statuses); None in allowed = closed without answer.
    Returns (ok, summary)."""
    bad, seen = [], []
    for label, raw, allowed in variants:
        st, hd, body, dt = exchange(raw, timeout)
        seen.append("%s=%s" % (label, st if st is not None else "closed"))
        if st not in allowed:
            bad.append("%s: got %s in %.2f s, want %s (%r)" % (label, st, dt, allowed, body[:120]))
        elif st is not None and st >= 400 and error_code(body) is None:
            bad.append("%s: %s without a JSON error body (%r)" % (label, st, body[:120]))
        elif dt > timeout * 0.9:
            bad.append("%s: took %.2f s" % (label, dt))
    return not bad, ("%d variants: " % len(variants)) + " ".join(seen) + ("; " + "; ".join(bad) if bad else "")


@case("health latency across poll cycles (5 s of requests, 10 ms apart)")
def latency_across_polls():
    lat = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        st, _, dt = health()
        lat.append(dt if st == 200 else 99)
        time.sleep(0.01)
    lat.sort()
    p50, p99, mx = lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]
    slow = sum(1 for x in lat if x > WATCH.limit)
    if slow:
        finding("GET /v1/health was slower than the %.1f ms limit for %d of %d requests across poll cycles "
                "(max %.0f ms): polls compete with the event loop for the CPU"
                % (WATCH.limit * 1e3, slow, len(lat), mx * 1e3))
    return p50 <= WATCH.limit and mx <= 1.0, ("%d requests: p50 %.2f ms, p99 %.1f ms, max %.1f ms, %d over the %.1f ms limit"
                                             % (len(lat), p50 * 1e3, p99 * 1e3, mx * 1e3, slow, WATCH.limit * 1e3))


@case("malformed request lines")
def malformed_lines():
    v = [
        ("garbage", b"GARBAGE\r\n\r\n", {400}),
        ("method-only", b"GET\r\n\r\n", {400}),
        ("no-version", b"GET /v1/health\r\n\r\n", {400}),
        ("http/9.9", b"GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n", {400, 505}),
        ("unknown-method", b"FROB /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", {400, 405}),
        ("binary", bytes(range(256)) * 8, {400}),
        ("nul-in-line", b"GET /v1/\x00health HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
        ("tabs", b"GET\t/v1/health\tHTTP/1.1\r\n\r\n", {400}),
        ("absolute-form", b"GET http://x/v1/health HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
        ("asterisk", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", {400, 405}),
        ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, {400}),
        ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400}),
    ]
    return expect_all(v)


@case("malformed headers")
def malformed_headers():
    r = b"GET /v1/health HTTP/1.1\r\n"
    p = b"POST /v1/domains/1/scan HTTP/1.1\r\nHost: x\r\n"
    v = [
        ("no-colon", r + b"NoColonHere\r\n\r\n", {400}),
        ("space-before-colon", r + b"Host : x\r\n\r\n", {400}),
        ("nul-in-value", r + b"X-A: a\x00b\r\n\r\n", {400}),
        ("ctl-in-name", r + b"X\x01A: b\r\n\r\n", {400}),
        ("obs-fold", r + b"Host: x\r\nX-A: a\r\n b\r\n\r\n", {200, 400}),
        ("cl-negative", p + b"Content-Length: -5\r\n\r\n", {400}),
        ("cl-text", p + b"Content-Length: abc\r\n\r\n", {400}),
        ("cl-overflow", p + b"Content-Length: 99999999999999999999999999\r\n\r\n", {400, 413}),
        ("cl-twice-diff", p + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", {400}),
        ("cl-and-te", p + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
        ("te-unknown", p + b"Transfer-Encoding: gzip, identity\r\n\r\n", {400, 501}),
        ("bad-chunk-size", p + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nab\r\n0\r\n\r\n", {400}),
        ("lf-only", b"GET /v1/health HTTP/1.1\nHost: x\nConnection: close\n\n", {200, 400}),
        ("bare-cr", r + b"Host: x\rX: y\r\n\r\n", {400}),
        ("http10-no-host", b"GET /v1/health HTTP/1.0\r\n\r\n", {200}),
        ("latin1-value", r + b"X-A: \xe9\xff\r\nConnection: close\r\n\r\n", {200, 400}),
    ]
    return expect_all(v)


@case("pipelined burst (200 requests in one write)")
def pipelined():
    n = 200
    one = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    s = connect(ARGS.socket, 10)
    t0 = time.monotonic()
    s.sendall(one * (n - 1) + b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = b""
    deadline = t0 + 10
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = s.recv(1 << 20)
        except socket.timeout:
            break
        if not d:
            break
        raw += d
    s.close()
    got = raw.count(b"HTTP/1.1 200 OK\r\n")
    return got == n, "%d/%d answered 200 in %.2f s" % (got, n, time.monotonic() - t0)


@case("oversize headers")
def oversize_headers():
    r = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n"
    v = [
        ("65-fields", r + b"".join(b"X-%d: v\r\n" % i for i in range(64)) + b"\r\n", {431}),
        ("2000-fields", r + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n", {431}),
        ("100KiB-value", r + b"X-Big: " + b"a" * (100 << 10) + b"\r\n\r\n", {431}),
        ("1MiB-no-end", r + b"X-Big: " + b"a" * (1 << 20), {431}),
        ("200KiB-path", b"GET /" + b"a" * (200 << 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n", {431, 414, 400}),
    ]
    return expect_all(v, timeout=5.0)


def send_then_read(data, timeout):
    """Sends `data` in 64 KiB pieces until the server stops taking it (or all is sent),
    then stays silent (the rest of a declared body never comes) and reads one response.
    Returns (status, body, seconds until the answer, bytes sent, closed: whether the
    server closed the connection within 1 s of answering)."""
    t0 = time.monotonic()
    s = connect(ARGS.socket, timeout)
    sent = 0
    try:
        try:
            while sent < len(data):
                s.settimeout(max(0.01, t0 + timeout - time.monotonic()))
                sent += s.send(data[sent:sent + 65536])
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        status, _, body, closed = read_response(s, t0 + timeout)
        dt = time.monotonic() - t0
        if status is not None and not closed:
            s.settimeout(1.0)
            try:
                closed = s.recv(1) == b""
            except ConnectionResetError:
                closed = True
            except socket.timeout:
                closed = False
        return status, body, dt, sent, closed
    finally:
        s.close()


@case("oversize bodies")
def oversize_bodies():
    p = b"POST /v1/domains/1/scan HTTP/1.1\r\nHost: x\r\n"
    chunk = b"%x\r\n%s\r\n" % (1024, b"b" * 1024)
    chunked = chunk * 64 + b"0\r\n\r\n"
    v = [
        ("cl-5000-sent", p + b"Content-Length: 5000\r\n\r\n" + b"b" * 5000, {413}),
        ("chunked-64KiB", p + b"Transfer-Encoding: chunked\r\n\r\n" + chunked, {413}),
        ("cl-16MiB-sent", p + b"Content-Length: %d\r\n\r\n" % (16 << 20) + b"b" * (16 << 20), {413}),
    ]
    ok, msg = expect_all(v, timeout=8.0)
    # Refused at once, before the body: a 413 as soon as the head (or, chunked, the byte
    # over the limit) arrives. The daemon then shuts its side and lingers, dropping what
    # still comes (bounded: 5 s, 2 s of quiet, 128 MiB), so a client still sending its
    # body is not cut off (EPIPE) and reads the answer. "At once" is well under the idle
    # limit, which is what a late answer would take.
    quick = min(1.0, ARGS.idle / 2)
    bad = []
    rss0 = daemon_rss_kb(ARGS.pid)
    for label, data, whole in [
        ("cl-100MB-declared-only", p + b"Content-Length: 100000000\r\n\r\n", False),
        ("chunked-over-limit-then-silent", p + b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 8, False),
        ("cl-64MiB-streamed", p + b"Content-Length: %d\r\n\r\n" % (64 << 20) + b"b" * (64 << 20), True),
    ]:
        st, body, dt, sent, closed = send_then_read(data, ARGS.idle + 5)
        msg += "; %s=%s after %.2f s (%d of %d bytes sent, then end of file: %s)" % (
            label, st if st is not None else "closed", dt, sent, len(data), closed)
        if st != 413 or error_code(body) != "payload_too_large":
            bad.append("%s: got %s, want a 413 payload_too_large" % (label, st))
        elif whole and sent < len(data):
            bad.append("%s: cut off after %d of %d bytes: the client never got to read the 413" % (label, sent, len(data)))
        elif not whole and dt > quick:
            bad.append("%s: 413 took %.2f s (limit %.1f s): not refused up front" % (label, dt, quick))
        elif not closed:
            bad.append("%s: no end of file after the 413" % label)
    rss1 = daemon_rss_kb(ARGS.pid)
    msg += "; daemon RSS %d -> %d KiB" % (rss0, rss1)
    if rss1 - rss0 > 16 << 10:
        bad.append("RSS grew by %d KiB: the dropped body was kept" % (rss1 - rss0))
    if bad:
        msg += "; " + "; ".join(bad)
    return ok and not bad, msg


@case("2 MiB header line, whole request written before reading (lingering close)")
def header_2mib():
    data = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * (2 << 20) + b"\r\n\r\n"
    st, body, dt, sent, closed = send_then_read(data, 10)
    ok = st == 431 and error_code(body) == "header_fields_too_large" and sent == len(data) and closed
    return ok, "%s after %.2f s, %d of %d bytes sent (want all: the daemon lingers), end of file after it: %s" % (
        st if st is not None else "closed", dt, sent, len(data), closed)


@case("bodies trickled after a complete head (5 connections, 1 byte / 0.5 s; body deadline)")
def body_trickle():
    import select
    n, limit = 5, ARGS.body_timeout
    socks = [connect(ARGS.socket, 3) for _ in range(n)]
    for s in socks:
        s.sendall(b"POST /v1/domains/1/scan HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    t0 = time.monotonic()
    got = [None] * n  # (status, seconds)
    bufs = [b""] * n
    nxt = t0
    while time.monotonic() < t0 + limit + 4 and any(g is None for g in got):
        if time.monotonic() >= nxt:
            for k, s in enumerate(socks):
                if got[k] is None:
                    try:
                        s.send(b"b")
                    except OSError:
                        pass
            nxt += 0.5
        r, _, _ = select.select([s for k, s in enumerate(socks) if got[k] is None], [], [], 0.05)
        for s in r:
            k = socks.index(s)
            try:
                d = s.recv(65536)
            except OSError:
                d = b""
            bufs[k] += d
            if not d or b"\r\n\r\n" in bufs[k]:
                try:
                    st = int(bufs[k].split(b" ", 2)[1])
                except (IndexError, ValueError):
                    st = None
                got[k] = (st, time.monotonic() - t0, error_code(bufs[k].split(b"\r\n\r\n", 1)[-1]))
    for s in socks:
        s.close()
    times = [g[1] for g in got if g]
    ok = all(g and g[0] == 408 and g[2] == "request_timeout" and limit - 0.5 <= g[1] <= limit + 1.5 for g in got)
    return ok, "%s, %.1f-%.1f s after the head (http.request_body_timeout_seconds %.1f, idle limit %.1f)" % (
        ", ".join("%s" % (g[0] if g else "none") for g in got), min(times or [0]), max(times or [0]), limit, ARGS.idle)


@case("idle connection (nothing sent)")
def idle_conn():
    s = connect(ARGS.socket, ARGS.idle + 5)
    t0 = time.monotonic()
    try:
        d = s.recv(100)
    except socket.timeout:
        d = None
    dt = time.monotonic() - t0
    s.close()
    ok = d == b"" and ARGS.idle - 0.5 <= dt <= ARGS.idle + 2
    return ok, "closed after %.2f s (idle limit %.1f s)" % (dt, ARGS.idle) if d == b"" else "not closed in %.1f s" % dt


@case("slowloris (1 byte/s for 9 s x 20 connections; request-head deadline)")
def slowloris():
    # Each byte resets the idle limit; the request-head deadline (counted from a request's
    # first byte) must close every trickling connection, while /v1/health stays prompt and
    # an event stream whose head has arrived is left alone.
    import select
    n, trickle, dl = 20, 9, ARGS.head_timeout
    req = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
    watch = connect(ARGS.socket, 3)
    watch.sendall(b"GET /v1/events?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    watch_t0 = time.monotonic()
    socks = [connect(ARGS.socket, 1) for _ in range(n)]
    closed_at = [None] * n  # seconds after the connection's first byte
    lat = []
    t0 = time.monotonic()
    end = t0 + trickle
    i = 0
    while time.monotonic() < end:
        if time.monotonic() >= t0 + i:
            for k, s in enumerate(socks):
                if closed_at[k] is None and i < len(req):
                    try:
                        s.sendall(req[i:i + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        closed_at[k] = time.monotonic() - t0
            st, _, dt = health()
            lat.append(dt if st == 200 else 99)
            i += 1
        # Notice closes as they happen (EOF), not only at the next byte.
        open_ = [s for k, s in enumerate(socks) if closed_at[k] is None]
        if not open_:
            break
        r, _, _ = select.select(open_, [], [], max(0, min(0.05, t0 + i - time.monotonic())))
        for s in r:
            k = socks.index(s)
            try:
                d = s.recv(100)
            except ConnectionResetError:
                d = b""
            if d == b"":
                closed_at[k] = time.monotonic() - t0
    for s in socks:
        s.close()
    time.sleep(max(0, watch_t0 + max(dl, ARGS.idle) + 1 - time.monotonic()))
    # The watcher is still connected (the daemon did not close it): nothing, or events, to read.
    watch.setblocking(False)
    try:
        watch_open = watch.recv(65536) != b""
    except BlockingIOError:
        watch_open = True
    except OSError:
        watch_open = False
    watch.close()
    closed = [c for c in closed_at if c is not None]
    med, worst = statistics.median(lat), max(lat)
    in_time = [c for c in closed if dl - 0.5 <= c <= dl + 1.5]
    ok = med <= WATCH.limit and len(in_time) == n and watch_open
    msg = ("others served meanwhile: health median %.1f ms, max %.1f ms over %d probes; %d/%d closed while trickling, "
           "%.1f-%.1f s after their first byte (head deadline %.1f s, idle %.1f s; want all within %.1f-%.1f s); "
           "event stream open past the deadline: %s"
           % (med * 1e3, worst * 1e3, len(lat), len(closed), n, min(closed or [0]), max(closed or [0]), dl, ARGS.idle,
              dl - 0.5, dl + 1.5, watch_open))
    return ok, msg


@case("500 concurrent connections (http.max_connections 256: the rest get 503)")
def concurrent_500():
    # All open before any sends: the first 256 hold every slot, so the other 244 are
    # answered 503 too_many_connections (Retry-After: 1) and closed; once those close
    # and the 256 are answered, health is served again.
    n, limit = 500, 256
    t0 = time.monotonic()
    socks = []
    for _ in range(n):
        socks.append(connect(ARGS.socket, 10))
    t_open = time.monotonic() - t0
    st_mid, _, mid = health()
    for s in socks:
        try:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed already: its 503 is still there to read
    deadline = time.monotonic() + 20
    counts, bad_503 = {}, 0
    for s in socks:
        r, hd, body, _ = read_response(s, deadline)
        counts[r] = counts.get(r, 0) + 1
        if r == 503 and (hd.get("retry-after") != "1" or error_code(body) != "too_many_connections"):
            bad_503 += 1
        s.close()
    total = time.monotonic() - t0
    fds = daemon_fds(ARGS.pid)
    ok = counts.get(200, 0) == limit and counts.get(503, 0) == n - limit and bad_503 == 0 and st_mid == 503 and total < 20
    return ok, ("%d opened in %.2f s: 200 x%d, 503 x%d (want %d and %d; 503 without Retry-After or code: %d), other %s, "
                "total %.2f s; health with all open: %s in %.1f ms (want 503); daemon fds now %d"
                % (n, t_open, counts.get(200, 0), counts.get(503, 0), limit, n - limit, bad_503,
                   {k: v for k, v in counts.items() if k not in (200, 503)} or "none", total, st_mid, mid * 1e3, fds))


@case("burst of 3 x 1000 non-blocking connects (listen backlog, http.max_connections)")
def connect_burst():
    # What curl, Go or Python clients with a timeout do: a non-blocking connect, the
    # request at once. A full accept queue would fail the connect with EAGAIN; over
    # http.max_connections (256 by default) the daemon answers 503 with Retry-After.
    # /v1/health is probed meanwhile from a process of its own (in this one it would wait
    # for the interpreter lock behind the burst, and measure that).
    n, rounds = 1000, 3
    req = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    prober = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--probe-health", ARGS.socket],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    prober.stdout.readline()  # "ready": it is probing
    connect_errors, counts, bad_503, t_connect = {}, {}, 0, []
    t0 = time.monotonic()
    for _ in range(rounds):
        socks = []
        tc = time.monotonic()
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(ARGS.socket)
            except OSError as e:
                name = errno_name(e)
                connect_errors[name] = connect_errors.get(name, 0) + 1
                s.close()
                continue
            try:
                s.send(req)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass  # refused before the request went out: the 503 is still there to read
            s.setblocking(True)
            socks.append(s)
        t_connect.append(time.monotonic() - tc)
        deadline = time.monotonic() + 30
        for s in socks:
            st, hd, body, _ = read_response(s, deadline)
            counts[st] = counts.get(st, 0) + 1
            if st == 503 and (hd.get("retry-after") != "1" or error_code(body) != "too_many_connections"):
                bad_503 += 1
            s.close()
    total = time.monotonic() - t0
    out, _ = prober.communicate(b"", timeout=30)  # stdin closed: it stops and prints what it saw
    probes = json.loads(out)
    lat = sorted(dt for _, dt in probes)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 99
    probe_st = {}
    for st, _ in probes:
        probe_st[st] = probe_st.get(st, 0) + 1
    answered = counts.get(200, 0) + counts.get(503, 0)
    # The probes' latency is reported, not judged: a probe queued behind a thousand
    # connections waits for them, and a timed limit here would measure the machine.
    ok = not connect_errors and answered == n * rounds and bad_503 == 0 and set(probe_st) <= {200, 503} and len(lat) >= 3
    return ok, ("%d x %d connects (%s s each), errors at connect: %s; answers: 200 x%d, 503 x%d, other %s (503 "
                "without Retry-After or code: %d), all in %.2f s; health beside it: %d probes %s, p50 %.1f ms, "
                "p99 %.1f ms, max %.1f ms"
                % (rounds, n, "/".join("%.2f" % t for t in t_connect), connect_errors or "none", counts.get(200, 0),
                   counts.get(503, 0), {k: v for k, v in counts.items() if k not in (200, 503)} or "none", bad_503,
                   total, len(lat), probe_st, statistics.median(lat) * 1e3 if lat else 0, p99 * 1e3,
                   (lat[-1] if lat else 0) * 1e3))


def probe_health_until_stdin_closes(sock):
    """The burst case's prober: GET /v1/health every 5 ms until stdin closes, then prints
    [[status, seconds], ...]. A connect the backlog refuses is retried (see connect), so
    its wait is part of the latency."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    probes = []
    while not stop.is_set():
        try:
            st, _, dt = health(sock, timeout=5)
        except OSError:
            st, dt = None, 5.0
        probes.append((st, dt))
        time.sleep(0.005)
    print(json.dumps(probes), flush=True)


def errno_name(e):
    import errno
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__


@case("event-stream clients vanishing mid-stream (90 clients)")
def events_vanish():
    base_fds = WATCH.fds
    n = 90
    socks = []
    for _ in range(n):
        s = connect(ARGS.socket, 5)
        s.sendall(b"GET /v1/events?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    got = 0
    for s in socks:
        try:
            if s.recv(4096):
                got += 1
        except socket.timeout:
            pass
    for k, s in enumerate(socks):
        if k % 3 == 0:
            s.close()                                                    # FIN
        elif k % 3 == 1:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()                                                    # abortive
        else:
            s.shutdown(socket.SHUT_WR)                                   # half close, then gone
            s.close()
    # Never-reading followers: stay open while events flow, then vanish.
    lazy = []
    for _ in range(10):
        s = connect(ARGS.socket, 5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /v1/events?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        lazy.append(s)
    time.sleep(3)
    for s in lazy:
        s.close()
    # Stream connections notice a gone peer when the next event is written (balloon: every poll).
    t0 = time.monotonic()
    fds = daemon_fds(ARGS.pid)
    while fds > base_fds + 2 and time.monotonic() - t0 < 10:
        time.sleep(0.25)
        fds = daemon_fds(ARGS.pid)
    ok = got == n and fds <= base_fds + 2
    return ok, ("%d/%d got the backlog; daemon fds %d (baseline %d) %.1f s after the last client left"
                % (got, n, fds, base_fds, time.monotonic() - t0))


@case("path tricks")
def path_tricks():
    paths = [
        ("dotdot", "/v1/../v1/health", {404, 400}),
        ("dotdot-enc", "/v1/%2e%2e/v1/health", {404, 400}),
        ("dotdot-enc-upper", "/v1/domains/1/%2E%2E/%2E%2E/health", {404, 400}),
        ("slash-enc", "/v1/domains/1%2fscan", {404, 400}),
        ("slash-enc-upper", "/v1/domains/1%2Fscan", {404, 400}),
        ("slash-enc-health", "/v1%2fhealth", {404, 400}),
        ("double-slash-lead", "//v1/health", {404, 400}),
        ("double-slash-mid", "/v1//health", {404, 400}),
        ("trailing-slash", "/v1/health/", {404, 400}),
        ("dot-segment", "/v1/./health", {404, 400}),
        ("backslash", "/v1\\health", {404, 400}),
        ("long-8KiB", "/v1/" + "a" * 8192, {404, 400}),
        ("long-domid", "/v1/domains/" + "9" * 4000, {400}),
        ("pct-nul", "/v1/domains/1%00", {400}),
        ("pct-nul-health", "/v1/health%00", {404, 400}),
        ("bad-pct", "/v1/health%zz", {400, 404}),
        ("non-ascii-raw", "/v1/domains/\u00e9".encode("utf-8").decode("latin-1"), {400}),
        ("arabic-digit", "/v1/domains/%D9%A1", {400}),
        ("fullwidth-digit", "/v1/domains/%EF%BC%91", {400}),
        ("overlong-utf8", "/v1/domains/%C0%AE%C0%AE", {400, 404}),
        ("query-junk", "/v1/health?%00=%ff&&&=", {200, 400}),
        ("since-negative", "/v1/events?since=-1&follow=0", {400}),
        ("since-huge", "/v1/events?since=99999999999999999999999&follow=0", {400}),
        ("follow-bad", "/v1/events?follow=2", {400}),
        ("fragment", "/v1/health#frag", {200, 400, 404}),
    ]
    v = []
    for label, p, allowed in paths:
        v.append((label, ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % p).encode("latin-1"), allowed))
    for label, q in [("timeout-nan", "nan"), ("timeout-inf", "inf"), ("timeout-neg", "-1"), ("timeout-huge", "1e308")]:
        v.append((label, ("POST /v1/domains/1/scan?timeout=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % q)
                  .encode(), {400}))
    # An encoded slash is data, not a separator: a POST must not reach the scan endpoint.
    v.append(("slash-enc-post", b"POST /v1/domains/1%2fscan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
              {404, 400}))
    return expect_all(v)


@case("wrong methods (405 with Allow)")
def wrong_methods():
    cases = [("DELETE", "/v1/health", "GET"), ("PUT", "/v1/health", "GET"), ("PATCH", "/v1/domains", "GET"),
             ("POST", "/v1/domains", "GET"), ("POST", "/v1/health", "GET"), ("OPTIONS", "/v1/events", "GET"),
             ("DELETE", "/v1/domains/1", "GET"), ("GET", "/v1/domains/1/scan", "POST"),
             ("PUT", "/v1/domains/1/scan", "POST"), ("POST", "/metrics", "GET"), ("TRACE", "/v1/health", "GET")]
    bad, seen = [], []
    for m, p, allow in cases:
        st, hd, body, dt = request(m, p)
        seen.append("%s %s=%s" % (m, p, st))
        if st != 405 or hd.get("allow") != allow or error_code(body) != "method_not_allowed":
            bad.append("%s %s: %s Allow=%r %r" % (m, p, st, hd.get("allow"), body[:100]))
    # HEAD on a keep-alive connection: the next response must still be framed correctly.
    s = connect(ARGS.socket, 3)
    s.sendall(b"HEAD /v1/health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = b""
    s.settimeout(3)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            raw += d
    except socket.timeout:
        pass
    s.close()
    first = raw.split(b"\r\n", 1)[0]
    # After HEAD's head (no body allowed), the second response must start right there.
    heads = raw.count(b"HTTP/1.1 ")
    second_ok = b"HTTP/1.1 200" in raw
    head_body_leak = False
    if heads >= 1:
        h1, _, rest = raw.partition(b"\r\n\r\n")
        head_body_leak = not rest.startswith(b"HTTP/1.1 ") and rest != b""
    seen.append("HEAD=%s then GET %s" % (first.decode("latin-1", "replace"), "ok" if second_ok and not head_body_leak else "misframed"))
    if head_body_leak or not second_ok:
        bad.append("HEAD /v1/health followed by GET on one connection: body bytes after HEAD's head or GET lost: %r"
                   % raw[:300])
    return not bad, "%d requests: %s%s" % (len(cases) + 1, " ".join(seen), "; " + "; ".join(bad) if bad else "")


PEER_CODE = r"""
import socket, sys, json
def req(m, p):
    s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
    s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (m, p)).encode())
    b = b""
    while True:
        d = s.recv(65536)
        if not d: break
        b += d
    return int(b.split()[1]), b.split(b"\r\n\r\n", 1)[1][:200].decode("latin-1")
out = {}
for m, p in [("GET", "/v1/health"), ("GET", "/v1/domains/1"), ("POST", "/v1/domains/1/scan"),
             ("POST", "/v1/domains/6/scan?timeout=1"), ("POST", "/v1/domains/999/scan")]:
    out[m + " " + p] = req(m, p)
import os
out["uid"] = os.getuid()
print(json.dumps(out))
"""


@case("unprivileged peer (uid nobody) triggering scans")
def unprivileged():
    st = os.stat(ARGS.socket)
    mode = oct(st.st_mode & 0o777)
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        sys.executable, "-c", PEER_CODE, ARGS.socket], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return False, "peer client failed: %s" % r.stderr.strip()[-300:]
    out = json.loads(r.stdout)
    want = {"GET /v1/health": 200, "GET /v1/domains/1": 200, "POST /v1/domains/1/scan": 403,
            "POST /v1/domains/6/scan?timeout=1": 403, "POST /v1/domains/999/scan": 403}
    bad = ["%s=%s" % (k, out[k][0]) for k, v in want.items() if out[k][0] != v]
    got = " ".join("%s=%s" % (k, out[k][0]) for k in want)
    return not bad, "socket mode %s, peer uid %s: %s%s" % (
        mode, out["uid"], got, "; wrong: " + ", ".join(bad) if bad else "")


@case("unknown domid (404)")
def unknown_domid():
    v = [("GET", "/v1/domains/999"), ("GET", "/v1/domains/0"), ("GET", "/v1/domains/32751"),
         ("GET", "/v1/domains/4294967295"), ("GET", "/v1/domains/999?history=1"), ("POST", "/v1/domains/999/scan"),
         ("POST", "/v1/domains/0/scan"), ("GET", "/v1/domains/1/nope")]
    bad, seen = [], []
    for m, p in v:
        st, _, body, _ = request(m, p)
        seen.append("%s=%s" % (p, st))
        if st != 404 or error_code(body) != "not_found":
            bad.append("%s %s: %s %r" % (m, p, st, body[:100]))
    return not bad, " ".join(seen) + ("; " + "; ".join(bad) if bad else "")


@case("bad domid (400)")
def bad_domid():
    v = ["abc", "-1", "0x1", "1.5", "1e3", "4294967296", "99999999999999999999", "%201", "1%20", "", "%2B1", "+1",
         "\u0661".encode().decode("latin-1")]
    bad, seen, lenient = [], [], []
    for d in v:
        for m, suffix in [("GET", ""), ("POST", "/scan")]:
            p = "/v1/domains/" + d + suffix
            st, _, body, _ = request(m, p)
            seen.append("%s%s=%s" % (d or "<empty>", suffix, st))
            if st == 400 and error_code(body) == "bad_request":
                continue
            if d in ("+1", "%2B1") and st in (200, 404):
                lenient.append("%s %s -> %s" % (m, p, st))
                continue
            if d == "" and suffix == "" and st == 200:   # /v1/domains/ is the list with a trailing slash? no: 3 parts
                bad.append("%s %s: %s" % (m, p, st))
                continue
            bad.append("%s %s: %s %r" % (m, p, st, body[:100]))
    if lenient:
        finding("domid parsing accepts a leading '+': %s (Swift's UInt32(String) parse; harmless, "
                "README says 'a decimal number')" % ", ".join(lenient))
    return not bad, "%d requests: %s%s" % (len(v) * 2, " ".join(seen), "; " + "; ".join(bad) if bad else "")


# ----------------------------------------------------------------------------- host and process faults

class Aux:
    """A short-lived daemon of its own (its own dir, socket, state)."""

    def __init__(self, name, extra=(), stateful_dir=None, prefix=(), scenario=None, config=None):
        self.dir = stateful_dir or os.path.join(ARGS.work, name)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.socket = os.path.join(self.dir, "s.sock")
        self.state = os.path.join(self.dir, "state")
        self.logpath = os.path.join(self.dir, "daemon.log")
        args = list(prefix) + [ARGS.bin + "/xenp2md", "--backend", "sim", "--socket", self.socket,
                               "--state-dir", self.state] + list(extra)
        if scenario:
            sp = os.path.join(self.dir, "fleet.yaml")
            open(sp, "w").write(scenario)
            args += ["--scenario", sp]
        if config:
            cp = os.path.join(self.dir, "c.yaml")
            open(cp, "w").write(config)
            args += ["--config", cp]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC")}
        self.log_f = open(self.logpath, "ab")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=self.log_f, stderr=self.log_f, stdin=subprocess.DEVNULL, env=env)

    def wait_socket(self, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            if os.path.exists(self.socket):
                try:
                    st, j, _ = health(self.socket, 2)
                    if st == 200:
                        return True
                except OSError:
                    pass
            time.sleep(0.05)
        return False

    def wait_ready(self, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return None
            try:
                st, j, _ = health(self.socket, 2)
                if st == 200 and j["status"] == "ok":
                    return j
            except OSError:
                pass
            time.sleep(0.1)
        return None

    def log(self):
        try:
            return open(self.logpath, errors="replace").read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_f.close()


def read_incidents(path):
    """(events, bad_lines) of an incidents.jsonl."""
    good, bad = [], 0
    with open(path, "rb") as f:
        for line in f.read().split(b"\n"):
            if not line:
                continue
            try:
                good.append(json.loads(line))
            except ValueError:
                bad += 1
    return good, bad


def events_since0(sock):
    st, _, body, _ = request("GET", "/v1/events?since=0&follow=0", path=sock, timeout=10)
    return [json.loads(l) for l in body.decode().splitlines() if l.strip()] if st == 200 else None


INCIDENT_KINDS = {"domain_new", "domain_gone", "domain_reused", "severity_changed", "format_changed",
                  "became_unstable", "became_stable", "domain_stopping"}


@case("SIGHUP with a broken config file")
def sighup_broken():
    cfg = ARGS.config
    good = open(cfg).read()
    _, h0, _ = health()
    try:
        open(cfg, "w").write(good + "poll:\n  interval_seconds: fast\n")
        os.kill(ARGS.pid, signal.SIGHUP)
        end = time.monotonic() + 5
        h1 = h0
        while time.monotonic() < end and not h1.get("config_error"):
            time.sleep(0.1)
            _, h1, _ = health()
        err = h1.get("config_error")
        # A 1 s slow-loris check: the old idle limit must still be in force.
        ok = (err is not None and h1["config_generation"] == h0["config_generation"]
              and h1["poll_interval_seconds"] == h0["poll_interval_seconds"])
        msg = "config_error=%r, generation %d -> %d, poll interval %s -> %s" % (
            err, h0["config_generation"], h1["config_generation"], h0["poll_interval_seconds"], h1["poll_interval_seconds"])
        # Unreadable file (a directory in its place) too.
        os.rename(cfg, cfg + ".away")
        os.mkdir(cfg)
        os.kill(ARGS.pid, signal.SIGHUP)
        time.sleep(1)
        _, h2, _ = health()
        os.rmdir(cfg)
        os.rename(cfg + ".away", cfg)
        ok = ok and h2.get("config_error") is not None and h2["config_error"] != err
        msg += "; config path is a directory: config_error=%r" % (h2.get("config_error") or "")[:80]
    finally:
        open(cfg, "w").write(good)
    os.kill(ARGS.pid, signal.SIGHUP)
    end = time.monotonic() + 5
    _, h3, _ = health()
    while time.monotonic() < end and h3.get("config_error"):
        time.sleep(0.1)
        _, h3, _ = health()
    ok = ok and h3.get("config_error") is None and h3["config_generation"] == h0["config_generation"] + 1
    msg += "; good file restored: config_error cleared, generation %d" % h3["config_generation"]
    return ok, msg


# 256 GiB (64M pfns): a manual scan of it takes 1.6 s in a debug build on an idle 2-core
# machine (64 GiB took 0.4 s, inside the case's wait before SIGTERM, so the case failed
# whenever the machine was idle). Building it takes ~14 s and 1.8 GiB of RSS.
BIG_FLEET = """host:
  memory_gib: 272
domains:
  - {domid: 1, name: small, memory_mib: 256}
  - {domid: 7, name: big, memory_mib: 262144}
"""


@case("SIGTERM during a scan")
def sigterm_scan():
    # The first poll's scan of the big guest, and a manual one, take over a second each.
    a = Aux("sigterm", scenario=BIG_FLEET, config="poll:\n  budget_frames_per_second: 0\n  interval_seconds: 3600\n")
    try:
        if not a.wait_socket(60):
            return False, "daemon did not come up: " + a.log()[-300:]
        res = {}
        def scan():
            try:
                st, _, body, dt = request("POST", "/v1/domains/7/scan?timeout=60", path=a.socket, timeout=40)
                res["r"], res["code"], res["dt"] = st, error_code(body), dt
            except OSError as e:
                res["r"] = "error %s" % e
        t = threading.Thread(target=scan)
        t.start()
        time.sleep(0.2)
        st, j, _ = health(a.socket)
        scanning = j and j["status"] == "starting"
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        try:
            rc = a.proc.wait(20)
        except subprocess.TimeoutExpired:
            rc = None
        dt = time.monotonic() - t0
        t.join(25)
        evs, bad = read_incidents(os.path.join(a.state, "incidents.jsonl"))
        gone = not os.path.exists(a.socket)
        # The in-flight scan request is answered 503 `unavailable` before its connection
        # closes (a 200 would mean the scan ended before SIGTERM: the case proved nothing).
        answered = res.get("r") == 503 and res.get("code") == "unavailable"
        ok = rc == 0 and dt <= 15 and bad == 0 and gone and "xenp2md stopped" in a.log() and answered
        return ok, ("first poll still running at SIGTERM: %s; exit %s after %.2f s (bound 15 s); scan client got %s %s; "
                    "incident log %d events, %d unreadable lines; socket removed: %s"
                    % (scanning, rc, dt, res.get("r"), res.get("code"), len(evs), bad, gone))
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(5)
        a.log_f.close()


@case("kill -9 then restart (incident log intact, torn last line)")
def kill9():
    d = os.path.join(ARGS.work, "kill9")
    a = Aux("kill9", stateful_dir=d, extra=["--poll-interval", "0.3"])
    if not a.wait_ready():
        a.stop()
        return False, "first daemon not ready"
    # Kill while it is busy: a burst of scans in flight.
    for _ in range(5):
        threading.Thread(target=lambda: request("POST", "/v1/domains/3/scan", path=a.socket, timeout=10), daemon=True).start()
    time.sleep(0.2)
    before = [e for e in events_since0(a.socket) if e["kind"] in INCIDENT_KINDS]
    a.proc.kill()
    a.proc.wait(10)
    a.log_f.close()
    path = os.path.join(a.state, "incidents.jsonl")
    file_before, bad0 = read_incidents(path)
    # Simulate a write torn by the crash.
    with open(path, "ab") as f:
        f.write(b'{"seq": 999999, "kind": "severity_ch')
    b = Aux("kill9", stateful_dir=d, extra=["--poll-interval", "0.3"])
    try:
        if not b.wait_ready():
            return False, "restarted daemon not ready: " + b.log()[-300:]
        after = [e for e in events_since0(b.socket) if e["kind"] in INCIDENT_KINDS]
        file_after, bad1 = read_incidents(path)
        prefix_same = after[:len(before)] == before
        max_before = max(e["seq"] for e in file_before)
        new = [e for e in after if e["seq"] > max_before]
        _, h, _ = health(b.socket)
        warned = "skipped unreadable lines" in b.log()
        ok = (bad0 == 0 and prefix_same and len(new) > 0 and bad1 == 1 and warned
              and h["incidents"] == len(file_after) and all(e["seq"] < 999999 for e in new))
        return ok, ("%d incidents before kill (file %d lines, 0 torn); after restart %d served (%d new, seq %d..%d), "
                    "old ones identical: %s; torn line skipped with a warning: %s; file %d good + %d torn line; "
                    "health incidents %d" % (len(before), len(file_before), len(after), len(new),
                                             min([e["seq"] for e in new] or [0]), max([e["seq"] for e in new] or [0]),
                                             prefix_same, warned, len(file_after), bad1, h["incidents"]))
    finally:
        b.stop()


@case("state: incidents.jsonl is a directory")
def state_isdir():
    d = os.path.join(ARGS.work, "state-isdir")
    os.makedirs(os.path.join(d, "state", "incidents.jsonl"))
    a = Aux("state-isdir", stateful_dir=d)
    try:
        rc = a.proc.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    dt = time.monotonic() - a.t0
    up = rc is None and a.wait_socket(5)
    last = a.log().strip().splitlines()[-1:] or [""]
    a.stop()
    if rc is None:
        return up, "did not exit within 15 s; serving: %s; log: %s" % (up, last[0][:200])
    return rc != 0 and "incidents.jsonl" in last[0], "exit %s after %.2f s: %s" % (rc, dt, last[0][:200])


@case("state: directory not writable (daemon as nobody, state dir 0500)")
def state_ro():
    d = os.path.join(ARGS.work, "state-ro")
    os.makedirs(os.path.join(d, "state"))
    os.chown(d, 65534, 65534)
    os.chown(os.path.join(d, "state"), 65534, 65534)
    os.chmod(os.path.join(d, "state"), 0o500)
    a = Aux("state-ro", stateful_dir=d, prefix=["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"])
    try:
        rc = a.proc.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    dt = time.monotonic() - a.t0
    last = a.log().strip().splitlines()[-1:] or [""]
    a.stop()
    if rc is None:
        return False, "did not exit within 15 s (hang?); log: %s" % last[0][:200]
    return rc != 0 and "state directory" in last[0], "exit %s after %.2f s: %s" % (rc, dt, last[0][:200])


@case("state: file system full (64 KiB tmpfs, filled)")
def state_full():
    d = os.path.join(ARGS.work, "state-full")
    st = os.path.join(d, "state")
    os.makedirs(st)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "xenp2m-abuse", st], capture_output=True, text=True)
    if r.returncode != 0:
        print("SKIP state: file system full: cannot mount a tmpfs (%s)" % r.stderr.strip(), flush=True)
        return True, "skipped: no tmpfs"
    a = None
    log_path = os.path.join(st, "incidents.jsonl")
    filler = os.path.join(st, "filler")
    try:
        open(log_path, "wb").close()
        try:
            with open(filler, "wb") as f:
                while True:
                    f.write(b"x" * 4096)
                    f.flush()
        except OSError:
            pass
        a = Aux("state-full", stateful_dir=d, extra=["--poll-interval", "0.5"])
        # Not a.wait_ready(): a daemon that cannot persist incidents must say "degraded".
        h = None
        end = time.monotonic() + 20
        while time.monotonic() < end and a.proc.poll() is None:
            try:
                code, j, _ = health(a.socket, 2)
                if code == 200 and j and j["polls"] > 0:
                    h = j
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if h is None:
            return False, "no poll within 20 s; exit %s; log: %s" % (a.proc.poll(), a.log()[-300:])
        evs = events_since0(a.socket) or []
        incidents = [e for e in evs if e["kind"] in INCIDENT_KINDS]
        errors = a.log().count("incident log: write failed")
        size = os.path.getsize(log_path)
        time.sleep(1)
        _, h2, _ = health(a.socket)
        il = (h2 or {}).get("incident_log") or {}
        # Hard check: /v1/health must report that incidents are not persisted.
        reported = (h2 is not None and h2.get("status") == "degraded" and il.get("writable") is False
                    and "No space left on device" in (il.get("last_error") or "")
                    and il.get("unpersisted_events") == h2["incidents"] >= 6
                    and [p.split(" ")[0] for p in h2.get("problems") or []] == ["incident", "event"])
        running = a.proc.poll() is None and h2 is not None and h2["polls"] > h["polls"] and len(incidents) >= 6
        msg = ("keeps running and polling (polls %d -> %d); %d incidents served from memory, incidents.jsonl %d bytes, "
               "%d 'write failed' log line(s); /v1/health: status %r, incident_log writable=%r unpersisted=%r "
               "last_error=%r" % (h["polls"], (h2 or {}).get("polls", -1), len(incidents), size, errors,
                                  (h2 or {}).get("status"), il.get("writable"), il.get("unpersisted_events"),
                                  il.get("last_error")))
        if not reported:
            msg += "; NOT REPORTED: /v1/health does not say that incidents are not persisted"
        # Space again: the held incidents are written (by the next poll at the latest) and health is ok.
        os.unlink(filler)
        h3, il3 = None, {}
        end = time.monotonic() + 5
        while time.monotonic() < end:
            _, h3, _ = health(a.socket)
            il3 = (h3 or {}).get("incident_log") or {}
            if il3.get("writable") and h3.get("status") == "ok":
                break
            time.sleep(0.1)
        on_disk, bad = read_incidents(log_path)
        served = [e for e in events_since0(a.socket) or [] if e["kind"] in INCIDENT_KINDS]
        recovered = (il3.get("writable") is True and il3.get("unpersisted_events") == 0 and h3.get("status") == "ok"
                     and bad == 0 and on_disk == served and len(served) >= len(incidents)
                     and "writable again" in a.log())
        msg += ("; space freed: status %r, writable %r, unpersisted %r, incidents.jsonl %d records (%d unreadable), "
                "seqs %s" % ((h3 or {}).get("status"), il3.get("writable"), il3.get("unpersisted_events"),
                             len(on_disk), bad, "match" if recovered else "DO NOT MATCH or not written"))
        return running and reported and recovered, msg
    finally:
        if a:
            a.stop()
        subprocess.run(["umount", st])


FAULT_FLEET = """host:
  memory_gib: 16
domains:
  - {domid: 1, name: fine, memory_mib: 512}
  - domid: 2
    name: nomap
    memory_mib: 512
    faults: [{kind: all_maps_fail}]
  - domid: 3
    name: vanishing
    memory_mib: 512
    faults: [{kind: vanish_after_map_calls, count: 3}]
"""


@case("backend map errors via scenario faults (all_maps_fail, vanish_after_map_calls)")
def map_faults():
    a = Aux("mapfaults", scenario=FAULT_FLEET, extra=["--poll-interval", "0.5"])
    try:
        h = a.wait_ready()
        if h is None:
            return False, "not ready: " + a.log()[-300:]
        st2, _, b2, _ = request("GET", "/v1/domains/2", path=a.socket)
        r2 = json.loads(b2) if st2 == 200 else {}
        sev2 = r2.get("severity")
        err2 = r2.get("error") or ""
        sc, _, bs, _ = request("POST", "/v1/domains/2/scan", path=a.socket)
        scan_sev = json.loads(bs).get("severity") if sc == 200 else None
        st1, _, b1, _ = request("GET", "/v1/domains/1", path=a.socket)
        sev1 = json.loads(b1).get("severity") if st1 == 200 else None
        st3, _, b3, _ = request("GET", "/v1/domains/3", path=a.socket)
        evs = events_since0(a.socket) or []
        ev3 = sorted({e["kind"] for e in evs if e.get("domid") == 3})
        time.sleep(1.2)
        _, h2, _ = health(a.socket)
        ok = (sev2 == "error" and err2 != "" and scan_sev == "error" and sev1 == "ok" and a.proc.poll() is None
              and h2["polls"] > h["polls"])
        return ok, ("all_maps_fail: severity %s, error %r; manual scan %s/%s; healthy neighbour %s; "
                    "vanish_after_map_calls: GET /v1/domains/3 -> %s, events for it %s; polling on (%d -> %d polls)"
                    % (sev2, err2[:90], sc, scan_sev, sev1, st3, ",".join(ev3), h["polls"], h2["polls"]))
    finally:
        a.stop()


# ----------------------------------------------------------------------------- main

def main():
    global ARGS, WATCH
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--head-timeout", type=float, default=10.0)
    ap.add_argument("--body-timeout", type=float, default=10.0)
    ARGS = ap.parse_args()
    WATCH = Watch()
    print("NOTE clock jumps, domain-listing and M2P map errors are tested against the real daemon by "
          "`swift test --filter HostFaultTests` (libfaketime; scenario host.faults), not here", flush=True)
    only = os.environ.get("XENP2M_ABUSE_ONLY")  # a regular expression over case names, to run a few while working on them
    for name, fn in CASES:
        if only and not re.search(only, name):
            print("SKIP %s: not selected by XENP2M_ABUSE_ONLY=%s" % (name, only), flush=True)
            continue
        run_case(name, fn)
    # Last: the main daemon stops cleanly on SIGTERM after all of it.
    t0 = time.monotonic()
    os.kill(ARGS.pid, signal.SIGTERM)
    rc = None
    while time.monotonic() - t0 < 20:
        if not alive(ARGS.pid):
            rc = "gone"
            break
        time.sleep(0.05)
    dt = time.monotonic() - t0
    gone = not os.path.exists(ARGS.socket)
    logged = "xenp2md stopped" in open(ARGS.log, errors="replace").read()
    ok = rc is not None and dt <= 15 and gone and logged
    RESULTS.append(("SIGTERM of the abused daemon", ok, ""))
    print("%s SIGTERM of the abused daemon: stopped after %.2f s, socket removed: %s, logged 'xenp2md stopped': %s"
          % ("PASS" if ok else "FAIL", dt, gone, logged), flush=True)
    if not ok:
        WATCH.survived = False
    failed = [n for n, ok, _ in RESULTS if not ok]
    print("findings: %d" % len(FINDINGS))
    print("failed cases: %d%s" % (len(failed), (" (" + "; ".join(failed) + ")") if failed else ""))
    print("abuse cases: %d, daemon survived: %s" % (len(RESULTS), "yes" if WATCH.survived else "no"), flush=True)
    return 0 if WATCH.survived and not failed else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe-health"]:
        probe_health_until_stdin_closes(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
