#!/usr/bin/env bash
# Side-by-side TLS handshake throughput, in one run on this machine:
#   mxpipe sink vs Postfix, same load generator, same concurrency, both ports,
#   full (--resume off) and resumed (--resume tickets) handshakes,
#   plus `openssl s_time` against both implicit-TLS ports as an independent check.
# Writes raw JSON to $OUT and a Markdown summary to $OUT/summary.md.
#
# Usage:  bash perf/handshakes.sh            (DUR=10 CONC=64 by default; ~3 minutes)
#         DUR=5 CONC=32 bash perf/handshakes.sh
# Everything runs on loopback; every load run is bounded by --duration.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
CONC=${CONC:-64}
KX=${KX:-x25519}
OUT=${OUT:-perf/out/handshakes-$(date -u +%Y%m%dT%H%M%SZ)}
SINK_ST=${SINK_ST:-3525}
SINK_IM=${SINK_IM:-3526}
mkdir -p "$OUT"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

cargo build --release --workspace --locked -q
BIN=target/release

echo "== Postfix peer"
$SUDO bash tests/peers/postfix-peer.sh start >/dev/null
PF_CA=/etc/postfix/mxpipe-peer-tls/ca.pem

echo "== mxpipe sink on 127.0.0.1:$SINK_ST (STARTTLS) and :$SINK_IM (implicit)"
$BIN/mxpipe sink --starttls-port "$SINK_ST" --implicit-port "$SINK_IM" --ca-out "$OUT/sink-ca.pem" \
  --duration 3600 --stats-json "$OUT/sink-stats.json" >"$OUT/sink.log" 2>&1 &
SINK_PID=$!
trap 'kill $SINK_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$OUT/sink-ca.pem" ] && break; sleep 0.1; done

lg() { # name starttls-port implicit-port ca resume concurrency
  local name=$1 st=$2 im=$3 ca=$4 resume=$5 conc=$6
  echo "-- $name: resume=$resume concurrency=$conc"
  $BIN/mxpipe-loadgen --host 127.0.0.1 --starttls-port "$st" --implicit-port "$im" \
    --server-name localhost --ca "$ca" --kx "$KX" --resume "$resume" \
    --concurrency "$conc" --duration "$DUR" --json >"$OUT/$name.json"
}

for resume in off tickets; do
  lg "sink-$resume" "$SINK_ST" "$SINK_IM" "$OUT/sink-ca.pem" $resume "$CONC"
  lg "postfix-$resume" 2525 2526 "$PF_CA" $resume "$CONC"
done
# Concurrency 1, to set beside openssl s_time (which is single-threaded).
lg "sink-off-c1" "$SINK_ST" "$SINK_IM" "$OUT/sink-ca.pem" off 1
lg "postfix-off-c1" 2525 2526 "$PF_CA" off 1

echo "== openssl s_time (single connection at a time, full and reused sessions)"
for t in "sink $SINK_IM $OUT/sink-ca.pem" "postfix 2526 $PF_CA"; do
  set -- $t
  for mode in new reuse; do
    openssl s_time -connect "127.0.0.1:$2" -CAfile "$3" -$mode -time "$DUR" >"$OUT/s_time-$1-$mode.txt" 2>&1 || true
  done
done

kill -TERM $SINK_PID; wait $SINK_PID 2>/dev/null || true
python3 perf/summarize_handshakes.py "$OUT" "$DUR" "$CONC" "$KX" | tee "$OUT/summary.md"
