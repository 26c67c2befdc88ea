#!/usr/bin/env bash
# Cluster mode (issue 12) in one run on this machine (loopback only), two parts:
#
# 1. Its cost on one node. perf/daemon.sh with INJECTOR=loadgen and the sides mxpipe-limits and
#    mxpipe-cluster: the same burst (MSGS messages of ~SIZE bytes to DOMAINS domains, SESSIONS
#    pipelining connections) into one `mxpipe serve` (pinned, shards = 1, spool fsync on, delivery
#    log on) with the same `[[domain]]` limits on every destination (max_conns LIMIT_CONNS,
#    msgs_per_s LIMIT_RATE: taken on every connection and message, high enough not to bind),
#    (a) held by the node, (b) shared through a redis-server started on 127.0.0.1 with the
#    `[cluster]` defaults (heartbeat 2s, poll 500ms, rate_batch 64, lease_batch 2, spare_hold
#    250ms). REPEAT runs of daemon.sh, the order of the two sides alternated (the machine is
#    noisy: only ratios within a run carry); with LEASES_ONLY=1 (default) one more run with
#    max_conns alone (no msgs_per_s), to tell the cost of shared connections from that of shared
#    rates, and with LIGHT=1 (default) one at light load (MSGS_LIGHT messages over one injection
#    connection, so nothing queues: the added latency per message). Reported: end-to-end msg/s, daemon CPU µs/msg, the
#    throughput cost (goal ≤ 10 %), Redis calls per delivered message from
#    `mxpipe_cluster_redis_calls_total` (goal ≤ 0.05), Redis's calls by command (INFO
#    commandstats) and CPU, and the added latency as measured: the Redis round trip under the
#    burst (PING from another client, once a second), Redis's time per call, and the drain
#    (last injection acknowledged to last message at the sink) of both sides.
# 2. Three `mxpipe serve` nodes on this machine (own spools, own injection and HTTP ports, not
#    pinned, shards = 1 each), one Redis, one sink (examples/bench_sink.rs) on two addresses, the
#    burst of MSGS2 messages split evenly over the three nodes (mxpipe-loadgen into each at
#    once), two destinations with cluster-wide limits: d0.bench.test max_conns N (rate not
#    binding: NET_RATE0) and d1.bench.test max_conns N and msgs_per_s R; `[engine] idle_timeout`
#    IDLE2 (the engine's default, 10s: an idle pooled connection keeps its lease). Checked: the sink
#    counts exactly what was injected, every node's delivery log says delivered for each of its
#    messages (nothing lost, no duplicate), the peak of concurrent connections per destination
#    (ESTABLISHED sockets on the sink's address, from a sock_diag dump every 2 ms) is ≤ N
#    and = N for d0, the rate of d1 (delivery-log times of all three nodes) in no 1 s window above
#    R by more than 5 %, and while it delivers (gaps over 0.5 s left out) within 5 % of R; Redis
#    calls per message. A correctness demonstration on two cores,
#    not a speed claim.
# Every wait is bounded by LIMIT seconds; every process started is stopped on exit (trap).
# Writes raw files to $OUT (one-K/ per daemon.sh run, three/ for part 2), results.json and
# summary.md (paste into perf/RESULTS.md).
#
# Usage (root: daemon.sh pins and reads perf counters; needs redis-server and redis-cli):
#   bash perf/cluster.sh                                 (MSGS=20000 DOMAINS=50 SIZE=2048 REPEAT=4; MSGS2=3000 N=4 R=100)
#   MSGS=2000 REPEAT=1 MSGS2=600 bash perf/cluster.sh    (short run)
#   PARTS=1 bash perf/cluster.sh                         (only the one-node cost; PARTS=2: only the three nodes)
#   REDIS_MONITOR=1 PARTS=1 bash perf/cluster.sh         (also redis-cli MONITOR: calls by script; slows Redis)
#   PROFILE=1 PARTS=1 REPEAT=1 bash perf/cluster.sh      (also perf record -g the daemon: one-1/mx-*-profile*.txt)
#   IDLE2=1s PARTS=2 bash perf/cluster.sh                (part 2 with idle connections closed after 1 s)
#   SHARED2=0 PARTS=2 bash perf/cluster.sh               (part 2 without [cluster]: limits per node, the checks fail)
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${MSGS:-20000}
DOMAINS=${DOMAINS:-50}
SIZE=${SIZE:-2048}
SESSIONS=${SESSIONS:-50}
REPEAT=${REPEAT:-4}                     # daemon.sh runs of part 1, side order alternated
LIMIT_CONNS=${LIMIT_CONNS:-8}
LIMIT_RATE=${LIMIT_RATE:-100000}
FSYNC_TRACE=${FSYNC_TRACE:-0}
PROFILE=${PROFILE:-0}                   # part 1: perf record -g the daemon (perf/daemon.sh PROFILE=1)
REDIS_MONITOR=${REDIS_MONITOR:-0}       # part 1: redis-cli MONITOR on the cluster side (slows Redis)
LEASES_ONLY=${LEASES_ONLY:-1}           # part 1: one more run with max_conns only (no msgs_per_s)
LIGHT=${LIGHT:-1}                       # part 1: one more run at light load (one injection connection): the added latency
MSGS_LIGHT=${MSGS_LIGHT:-2000}          # part 1: its messages
SHARED2=${SHARED2:-1}                   # part 2: 0 leaves [cluster] out (each node on its own: the checks must fail)
IDLE2=${IDLE2:-10s}                     # part 2: [engine] idle_timeout of the three nodes
MSGS2=${MSGS2:-3000}                    # part 2: messages over the three nodes
N=${N:-4}                               # part 2: connections per destination, cluster-wide
R=${R:-100}                             # part 2: d1.bench.test's messages/s, cluster-wide
NET_RATE0=${NET_RATE0:-100000}          # part 2: d0.bench.test's messages/s (not binding)
PARTS=${PARTS:-1 2}
LIMIT=${LIMIT:-600}                     # seconds, bound on every wait
IP=${IP:-127.7.255.1}                   # part 2: injection listeners, HTTP APIs, DNS
P25=${P25:-3735}                        # part 2: the sink's STARTTLS port on 127.7.0.1 and 127.7.0.2
INJ_PORT=${INJ_PORT:-3800}              # part 2: node i injects on INJ_PORT+i, HTTP API on INJ_PORT+10+i
REDIS_PORT=${REDIS_PORT:-3793}          # part 1 (daemon.sh's side) and part 2, one after the other
OUT=${OUT:-perf/out/cluster-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
die() { echo "cluster.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (perf/daemon.sh pins processes and traces)"
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || die "redis-server and redis-cli needed (apt-get install redis-server)"
case "$IP" in 127.*) ;; *) die "IP must be loopback";; esac
(( MSGS2 >= 6 && N >= 1 )) || die "MSGS2 must be at least 6 and N at least 1"

