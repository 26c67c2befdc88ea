#!/usr/bin/env python3
"""Turn the output of perf/sink_capacity.sh into a Markdown summary."""
import json
import statistics
import sys
from pathlib import Path

out, dur, conc, kx = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

# Public-key work per handshake, aws-lc-rs on one core of this machine's kind
# (../shared/docs/field-notes.md): X25519 key generation + agreement 40 µs, ECDSA P-256
# sign 19 µs, verify 60 µs. The sink's certificate is ECDSA P-256 (rcgen's default).
X25519, SIGN, VERIFY = 40.0, 19.0, 60.0
SERVER_PK = {"off": X25519 + SIGN, "tickets": X25519}
CLIENT_PK = {  # per handshake, chain verification left out (once per run with verify-once)
    "insecure": {"off": X25519, "tickets": X25519},
    "verify-once": {"off": X25519 + VERIFY, "tickets": X25519},
}
FIELD_NOTES_BOTH_SIDES = 7200  # full handshakes/s, both sides on 2 cores, verifying client

machine = {}
for line in (out / "machine.txt").read_text().splitlines():
    k, _, v = line.partition(" ")
    machine[k] = v

cells = {}
for line in (out / "sink-cpu.txt").read_text().splitlines():
    name, before, after, t0, t1 = line.split()
    base, _, rep = name.rpartition("-r")
    mode, resume, port = base.rsplit("-", 2)
    p = json.loads((out / f"{name}.json").read_text())["ports"][0]
    hs = p["handshakes"]
    sink = float(after) - float(before)
    cells.setdefault((mode, resume, port), []).append({
        "rate": p["handshakes_per_s"],
        "full": p["full"],
        "resumed": p["resumed"],
        "errors": p["errors"],
        "p99": p["latency_us"].get("p99"),
        "client_us": p["client_cpu_s"] / hs * 1e6 if hs else None,
        "client_busy": p["client_cpu_s"] / p["duration_s"] if p["duration_s"] else None,
        "sink_us": sink / hs * 1e6 if hs else None,
        "sink_busy": sink / p["duration_s"] if p["duration_s"] else None,
    })


def med(rows, key):
    xs = [r[key] for r in rows if r[key] is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0, pct=False):
    if x is None:
        return "—"
    return f"{x * 100:.0f} %" if pct else f"{x:,.{nd}f}"


print(f"### The sink's handshake capacity, pinned: concurrency {conc}, {dur} s per cell, kx {kx}\n")
print(f"Machine: {machine.get('cpu', '?')}; the code of commit {machine.get('commit', '?')}; "
      f"`mxpipe sink --threads 1` alone on one CPU, `mxpipe-loadgen` alone on the other; "
      f"load average before {machine.get('load_before', '?')}, after {machine.get('load_after', '?')}. "
      f"Each cell: one port, the median of {max(len(v) for v in cells.values())} runs "
      f"(handshakes/s of each run in brackets).\n")
print("| client | resume | port | handshakes/s (runs) | errors | p99 µs | client CPU µs/hs | client core busy | "
      "sink CPU µs/hs | sink core busy | sink capacity, projected (1 s / sink CPU per hs) | "
      "server public-key limit per core | sink CPU / its public-key work |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
proj = {}
for (mode, resume, port), rows in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] != "off", kv[0][2] != "starttls")):
    rate = med(rows, "rate")
    sink_us = med(rows, "sink_us")
    cap = 1e6 / sink_us if sink_us else None
    proj[(mode, resume, port)] = (rate, cap, med(rows, "client_us"), sink_us)
    runs = ", ".join(f"{r['rate']:,.0f}" for r in rows)
    pk = SERVER_PK[resume]
    over_pk = f"{sink_us / pk:.1f}×" if sink_us else "—"
    print(f"| {mode} | {resume} | {port} | {fmt(rate)} ({runs}) | {sum(r['errors'] for r in rows)} | {fmt(med(rows, 'p99'))} | "
          f"{fmt(med(rows, 'client_us'))} | {fmt(med(rows, 'client_busy'), pct=True)} | {fmt(sink_us)} | "
          f"{fmt(med(rows, 'sink_busy'), pct=True)} | {fmt(cap)} | {fmt(1e6 / pk)} | "
          f"{over_pk} |")

print("\n#### Against the public-key limit\n")
print("| client | resume | port | measured hs/s, both sides on 2 cores | both sides' public-key limit on 2 cores | measured / limit |")
print("|---|---|---|---:|---:|---:|")
for (mode, resume, port), (rate, cap, cus, sus) in proj.items():
    if mode not in CLIENT_PK:
        continue
    limit = 2e6 / (CLIENT_PK[mode][resume] + SERVER_PK[resume])
    print(f"| {mode} | {resume} | {port} | {fmt(rate)} | {fmt(limit)} | {rate / limit * 100:.0f} % |")
print(f"\nThe field notes' figure for a *verifying* client, both sides on 2 cores, is ≈ {FIELD_NOTES_BOTH_SIDES:,} full "
      "handshakes/s (public-key maths alone); the limits above use the same per-operation costs "
      f"(X25519 {X25519:.0f} µs, P-256 sign {SIGN:.0f} µs, verify {VERIFY:.0f} µs) without the chain checks that "
      "--insecure and --verify-once leave out.")
