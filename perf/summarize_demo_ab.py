#!/usr/bin/env python3
"""Markdown summary of one perf/demo_ab.sh run (perf/mta_sts.sh, perf/dane.sh).

    python3 perf/summarize_demo_ab.py OUTDIR              summary.md on stdout
    python3 perf/summarize_demo_ab.py --progress KIND RUN.json   one line per run

OUTDIR holds params.json (written by demo_ab.sh: the variants, the columns, the command),
load-{before,after}.json and run-N-KEY.json, the `mxpipe demo --json` output of each run.
The first variant is the one measured (A), the second the baseline (B): ratios are A / B.
A KIND adds its own title, world description and findings (KINDS at the bottom).
"""
import json
import statistics
import sys


def row_of(r, v, d):
    """The figures of one run that the tables use."""
    b, e, t = d["bursts"], d["engine"], d["outcomes"]
    return {
        "round": r, "v": v,
        "cold": b[0]["messages_per_s"], "warm": b[1]["messages_per_s"],
        "cold_s": b[0]["seconds"], "warm_s": b[1]["seconds"],
        "fetches": e["mta_sts_fetches"], "fetch_failures": e["mta_sts_fetch_failures"],
        "dns_cold": b[0]["dns_queries"], "dns_warm": b[1]["dns_queries"],
        "dns_server": d.get("dns_server_queries", 0),
        "conns_cold": b[0]["connections_opened"], "conns_warm": b[1]["connections_opened"],
        "reused_warm": b[1]["connections_reused"],
        "full_cold": b[0]["tls_full_handshakes"], "resumed_warm": b[1]["tls_resumed_handshakes"],
        "full_warm": b[1]["tls_full_handshakes"],
        "delivered": t["delivered"], "recipients": e["recipients"],
        "policy_reports": t["policy_reports"], "by_policy": t["by_policy"],
        "dane": t["by_policy"].get("dane", 0),
        "cpu_s": e["cpu_s"],
    }


# Per-run table columns: name -> (header, cell).
COLUMNS = {
    "cold": ("cold msg/s", lambda x: f"{x['cold']:,.0f}"),
    "warm": ("warm msg/s", lambda x: f"{x['warm']:,.0f}"),
    "cold_s": ("cold s", lambda x: f"{x['cold_s']:.2f}"),
    "warm_s": ("warm s", lambda x: f"{x['warm_s']:.2f}"),
    "fetches": ("MTA-STS fetches", lambda x: f"{x['fetches']}"),
    "dns": ("DNS queries cold / warm", lambda x: f"{x['dns_cold']} / {x['dns_warm']}"),
    "dns_server": ("DNS server requests, whole run", lambda x: f"{x['dns_server']}"),
    "conns": ("conns cold / warm (reused warm)", lambda x: f"{x['conns_cold']} / {x['conns_warm']} ({x['reused_warm']})"),
    "tls": ("TLS full cold / warm, resumed warm", lambda x: f"{x['full_cold']} / {x['full_warm']}, {x['resumed_warm']}"),
    "delivered": ("delivered", lambda x: f"{x['delivered']}/{x['recipients']}"),
    "reports": ("testing reports", lambda x: f"{x['policy_reports']}"),
    "dane": ("decided by DANE", lambda x: f"{x['dane']}"),
    "cpu": ("engine CPU s", lambda x: f"{x['cpu_s']:.2f}"),
}
DEFAULT_COLUMNS = "cold,warm,cold_s,warm_s,dns,conns,tls,delivered,cpu"

# Median table columns beyond cold and warm msg/s: name -> (header, field, format).
MEDIAN_COLUMNS = {
    "fetches": ("MTA-STS fetches", "fetches", "{:.0f}"),
    "cold_s": ("cold s", "cold_s", "{:.3f}"),
    "warm_s": ("warm s", "warm_s", "{:.3f}"),
    "dns_cold": ("DNS queries cold", "dns_cold", "{:.0f}"),
    "dns_warm": ("DNS queries warm", "dns_warm", "{:.0f}"),
    "dns_server": ("DNS server requests", "dns_server", "{:.0f}"),
    "dane": ("decided by DANE", "dane", "{:.0f}"),
    "cpu": ("engine CPU s", "cpu_s", "{:.2f}"),
}