cargo build --release --locked -q --bin mxpipe --example bench_dns --example bench_sink
cargo build --release --locked -q -p mxpipe-loadgen --bin mxpipe-loadgen
BIN=$PWD/target/release

PIDS=()
SINK_PROGRESS=""
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT
wait_until() { # SECONDS COMMAND…: poll every 0.1 s, fail after SECONDS
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
sink_n() { sed -n 's/.*"messages":\([0-9]*\).*/\1/p' "$SINK_PROGRESS" 2>/dev/null | grep . || echo 0; }
sink_has() { [ "$(sink_n)" -ge "$1" ]; }
cputime() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }

# ---- 1. one node: local limits against the same limits shared through Redis -------------------
daemon_run() { # DIR SIDES RATE [SESSIONS MSGS]
  OUT=$1 SIDES=$2 INJECTOR=loadgen MSGS=${5:-$MSGS} DOMAINS=$DOMAINS SIZE=$SIZE SESSIONS=${4:-$SESSIONS} LIMIT_CONNS=$LIMIT_CONNS \
    LIMIT_RATE=$3 FSYNC_TRACE=$FSYNC_TRACE PROFILE=$PROFILE REDIS_MONITOR=$REDIS_MONITOR REDIS_PORT=$REDIS_PORT LIMIT=$LIMIT \
    bash perf/daemon.sh 2>&1 | sed 's/^/   /' || die "perf/daemon.sh failed: see $1"
}
part1() {
  local k order
  for ((k = 1; k <= REPEAT; k++)); do
    if (( k % 2 )); then order="mxpipe-limits mxpipe-cluster"; else order="mxpipe-cluster mxpipe-limits"; fi
    echo "== 1.$k one node, $order ($MSGS messages, $DOMAINS domains)"
    daemon_run "$OUT/one-$k" "$order" "$LIMIT_RATE"
  done
  if [ "$LEASES_ONLY" = 1 ]; then
    echo "== 1.L one node, max_conns only (no msgs_per_s): mxpipe-limits mxpipe-cluster"
    daemon_run "$OUT/leases" "mxpipe-limits mxpipe-cluster" none
  fi
  if [ "$LIGHT" = 1 ]; then
    echo "== 1.S one node, light load (one injection connection, $MSGS_LIGHT messages): mxpipe-limits mxpipe-cluster"
    daemon_run "$OUT/light" "mxpipe-limits mxpipe-cluster" "$LIMIT_RATE" 1 "$MSGS_LIGHT"
  fi
}

