#!/usr/bin/env bash
# The sink's own TLS handshake capacity, as well as a 2-core machine allows (issue 13):
#   - the sink alone on CPU 1 (`mxpipe sink --threads 1`), the load generator alone on CPU 0;
#   - the cheapest client modes: --insecure (no chain check and no handshake-signature check)
#     and --verify-once (each chain verified once, every handshake's signature still checked);
#   - full (--resume off) and resumed (--resume tickets) handshakes, each port on its own;
#   - REPEAT runs of every cell, interleaved, and the sink's CPU time (utime+stime from
#     /proc/PID/stat) read before and after each cell, so each cell gives the sink's CPU per
#     handshake and how busy its core was.
# When the client's core is saturated and the sink's is not, handshakes/s is the client's limit;
# the sink's capacity is then estimated as 1 s / (sink CPU per handshake), a projection the
# summary marks as such, next to the public-key limit of the field notes.
# Writes raw JSON to $OUT and a Markdown summary to $OUT/summary.md.
#
# Usage:  bash perf/sink_capacity.sh                  (DUR=8 CONC=64 REPEAT=3; about 4 minutes)
#         DUR=3 REPEAT=1 MODES=insecure bash perf/sink_capacity.sh   (smoke test)
#         SINK_BIN=/tmp/mxpipe-before bash perf/sink_capacity.sh   (another build of the sink, for before/after)
# Loopback only; every load run is bounded by --duration.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-8}
CONC=${CONC:-64}
REPEAT=${REPEAT:-3}
KX=${KX:-x25519}
MODES=${MODES:-insecure verify-once}
SINK_CPU=${SINK_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
ST=${ST:-3725}
IM=${IM:-3726}
OUT=${OUT:-perf/out/sink-capacity-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ "$(nproc)" -ge 2 ] || { echo "sink_capacity.sh: needs 2 CPUs (sink and client pinned apart)" >&2; exit 2; }

cargo build --release --workspace --locked -q
BIN=$PWD/target/release
SINK_BIN=${SINK_BIN:-$BIN/mxpipe}   # the sink under test (e.g. a saved build, for before/after)

taskset -c "$SINK_CPU" "$SINK_BIN" sink --starttls-port "$ST" --implicit-port "$IM" --threads 1 \
  --ca-out "$OUT/sink-ca.pem" --duration 3600 --stats-json "$OUT/sink-stats.json" >"$OUT/sink.log" 2>&1 &
SINK_PID=$!
trap 'kill -TERM "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -Hltn | grep -q "127.0.0.1:$IM " && break; sleep 0.1; done
ss -Hltn | grep -q "127.0.0.1:$IM " || { echo "sink_capacity.sh: the sink did not start" >&2; cat "$OUT/sink.log" >&2; exit 1; }

sink_cpu() { # utime+stime of the sink, seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$SINK_PID/stat"
}

{
  echo "date $(date -u +%FT%TZ)"
  echo "cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "commit $(git rev-parse --short HEAD)$([ "$SINK_BIN" = "$BIN/mxpipe" ] || echo ", sink binary $SINK_BIN")"
  echo "load_before $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"

for r in $(seq "$REPEAT"); do
  for mode in $MODES; do
    case $mode in
      insecure) trust=(--insecure) ;;
      verify-once) trust=(--ca "$OUT/sink-ca.pem" --verify-once) ;;
      verify) trust=(--ca "$OUT/sink-ca.pem") ;;
      *) echo "sink_capacity.sh: unknown mode $mode (insecure, verify-once, verify)" >&2; exit 2 ;;
    esac
    for resume in off tickets; do
      for port in starttls implicit; do
        ports=(--starttls-port "$ST"); [ "$port" = implicit ] && ports=(--implicit-port "$IM")
        name="$mode-$resume-$port-r$r"
        before=$(sink_cpu)
        t0=$(date +%s.%N)
        taskset -c "$CLIENT_CPU" "$BIN/mxpipe-loadgen" --host 127.0.0.1 "${ports[@]}" --server-name localhost \
          "${trust[@]}" --kx "$KX" --resume "$resume" --concurrency "$CONC" --duration "$DUR" --json \
          >"$OUT/$name.json" 2>"$OUT/$name.err" || echo "  ($name: loadgen exit $?)"
        t1=$(date +%s.%N)
        after=$(sink_cpu)
        echo "$name $before $after $t0 $t1" >>"$OUT/sink-cpu.txt"
        echo "-- $name: $(python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['ports'][0]; print(f\"{p['handshakes_per_s']:.0f} hs/s, {p['errors']} errors\")" "$OUT/$name.json")"
      done
    done
  done
done
echo "load_after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
python3 perf/summarize_sink_capacity.py "$OUT" "$DUR" "$CONC" "$KX" | tee "$OUT/summary.md"
