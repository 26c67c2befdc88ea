#!/usr/bin/env python3
"""Markdown summary of one perf/delivery.sh run: python3 perf/summarize_delivery.py OUTDIR"""
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


def text(name):
    p = os.path.join(out, name)
    return open(p).read().strip() if os.path.exists(p) else None


P = load("params.json") or {}
MSGS = P.get("msgs", 0)


def fmt(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}"


def pct(a, b):
    return f"{100.0 * a / b:.1f} %" if b else "–"


def tls_row(label, kind, name):
    """kind: 'mx' (mxpipe send summary + /usr/bin/time) or 'pf' (postfix-sender.sh deliver)."""
    sink = load(f"{name}-sink.json")
    sinkcpu = (load(f"{name}-sinkcpu.json") or {}).get("sink_cpu_s")
    if kind == "mx":
        s = load(f"{name}.json")
        t = load(f"{name}.time")
        if not s or not t:
            return None
        e = s["engine"]
        msgs, secs = e["delivered"], e["elapsed_s"]
        cpu = t["user_s"] + t["sys_s"]
    else:
        s = load(f"{name}.json")
        if not s:
            return None
        msgs, secs, cpu = s["messages"], s["elapsed_s"], s["cpu_s"]
    st = sink["starttls"] if sink else {}
    full, res = st.get("handshakes_full", 0), st.get("handshakes_resumed", 0)
    return {
        "label": label, "msgs": msgs, "secs": secs, "rate": msgs / secs if secs else 0.0, "cpu": cpu,
        "us_per_msg": 1e6 * cpu / msgs if msgs else 0.0, "conns": st.get("connections"),
        "full": full, "resumed": res, "resumed_pct": pct(res, full + res),
        "sink_msgs": sink["messages"] if sink else None, "sink_cpu": sinkcpu,
        "sink_busy": pct(sinkcpu, secs) if sinkcpu is not None and secs else "–",
    }


def plain_row(label, name, src=False):
    t = load(f"{name}.time")
    sinkcpu = (load(f"{name}-sinkcpu.json") or {}).get("sink_cpu_s")
    if not t:
        return None
    cpu = t["user_s"] + t["sys_s"]
    if src:
        msgs, conns = MSGS, P.get("src_sessions")
        secs = (load(f"{name}.json") or {}).get("elapsed_s", t["wall_s"])
    else:
        e = load(f"{name}.json")["engine"]
        msgs, secs, conns = e["delivered"], e["elapsed_s"], e["connections_opened"]
    return {
        "label": label, "msgs": msgs, "secs": secs, "rate": msgs / secs if secs else 0.0, "cpu": cpu,
        "us_per_msg": 1e6 * cpu / msgs if msgs else 0.0, "conns": conns, "sink_cpu": sinkcpu,
        "sink_busy": pct(sinkcpu, secs) if sinkcpu is not None and secs else "–",
    }


def ratio(a, b):
    return a / b if a and b else None


tls = [r for r in [
    tls_row("mxpipe send (run 1)", "mx", "mx-tls"),
    tls_row("mxpipe send (run 2: repeat, new process)", "mx", "mx-tls-2"),
    tls_row("Postfix 3 smtp client (relay)" if not P.get("postfix") else f"Postfix {P['postfix']} smtp client (relay)", "pf", "pf-tls"),
] if r]
tls1k = tls_row(f"mxpipe send, {P.get('plain_size', 1024)} B", "mx", "mx-tls-1k")
plain = [r for r in [
    plain_row(f"smtp-source -d -s {P.get('src_sessions', 50)} (1 domain)", "smtp-source", src=True),
    plain_row(f"mxpipe send ({P.get('domains')} domains)", "mx-plain"),
    plain_row(f"mxpipe send (1 domain, --max-conns {P.get('src_sessions', 50)})", "mx-plain-1dom"),
] if r]

print(f"### Delivery: mxpipe vs Postfix as the sender ({fmt(MSGS)} messages, {fmt(P.get('domains'))} domains)\n")
print(f"Machine: {P.get('cpus')} CPUs ({P.get('cpu_model')}); sender pinned to CPU {P.get('snd_cpu')}, "
      f"receiver and DNS to CPU {P.get('peer_cpu')}; Postfix {P.get('postfix')}; commit {P.get('git')}.\n")
print(f"**TLS** — ~{fmt(P.get('size'))} B messages, one recipient each, to `mxpipe sink --threads 1` on "
      f"{fmt(P.get('addrs'))} addresses, STARTTLS on port {P.get('p25')}. mxpipe: MX hosts `starttls-…` "
      f"(mandatory STARTTLS, certificate verified), `--shards 1`. Postfix: burst queued and held first, timed from "
      f"`postqueue -f` to an empty queue; `smtp_tls_security_level = encrypt` (IP-literal next hops: no name check), "
      f"TLS session cache, connection cache, `smtp_tls_connection_reuse = yes`, {P.get('pf_conc', 8)} connections per next hop"
      f"{'; mxpipe flags: `' + P['mx_args'] + '`' if P.get('mx_args') else ''}. "
      f"Connections and handshakes are the sink's counters.\n")