# ---- 2. three nodes, one Redis, one sink ------------------------------------------------------
part2() {
  local D=$OUT/three i
  mkdir -p "$D"
  echo "== 2. three mxpipe serve nodes, one Redis, one sink: $MSGS2 messages; d0 max_conns $N; d1 max_conns $N, msgs_per_s $R"
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && die "something already answers on 127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no --protected-mode yes \
    --loglevel warning >"$D/redis.log" 2>&1 &
  local redis_pid=$!; PIDS+=("$redis_pid")
  wait_until 10 sh -c "redis-cli -p $REDIS_PORT ping 2>/dev/null | grep -q PONG" || die "redis-server did not start: $(cat "$D/redis.log")"
  local redis_cpu0; redis_cpu0=$(cputime "$redis_pid")

  "$BIN/examples/bench_dns" --domains 2 --addresses 2 --mx-ip-base 127.7 --kind starttls --dns-listen "$IP:0" \
    --max-secs $((LIMIT + 120)) >"$D/dns.out" 2>"$D/dns.err" &
  PIDS+=($!)
  wait_until 10 grep -q '^dns ' "$D/dns.out" || die "bench_dns did not start: $(cat "$D/dns.err")"
  local dns; dns=$(awk '/^dns /{print $2; exit}' "$D/dns.out")

  "$BIN/examples/bench_sink" --listen 127.7.0.1 --listen 127.7.0.2 --starttls-port "$P25" --cert-names '*.bench.test' \
    --ca-out "$D/ca.pem" --hostname sink.bench.test --threads 1 --max-secs $((LIMIT + 120)) \
    --progress "$D/progress.json" --stats-json "$D/sink.json" >"$D/sink.log" 2>&1 &
  local sink_pid=$!; PIDS+=("$sink_pid")
  wait_until 20 grep -q '^sink ready' "$D/sink.log" || die "sink did not start: $(cat "$D/sink.log")"

  # Concurrent connections per destination, seen at the sink: its ESTABLISHED sockets on the
  # destination's address (127.7.0.1 for d0, 127.7.0.2 for d1) and port, from the kernel's
  # sock_diag netlink dump (states filtered in the kernel, ~1 ms a dump), every 2 ms, until $D/stop.
  cat >"$D/conns.py" <<'PY'
import json, os, socket, struct, sys, time
out, port, stop, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
dests = {"127.7.0.1": "d0.bench.test", "127.7.0.2": "d1.bench.test"}
# inet_diag_req_v2: AF_INET, TCP, no extensions, states = 1 << TCP_ESTABLISHED, any socket id.
REQ = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << 1) + b"\0" * 48
MSG = struct.pack("=IHHII", 16 + len(REQ), 20, 0x301, 1, 0) + REQ   # SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST|NLM_F_DUMP
def established():
    n = {d: 0 for d in dests.values()}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as s:   # NETLINK_SOCK_DIAG
        s.settimeout(1)
        s.send(MSG)
        for _ in range(10000):   # bounded: a dump is a few datagrams
            buf, off = s.recv(1 << 16), 0
            while off + 16 <= len(buf):
                ln, typ = struct.unpack_from("=IH", buf, off)
                if typ in (2, 3):   # NLMSG_ERROR, NLMSG_DONE
                    return n
                # inet_diag_msg: family, state, timer, retrans, then the socket id (sport, dport, src…)
                if struct.unpack_from(">H", buf, off + 20)[0] == port:
                    d = dests.get(socket.inet_ntoa(buf[off + 24:off + 28]))
                    if d:
                        n[d] += 1
                off += (ln + 3) & ~3
    return n