def median(xs):
    return statistics.median(xs)


def summarize(out):
    P = json.load(open(f"{out}/params.json"))
    kind = KINDS[P["kind"]]
    before = json.load(open(f"{out}/load-before.json"))["loadavg"]
    after = json.load(open(f"{out}/load-after.json"))["loadavg"]
    A, B = (v["key"] for v in P["variants"])
    name = {v["key"]: v["label"] for v in P["variants"]}
    short = {v["key"]: v["short"] for v in P["variants"]}
    runs = {A: [], B: []}
    ok = True
    for r in range(1, P["rounds"] + 1):
        for v in (A, B):
            row = row_of(r, v, json.load(open(f"{out}/run-{r}-{v}.json")))
            ok &= row["delivered"] == row["recipients"] and row["fetch_failures"] == 0
            runs[v].append(row)

    print(f"#### {kind['title']}\n")
    print(f"Machine: {P['cpus']} CPUs ({P['cpu_model']}); the code of commit {P['git']}; "
          f"{P['domains']} domains ({kind['world'](P)}), "
          f"{P['msgs']:,} messages × 2 recipients per burst, 2 bursts per run, {P['rounds']} rounds (ABBA order). "
          f"Load average {before} before, {after} after.\n")
    cols = [c for c in (P.get("columns") or DEFAULT_COLUMNS).split(",") if c]
    print("| round | variant | " + " | ".join(COLUMNS[c][0] for c in cols) + " |")
    print("|---:|---|" + "---:|" * len(cols))
    for r in range(P["rounds"]):
        for v in (A, B):
            x = runs[v][r]
            print(f"| {x['round']} | {name[v]} | " + " | ".join(COLUMNS[c][1](x) for c in cols) + " |")

    mcols = [c for c in (P.get("median_columns") or "").split(",") if c]
    fields = ["cold", "warm"] + [MEDIAN_COLUMNS[c][1] for c in mcols]
    med = {v: {k: median(x[k] for x in runs[v]) for k in fields} for v in runs}
    print("\n| median | cold burst msg/s | warm burst msg/s |" + "".join(f" {MEDIAN_COLUMNS[c][0]} |" for c in mcols))
    print("|---|---:|---:|" + "---:|" * len(mcols))
    for v in (A, B):
        cells = "".join(f" {MEDIAN_COLUMNS[c][2].format(med[v][MEDIAN_COLUMNS[c][1]])} |" for c in mcols)
        print(f"| {name[v]} | {med[v]['cold']:,.0f} | {med[v]['warm']:,.0f} |{cells}")
    rc, rw = med[A]["cold"] / med[B]["cold"], med[A]["warm"] / med[B]["warm"]
    label = P.get("ratio_label") or f"{short[A]} / {short[B]}"
    print(f"\n| ratio ({label}), medians | value | target | |")
    print("|---|---:|---:|---|")
    print(f"| cold burst | {rc:.3f}× ({(rc - 1) * 100:+.1f} %) | – | |")
    print(f"| warm burst | {rw:.3f}× ({(rw - 1) * 100:+.1f} %) | ≥ 0.9× | {'met' if rw >= 0.9 else 'NOT met'} |")
    pair = {k: sorted(runs[A][i][k] / runs[B][i][k] for i in range(P["rounds"])) for k in ("cold", "warm")}
    print(f"| cold burst, per round (paired) | median {median(pair['cold']):.3f}×, range {pair['cold'][0]:.2f}–{pair['cold'][-1]:.2f}× | – | |")
    print(f"| warm burst, per round (paired) | median {median(pair['warm']):.3f}×, range {pair['warm'][0]:.2f}–{pair['warm'][-1]:.2f}× | ≥ 0.9× | {'met' if median(pair['warm']) >= 0.9 else 'NOT met'} |")
    spread = {v: (min(x['warm'] for x in runs[v]), max(x['warm'] for x in runs[v])) for v in runs}
    print(f"\nWarm burst range: {short[A]} {spread[A][0]:,.0f}–{spread[A][1]:,.0f}, {short[B]} {spread[B][0]:,.0f}–{spread[B][1]:,.0f} msg/s. "
          f"{'Every recipient delivered, no policy fetch failed.' if ok else 'WARNING: not every recipient was delivered, or a policy fetch failed.'}")
    if "extra" in kind:
        kind["extra"](P, runs, A, B, name, short)
    print(f"\nCommand: `{P['command']}`")


