#!/usr/bin/env bash
# The cost of DANE (RFC 7672) on delivery, side by side in one run on this machine (loopback only).
#
# Variant "dane" is the default `mxpipe demo`: the in-process DNS server serves a DNSSEC-signed
# zone, the engine's resolver validates it, and a third of the domains publish TLSA records for
# their MX hosts (src/demo.rs `dane_usage`: half DANE-EE 3 1 1 of the sink's certificate, half
# DANE-TA 2 0 1 of its CA; smtps- hosts on _26 too), so their certificates are checked against
# TLSA instead of WebPKI. Variant "unsigned" is `mxpipe demo --unsigned`: the same world unsigned,
# no validation, no TLSA (the baseline). Both keep MTA-STS on (the demo's default).
# Burst 1 is cold (DNS with validation, TLSA lookups, full handshakes), burst 2 warm (everything
# cached by TTL, idle connections reused).
#
# A thin wrapper of perf/demo_ab.sh: ROUNDS rounds in ABBA order, medians, ratios (dane /
# unsigned) of the cold and the warm burst (of the medians and paired per round), DNS queries
# cold and warm (warm must be 0 for both), the cold cost per new DANE MX host and the extra DNS
# queries per DANE host, recipients by deciding policy. Raw JSON of every run
# (run-N-{dane,unsigned}.json, stderr beside it) and summary.md in $OUT.
#
# Usage:
#   bash perf/dane.sh                                     (DOMAINS=600 MSGS=20000 ROUNDS=3)
#   ROUNDS=5 bash perf/dane.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-perf/out/dane-$(date -u +%Y%m%dT%H%M%SZ)}
exec bash perf/demo_ab.sh --name dane --kind dane \
  --variant 'dane|dane (signed, a third under DANE)|dane|' \
  --variant 'unsigned|--unsigned|unsigned|--unsigned' \
  --columns cold,warm,cold_s,warm_s,dns,dns_server,conns,tls,delivered,dane,cpu \
  --median-columns cold_s,warm_s,dns_cold,dns_warm,dns_server,cpu \
  --ratio-label 'dane / unsigned' \
  --command 'bash perf/dane.sh'
