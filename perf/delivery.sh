#!/usr/bin/env bash
# Delivery throughput, side by side, in one run on this machine (loopback only):
#   A. TLS: the same burst (MSGS messages of ~SIZE bytes to DOMAINS domains) to the same sink
#      (`mxpipe sink` on ADDRS addresses 127.1.x.y, STARTTLS on $P25), sent by
#        - mxpipe send  (MX hosts named starttls-…: mandatory, VERIFIED STARTTLS; twice, two processes)
#        - Postfix as a relay (perf/postfix-sender.sh: transport map to the same addresses,
#          smtp_tls_security_level=encrypt, TLS session cache, connection cache, TLS connection reuse);
#      messages/s, sender CPU per message, connections, full/resumed TLS handshakes (from the sink).
#   B. Plaintext ceiling: MSGS messages of 1 KB into Postfix's smtp-sink (127.0.0.1:2727), sent by
#        - smtp-source -d -s 50 (50 sessions, connections reused), one recipient domain
#        - mxpipe send, the DOMAINS-domain burst at 1 KB (all MX hosts -> 127.0.0.1, opportunistic: clear)
#        - mxpipe send, one domain and --max-conns 50 (smtp-source's shape)
#      plus mxpipe TLS with the 1 KB burst against our sink: "TLS with reuse / our plaintext".
# mxpipe runs with --shards 1: pinned to one CPU, its default (one shard per core, from
# available_parallelism, which honours the affinity mask) is 1 anyway.
# Pinning (2+ cores): every sender on CPU $SND_CPU (mxpipe with --shards 1; Postfix's master and so all its
# processes; smtp-source), every receiver and the DNS server on CPU $PEER_CPU (the sink with --threads 1,
# smtp-sink). Sender CPU is measured apart: mxpipe/smtp-source by /usr/bin/time (user+sys of the process),
# Postfix by summing /proc utime+stime of the master and all its children (+ reaped children) over the run.
# Writes raw files to $OUT and a Markdown summary to $OUT/summary.md (paste into perf/RESULTS.md).
#
# Usage (root; installs Postfix via apt-get if missing):
#   bash perf/delivery.sh                                  (MSGS=20000 DOMAINS=500 SIZE=2048 ADDRS=64)
#   MSGS=500 DOMAINS=20 bash perf/delivery.sh              (smoke test)
# Postfix runs as a separate instance (/etc/postfix-bench): the default one (tests/peers/postfix-peer.sh) is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${MSGS:-20000}
DOMAINS=${DOMAINS:-500}
SIZE=${SIZE:-2048}
PLAIN_SIZE=${PLAIN_SIZE:-1024}
ADDRS=${ADDRS:-64}
P25=${P25:-3625}
P26=${P26:-3626}
PF_PORT=${PF_PORT:-2600}
SINK_PLAIN_PORT=2727                    # fixed by ../shared/peers/smtp-sink-peer.sh
SRC_SESSIONS=${SRC_SESSIONS:-50}
SND_CPU=${SND_CPU:-0}
PEER_CPU=${PEER_CPU:-1}
LIMIT=${LIMIT:-600}                     # seconds, bound on every single load run
OUT=${OUT:-perf/out/delivery-$(date -u +%Y%m%dT%H%M%SZ)}
SMTP_SINK_PEER=${SMTP_SINK_PEER:-../shared/peers/smtp-sink-peer.sh}
MX_ARGS=${MX_ARGS:-}                    # extra flags for every mxpipe send, e.g. "--kx x25519" (Postfix uses X25519)
PF_CONC=${PF_CONC:-8}                   # Postfix connections per next hop (mxpipe: --max-conns 8 per domain)
export PF_CONC
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ "$(id -u)" = 0 ] || { echo "delivery.sh: run as root (Postfix is reconfigured and started)" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "delivery.sh: needs 2 CPUs (sender and receiver pinned apart)" >&2; exit 2; }
(( ADDRS > DOMAINS )) && ADDRS=$DOMAINS
die() { echo "delivery.sh: $*" >&2; exit 1; }

