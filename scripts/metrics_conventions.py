#!/usr/bin/python3
"""xenp2md's metric conventions, checked on a real /metrics text.

The text is parsed with Python's prometheus_client exposition-format parser (Debian's
python3-prometheus-client) and linted with `promtool check metrics`; then:
  - every family has `# HELP` and `# TYPE` lines, and a name starting with xenp2m_;
  - per-domain families (any series with `domid`) carry domid, name and uuid on every
    series; daemon-wide families carry none of them;
  - no series names its host (host, hostname, instance, job, node): that is the scraper's;
  - xenp2m_domain_info exists for every domain, with `type` and
    calling_domain="true"|"false", and at most one calling domain;
  - base units in names (seconds, not ms; no percent, KiB, ...), counters end in _total,
    `_info` families and `_ready` flags are 0 or 1.

Usage: metrics_conventions.py FILE|URL   (prints one line per problem; exit 1 if any)
"""
import re
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

DOMAIN_LABELS = ("domid", "name", "uuid")
HOST_LABELS = ("host", "hostname", "instance", "job", "node")
NON_BASE_UNITS = ("milliseconds", "microseconds", "nanoseconds", "ms", "us", "ns", "minutes", "hours", "days",
                  "percent", "kib", "mib", "gib", "kb", "mb", "gb", "kilobytes", "megabytes")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def declared(text):
    """{family name: {"HELP": text, "TYPE": type}} from the comment lines."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^# (HELP|TYPE) (\S+)(?: (.*))?$", line)
        if m:
            out.setdefault(m.group(2), {})[m.group(1)] = m.group(3) or ""
    return out


def check(text, promtool="promtool"):
    """Problems found in one /metrics text (empty list: all conventions hold)."""
    problems = []
    if not text.endswith("\n"):
        problems.append("the text does not end with a newline")
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser's own error: malformed exposition text
        return [f"exposition-format parser rejected the text: {e}"]
    if not families:
        return ["no metric families at all"]

    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    for line in (lint.stdout + lint.stderr).splitlines():
        if line.strip():
            problems.append(f"promtool check metrics: {line.strip()}")

    decl = declared(text)
    for name, d in decl.items():
        if "HELP" not in d or not d["HELP"].strip():
            problems.append(f"{name}: no # HELP")
        if "TYPE" not in d:
            problems.append(f"{name}: no # TYPE")

    infos = {}
    calling = []
    domids_seen = set()
    for fam in families:
        # The parser names a counter family without _total; the declared name has it.
        exposed = fam.name + "_total" if fam.type == "counter" else fam.name
        if exposed not in decl:
            problems.append(f"{exposed}: samples without # HELP/# TYPE")
        if not exposed.startswith("xenp2m_"):
            problems.append(f"{exposed}: name does not start with xenp2m_")
        words = exposed.split("_")
        for u in NON_BASE_UNITS:
            if u in words:
                problems.append(f"{exposed}: non-base unit '{u}' in the name (use seconds, bytes, or a count)")
        if fam.type == "counter" and not exposed.endswith("_total"):
            problems.append(f"{exposed}: counter without _total")
        if fam.type != "counter" and exposed.endswith("_total"):
            problems.append(f"{exposed}: _total on a {fam.type}")
        if ("duration" in words or "timestamp" in words) and "seconds" not in words:
            problems.append(f"{exposed}: a time without _seconds")

        per_domain = any("domid" in s.labels for s in fam.samples)
        for s in fam.samples:
            labels = s.labels
            for h in HOST_LABELS:
                if h in labels:
                    problems.append(f"{s.name}{labels}: host label '{h}' (the scraper adds the host)")
            if per_domain:
                missing = [k for k in DOMAIN_LABELS if k not in labels]
                if missing:
                    problems.append(f"{s.name}{labels}: per-domain series without {', '.join(missing)}")
                    continue
                if not labels["domid"].isdigit():
                    problems.append(f"{s.name}{labels}: domid is not a number")
                if not UUID.match(labels["uuid"]):
                    problems.append(f"{s.name}{labels}: uuid is not a UUID")
                domids_seen.add(labels["domid"])
            else:
                extra = [k for k in DOMAIN_LABELS if k in labels]
                if extra:
                    problems.append(f"{s.name}{labels}: daemon-wide series with {', '.join(extra)}")
            if (exposed.endswith("_info") or exposed.endswith("_ready")) and s.value not in (0.0, 1.0):
                problems.append(f"{s.name}{labels}: value {s.value}, expected 0 or 1")
            if exposed == "xenp2m_domain_info" and "domid" in labels:
                infos[labels["domid"]] = labels
                if labels.get("calling_domain") not in ("true", "false"):
                    problems.append(f"{s.name}{labels}: calling_domain must be true or false")
                if labels.get("calling_domain") == "true":
                    calling.append(labels["domid"])
                if not labels.get("type"):
                    problems.append(f"{s.name}{labels}: no type label")
    for d in sorted(domids_seen - set(infos), key=int):
        problems.append(f"domain {d}: no xenp2m_domain_info series")
    if len(calling) > 1:
        problems.append(f"more than one calling domain: {calling}")
    return problems


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    src = sys.argv[1]
    if src.startswith("http://"):
        with urllib.request.urlopen(src, timeout=5) as r:
            text = r.read().decode()
    else:
        with open(src) as f:
            text = f.read()
    problems = check(text)
    for p in problems:
        print(p)
    print(f"metric conventions: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