print("| sender | messages | seconds | messages/s | sender CPU s | CPU µs/message | connections | TLS full | TLS resumed | resumed | sink CPU s (busy) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in tls + ([tls1k] if tls1k else []):
    print(f"| {r['label']} | {fmt(r['msgs'])} | {r['secs']:.2f} | {fmt(r['rate'])} | {r['cpu']:.2f} | {fmt(r['us_per_msg'])} | "
          f"{fmt(r['conns'])} | {fmt(r['full'])} | {fmt(r['resumed'])} | {r['resumed_pct']} | {fmt(r['sink_cpu'], 2)} ({r['sink_busy']}) |")

for name, label in (("mx-tls", "run 1"), ("mx-tls-2", "run 2"), ("mx-tls-1k", f"{P.get('plain_size')} B")):
    j = load(f"{name}.json")
    if j:
        e = j["engine"]
        print(f"\nmxpipe's own counters, {label}: {e['connections_opened']} connections opened, {e['connections_reused']} reuses from the pool, "
              f"{e['transactions_per_connection']:.1f} messages per connection, TLS {e['tls_full_handshakes']} full / "
              f"{e['tls_resumed_handshakes']} resumed, engine CPU {e['cpu_s']:.2f} s, DNS {e['dns_lookups']} lookups / {e['dns_cache_hits']} cache hits.", end="")
print()
print(f"\n**Plaintext ceiling** — {fmt(MSGS)} messages of ~{fmt(P.get('plain_size'))} B into Postfix's `smtp-sink` "
      f"(127.0.0.1:2727, no TLS; single process on CPU {P.get('peer_cpu')}). smtp-source's seconds are its wall "
      f"time (process start to exit); mxpipe's are the engine's (from engine start, which includes reading the input). CPU: user+sys of the whole sender process (/usr/bin/time, 10 ms resolution).\n")
print("| sender | messages | seconds | messages/s | sender CPU s | CPU µs/message | connections | smtp-sink CPU s (busy) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in plain:
    print(f"| {r['label']} | {fmt(r['msgs'])} | {r['secs']:.2f} | {fmt(r['rate'])} | {r['cpu']:.2f} | {fmt(r['us_per_msg'])} | "
          f"{fmt(r['conns'])} | {fmt(r['sink_cpu'], 2)} ({r['sink_busy']}) |")

by = {r["label"]: r for r in tls + plain}
mx1 = tls[0] if tls and tls[0]["label"].startswith("mxpipe") else None
pf = next((r for r in tls if r["label"].startswith("Postfix")), None)
src = plain[0] if plain and plain[0]["label"].startswith("smtp-source") else None
mxp = next((r for r in plain if r["label"].startswith("mxpipe send (") and "1 domain" not in r["label"]), None)
mxp1 = next((r for r in plain if "1 domain, --max-conns" in r["label"]), None)


def line(name, a, b, target):
    r = ratio(a, b)
    if target is None:
        print(f"| {name} | {'–' if r is None else f'{r:.2f}×'} | – | |")
        return
    ok = "–" if r is None else ("met" if r >= target else "NOT met")
    print(f"| {name} | {'–' if r is None else f'{r:.2f}×'} | ≥ {target:g}× | {ok} |")


print("\n| ratio | value | target | |")
print("|---|---:|---:|---|")
line("mxpipe / Postfix, messages/s (TLS)", mx1 and mx1["rate"], pf and pf["rate"], 5)
line("Postfix / mxpipe, CPU per message (TLS)", pf and pf["us_per_msg"], mx1 and mx1["us_per_msg"], None)
line(f"mxpipe / smtp-source, messages/s (plaintext, {P.get('domains')} domains)", mxp and mxp["rate"], src and src["rate"], 1)
line("mxpipe / smtp-source, messages/s (plaintext, 1 domain)", mxp1 and mxp1["rate"], src and src["rate"], 1)
line(f"mxpipe TLS / mxpipe plaintext, messages/s ({P.get('plain_size')} B, {P.get('domains')} domains)",
     tls1k and tls1k["rate"], mxp and mxp["rate"], 0.8)

pfsent, pfreuse = text("pf-sent.count"), text("pf-conn-use.count")
if pfsent is not None:
    print(f"\nPostfix log: {pfsent} `status=sent` lines, {pfreuse} of them with `conn_use=` (delivered over a reused connection).")
print("\nCommand:\n")
print("```sh")
print(P.get("command", "bash perf/delivery.sh"))
print("```")
cmds = [(n, text(f"{n}.cmd")) for n in ("mx-tls", "mx-plain", "mx-plain-1dom", "smtp-source")]
print("\nSender commands (from the run; `$OUT` is the output directory):\n")
print("```sh")
for n, c in cmds:
    if c:
        print(c)
print("```")