# ---- mta_sts: with MTA-STS (the default) against --no-mta-sts --------------------------------

def mta_sts_world(P):
    return f"{sum(1 for i in range(P['domains']) if i % 6 in (2, 5))} publish MTA-STS"


def mta_sts_progress(d):
    b, e = d["bursts"], d["engine"]
    return (f"   cold {b[0]['messages_per_s']:,.0f} msg/s, warm {b[1]['messages_per_s']:,.0f} msg/s; "
            f"MTA-STS fetches {e['mta_sts_fetches']} (failed {e['mta_sts_fetch_failures']}); "
            f"delivered {d['outcomes']['delivered']}/{e['recipients']}")


# ---- dane: signed, validated, a third under DANE (the default) against --unsigned ------------

def dane_usage(i):
    """Mirror of src/demo.rs `dane_usage`: the TLSA usage domain i's MX host publishes, if any."""
    if (i // 3) % 3 != 0:
        return None
    return 3 if (i // 9) % 2 == 0 else 2


def dane_hosts(P):
    """(DANE MX hosts, of them DANE-EE, DANE-TA, smtps- hosts that also publish _26)."""
    hosts = [i for i in range(P["domains"]) if dane_usage(i) is not None]
    return (len(hosts), sum(1 for i in hosts if dane_usage(i) == 3), sum(1 for i in hosts if dane_usage(i) == 2),
            sum(1 for i in hosts if i % 3 == 1))


def dane_world(P):
    n, ee, ta, s26 = dane_hosts(P)
    return (f"each with its own MX host; in the signed zone {n} MX hosts publish TLSA: {ee} DANE-EE 3 1 1, "
            f"{ta} DANE-TA 2 0 1, the {s26} smtps- hosts among them on _26 as well as _25")


def dane_progress(d):
    b, e, t = d["bursts"], d["engine"], d["outcomes"]
    return (f"   cold {b[0]['messages_per_s']:,.0f} msg/s, warm {b[1]['messages_per_s']:,.0f} msg/s; "
            f"DNS queries {b[0]['dns_queries']} / {b[1]['dns_queries']} (server {d.get('dns_server_queries', 0)}); "
            f"decided by DANE {t['by_policy'].get('dane', 0)}; delivered {t['delivered']}/{e['recipients']}")


def dane_extra(P, runs, A, B, name, short):
    n_hosts = dane_hosts(P)[0]
    rounds = range(P["rounds"])
    m = {v: {k: median(x[k] for x in runs[v]) for k in ("cold_s", "warm_s", "dns_cold", "dns_warm", "dns_server")}
         for v in runs}
    warm_zero = all(x["dns_warm"] == 0 for v in runs for x in runs[v])
    warm_max = {v: max(x["dns_warm"] for x in runs[v]) for v in runs}
    print(f"\n**DNS.** Warm burst: {short[A]} at most {warm_max[A]}, {short[B]} at most {warm_max[B]} queries in any run: "
          f"{'0 for both in every run (goal: the warm burst pays no extra lookup, met).' if warm_zero else 'NOT 0 in every run (goal: no lookup on the warm burst, NOT met).'} "
          f"`dns_queries` counts the lookups the engine's resolver issues (MX, A, AAAA, TXT, TLSA); "
          f"the DNS server's count (whole run, every type) also includes the queries hickory makes to validate "
          f"(DNSKEY, and DS where a zone has a parent here), which the resolver's count does not see: our resolver "
          f"runs hickory with its cache off, so they are not cached by us either.")
    if n_hosts == 0:
        print("\nNo domain under DANE at this DOMAINS: no per-host cost to report.")
        return
    extra_q = m[A]["dns_cold"] - m[B]["dns_cold"]
    extra_srv = m[A]["dns_server"] - m[B]["dns_server"]
    extra_s = m[A]["cold_s"] - m[B]["cold_s"]
    paired_s = sorted(runs[A][i]["cold_s"] - runs[B][i]["cold_s"] for i in rounds)
    print(f"\n| cold burst, {short[A]} − {short[B]} | total | per DANE MX host ({n_hosts}) | per MX host ({P['domains']}) |")
    print("|---|---:|---:|---:|")
    print(f"| seconds, difference of the medians ({m[A]['cold_s']:.3f} − {m[B]['cold_s']:.3f} s) | {extra_s * 1e3:+.0f} ms | "
          f"{extra_s / n_hosts * 1e3:+.2f} ms | {extra_s / P['domains'] * 1e3:+.2f} ms |")
    print(f"| seconds, per round (paired), median (range) | {median(paired_s) * 1e3:+.0f} ms ({paired_s[0] * 1e3:+.0f} to {paired_s[-1] * 1e3:+.0f}) | "
          f"{median(paired_s) / n_hosts * 1e3:+.2f} ms | {median(paired_s) / P['domains'] * 1e3:+.2f} ms |")
    print(f"| resolver lookups (`dns_queries`: TLSA) | {extra_q:+.0f} | {extra_q / n_hosts:+.2f} | {extra_q / P['domains']:+.2f} |")
    print(f"| DNS server requests, all types (whole run) | {extra_srv:+.0f} | {extra_srv / n_hosts:+.2f} | {extra_srv / P['domains']:+.2f} |")
    print(f"| of those, validation queries (DNSKEY/DS: server − resolver) | {extra_srv - extra_q:+.0f} | "
          f"{(extra_srv - extra_q) / n_hosts:+.2f} | {(extra_srv - extra_q) / P['domains']:+.2f} |")
    smtps = sum(1 for i in range(P["domains"]) if i % 3 == 1)
    print(f"\nIn the signed zone every MX host is looked up for TLSA (a validated MX answer makes each host a DANE "
          f"candidate; {P['domains'] - n_hosts} of them get a validated denial), so the extra lookups are spread "
          f"over all {P['domains']} MX hosts; the per-DANE-host column divides them by the {n_hosts} that publish records. "
          f"One `_25` lookup per MX host and one `_26` per smtps- host would be {P['domains'] + smtps}; "
          f"measured {extra_q:+.0f}.")
    keys = sorted(set(k for v in runs for x in runs[v] for k in x["by_policy"]))
    print("\n| recipients by deciding policy (median of the runs) | " + " | ".join(f"`{k}`" for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for v in (A, B):
        print(f"| {name[v]} | " + " | ".join(f"{median(x['by_policy'].get(k, 0) for x in runs[v]):,.0f}" for k in keys) + " |")
    dane_ok = all(x["dane"] > 0 for x in runs[A]) and all(x["dane"] == 0 for x in runs[B])
    print(f"\n{'DANE decided for recipients in every ' + short[A] + ' run and in no ' + short[B] + ' run.' if dane_ok else 'WARNING: DANE did not decide in every ' + short[A] + ' run, or decided in a ' + short[B] + ' run.'}")


KINDS = {
    "mta_sts": {
        "title": "MTA-STS on delivery: `mxpipe demo` with and without (issue 8)",
        "world": mta_sts_world,
        "progress": mta_sts_progress,
    },
    "dane": {
        "title": "DANE on delivery: `mxpipe demo` signed, a third under DANE, against `--unsigned` (issue 10)",
        "world": dane_world,
        "progress": dane_progress,
        "extra": dane_extra,
    },
}

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--progress":
        print(KINDS[sys.argv[2]]["progress"](json.load(open(sys.argv[3]))))
    elif len(sys.argv) == 2:
        summarize(sys.argv[1])
    else:
        sys.exit(__doc__)
