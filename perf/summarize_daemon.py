#!/usr/bin/env python3
"""Markdown summary (stdout) and results.json of one perf/daemon.sh run:
python3 perf/summarize_daemon.py OUTDIR"""
import json
import os
import sys

out = sys.argv[1]


def load(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def count(name):
    p = os.path.join(out, name)
    try:
        return int(open(p).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


P = load("params.json") or {}
MSGS = P.get("msgs", 0)
SIDES = P.get("sides", "mxpipe postfix").split()
# The DKIM sides (perf/daemon.sh: the mxpipe side again, signing every message at intake).
DKIM_SIDES = {"mxpipe-ed25519": "Ed25519", "mxpipe-rsa": f"RSA-{P.get('dkim_rsa_bits', 2048)}"}
WITH_DKIM = any(s in DKIM_SIDES for s in SIDES)
LABELS = {
    "mxpipe": "mxpipe serve, unsigned" if WITH_DKIM else "mxpipe serve (spool fsync on)",
    "postfix": f"Postfix {P.get('postfix', '')} relay (durable queue)",
}
LABELS.update({k: f"mxpipe serve, DKIM {v}" for k, v in DKIM_SIDES.items()})


def side(name):
    sink, inj, cpu = load(f"{name}-sink.json"), load(f"{name}-inject.json"), load(f"{name}-cpu.json")
    if not sink or not inj or not cpu:
        return None
    fs = load(f"{name}-fsync.json")
    itime = load(f"{name}-inject.time") or {}
    sinkcpu = (load(f"{name}-sinkcpu.json") or {}).get("sink_cpu_s")
    e2e = (sink["last_ns"] - inj["t0_ns"]) / 1e9
    inject = (inj["inject_end_ns"] - inj["t0_ns"]) / 1e9
    st = sink["starttls"]
    syncs = None if fs is None else fs["fsync"] + fs["fdatasync"]
    injector_cpu = itime.get("user_s", 0) + itime.get("sys_s", 0) if itime else None
    threads = []
    tp = os.path.join(out, f"{name}-threads.jsonl")
    if os.path.exists(tp):
        threads = sorted((json.loads(l) for l in open(tp) if l.strip()), key=lambda t: -t["cpu_s"])
    return {
        "side": name,
        "label": LABELS.get(name, name),
        "messages_injected": MSGS if inj.get("inject_rc") == 0 else None,
        "messages_at_sink": sink["messages"],
        "lost": MSGS - sink["messages"],
        "e2e_s": e2e,
        "e2e_msgs_per_s": MSGS / e2e if e2e > 0 else 0.0,
        "inject_s": inject,
        "inject_msgs_per_s": MSGS / inject if inject > 0 else 0.0,
        "cpu_s": cpu["cpu_s"],
        "cpu_us_per_msg": 1e6 * cpu["cpu_s"] / MSGS if MSGS else 0.0,
        "fsync": None if fs is None else fs["fsync"],
        "fdatasync": None if fs is None else fs["fdatasync"],
        "syncs_per_msg": None if syncs is None else syncs / MSGS,
        "syncs_elsewhere": None if fs is None else fs["fsync_other"] + fs["fdatasync_other"],
        "syncs_by_thread": None if fs is None else fs.get("by_thread"),
        "sink_connections": st["connections"],
        "tls_full": st["handshakes_full"],
        "tls_resumed": st["handshakes_resumed"],
        "sink_cpu_s": sinkcpu,
        "injector_cpu_s": injector_cpu,
        "load_cpu_busy": None if sinkcpu is None or injector_cpu is None else (sinkcpu + injector_cpu) / e2e,
        "delivered_logged": count(f"{name}-delivered.count"),
        "threads": threads,
        "dkim": load(f"{name}-dkim.json"),
        "load_at_start": (load(f"{name}-load.json") or {}).get("loadavg"),
    }


def fmt(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}"


rows = [r for r in (side(s) for s in SIDES) if r]
before, after = load("load-before.json") or {}, load("load-after.json") or {}
lines = []
w = lines.append
title = " vs ".join(r["label"] for r in rows) if WITH_DKIM else "mxpipe serve vs Postfix"
w(f"#### Daemon end to end: {title} ({MSGS:,} messages, {P.get('domains')} domains)")
w("")
INJ = P.get("injector", "smtp-source")
pinning = (f"system under test pinned to CPU {P.get('sut_cpu')}, sink, DNS and {INJ} to CPU {P.get('peer_cpu')}"
           if P.get("pin", 1) else "nothing pinned (the daemon with one shard per core)")
w(f"Machine: {P.get('cpus')} CPUs ({P.get('cpu_model')}); {pinning}; Postfix {P.get('postfix')}; the code of commit {P.get('git')}. "
  f"Load average before: {before.get('loadavg', '?')}, after: {after.get('loadavg', '?')}.")
w("")
injected = {
    "smtp-source": f"(smtp-source: {P.get('body'):,} B body + ~170 B of headers), one recipient each, injected by `smtp-source` "
                   f"({P.get('sessions')} sessions at once, one per domain, connection kept, not pipelined), ",
    "loadgen": f"one recipient each, injected by `mxpipe-loadgen --mode inject` ({P.get('sessions')} connections kept for "
               f"the whole burst, MAIL+RCPT+DATA pipelined, message i to domain i mod {P.get('domains')}), ",
    "http": f"one recipient each, posted by `mxpipe-loadgen --mode http` to the daemon's HTTP API ({P.get('sessions')} "
            f"keep-alive connections, batches of {P.get('http_batch', '?')}), ",
}.get(INJ, f"injected by {INJ}, ")
w(f"~{P.get('size'):,} B messages {injected}"
  f"delivered with STARTTLS to the sink on {P.get('addrs')} addresses 127.7.x.y. "
  f"mxpipe: `shards = {1 if P.get('pin', 1) else 'auto'}`, `max_conns_per_dest = {P.get('pf_conc')}`, kx {P.get('mx_kx')}, MX hosts `starttls-…` (verified), "
  f"delivery log {'on' if P.get('mx_delivery_log') else 'off'}. Postfix: `smtp_tls_security_level = encrypt`, session and "
  f"connection caches (connections cached {'for ' + P['pf_cache_dests'] if P.get('pf_cache_dests') else 'on demand, the default'}), TLS connection reuse, {P.get('pf_conc')} connections per next hop. "
  f"End to end: first injection to the last message counted at the sink; injection: to the last 250. "
  f"CPU: the daemon's process, or every Postfix process (master and all descendants, reaped ones included). "
  + ("fsync: `fsync`+`fdatasync` calls of that process tree (perf tracepoints, system-wide)." if P.get("fsync_trace") else "fsync: not traced (FSYNC_TRACE=0)."))
w("")
w("| system | messages | at sink | end-to-end s | end-to-end msg/s | injection s | injection msg/s | CPU s | CPU µs/msg | fsync+fdatasync | per msg | sink conns | TLS full | TLS resumed | load CPU busy |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    syncs = None if r["fsync"] is None else r["fsync"] + r["fdatasync"]
    busy = "–" if r["load_cpu_busy"] is None else f"{100 * r['load_cpu_busy']:.0f} %"
    w(f"| {r['label']} | {fmt(MSGS)} | {fmt(r['messages_at_sink'])} | {r['e2e_s']:.2f} | {fmt(r['e2e_msgs_per_s'])} | "
      f"{r['inject_s']:.2f} | {fmt(r['inject_msgs_per_s'])} | {r['cpu_s']:.2f} | {fmt(r['cpu_us_per_msg'])} | "
      f"{fmt(syncs)} | {fmt(r['syncs_per_msg'], 3)} | {fmt(r['sink_connections'])} | {fmt(r['tls_full'])} | {fmt(r['tls_resumed'])} | "
      f"{busy} |")
w("")
w(f"\"load CPU busy\": sink + {INJ} CPU seconds over the end-to-end time, on their one CPU (near 100 %: the load side, "
  "not the system under test, was the limit).")
by = {r["side"]: r for r in rows}
dkim_rows = [r for r in rows if r["side"] in DKIM_SIDES]
if dkim_rows:
    # The signing cost: each DKIM side over the unsigned side of the same run (same machine, same load).
    u = by.get("mxpipe")
    w("")
    w(f"DKIM: one `[[dkim]]` key for `{P.get('dkim_domain', 'src.bench.test')}` (the From: domain smtp-source writes), made by "
      "`mxpipe dkim keygen`; every message signed at intake on the daemon's signing threads (pinned with it). "
      "\"signed\": the daemon's `mxpipe_dkim_signed_total` (GET /metrics) at the end of the side; it must equal the messages.")
    w("")
    w("| DKIM side | signed | unsigned | failures | CPU µs/msg | signing cost: CPU µs/msg over unsigned | of it, signing threads µs/msg | end-to-end msg/s / unsigned | injection msg/s / unsigned | load average at start |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in dkim_rows:
        d = r["dkim"] or {}
        cost = None if u is None else r["cpu_us_per_msg"] - u["cpu_us_per_msg"]
        e2e = None if u is None or not u["e2e_msgs_per_s"] else r["e2e_msgs_per_s"] / u["e2e_msgs_per_s"]
        inj = None if u is None or not u["inject_msgs_per_s"] else r["inject_msgs_per_s"] / u["inject_msgs_per_s"]
        # The signing threads alone (mxpipe-dkim-N): the signature itself, without what it costs around it.
        signers = sum(t["cpu_s"] for t in r["threads"] if t["thread"].startswith("mxpipe-dkim"))
        r["signing_threads_us_per_msg"] = 1e6 * signers / MSGS if MSGS and r["threads"] else None
        r["signing_cost_us_per_msg"] = cost
        r["e2e_ratio_to_unsigned"] = e2e
        w(f"| {r['label']} | {fmt(d.get('signed'))} | {fmt(d.get('unsigned'))} | {fmt(d.get('failures'))} | {fmt(r['cpu_us_per_msg'])} | "
          f"{'–' if cost is None else f'{cost:+,.0f}'} | {fmt(r['signing_threads_us_per_msg'])} | {'–' if e2e is None else f'{e2e:.3f}×'} | "
          f"{'–' if inj is None else f'{inj:.3f}×'} | {r['load_at_start'] or '?'} |")
    if u is not None:
        w("")
        w(f"Unsigned side of the same run: {fmt(u['cpu_us_per_msg'])} CPU µs/msg, {fmt(u['e2e_msgs_per_s'])} msg/s end to end, "
          f"load average at its start {u['load_at_start'] or '?'}.")
if "mxpipe" in by and "postfix" in by:
    m, p = by["mxpipe"], by["postfix"]
    ratio = m["e2e_msgs_per_s"] / p["e2e_msgs_per_s"] if p["e2e_msgs_per_s"] else 0
    w("")
    w("| ratio | value | target | |")
    w("|---|---:|---:|---|")
    ok = ratio >= 3 and m["lost"] == 0 and p["lost"] == 0
    w(f"| mxpipe / Postfix, end-to-end messages/s | {ratio:.2f}× | ≥ 3×, nothing lost | {'met' if ok else 'NOT met'} |")
    if p["inject_msgs_per_s"]:
        w(f"| mxpipe / Postfix, injection messages/s | {m['inject_msgs_per_s'] / p['inject_msgs_per_s']:.2f}× | – | |")
    if m["cpu_us_per_msg"]:
        w(f"| Postfix / mxpipe, CPU per message | {p['cpu_us_per_msg'] / m['cpu_us_per_msg']:.2f}× | – | |")
    if m["syncs_per_msg"] and p["syncs_per_msg"]:
        w(f"| Postfix / mxpipe, fsyncs per message | {p['syncs_per_msg'] / m['syncs_per_msg']:.1f}× | – | |")
for r in rows:
    extra = []
    if r["delivered_logged"] is not None:
        extra.append(f"{r['delivered_logged']:,} deliveries logged")
    if r.get("syncs_by_thread"):
        extra.append("fsync calls by thread: " + ", ".join(f"{k} {v:,}" for k, v in sorted(r["syncs_by_thread"].items(), key=lambda kv: -kv[1])))
    if r["syncs_elsewhere"]:
        extra.append(f"{r['syncs_elsewhere']:,} fsyncs by other processes during the run (not counted)")
    if extra:
        w("")
        w(f"{r['label']}: " + "; ".join(extra) + ".")
for m in rows:
    if m["side"].startswith("mxpipe") and m["threads"]:
        w("")
        w(f"{m['label']}, CPU by thread over the run (and context switches per message): " + ", ".join(
            f"{t['thread']}{' ×' + str(t['threads']) if t['threads'] > 1 else ''} {t['cpu_s']:.2f} s"
            + (f" ({t['ctx_switches'] / MSGS:.1f})" if t.get("ctx_switches") is not None and MSGS else "")
            for t in m["threads"] if t["cpu_s"] > 0) + ".")
w("")
w("Command:")
w("")
w("```sh")
w(P.get("command", "bash perf/daemon.sh"))
w("```")
print("\n".join(lines))
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"params": P, "load_before": before, "load_after": after, "sides": rows}, f, indent=1)
