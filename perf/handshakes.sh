#!/usr/bin/env bash
# Side-by-side TLS handshake throughput, in one run on this machine:
#   mxpipe sink vs Postfix, same load generator, same concurrency, both ports,
#   full (--resume off) and resumed (--resume tickets) handshakes,
#   plus `openssl s_time` against both implicit-TLS ports as an independent check.
# Writes raw JSON to $OUT and a Markdown summary to $OUT/summary.md.
#
# Usage:  bash perf/handshakes.sh            (DUR=10 CONC=64 by default; ~5 minutes)
#         DUR=5 CONC=32 KX=x25519mlkem768 bash perf/handshakes.sh
# Everything runs on loopback; every load run is bounded by --duration.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
CONC=${CONC:-64}
KX=${KX:-x25519}
OUT=${OUT:-perf/out/handshakes-$(date -u +%Y%m%dT%H%M%SZ)}   # reuse an OUT with PROFILES=pinned to add a profile
SINK_ST=${SINK_ST:-3525}
SINK_IM=${SINK_IM:-3526}
mkdir -p "$OUT"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

cargo build --release --workspace --locked -q
BIN=target/release

echo "== Postfix peer"
$SUDO bash tests/peers/postfix-peer.sh start >/dev/null
PF_CA=/etc/postfix/mxpipe-peer-tls/ca.pem

start_sink() { # extra flags...
  $TASKSET_S $BIN/mxpipe sink --starttls-port "$SINK_ST" --implicit-port "$SINK_IM" --ca-out "$OUT/sink-ca.pem" \
    --duration 3600 "$@" >>"$OUT/sink.log" 2>&1 &
  SINK_PID=$!
  for _ in $(seq 50); do ss -Hltn | grep "127.0.0.1:$SINK_IM " >/dev/null && break; sleep 0.1; done
}
stop_sink() { kill -TERM "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; }
trap 'stop_sink' EXIT

lg() { # name starttls-port implicit-port ca|insecure resume concurrency
  local name=$1 st=$2 im=$3 ca=$4 resume=$5 conc=$6
  local trust=(--ca "$ca"); [ "$ca" = insecure ] && trust=(--insecure)
  echo "-- $name: resume=$resume concurrency=$conc trust=$ca"
  $TASKSET_C $BIN/mxpipe-loadgen --host 127.0.0.1 --starttls-port "$st" --implicit-port "$im" \
    --server-name localhost "${trust[@]}" --kx "$KX" --resume "$resume" \
    --concurrency "$conc" --duration "$DUR" --json >"$OUT/$name.json"
}

PROFILES=${PROFILES:-shared pinned}
if [[ " $PROFILES " == *" shared "* ]]; then
# Profile "shared": no pinning; the client verifies certificates, as a real MTA would. Client
# and server compete for the same 2 cores, so the client's cost caps the fastest server.
echo "== profile shared: mxpipe sink on 127.0.0.1:$SINK_ST (STARTTLS) and :$SINK_IM (implicit)"
TASKSET_S="" TASKSET_C=""
start_sink
for resume in off tickets; do
  lg "sink-$resume" "$SINK_ST" "$SINK_IM" "$OUT/sink-ca.pem" $resume "$CONC"
  lg "postfix-$resume" 2525 2526 "$PF_CA" $resume "$CONC"
done
# Concurrency 1, to set beside openssl s_time (which is single-threaded).
lg "sink-off-c1" "$SINK_ST" "$SINK_IM" "$OUT/sink-ca.pem" off 1
lg "postfix-off-c1" 2525 2526 "$PF_CA" off 1

echo "== openssl s_time (single connection at a time, full and reused sessions), with its CPU time"
for t in "sink $SINK_IM $OUT/sink-ca.pem" "postfix 2526 $PF_CA"; do
  set -- $t
  for mode in new reuse; do
    /usr/bin/time -f "cpu %U user %S sys" openssl s_time -connect "127.0.0.1:$2" -CAfile "$3" -$mode -time "$DUR" \
      >"$OUT/s_time-$1-$mode.txt" 2>&1 || true
  done
done
stop_sink
fi

if [[ " $PROFILES " == *" pinned "* ]]; then
# Profile "pinned": the server gets CPU 1 alone (our sink with one worker thread; every Postfix
# process), the load generator CPU 0 alone and does not verify certificates (the server's
# work is the same either way). This measures handshakes/s per server core.
echo "== profile pinned: servers on CPU 1, load generator on CPU 0, non-verifying client"
TASKSET_S="taskset -c 1" TASKSET_C="taskset -c 0"
start_sink --threads 1
PF_MASTER=$(tr -d ' ' < /var/spool/postfix/pid/master.pid)
for p in $(pgrep -s "$(ps -o sid= -p "$PF_MASTER" | tr -d ' ')") "$PF_MASTER"; do taskset -a -p 2 "$p" >/dev/null 2>&1 || true; done
for resume in off tickets; do
  lg "pinned-sink-$resume" "$SINK_ST" "$SINK_IM" insecure $resume "$CONC"
  lg "pinned-postfix-$resume" 2525 2526 insecure $resume "$CONC"
done
stop_sink
for p in $(pgrep -s "$(ps -o sid= -p "$PF_MASTER" | tr -d ' ')") "$PF_MASTER"; do taskset -a -p 3 "$p" >/dev/null 2>&1 || true; done
fi

python3 perf/summarize_handshakes.py "$OUT" "$DUR" "$CONC" "$KX" | tee "$OUT/summary.md"
