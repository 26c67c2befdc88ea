#!/usr/bin/env bash
# A handshake sweep of mxpipe's sink and/or the Postfix peer with `mxpipe-loadgen sweep`:
# closed-loop steps of concurrency, full (--series off) and resumed (tickets) handshakes, both
# ports (STARTTLS and implicit TLS), stopping at the knee. Writes the table, the JSON and the
# PNG chart of each target to $OUT.
#
# Usage:  bash perf/loadgen_sweep.sh                 (STEPS=1,2,4,8,16,32,64 DUR=5 WARMUP=1)
#         STEPS=100,200,400,800 OPEN=1 CONC=256 bash perf/loadgen_sweep.sh   (open loop)
#         TARGET=postfix bash perf/loadgen_sweep.sh  (the Postfix peer only: 127.0.0.1:2525
#                                                     STARTTLS, :2526 implicit TLS)
#         TARGET=both bash perf/loadgen_sweep.sh     (the sink, then Postfix; POSTFIX=1 says
#                                                     the same)
# TARGET=postfix or both starts the peer with tests/peers/postfix-peer.sh (root or sudo; it
# installs Postfix on first use) and leaves it running. Only the binaries the targets need
# are built, in release. Everything runs on loopback; each step is bounded by --duration, the
# sweep by its steps.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1,2,4,8,16,32,64}
DUR=${DUR:-5}
WARMUP=${WARMUP:-1}
KX=${KX:-x25519}
BOUND=${BOUND:-100}          # p99 bound of the knee, ms
OUT=${OUT:-perf/out/sweep-$(date -u +%Y%m%dT%H%M%SZ)}
SINK_ST=${SINK_ST:-3525}
SINK_IM=${SINK_IM:-3526}
TARGET=${TARGET:-sink}
[ "${POSTFIX:-0}" = 1 ] && TARGET=both
case "$TARGET" in sink|postfix|both) ;; *) echo "TARGET must be sink, postfix or both, not $TARGET" >&2; exit 2;; esac
mkdir -p "$OUT"

bins=(--bin mxpipe-loadgen -p mxpipe-loadgen)
[ "$TARGET" = postfix ] || bins+=(--bin mxpipe -p mxpipe)
cargo build --release --locked -q "${bins[@]}"
BIN=target/release

open=(); [ "${OPEN:-0}" = 1 ] && open=(--open-loop -c "${CONC:-256}")

sweep() { # name starttls-port implicit-port ca
  local name=$1
  $BIN/mxpipe-loadgen sweep --host 127.0.0.1 --starttls-port "$2" --implicit-port "$3" --ca "$4" \
    --server-name localhost --kx "$KX" --steps "$STEPS" "${open[@]}" -d "$DUR" --warmup "$WARMUP" \
    --p99-bound-ms "$BOUND" --chart "$OUT/$name.png" --json >"$OUT/$name.json" 2>"$OUT/$name.log"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("# resume", r["load"], "port handshakes/s resumed errors p50_us p99_us knee"); [print(s["resume"], st["load"], p["tls"], round(p["handshakes_per_s"]), p["resumed"], p["errors"], p["p50_us"], p["p99_us"], st["knee"] or "") for s in r["series"] for st in s["steps"] for p in st["ports"]]' "$OUT/$name.json" | tee "$OUT/$name.txt"
}

if [ "$TARGET" != postfix ]; then
  echo "== mxpipe sink"
  $BIN/mxpipe sink --starttls-port "$SINK_ST" --implicit-port "$SINK_IM" --ca-out "$OUT/sink-ca.pem" --duration 3600 >"$OUT/sink.log" 2>&1 &
  SINK_PID=$!
  trap 'kill -TERM "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do ss -Hltn | grep "127.0.0.1:$SINK_IM " >/dev/null && break; sleep 0.1; done
  sweep sink "$SINK_ST" "$SINK_IM" "$OUT/sink-ca.pem"
fi

if [ "$TARGET" != sink ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "== Postfix peer"
  $SUDO bash tests/peers/postfix-peer.sh start >/dev/null
  sweep postfix 2525 2526 /etc/postfix/mxpipe-peer-tls/ca.pem
fi
echo "results in $OUT"
