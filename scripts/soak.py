#!/usr/bin/env python3
"""Soak measurements against a running xenp2md (started by scripts/soak.sh).

While the daemon's simulated fleet churns (scenario `churn:`), for --minutes:
- a health poller: GET /v1/health every 100 ms (latency p50/p99/max);
- a lister: GET /v1/domains every second;
- a follower: one GET /v1/events?since=0 stream for the whole run, whose sequence numbers
  must be consecutive (the hub numbers every event of a run 1, 2, 3, ...): a gap is a lost
  event, and so is any event of the backlog after the follower's last one at the end;
- vanishing clients: every 2 s an event stream that reads a little and is dropped, and a
  request abandoned halfway;
- SIGHUP every 60 s (config reloads must not leak).
Every 5 s it samples the daemon's RSS, descriptors, threads and incident-log size. Start is
the median of the first three samples after warm-up (a fifth of the run, at least 30 s),
end the median of the last three; flat means RSS, descriptors and threads each grew by
less than 5 % (descriptors and threads: or by at most one) from start to end. The
incident log grows with the incidents the churn causes, by design, until it rotates: its
size is shown, not judged.

Standard library plus scripts/abuse.py's HTTP helpers. Last line:
`soak: M minutes, flat: yes|no`; exit status 0 only when flat, nothing lost, the daemon
alive and every health request answered 200.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import abuse as http  # noqa: E402  (read_response, request, health, daemon_rss_kb, daemon_fds)


def threads(pid):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def log_bytes(state):
    total = 0
    for name in ("incidents.jsonl", "incidents.jsonl.1"):
        try:
            total += os.path.getsize(os.path.join(state, name))
        except OSError:
            pass
    return total


class Follower(threading.Thread):
    """One event stream for the whole run: records every seq, in order."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock, self.seqs, self.error, self.stop = sock, [], None, threading.Event()

    def run(self):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.sock)
            s.sendall(b"GET /v1/events?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(1.0)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            buf = buf.split(b"\r\n\r\n", 1)[1]
            while not self.stop.is_set():
                # Chunked NDJSON: take whole JSON lines out of the chunk stream.
                while True:
                    head, sep, rest = buf.partition(b"\r\n")
                    if not sep:
                        break
                    size = int(head.split(b";")[0] or b"0", 16)
                    if len(rest) < size + 2:
                        break
                    for line in rest[:size].split(b"\n"):
                        if line.strip():
                            self.seqs.append(json.loads(line)["seq"])
                    buf = rest[size + 2:]
                    if size == 0:
                        self.error = "the stream ended"
                        return
                try:
                    d = s.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    self.error = "the daemon closed the stream"
                    return
                buf += d
        except Exception as e:  # a follower that cannot follow is a failed soak
            self.error = "%s: %s" % (type(e).__name__, e)


def loop(stop, period, fn):
    def run():
        while not stop.is_set():
            t0 = time.monotonic()
            fn()
            stop.wait(max(0, period - (time.monotonic() - t0)))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--minutes", type=float, default=3)
    a = ap.parse_args()
    sock, pid = a.socket, a.pid
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            st, j, _ = http.health(sock, 2)
            if st == 200 and j["polls"] >= 1:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        print("soak: the daemon never became ready")
        print("soak: %g minutes, flat: no" % a.minutes)
        return 1

    stop = threading.Event()
    lat, bad_health, lists, vanished, hups = [], [], [0], [0], [0]
    follower = Follower(sock)
    follower.start()

    def probe():
        try:
            st, _, dt = http.health(sock, 5)
        except OSError as e:
            st, dt = str(e), 5.0
        lat.append(dt)
        if st != 200:
            bad_health.append(st)

    def lister():
        try:
            if http.request("GET", "/v1/domains", path=sock, timeout=10)[0] == 200:
                lists[0] += 1
        except OSError:
            pass

    def vanish():
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(sock)
            s.sendall(b"GET /v1/events?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(512)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # abortive: reset mid-stream
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            s.sendall(b"GET /v1/domains HTTP/1.1\r\nHo")  # and gone halfway through a head
            s.close()
            vanished[0] += 2
        except OSError:
            pass

    def hup():
        os.kill(pid, signal.SIGHUP)
        hups[0] += 1

    workers = [loop(stop, 0.1, probe), loop(stop, 1.0, lister), loop(stop, 2.0, vanish)]
    samples = []  # (t, rss KiB, fds, threads, log bytes)
    t0 = time.monotonic()
    end = t0 + a.minutes * 60
    warm = max(30.0, a.minutes * 60 / 5)
    next_hup = t0 + 60
    while time.monotonic() < end:
        if not http.alive(pid):
            break
        samples.append((time.monotonic() - t0, http.daemon_rss_kb(pid), http.daemon_fds(pid), threads(pid), log_bytes(a.state)))
        if time.monotonic() >= next_hup:
            hup()
            next_hup += 60
        time.sleep(max(0, min(5.0, end - time.monotonic())))
    stop.set()
    for w in workers:
        w.join(10)
    alive = http.alive(pid)
    # Everything numbered until now must have reached the follower.
    st, j, _ = http.health(sock, 5) if alive else (None, None, 0)
    last = j["last_event_seq"] if j else 0
    time.sleep(2)
    follower.stop.set()
    follower.join(5)
    seqs = follower.seqs
    gaps = sum(b - a - 1 for a, b in zip(seqs, seqs[1:]) if b > a + 1)
    repeats = sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a)
    first = seqs[0] if seqs else 0
    missing_tail = max(0, last - (seqs[-1] if seqs else 0))
    lost = gaps + missing_tail + (first - 1 if first > 1 else 0)

    after = [s for s in samples if s[0] >= warm]
    flat = False
    if len(after) >= 6:
        def med(rows, k):
            return statistics.median(r[k] for r in rows)
        start, fin = after[:3], after[-3:]
        rss0, rss1 = med(start, 1), med(fin, 1)
        fd0, fd1 = med(start, 2), med(fin, 2)
        th0, th1 = med(start, 3), med(fin, 3)
        lg0, lg1 = med(start, 4), med(fin, 4)

        def grew(a0, a1, slack):
            return a1 > a0 * 1.05 and a1 > a0 + slack
        flat = not grew(rss0, rss1, 0) and not grew(fd0, fd1, 1) and not grew(th0, th1, 1)
        print("after warm-up (%.0f s; medians of 3 samples 5 s apart), start -> end:" % warm)
        print("  rss %d -> %d KiB (%+.1f %%), fds %d -> %d, threads %d -> %d, incident log %d -> %d bytes"
              % (rss0, rss1, (rss1 - rss0) * 100.0 / rss0, fd0, fd1, th0, th1, lg0, lg1))
        print("  rss min/max over the run after warm-up: %d / %d KiB" % (min(r[1] for r in after), max(r[1] for r in after)))
    else:
        print("too few samples after warm-up (%d): run longer" % len(after))
    lat.sort()
    if lat:
        print("health: %d requests, p50 %.1f ms, p99 %.1f ms, max %.1f ms, %d not 200%s"
              % (len(lat), statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3, lat[-1] * 1e3, len(bad_health),
                 (" (%s)" % ", ".join(map(str, bad_health[:5]))) if bad_health else ""))
    print("events: %d followed (seq %d..%d), last seq %d, lost %d (gaps %d, missing at the end %d), repeated %d%s"
          % (len(seqs), first, seqs[-1] if seqs else 0, last, lost, gaps, missing_tail, repeats,
             ("; follower: " + follower.error) if follower.error else ""))
    print("clients: %d listings, %d vanishing connections, %d SIGHUPs; daemon alive: %s; polls %s, domains %s"
          % (lists[0], vanished[0], hups[0], alive, j["polls"] if j else "?", j["domains"] if j else "?"))
    ok = flat and lost == 0 and repeats == 0 and alive and not bad_health and not follower.error and seqs
    print("soak: %g minutes, flat: %s" % (a.minutes, "yes" if flat else "no"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