cargo build --release --workspace --locked -q
cargo build --release --locked -q --example bench_dns
BIN=$PWD/target/release
BDNS=$BIN/examples/bench_dns
PFS=$PWD/perf/postfix-sender.sh

PIDS=()
SINK_PID=""
cleanup() {
  set +e
  [ -n "$SINK_PID" ] && kill -TERM "$SINK_PID" 2>/dev/null
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  bash "$SMTP_SINK_PEER" stop >/dev/null 2>&1
  bash "$PFS" stop >/dev/null 2>&1
  wait 2>/dev/null
}
trap cleanup EXIT

cputime() { # utime+stime of one live process, seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

echo "== bursts: $MSGS messages to $DOMAINS domains (~$SIZE B for TLS, ~$PLAIN_SIZE B for the plaintext ceiling)"
$BDNS --domains "$DOMAINS" --write-burst "$OUT/burst-tls.jsonl" --messages "$MSGS" --size "$SIZE"
$BDNS --domains "$DOMAINS" --write-burst "$OUT/burst-1k.jsonl" --messages "$MSGS" --size "$PLAIN_SIZE"
$BDNS --domains 1 --write-burst "$OUT/burst-1k-1dom.jsonl" --messages "$MSGS" --size "$PLAIN_SIZE"
$BDNS --domains "$DOMAINS" --addresses "$ADDRS" --write-transport "$OUT/transport.txt" --transport-port "$P25"

start_dns() { # name args… -> sets DNS_ADDR
  local name=$1; shift
  taskset -c "$PEER_CPU" "$BDNS" "$@" --max-secs 7200 >"$OUT/$name.out" 2>"$OUT/$name.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q '^dns ' "$OUT/$name.out" 2>/dev/null && break; sleep 0.1; done
  DNS_ADDR=$(awk '/^dns /{print $2; exit}' "$OUT/$name.out")
  [ -n "$DNS_ADDR" ] || die "bench_dns $name did not start: $(cat "$OUT/$name.err")"
}
start_dns dns-tls --domains "$DOMAINS" --addresses "$ADDRS" --kind starttls
DNS_TLS=$DNS_ADDR
start_dns dns-plain --domains "$DOMAINS" --all-to 127.0.0.1 --kind plain
DNS_PLAIN=$DNS_ADDR
echo "   DNS: starttls world on $DNS_TLS, plain world (all at 127.0.0.1) on $DNS_PLAIN"

LISTEN=()
for i in $(seq 0 $((ADDRS - 1))); do n=$((i + 1)); LISTEN+=(--listen "127.1.$((n >> 8)).$((n & 255))"); done

sink_start() { # name
  local name=$1
  rm -f "$OUT/$name-ca.pem"
  taskset -c "$PEER_CPU" "$BIN/mxpipe" sink "${LISTEN[@]}" --starttls-port "$P25" --implicit-port "$P26" \
    --cert-names '*.bench.test' --ca-out "$OUT/$name-ca.pem" --hostname sink.bench.test --threads 1 \
    --duration 7200 --stats-json "$OUT/$name-sink.json" >"$OUT/$name-sink.log" 2>&1 &
  SINK_PID=$!
  for _ in $(seq 100); do
    [ -s "$OUT/$name-ca.pem" ] && ss -Hltn | grep "127.1.0.1:$P25 " >/dev/null && break
    kill -0 "$SINK_PID" 2>/dev/null || break
    sleep 0.1
  done
  ss -Hltn | grep "127.1.0.1:$P25 " >/dev/null || die "sink $name did not start: $(cat "$OUT/$name-sink.log")"
  SINK_CA=$OUT/$name-ca.pem
  SINK_CPU0=$(cputime "$SINK_PID")
}
sink_stop() { # name
  local name=$1 c1
  c1=$(cputime "$SINK_PID")
  kill -TERM "$SINK_PID"; wait "$SINK_PID" || true; SINK_PID=""
  echo "{\"sink_cpu_s\": $(awk -v a="$SINK_CPU0" -v b="$c1" 'BEGIN{printf "%.2f", b - a}')}" >"$OUT/$name-sinkcpu.json"
  [ -s "$OUT/$name-sink.json" ] || die "sink $name wrote no stats"
}

mx_send() { # name input dns portmap [extra args…]: mxpipe send pinned to $SND_CPU, timed
  local name=$1 input=$2 dns=$3 pm=$4; shift 4
  local cmd=("$BIN/mxpipe" send --input "$input" --json --dns "$dns" --port-map "$pm" --shards 1 \
             --outcomes "$OUT/$name.outcomes.jsonl" "$@")
  # shellcheck disable=SC2206
  [ -z "$MX_ARGS" ] || cmd+=($MX_ARGS)
  echo "taskset -c $SND_CPU ${cmd[*]}" | sed "s|$OUT/|\$OUT/|g; s|$BIN/|target/release/|g" >"$OUT/$name.cmd"
  if ! taskset -c "$SND_CPU" timeout "$LIMIT" /usr/bin/time -f '{"wall_s": %e, "user_s": %U, "sys_s": %S, "maxrss_kb": %M}' \
       -o "$OUT/$name.time" "${cmd[@]}" >"$OUT/$name.json" 2>"$OUT/$name.err"; then
    cat "$OUT/$name.err" >&2; die "mxpipe run $name failed (exit status above; summary in $OUT/$name.json)"
  fi
  python3 - "$OUT/$name.json" "$MSGS" <<'PY' || die "mxpipe run $name did not deliver every message"
import json, sys
s = json.load(open(sys.argv[1]))["engine"]
print(f"   {s['delivered']}/{sys.argv[2]} delivered in {s['elapsed_s']:.2f} s = {s['messages_per_s']:.0f} msg/s, "
      f"{s['connections_opened']} connections, TLS {s['tls_full_handshakes']} full / {s['tls_resumed_handshakes']} resumed")
sys.exit(0 if s["delivered"] == int(sys.argv[2]) else 1)
PY
}

echo "== A1. mxpipe send, TLS (mandatory verified STARTTLS), burst to $DOMAINS domains on $ADDRS addresses"
for run in mx-tls mx-tls-2; do
  sink_start "$run"
  mx_send "$run" "$OUT/burst-tls.jsonl" "$DNS_TLS" "25=$P25,26=$P26" --ca "$SINK_CA"
  sink_stop "$run"
done

echo "== A2. Postfix as the sender (smtp client, TLS encrypt, session + connection caches, TLS connection reuse)"
sink_start pf-tls
PF_TRANSPORT=$OUT/transport.txt PF_CA=$SINK_CA PF_PORT=$PF_PORT PF_CPU=$SND_CPU PF_LOG=$OUT/postfix.log \
  PF_TIMEOUT=$LIMIT bash "$PFS" start
cp /etc/postfix-bench/main.cf "$OUT/postfix-main.cf"; cp /etc/postfix-bench/master.cf "$OUT/postfix-master.cf"
echo "   injecting the same burst into Postfix's smtpd on 127.0.0.1:$PF_PORT (held; not timed)"
PF_PORT=$PF_PORT timeout "$LIMIT" bash "$PFS" inject "$OUT/burst-tls.jsonl"
echo "   releasing and flushing; timing until the queue is empty"
PF_TIMEOUT=$LIMIT bash "$PFS" deliver "$MSGS" >"$OUT/pf-tls.json" || die "Postfix did not deliver the burst (log: $OUT/postfix.log)"
echo "   $(cat "$OUT/pf-tls.json")"
sink_stop pf-tls
grep -c 'status=sent' "$OUT/postfix.log" >"$OUT/pf-sent.count" || true
grep -o 'conn_use=[0-9]*' "$OUT/postfix.log" | wc -l >"$OUT/pf-conn-use.count" || true
bash "$PFS" stop >/dev/null
python3 - "$OUT/pf-tls-sink.json" "$MSGS" <<'PY' || die "the sink did not receive every message from Postfix"
import json, sys
s = json.load(open(sys.argv[1])); st = s["starttls"]
print(f"   sink: {s['messages']} messages, {st['connections']} connections, TLS {st['handshakes_full']} full / {st['handshakes_resumed']} resumed")
sys.exit(0 if s["messages"] >= int(sys.argv[2]) else 1)
PY

echo "== A3. mxpipe send, TLS, the ~$PLAIN_SIZE B burst (for TLS vs plaintext)"
sink_start mx-tls-1k
mx_send mx-tls-1k "$OUT/burst-1k.jsonl" "$DNS_TLS" "25=$P25,26=$P26" --ca "$SINK_CA"
sink_stop mx-tls-1k

echo "== B. plaintext ceiling into smtp-sink on 127.0.0.1:$SINK_PLAIN_PORT"
bash "$SMTP_SINK_PEER" start >/dev/null
SS_PID=$(cat /tmp/smtp-sink-peer/smtp-sink.pid)
taskset -p -c "$PEER_CPU" "$SS_PID" >/dev/null
plain_peer_cpu() { echo "{\"sink_cpu_s\": $(awk -v a="$1" -v b="$(cputime "$SS_PID")" 'BEGIN{printf "%.2f", b - a}')}" >"$OUT/$2-sinkcpu.json"; }

c0=$(cputime "$SS_PID")
SRC_CMD=(smtp-source -d -s "$SRC_SESSIONS" -m "$MSGS" -l "$PLAIN_SIZE" -f s@x.test -t u@d0.bench.test "127.0.0.1:$SINK_PLAIN_PORT")
echo "taskset -c $SND_CPU ${SRC_CMD[*]}" >"$OUT/smtp-source.cmd"
t0=$(date +%s%N)
taskset -c "$SND_CPU" timeout "$LIMIT" /usr/bin/time -f '{"wall_s": %e, "user_s": %U, "sys_s": %S, "maxrss_kb": %M}' \
  -o "$OUT/smtp-source.time" "${SRC_CMD[@]}" >"$OUT/smtp-source.out" 2>&1 || { cat "$OUT/smtp-source.out" >&2; die "smtp-source failed"; }
t1=$(date +%s%N)
echo "{\"elapsed_s\": $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", (b - a) / 1e9}')}" >"$OUT/smtp-source.json"
plain_peer_cpu "$c0" smtp-source
echo "   smtp-source: $(cat "$OUT/smtp-source.time")"

