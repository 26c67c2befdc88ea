#!/usr/bin/env python3
"""Turn the JSON and s_time output of perf/handshakes.sh into a Markdown summary."""
import json
import re
import sys
from pathlib import Path

out, dur, conc, kx = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


def load(name):
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() and p.stat().st_size else None


def port(rep, tls):
    if not rep:
        return None
    for p in rep["ports"]:
        if p["tls"] == tls:
            return p
    return None


def fmt(x, nd=0):
    return "—" if x is None else f"{x:,.{nd}f}"


def table(prefix, title):
    print(f"### {title}: concurrency {conc}, {dur} s per cell, kx {kx}\n")
    print("| server | port | resume | handshakes/s | full | resumed | errors | p50 µs | p99 µs | p99.9 µs | client CPU s | client CPU µs/handshake | TLS |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for server in ("sink", "postfix"):
        for resume in ("off", "tickets"):
            rep = load(f"{prefix}{server}-{resume}")
            for tls in ("starttls", "implicit"):
                p = port(rep, tls)
                if not p:
                    continue
                lat = p["latency_us"]
                per = p["client_cpu_s"] / p["handshakes"] * 1e6 if p["handshakes"] else None
                print(f"| {server} | {tls} | {resume} | {fmt(p['handshakes_per_s'])} | {p['full']} | {p['resumed']} | {p['errors']} | "
                      f"{fmt(lat.get('p50'))} | {fmt(lat.get('p99'))} | {fmt(lat.get('p999'))} | {fmt(p.get('client_cpu_s'), 1)} | {fmt(per)} | "
                      f"{p.get('tls_version') or '—'} {p.get('kx') or ''} |")

    def rate(server, resume, tls):
        p = port(load(f"{prefix}{server}-{resume}"), tls)
        return p["handshakes_per_s"] if p else None

    print(f"\n#### Ratios ({title})\n")
    print("| | starttls | implicit |")
    print("|---|---:|---:|")
    for label, a, b in (
        ("sink / Postfix, full", ("sink", "off"), ("postfix", "off")),
        ("sink / Postfix, resumed", ("sink", "tickets"), ("postfix", "tickets")),
        ("sink resumed / sink full", ("sink", "tickets"), ("sink", "off")),
        ("Postfix resumed / Postfix full", ("postfix", "tickets"), ("postfix", "off")),
    ):
        cells = []
        for tls in ("starttls", "implicit"):
            x, y = rate(*a, tls), rate(*b, tls)
            cells.append(f"{x / y:.2f}×" if x and y else "—")
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    print()


table("", "Shared cores, verifying client")
table("pinned-", "Pinned: server on CPU 1, client on CPU 0, non-verifying client")


def s_time(server, mode):
    p = out / f"s_time-{server}-{mode}.txt"
    if not p.exists():
        return None, None
    text = p.read_text()
    m = re.findall(r"(\d+) connections in (\d+) real seconds", text)
    c = re.findall(r"cpu ([0-9.]+) user ([0-9.]+) sys", text)
    if not m:
        return None, None
    n = int(m[-1][0])
    rate = n / int(m[-1][1])
    cpu = (float(c[-1][0]) + float(c[-1][1])) / n * 1e6 if c and n else None
    return rate, cpu


print("\n### Cross-check against `openssl s_time` (implicit-TLS port, one connection at a time)\n")
print("| server | s_time -new conn/s | s_time client CPU µs/conn | loadgen full, concurrency 1 (hs/s) | loadgen client CPU µs/hs | loadgen / s_time | s_time -reuse conn/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for server in ("sink", "postfix"):
    (st_new, st_cpu), (st_reuse, _) = s_time(server, "new"), s_time(server, "reuse")
    p = port(load(f"{server}-off-c1"), "implicit")
    lg = p["handshakes_per_s"] if p else None
    lg_cpu = p["client_cpu_s"] / p["handshakes"] * 1e6 if p and p["handshakes"] else None
    ratio = f"{lg / st_new:.2f}" if lg and st_new else "—"
    print(f"| {server} | {fmt(st_new)} | {fmt(st_cpu)} | {fmt(lg)} | {fmt(lg_cpu)} | {ratio} | {fmt(st_reuse)} |")
