#!/usr/bin/env bash
# The cost of MTA-STS (RFC 8461) on delivery, side by side in one run on this machine (loopback only).
#
# `mxpipe demo` is the whole engine against an in-process world: DNS server, sink on many 127.1.x.y
# addresses, and an HTTPS policy host. A third of the domains (every plain MX domain) publish an
# MTA-STS policy (half `enforce`, half `testing`); the others publish none, so with MTA-STS on the
# engine makes one `_mta-sts` TXT lookup per destination and one policy fetch per publishing domain.
# The demo sends its burst twice: burst 1 cold (DNS, TXT lookups, policy fetches, full handshakes),
# burst 2 warm (cached DNS and policies, idle connections, resumed sessions).
#
# ROUNDS rounds, each one run with MTA-STS (the default) and one with --no-mta-sts, in ABBA order
# (odd rounds with first, even rounds without first) so a slow drift of the machine falls on both.
# Each run is a new process, bounded by `timeout $RUN_LIMIT`. From each run's JSON: bursts[0] and
# bursts[1] messages_per_s and engine.mta_sts_fetches; medians per variant and the ratios
# (with MTA-STS / without) of the cold and the warm burst, of the medians and per round (paired).
# Writes the raw JSON of every run (run-N-{sts,nosts}.json, stderr beside it) and summary.md to $OUT.
#
# Usage:
#   bash perf/mta_sts.sh                                  (DOMAINS=600 MSGS=20000 ROUNDS=3)
#   ROUNDS=15 bash perf/mta_sts.sh                      (tighter medians: each run takes a few seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
DOMAINS=${DOMAINS:-600}
MSGS=${MSGS:-20000}
ROUNDS=${ROUNDS:-3}
RUN_LIMIT=${RUN_LIMIT:-300}          # seconds, bound on each demo run
OUT=${OUT:-perf/out/mta-sts-$(date -u +%Y%m%dT%H%M%SZ)}
die() { echo "mta_sts.sh: $*" >&2; exit 1; }
(( ROUNDS >= 1 )) || die "ROUNDS must be at least 1"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cargo build --release --locked -q
BIN=$PWD/target/release/mxpipe
echo "{\"uptime\": \"$(uptime)\", \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >"$OUT/load-before.json"

run() { # round variant
  local r=$1 v=$2 args=() rc=0
  [ "$v" = nosts ] && args=(--no-mta-sts)
  echo "== round $r: $v"
  timeout "$RUN_LIMIT" "$BIN" demo --domains "$DOMAINS" --messages "$MSGS" --json "${args[@]}" \
    >"$OUT/run-$r-$v.json" 2>"$OUT/run-$r-$v.err" || rc=$?
  [ "$rc" = 0 ] || { tail -5 "$OUT/run-$r-$v.err" >&2; die "round $r ($v): mxpipe demo exited $rc$([ "$rc" = 124 ] && echo " (timed out after ${RUN_LIMIT}s)")"; }
  python3 - "$OUT/run-$r-$v.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
b, e = d["bursts"], d["engine"]
print(f"   cold {b[0]['messages_per_s']:,.0f} msg/s, warm {b[1]['messages_per_s']:,.0f} msg/s; "
      f"MTA-STS fetches {e['mta_sts_fetches']} (failed {e['mta_sts_fetch_failures']}); "
      f"delivered {d['outcomes']['delivered']}/{e['recipients']}")
PY
}
for ((r = 1; r <= ROUNDS; r++)); do
  if (( r % 2 )); then run "$r" sts; run "$r" nosts; else run "$r" nosts; run "$r" sts; fi
done
echo "{\"uptime\": \"$(uptime)\", \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >"$OUT/load-after.json"

cat >"$OUT/params.json" <<JSON
{"domains": $DOMAINS, "msgs": $MSGS, "rounds": $ROUNDS, "run_limit": $RUN_LIMIT,
 "cpus": $(nproc), "cpu_model": "$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)",
 "git": "$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo +dirty)",
 "command": "DOMAINS=$DOMAINS MSGS=$MSGS ROUNDS=$ROUNDS bash perf/mta_sts.sh"}
