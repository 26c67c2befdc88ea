#!/usr/bin/env bash
# Where mxpipe's sender time goes: `perf record` of `mxpipe send` delivering a TLS burst
# (mandatory verified STARTTLS, the delivery benchmark's world) to `mxpipe sink`, sender on
# CPU 0, sink and DNS on CPU 1. Prints CPU samples grouped by where they fall (crypto, TLS
# library, kernel, async runtime, allocator, mxpipe's own code) and the top symbols.
#
# Usage:  bash perf/profile-send.sh          (MSGS=20000 DOMAINS=500 SIZE=2048 ADDRS=64 REPEAT=3)
# Needs `perf` (Debian: linux-perf); installs it when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${MSGS:-20000}
DOMAINS=${DOMAINS:-500}
SIZE=${SIZE:-2048}
ADDRS=${ADDRS:-64}
REPEAT=${REPEAT:-3}
P25=${P25:-3725}
P26=${P26:-3726}
OUT=${OUT:-perf/out/profile-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
command -v perf >/dev/null || { apt-get update -q && apt-get install -y -q linux-perf; }

cargo build --release --locked -q --workspace
cargo build --release --locked -q --example bench_dns
BIN=$PWD/target/release
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

"$BIN/examples/bench_dns" --domains "$DOMAINS" --write-burst "$OUT/burst.jsonl" --messages "$MSGS" --size "$SIZE"
taskset -c 1 "$BIN/examples/bench_dns" --domains "$DOMAINS" --addresses "$ADDRS" --kind starttls --max-secs 3600 >"$OUT/dns.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^dns ' "$OUT/dns.out" 2>/dev/null && break; sleep 0.1; done
DNS=$(awk '/^dns /{print $2; exit}' "$OUT/dns.out")

LISTEN=()
for i in $(seq 0 $((ADDRS - 1))); do n=$((i + 1)); LISTEN+=(--listen "127.1.$((n >> 8)).$((n & 255))"); done
taskset -c 1 "$BIN/mxpipe" sink "${LISTEN[@]}" --starttls-port "$P25" --implicit-port "$P26" --threads 1 \
  --cert-names '*.bench.test' --ca-out "$OUT/ca.pem" --duration 3600 >"$OUT/sink.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$OUT/ca.pem" ] && break; sleep 0.1; done

# Several sends under one recording, for enough samples.
cat >"$OUT/send.sh" <<EOF
for i in \$(seq $REPEAT); do
  "$BIN/mxpipe" send --input "$OUT/burst.jsonl" --json --dns "$DNS" --port-map 25=$P25,26=$P26 --shards 1 --ca "$OUT/ca.pem" >"$OUT/send-\$i.json"
done
EOF
taskset -c 0 perf record -F 4999 -o "$OUT/perf.data" -- bash "$OUT/send.sh" 2>"$OUT/perf-record.log"
perf report -i "$OUT/perf.data" --comms mxpipe,mxpipe-shard-0 --no-children --sort dso,symbol --stdio 2>/dev/null >"$OUT/report.txt"

python3 - "$OUT/report.txt" <<'PY'
import re, sys, collections
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
    if m:
        rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
def group(dso, sym):
    s = sym.lower()
    if dso.startswith("[kernel"):
        return "kernel (TCP, syscalls, scheduling)"
    if any(k in s for k in ("aws_lc", "nistz256", "curve25519", "x25519", "sha256", "sha512", "aes_", "gcm", "ecdsa",
                            "p256", "fiat_", "bn_", "bignum", "chacha", "poly1305", "ecp_", "ec_gfp", "ec_point")):
        return "crypto (aws-lc: key exchange, signatures, AEAD, hashing)"
    if "memchr" in s or "normalise" in s or "encode_data" in s:
        return "message body scanning (CRLF, dot-stuffing)"
    if "webpki" in s:
        return "certificate verification (webpki)"
    if "rustls" in s:
        return "TLS protocol (rustls)"
    if "tokio" in s or "mio" in s:
        return "async runtime (tokio)"
    if "mi_" in s or "malloc" in s or "free" in s or "memcpy" in s or "memmove" in s or "memset" in s:
        return "allocation and copying"
    if "hickory" in s:
        return "DNS (hickory)"
    if "mxpipe" in s:
        return "mxpipe (engine, session, pool)"
    if "serde" in s:
        return "JSON (input, outcomes)"
    return "other"
groups = collections.Counter()
for pct, dso, sym in rows:
    groups[group(dso, sym)] += pct
total = sum(groups.values())
print("| where | share of sender CPU samples |")
print("|---|---:|")
for g, v in groups.most_common():
    print(f"| {g} | {v / total * 100:.1f} % |")
print("\nTop symbols:\n")
print("| % | dso | symbol |")
print("|---:|---|---|")
for pct, dso, sym in rows[:15]:
    print(f"| {pct:.2f} | {dso} | `{sym[:90]}` |")
PY
for i in $(seq "$REPEAT"); do
  python3 -c "import json,sys; s=json.load(open('$OUT/send-$i.json'))['engine']; print(f\"send $i: {s['delivered']} delivered, {s['messages_per_s']:.0f} msg/s, cpu {s['cpu_s']:.2f} s, {s['connections_opened']} connections, TLS {s['tls_full_handshakes']} full / {s['tls_resumed_handshakes']} resumed\")"
done