c0=$(cputime "$SS_PID")
mx_send mx-plain "$OUT/burst-1k.jsonl" "$DNS_PLAIN" "25=$SINK_PLAIN_PORT"
plain_peer_cpu "$c0" mx-plain
c0=$(cputime "$SS_PID")
mx_send mx-plain-1dom "$OUT/burst-1k-1dom.jsonl" "$DNS_PLAIN" "25=$SINK_PLAIN_PORT" --max-conns "$SRC_SESSIONS"
plain_peer_cpu "$c0" mx-plain-1dom
bash "$SMTP_SINK_PEER" stop >/dev/null

cat >"$OUT/params.json" <<JSON
{"msgs": $MSGS, "domains": $DOMAINS, "size": $SIZE, "plain_size": $PLAIN_SIZE, "addrs": $ADDRS,
 "p25": $P25, "pf_conc": $PF_CONC, "mx_args": "$MX_ARGS", "src_sessions": $SRC_SESSIONS, "snd_cpu": $SND_CPU, "peer_cpu": $PEER_CPU,
 "cpus": $(nproc), "cpu_model": "$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)",
 "postfix": "$(postconf -h mail_version 2>/dev/null)", "git": "$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo +dirty)",
 "command": "MSGS=$MSGS DOMAINS=$DOMAINS SIZE=$SIZE ADDRS=$ADDRS${MX_ARGS:+ MX_ARGS=\\\"$MX_ARGS\\\"} bash perf/delivery.sh"}
JSON
rm -f "$OUT"/burst-*.jsonl "$OUT"/*.outcomes.jsonl   # large; regenerated by every run
python3 perf/summarize_delivery.py "$OUT" | tee "$OUT/summary.md"