peak = {d: 0 for d in dests.values()}
series, samples, t0 = [], 0, time.time()
last_bucket, bucket_max = -1, dict(peak)
while not os.path.exists(stop) and time.time() - t0 < limit:
    now = established()
    samples += 1
    b = int((time.time() - t0) * 10)          # 100 ms buckets: the most seen in each
    if b != last_bucket:
        if last_bucket >= 0:
            series.append([last_bucket / 10, bucket_max["d0.bench.test"], bucket_max["d1.bench.test"]])
        last_bucket, bucket_max = b, dict(now)
    for d in peak:
        peak[d] = max(peak[d], now[d])
        bucket_max[d] = max(bucket_max[d], now[d])
    time.sleep(0.002)
json.dump({"peak": peak, "samples": samples, "secs": time.time() - t0, "series_100ms": series}, open(out, "w"))
PY
  rm -f "$D/stop"
  # Above the nodes' priority: a starved sampler would see too few samples.
  nice -n -10 python3 "$D/conns.py" "$D/conns.json" "$P25" "$D/stop" "$((LIMIT + 60))" &
  local sampler_pid=$!; PIDS+=("$sampler_pid")

  local pids=() api=()
  for i in 0 1 2; do
    rm -rf "$D/node$i-spool"
    cat >"$D/node$i.toml" <<TOML
# generated by perf/cluster.sh
[engine]
shards = 1
ehlo_name = "relay$i.bench.test"
idle_timeout = "$IDLE2"
[dns]
nameserver = "$dns"
[ports]
smtp = $P25
smtps = $((P25 + 1))
[tls]
ca_files = ["$D/ca.pem"]
[spool]
dir = "$D/node$i-spool"
fsync = true
[inject.smtp]
listen = "$IP:$((INJ_PORT + i))"
allowed_networks = ["127.0.0.0/8"]
max_conns_per_ip = 10000
[inject.http]
listen = "$IP:$((INJ_PORT + 10 + i))"
[log]
delivery_log = "$D/node$i-delivery.jsonl"
$([ "$SHARED2" = 1 ] && printf '[cluster]\nredis = ["redis://127.0.0.1:%s/"]\nnode_id = "node%s"\n' "$REDIS_PORT" "$i")
[[domain]]
name = "d0.bench.test"
max_conns = $N
msgs_per_s = $NET_RATE0
[[domain]]
name = "d1.bench.test"
max_conns = $N
msgs_per_s = $R
TOML
    rm -f "$D/node$i-delivery.jsonl"
    "$BIN/mxpipe" serve --config "$D/node$i.toml" >"$D/node$i-serve.out" 2>"$D/node$i-serve.err" &
    pids+=($!); PIDS+=($!); api+=("$IP:$((INJ_PORT + 10 + i))")
  done
  for i in 0 1 2; do
    wait_until 20 grep -q 'injection SMTP on' "$D/node$i-serve.out" || die "node $i did not start: $(cat "$D/node$i-serve.err")"
  done

  # The burst, split evenly, into the three nodes at once; each loadgen must see all of its own acknowledged.
  local inj=() n0=$((MSGS2 / 3)) t0 t1
  t0=$(date +%s%N)
  for i in 0 1 2; do
    local n=$(( n0 + (i < MSGS2 % 3 ? 1 : 0) ))
    echo "$n" >"$D/node$i-injected.count"
    timeout "$LIMIT" "$BIN/mxpipe-loadgen" --mode inject --host "$IP" --port $((INJ_PORT + i)) -c 10 -n "$n" -d "$LIMIT" \
      --timeout 60 --domains 2 --rcpt-to u@bench.test --mail-from sender@src.bench.test --ehlo-name inject$i.bench.test \
      --size "$SIZE" --json >"$D/node$i-loadgen.json" 2>"$D/node$i-loadgen.err" &
    inj+=($!)
  done
  for i in 0 1 2; do
    wait "${inj[$i]}" || die "mxpipe-loadgen into node $i failed: $(tail -3 "$D/node$i-loadgen.err")"
    python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["acked"] == int(sys.argv[2]) else 3)' \
      "$D/node$i-loadgen.json" "$(cat "$D/node$i-injected.count")" || die "node $i did not acknowledge all its messages"
  done
  t1=$(date +%s%N)
  echo "   all $MSGS2 acknowledged in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b - a) / 1e9}') s; waiting for the sink"
  SINK_PROGRESS=$D/progress.json
  wait_until "$LIMIT" sink_has "$MSGS2" || die "the sink counted $(sink_n) of $MSGS2 within ${LIMIT}s"
  sleep 2   # late duplicates would show in the count
  echo "{\"t0_ns\": $t0, \"inject_end_ns\": $t1}" >"$D/inject.json"
  for i in 0 1 2; do
    curl -sf --max-time 10 "http://${api[$i]}/metrics" >"$D/node$i-metrics.txt" || die "node $i: GET /metrics failed"
  done
  curl -sf --max-time 10 "http://${api[0]}/v1/cluster" >"$D/cluster-view.json" || echo "   (GET /v1/cluster failed)"
  touch "$D/stop"; wait "$sampler_pid" || true
  redis-cli -p "$REDIS_PORT" info commandstats >"$D/redis-commandstats.txt" 2>&1 || true
  echo "{\"redis_cpu_s\": $(awk -v a="$redis_cpu0" -v b="$(cputime "$redis_pid")" 'BEGIN{printf "%.2f", b - a}')}" >"$D/rediscpu.json"
  for i in 0 1 2; do kill -TERM "${pids[$i]}"; wait "${pids[$i]}" || true; done
  kill -TERM "$sink_pid"; wait "$sink_pid" || true
  kill -TERM "$redis_pid"; wait "$redis_pid" || true
  for i in 0 1 2; do rm -rf "$D/node$i-spool"; done
  cat >"$D/params.json" <<JSON
{"msgs2": $MSGS2, "n": $N, "r": $R, "rate0": $NET_RATE0, "size": $SIZE, "p25": $P25, "idle2": "$IDLE2", "shared2": $SHARED2}
JSON
}

