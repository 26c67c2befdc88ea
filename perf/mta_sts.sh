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
# A thin wrapper of perf/demo_ab.sh: ROUNDS rounds, each one run with MTA-STS (the default) and
# one with --no-mta-sts, in ABBA order. From each run's JSON: bursts[0] and bursts[1]
# messages_per_s and engine.mta_sts_fetches; medians per variant and the ratios (with MTA-STS /
# without) of the cold and the warm burst, of the medians and per round (paired).
# Writes the raw JSON of every run (run-N-{sts,nosts}.json, stderr beside it) and summary.md to $OUT.
#
# Usage:
#   bash perf/mta_sts.sh                                  (DOMAINS=600 MSGS=20000 ROUNDS=3)
#   ROUNDS=15 bash perf/mta_sts.sh                      (tighter medians: each run takes a few seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-perf/out/mta-sts-$(date -u +%Y%m%dT%H%M%SZ)}
exec bash perf/demo_ab.sh --name mta_sts --kind mta_sts \
  --variant 'sts|with MTA-STS|with|' \
  --variant 'nosts|--no-mta-sts|without|--no-mta-sts' \
  --columns cold,warm,cold_s,warm_s,fetches,dns,conns,tls,delivered,reports,cpu \
  --median-columns fetches \
  --ratio-label 'with MTA-STS / without' \
  --command 'bash perf/mta_sts.sh'