JSON

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
out = sys.argv[1]
P = json.load(open(f"{out}/params.json"))
before = json.load(open(f"{out}/load-before.json"))["loadavg"]
after = json.load(open(f"{out}/load-after.json"))["loadavg"]
runs = {"sts": [], "nosts": []}
ok = True
for r in range(1, P["rounds"] + 1):
    for v in ("sts", "nosts"):
        d = json.load(open(f"{out}/run-{r}-{v}.json"))
        b, e, t = d["bursts"], d["engine"], d["outcomes"]
        row = {
            "round": r, "v": v,
            "cold": b[0]["messages_per_s"], "warm": b[1]["messages_per_s"],
            "cold_s": b[0]["seconds"], "warm_s": b[1]["seconds"],
            "fetches": e["mta_sts_fetches"], "fetch_failures": e["mta_sts_fetch_failures"],
            "dns_cold": b[0]["dns_queries"], "dns_warm": b[1]["dns_queries"],
            "conns_cold": b[0]["connections_opened"], "conns_warm": b[1]["connections_opened"],
            "reused_warm": b[1]["connections_reused"],
            "full_cold": b[0]["tls_full_handshakes"], "resumed_warm": b[1]["tls_resumed_handshakes"],
            "full_warm": b[1]["tls_full_handshakes"],
            "delivered": t["delivered"], "recipients": e["recipients"],
            "policy_reports": t["policy_reports"], "by_policy": t["by_policy"],
            "cpu_s": e["cpu_s"],
        }
        ok &= row["delivered"] == row["recipients"] and row["fetch_failures"] == 0
        runs[v].append(row)
name = {"sts": "with MTA-STS", "nosts": "--no-mta-sts"}
print(f"#### MTA-STS on delivery: `mxpipe demo` with and without (issue 8)\n")
print(f"Machine: {P['cpus']} CPUs ({P['cpu_model']}); the code of commit {P['git']}; "
      f"{P['domains']} domains ({sum(1 for i in range(P['domains']) if i % 6 in (2, 5))} publish MTA-STS), "
      f"{P['msgs']:,} messages × 2 recipients per burst, 2 bursts per run, {P['rounds']} rounds (ABBA order). "
      f"Load average {before} before, {after} after.\n")
print("| round | variant | cold msg/s | warm msg/s | cold s | warm s | MTA-STS fetches | DNS queries cold / warm | conns cold / warm (reused warm) | TLS full cold / warm, resumed warm | delivered | testing reports | engine CPU s |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in range(P["rounds"]):
    for v in ("sts", "nosts"):
        x = runs[v][r]
        print(f"| {x['round']} | {name[v]} | {x['cold']:,.0f} | {x['warm']:,.0f} | {x['cold_s']:.2f} | {x['warm_s']:.2f} | {x['fetches']} | "
              f"{x['dns_cold']} / {x['dns_warm']} | {x['conns_cold']} / {x['conns_warm']} ({x['reused_warm']}) | "
              f"{x['full_cold']} / {x['full_warm']}, {x['resumed_warm']} | {x['delivered']}/{x['recipients']} | {x['policy_reports']} | {x['cpu_s']:.2f} |")
med = {v: {k: statistics.median(x[k] for x in runs[v]) for k in ("cold", "warm", "fetches")} for v in runs}
print("\n| median | cold burst msg/s | warm burst msg/s | MTA-STS fetches |")
print("|---|---:|---:|---:|")
for v in ("sts", "nosts"):
    print(f"| {name[v]} | {med[v]['cold']:,.0f} | {med[v]['warm']:,.0f} | {med[v]['fetches']:.0f} |")
rc, rw = med["sts"]["cold"] / med["nosts"]["cold"], med["sts"]["warm"] / med["nosts"]["warm"]
print("\n| ratio (with MTA-STS / without), medians | value | target | |")
print("|---|---:|---:|---|")
print(f"| cold burst | {rc:.3f}× ({(rc - 1) * 100:+.1f} %) | – | |")
print(f"| warm burst | {rw:.3f}× ({(rw - 1) * 100:+.1f} %) | ≥ 0.9× | {'met' if rw >= 0.9 else 'NOT met'} |")
pair = {k: sorted(runs["sts"][i][k] / runs["nosts"][i][k] for i in range(P["rounds"])) for k in ("cold", "warm")}
print(f"| cold burst, per round (paired) | median {statistics.median(pair['cold']):.3f}×, range {pair['cold'][0]:.2f}–{pair['cold'][-1]:.2f}× | – | |")
print(f"| warm burst, per round (paired) | median {statistics.median(pair['warm']):.3f}×, range {pair['warm'][0]:.2f}–{pair['warm'][-1]:.2f}× | ≥ 0.9× | {'met' if statistics.median(pair['warm']) >= 0.9 else 'NOT met'} |")
spread = {v: (min(x['warm'] for x in runs[v]), max(x['warm'] for x in runs[v])) for v in runs}
print(f"\nWarm burst range: with {spread['sts'][0]:,.0f}–{spread['sts'][1]:,.0f}, without {spread['nosts'][0]:,.0f}–{spread['nosts'][1]:,.0f} msg/s. "
      f"{'Every recipient delivered, no policy fetch failed.' if ok else 'WARNING: not every recipient was delivered, or a policy fetch failed.'}")
print(f"\nCommand: `{P['command']}`")
PY