for p in $PARTS; do
  case "$p" in
    1) part1;;
    2) part2;;
    *) die "PARTS: of 1 and 2, not $p";;
  esac
done
cat >"$OUT/params.json" <<JSON
{"msgs": $MSGS, "domains": $DOMAINS, "size": $SIZE, "sessions": $SESSIONS, "repeat": $REPEAT, "limit_conns": $LIMIT_CONNS,
 "limit_rate": "$LIMIT_RATE", "leases_only": $LEASES_ONLY, "idle2": "$IDLE2", "msgs2": $MSGS2, "n": $N, "r": $R, "rate0": $NET_RATE0, "parts": "$PARTS", "cpus": $(nproc),
 "cpu_model": "$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)", "redis": "$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')",
 "git": "$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo +dirty)",
 "command": "MSGS=$MSGS DOMAINS=$DOMAINS SIZE=$SIZE SESSIONS=$SESSIONS REPEAT=$REPEAT MSGS2=$MSGS2 N=$N R=$R$([ "$LIMIT_CONNS" = 8 ] || echo " LIMIT_CONNS=$LIMIT_CONNS")$([ "$LIMIT_RATE" = 100000 ] || echo " LIMIT_RATE=$LIMIT_RATE")$([ "$FSYNC_TRACE" = 0 ] || echo " FSYNC_TRACE=$FSYNC_TRACE")$([ "$PARTS" = "1 2" ] || echo " PARTS=\\\"$PARTS\\\"")$([ "$IDLE2" = 10s ] || echo " IDLE2=$IDLE2")$([ "$SHARED2" = 1 ] || echo " SHARED2=0")$([ "$LEASES_ONLY" = 1 ] || echo " LEASES_ONLY=0")$([ "$LIGHT" = 1 ] || echo " LIGHT=0")$([ "$MSGS_LIGHT" = 2000 ] || echo " MSGS_LIGHT=$MSGS_LIGHT")$([ "$PROFILE" = 0 ] || echo " PROFILE=1")$([ "$REDIS_MONITOR" = 0 ] || echo " REDIS_MONITOR=1") bash perf/cluster.sh"}
JSON
python3 perf/summarize_cluster.py "$OUT" | tee "$OUT/summary.md"
