#!/usr/bin/env bash
# The daemon end to end, side by side with Postfix, in one run on this machine (loopback only):
# the same burst (MSGS messages of ~SIZE bytes to DOMAINS domains, one recipient each) is injected
# with Postfix's smtp-source into
#   1. mxpipe serve (release build; spool fsync on, group commit; delivery log on), and
#   2. Postfix as the relay (a separate instance through perf/postfix-sender.sh with PF_HOLD=no:
#      queued durably by cleanup, then delivered by its smtp client with mandatory TLS, TLS session
#      cache, connection cache and TLS connection reuse, 8 connections per next hop),
# both delivering to the same sink (examples/bench_sink.rs: mxpipe's sink with a live progress file)
# with STARTTLS on ADDRS addresses 127.7.x.y, destinations resolved as in perf/delivery.sh (our DNS
# server, examples/bench_dns.rs, MX hosts starttls-…: mandatory, verified STARTTLS, for mxpipe; the
# same addresses in a transport map for Postfix, which does no DNS).
#
# Injection (INJECTOR=smtp-source, the default): smtp-source cannot vary the recipient domain, so each domain gets one smtp-source
# process (one session, connection kept: -d; recipients numbered: -N) and SESSIONS of them run at
# once (xargs -P). smtp-source does not pipeline (its BUGS section); Postfix's smtp client does.
# INJECTOR=loadgen injects the same burst with `mxpipe-loadgen --mode inject` instead: SESSIONS
# connections kept for the whole burst, MAIL+RCPT+DATA pipelined (RFC 2920), message i to domain
# d(i mod DOMAINS), the same From: domain and size; its JSON report is $side-loadgen.json and the
# run fails unless it acknowledged all MSGS. INJECTOR=http (mxpipe sides only) posts the burst to
# the daemon's HTTP API in batches of HTTP_BATCH with the inject token (TOKENS=1).
# Per side: end-to-end messages/s (first injection to the last message counted at the sink),
# injection-only rate (to the last 250 from the system under test), CPU seconds of the daemon or of
# all Postfix processes (master and every descendant, reaped ones included) per message, fsync +
# fdatasync calls per message (FSYNC_TRACE=1: `perf record -a` of the syscalls:sys_enter_fsync and
# sys_enter_fdatasync tracepoints plus sched:sched_process_fork, calls attributed to the daemon's
# process, or to Postfix's master and its process tree), and the sink's count (must equal MSGS).
# Pinning (2+ CPUs), as perf/delivery.sh: the system under test on CPU $SUT_CPU (the daemon, with
# shards = 1; Postfix's master and so all its processes); sink, DNS and smtp-source on CPU $PEER_CPU.
# PIN=0 pins nothing (the daemon then has one shard per core), for comparison.
# DKIM (issue 11): the sides mxpipe-ed25519 and mxpipe-rsa are the mxpipe side again with one
# `[[dkim]]` key (made by `mxpipe dkim keygen`: Ed25519, or RSA of DKIM_RSA_BITS, default 2048)
# for src.bench.test, the domain of the From: header smtp-source writes (`From: <sender@…>`), so
# every message is signed at intake, on the daemon's signing threads (pinned with it). Each such
# side reads the daemon's `mxpipe_dkim_signed_total` from `GET /metrics` before stopping it
# ($side-dkim.json) and fails unless it equals MSGS. Compare the three within one run.
# Cluster mode (issue 12): the sides mxpipe-limits and mxpipe-cluster are the mxpipe side again
# with one `[[domain]]` entry per destination domain (max_conns LIMIT_CONNS, msgs_per_s
# LIMIT_RATE: taken on every connection and message, high enough not to bind), held locally
# (mxpipe-limits) or shared through a redis-server this script starts on 127.0.0.1:REDIS_PORT
# (`--save '' --appendonly no`, pinned with the load side, stopped after the side) with the
# `[cluster]` defaults (mxpipe-cluster). The cluster side reads `mxpipe_cluster_*` from GET
# /metrics before stopping the daemon ($side-cluster.json: Redis calls and failures), Redis's
# INFO commandstats ($side-redis-commandstats.txt), its CPU, and samples the Redis round trip
# once a second while the burst runs (`redis-cli --latency --raw`: $side-redis-latency.txt);
# REDIS_MONITOR=1 also records `redis-cli MONITOR` ($side-redis-monitor.txt; it slows Redis).
# Both sides measure each message's time from acceptance to delivery ($side-latency.json:
# percentiles): the time of the daemon's "250 … queued as ID" reply on the injection port
# (tcpdump on lo, only the daemon's packets; pinned with the load side) to the `ts` of ID's
# "delivered" line in the delivery log. LATENCY=0 skips it.
# perf/cluster.sh runs both and compares them.
# Writes raw files to $OUT, results.json and summary.md (paste into perf/RESULTS.md).
#
# Usage (root; installs Postfix via apt-get if missing):
#   bash perf/daemon.sh                                  (MSGS=50000 DOMAINS=500 SIZE=2048 ADDRS=64)
#   MSGS=2000 DOMAINS=50 bash perf/daemon.sh             (short run)
#   SIDES=mxpipe PROFILE=1 bash perf/daemon.sh           (also perf record -g the daemon: mx-profile.txt, by syscall: mx-profile-syscalls.txt)
#   TOKENS=0 bash perf/daemon.sh                         (the HTTP API without bearer tokens; default: with)
#   SIDES="mxpipe mxpipe-ed25519 mxpipe-rsa" bash perf/daemon.sh   (the cost of DKIM signing)
#   INJECTOR=loadgen bash perf/daemon.sh                 (the pipelining injector instead of smtp-source)
#   INJECTOR=http SIDES=mxpipe bash perf/daemon.sh       (the HTTP API, batches of HTTP_BATCH)
#   INJECTOR=loadgen LOADGEN_ARGS=--bdat bash perf/daemon.sh   (BDAT n LAST instead of DATA)
#   MXPIPE_BIN=/tmp/mxpipe-before SIDES=mxpipe bash perf/daemon.sh   (another build of the daemon)
#   SIDES="mxpipe-limits mxpipe-cluster" INJECTOR=loadgen bash perf/daemon.sh   (cluster mode's cost; see perf/cluster.sh)
# The Postfix instance is /etc/postfix-daemonbench (queue /var/spool/postfix-daemonbench): neither the
# default instance (tests/peers/postfix-peer.sh) nor perf/delivery.sh's /etc/postfix-bench is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${MSGS:-50000}
DOMAINS=${DOMAINS:-500}
SIZE=${SIZE:-2048}
ADDRS=${ADDRS:-64}
SESSIONS=${SESSIONS:-50}                # smtp-source processes (sessions) at once, or loadgen connections
INJECTOR=${INJECTOR:-smtp-source}       # smtp-source, loadgen (pipelining SMTP) or http (mxpipe's API)
LOADGEN_ARGS=${LOADGEN_ARGS:-}          # INJECTOR=loadgen/http: more mxpipe-loadgen flags (e.g. --bdat)
HTTP_BATCH=${HTTP_BATCH:-100}           # INJECTOR=http: messages per request
P25=${P25:-3725}                        # the sink's STARTTLS port on every 127.7.x.y address
IP=${IP:-127.7.255.1}                   # injection listeners (daemon, Postfix), DNS, HTTP API
INJ_PORT=${INJ_PORT:-3790}
PF_PORT=${PF_PORT:-3791}
HTTP_PORT=${HTTP_PORT:-3792}
SUT_CPU=${SUT_CPU:-0}
PEER_CPU=${PEER_CPU:-1}
PIN=${PIN:-1}                           # PIN=0: nothing pinned, the daemon with one shard per core
LIMIT=${LIMIT:-600}                     # seconds, bound on every wait of every run
TOKENS=${TOKENS:-1}                     # 1: the daemon's HTTP API requires bearer tokens, as deployed
MX_SPOOL_MAX_DELAY=${MX_SPOOL_MAX_DELAY:-}  # e.g. 2ms: the spool's group-commit wait (default: the daemon's, 0s)
SIDES=${SIDES:-mxpipe postfix}            # of: mxpipe mxpipe-ed25519 mxpipe-rsa mxpipe-limits mxpipe-cluster postfix
LIMIT_CONNS=${LIMIT_CONNS:-8}           # mxpipe-limits/-cluster: [[domain]] max_conns of every domain
LIMIT_RATE=${LIMIT_RATE:-100000}        # mxpipe-limits/-cluster: [[domain]] msgs_per_s of every domain (none: no rate)
REDIS_PORT=${REDIS_PORT:-3793}          # mxpipe-cluster: redis-server on 127.0.0.1:REDIS_PORT
REDIS_MONITOR=${REDIS_MONITOR:-0}       # mxpipe-cluster: 1 records redis-cli MONITOR (slows Redis)
LATENCY=${LATENCY:-1}                   # mxpipe-limits/-cluster: acceptance-to-delivery times (tcpdump)
DKIM_DOMAIN=src.bench.test              # the From: domain of smtp-source's -f below
DKIM_RSA_BITS=${DKIM_RSA_BITS:-2048}
FSYNC_TRACE=${FSYNC_TRACE:-1}
PROFILE=${PROFILE:-0}
PROFILE_ARGS=${PROFILE_ARGS:--F 999 -g} # perf record options of PROFILE=1
MX_KX=${MX_KX:-default}                 # [engine] kx of the daemon (Postfix's OpenSSL uses X25519)
MX_DELIVERY_LOG=${MX_DELIVERY_LOG:-1}   # the daemon logs every delivery, as Postfix does
PF_CONC=${PF_CONC:-8}
PF_CACHE_DESTS=${PF_CACHE_DESTS:-}      # static:all: Postfix caches every connection, not only "on demand"
OUT=${OUT:-perf/out/daemon-$(date -u +%Y%m%dT%H%M%SZ)}
export PF_CONC PF_CACHE_DESTS PF_CONF=/etc/postfix-daemonbench PF_SPOOL=/var/spool/postfix-daemonbench \
  PF_DATA=/var/lib/postfix-daemonbench PF_LISTEN=$IP PF_INET_INTERFACES=127.0.0.1 PF_PORT PF_HOLD=no
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
die() { echo "daemon.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (Postfix is reconfigured and started)"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (system under test and load apart)"
case "$IP" in 127.*) ;; *) die "IP must be loopback";; esac
(( ADDRS > DOMAINS )) && ADDRS=$DOMAINS
(( MSGS >= DOMAINS )) || die "MSGS must be at least DOMAINS (every domain gets a message)"
case "$INJECTOR" in
  smtp-source|loadgen) ;;
  http) [[ " $SIDES " == *" postfix "* ]] && die "INJECTOR=http: Postfix has no HTTP API (SIDES without postfix)";;
  *) die "INJECTOR: smtp-source, loadgen or http, not $INJECTOR";;
esac
if ! command -v smtp-source >/dev/null; then   # as the usage says: install Postfix if missing
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  [ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix >/dev/null
  command -v smtp-source >/dev/null || die "smtp-source not found after installing postfix"
fi
[ "$FSYNC_TRACE" = 0 ] || [ "$PROFILE" = 0 ] || command -v perf >/dev/null || die "perf not found (FSYNC_TRACE=0 PROFILE=0 to run without)"

cargo build --release --locked -q --bin mxpipe --example bench_dns --example bench_sink
[ "$INJECTOR" = smtp-source ] || cargo build --release --locked -q -p mxpipe-loadgen --bin mxpipe-loadgen
if [ "$PIN" = 1 ]; then
  ON_SUT=(taskset -c "$SUT_CPU"); ON_PEER=(taskset -c "$PEER_CPU"); PF_CPU=$SUT_CPU; SHARDS=1
else
  ON_SUT=(); ON_PEER=(); PF_CPU=""; SHARDS='"auto"'
fi
BIN=$PWD/target/release
MXPIPE_BIN=${MXPIPE_BIN:-$BIN/mxpipe}    # the daemon under test (e.g. a saved build, for before/after)
PFS=$PWD/perf/postfix-sender.sh

PIDS=()
SINK_PID="" DPID="" PERF_PID="" PROF_PID="" REDIS_PID="" REDIS_AUX_PIDS=() CAP_PID=""
cleanup() {
  set +e
  [ -n "$CAP_PID" ] && kill -INT "$CAP_PID" 2>/dev/null
  for p in "${REDIS_AUX_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  [ -n "$REDIS_PID" ] && kill -TERM "$REDIS_PID" 2>/dev/null
  [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null
  [ -n "$PROF_PID" ] && kill -INT "$PROF_PID" 2>/dev/null
  [ -n "$DPID" ] && kill -TERM "$DPID" 2>/dev/null
  [ -n "$SINK_PID" ] && kill -TERM "$SINK_PID" 2>/dev/null
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  bash "$PFS" stop >/dev/null 2>&1
  wait 2>/dev/null
}
trap cleanup EXIT

cputime() { # utime+stime of one live process, seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
now_ns() { date +%s%N; }
# wait_until SECONDS DESCRIPTION COMMAND…: poll every 0.1 s, fail after SECONDS
wait_until() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

echo "== $MSGS messages of ~$SIZE B to $DOMAINS domains on $ADDRS addresses 127.7.x.y; $SESSIONS $INJECTOR sessions at once"
echo "{\"uptime\": \"$(uptime)\", \"loadavg\": \"$(load_avg)\"}" >"$OUT/load-before.json"
BDNS=$BIN/examples/bench_dns
$BDNS --domains "$DOMAINS" --addresses "$ADDRS" --mx-ip-base 127.7 --write-transport "$OUT/transport.txt" --transport-port "$P25"
"${ON_PEER[@]}" "$BDNS" --domains "$DOMAINS" --addresses "$ADDRS" --mx-ip-base 127.7 --kind starttls \
  --dns-listen "$IP:0" --max-secs 7200 >"$OUT/dns.out" 2>"$OUT/dns.err" &
PIDS+=($!)
wait_until 10 "the DNS server" grep -q '^dns ' "$OUT/dns.out" || die "bench_dns did not start: $(cat "$OUT/dns.err")"
DNS_ADDR=$(awk '/^dns /{print $2; exit}' "$OUT/dns.out")

# The injection jobs: "DOMAIN-INDEX COUNT", MSGS spread evenly over the domains.
: >"$OUT/jobs.txt"
for ((i = 0; i < DOMAINS; i++)); do
  echo "$i $(( MSGS / DOMAINS + (i < MSGS % DOMAINS ? 1 : 0) ))" >>"$OUT/jobs.txt"
done
BODY=$(( SIZE > 400 ? SIZE - 170 : SIZE ))   # smtp-source adds ~170 B of headers
cat >"$OUT/inject-one.sh" <<EOF
#!/bin/sh
# one smtp-source session: \$1 = domain index, \$2 = messages; \$3 = ADDR:PORT of the system under test
exec smtp-source -d -s 1 -m "\$2" -N -l $BODY -S "daemon bench" -M inject.bench.test \\
  -f sender@$DKIM_DOMAIN -t "u@d\$1.bench.test" "\$3"
EOF
chmod +x "$OUT/inject-one.sh"
# INJECTOR=loadgen/http: the whole burst in one mxpipe-loadgen run; fails unless all MSGS were acknowledged.
cat >"$OUT/inject-loadgen.sh" <<EOF
#!/bin/sh
# \$1 = JSON report file, \$2 = inject or http, \$3 = ADDR:PORT, then extra flags
out=\$1 mode=\$2 target=\$3; shift 3
"$BIN/mxpipe-loadgen" --mode "\$mode" --host "\${target%:*}" --port "\${target##*:}" -c $SESSIONS -n $MSGS -d $LIMIT \\
  --timeout 60 --domains $DOMAINS --rcpt-to u@bench.test --mail-from sender@$DKIM_DOMAIN --ehlo-name inject.bench.test \\
  --size $SIZE --json $LOADGEN_ARGS "\$@" >"\$out" || exit \$?
exec python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["acked"] == $MSGS else 3)' "\$out"
EOF
chmod +x "$OUT/inject-loadgen.sh"

LISTEN=()
for ((i = 0; i < ADDRS; i++)); do n=$((i + 1)); LISTEN+=(--listen "127.7.$((n >> 8)).$((n & 255))"); done
sink_start() { # side
  local side=$1
  rm -f "$OUT/$side-ca.pem" "$OUT/$side-progress.json"
  "${ON_PEER[@]}" "$BIN/examples/bench_sink" "${LISTEN[@]}" --starttls-port "$P25" --cert-names '*.bench.test' \
    --ca-out "$OUT/$side-ca.pem" --hostname sink.bench.test --threads 1 --max-secs 7200 \
    --progress "$OUT/$side-progress.json" --stats-json "$OUT/$side-sink.json" >"$OUT/$side-sink.log" 2>&1 &
  SINK_PID=$!
  wait_until 20 "the sink" grep -q '^sink ready' "$OUT/$side-sink.log" || die "sink did not start: $(cat "$OUT/$side-sink.log")"
  SINK_CPU0=$(cputime "$SINK_PID")
}
sink_count() { # side: messages the sink has counted (its progress file, rewritten every 100 ms)
  sed -n 's/.*"messages":\([0-9]*\).*/\1/p' "$OUT/$1-progress.json" 2>/dev/null | grep . || echo 0
}
sink_has_all() { [ "$(sink_count "$CUR_SIDE")" -ge "$MSGS" ]; }
sink_stop() { # side
  local side=$1 c1
  c1=$(cputime "$SINK_PID")
  kill -TERM "$SINK_PID"; wait "$SINK_PID" || true; SINK_PID=""
  echo "{\"sink_cpu_s\": $(awk -v a="$SINK_CPU0" -v b="$c1" 'BEGIN{printf "%.2f", b - a}')}" >"$OUT/$side-sinkcpu.json"
  [ -s "$OUT/$side-sink.json" ] || die "the sink wrote no stats ($side)"
}

# fsync tracing: every CPU, only three tracepoints (a few events per message); attributed afterwards.
trace_start() { # side
  [ "$FSYNC_TRACE" = 1 ] || return 0
  perf record -q -a -e syscalls:sys_enter_fsync -e syscalls:sys_enter_fdatasync -e sched:sched_process_fork \
    -o "$OUT/$1-fsync.data" >"$OUT/$1-perf.log" 2>&1 &
  PERF_PID=$!
  sleep 1   # perf needs a moment to open the events on every CPU
  kill -0 "$PERF_PID" 2>/dev/null || die "perf record failed: $(cat "$OUT/$1-perf.log")"
}
trace_stop() { # side root-pids…: count fsync/fdatasync of the roots' process trees into $side-fsync.json
  [ "$FSYNC_TRACE" = 1 ] || return 0
  local side=$1; shift
  kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""
  perf script -i "$OUT/$side-fsync.data" -F comm,pid,event,trace 2>/dev/null | python3 -c '
import json, re, sys
tree = set(int(p) for p in sys.argv[2:])
n = {"fsync": 0, "fdatasync": 0, "fsync_other": 0, "fdatasync_other": 0, "by_thread": {}}
for line in sys.stdin:
    m = re.match(r"\s*(.+?)\s+(\d+)\s+(\S+):", line)
    if not m:
        continue
    comm, pid, ev = m.group(1), int(m.group(2)), m.group(3)
    if ev == "sched:sched_process_fork":
        c = re.search(r"child_pid=(\d+)", line)
        if c and pid in tree:
            tree.add(int(c.group(1)))
    elif ev.endswith("sys_enter_fsync") or ev.endswith("sys_enter_fdatasync"):
        k = "fsync" if ev.endswith("fsync") and not ev.endswith("fdatasync") else "fdatasync"
        n[k if pid in tree else k + "_other"] += 1
        if pid in tree:
            n["by_thread"][f"{comm} {k}"] = n["by_thread"].get(f"{comm} {k}", 0) + 1
n["tree_pids"] = len(tree)
json.dump(n, open(sys.argv[1], "w"))
' "$OUT/$side-fsync.json" "$@"
  rm -f "$OUT/$side-fsync.data"
}
descendants() { # pid: the pid and every live descendant
  python3 - "$1" <<'PY'
import os, sys
kids = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            s = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        kids.setdefault(int(s[s.rindex(")") + 2:].split()[1]), []).append(int(p))
out, todo = [], [int(sys.argv[1])]
while todo:
    p = todo.pop(); out.append(p); todo += kids.get(p, [])
print(" ".join(map(str, out)))
PY
}

# inject SIDE ADDR:PORT: run every job, SESSIONS at once, timed; then wait for the sink to count MSGS.
inject_and_wait() {
  local side=$1 target=$2 t0 t1 rc=0
  t0=$(now_ns)
  if [ "$INJECTOR" = smtp-source ]; then
    echo "   injecting with smtp-source into $target"
    "${ON_PEER[@]}" timeout "$LIMIT" /usr/bin/time -f '{"wall_s": %e, "user_s": %U, "sys_s": %S}' -o "$OUT/$side-inject.time" \
      xargs -P "$SESSIONS" -L 1 "$OUT/inject-one.sh" <<<"$(sed "s|\$| $target|" "$OUT/jobs.txt")" \
      >"$OUT/$side-inject.log" 2>&1 || rc=$?
  else
    echo "   injecting with mxpipe-loadgen --mode $([ "$INJECTOR" = http ] && echo "http (batches of $HTTP_BATCH)" || echo inject) into $([ "$INJECTOR" = http ] && echo "$IP:$HTTP_PORT" || echo "$target")"
    local mode=inject extra=() mx=${side/#mxpipe/mx}
    if [ "$INJECTOR" = http ]; then
      mode=http; target=$IP:$HTTP_PORT; extra=(--batch "$HTTP_BATCH")
      [ "$TOKENS" = 1 ] && extra+=(--token-file "$OUT/$mx-inject.token")
    fi
    "${ON_PEER[@]}" timeout "$LIMIT" /usr/bin/time -f '{"wall_s": %e, "user_s": %U, "sys_s": %S}' -o "$OUT/$side-inject.time" \
      "$OUT/inject-loadgen.sh" "$OUT/$side-loadgen.json" "$mode" "$target" "${extra[@]}" >"$OUT/$side-inject.log" 2>&1 || rc=$?
  fi
  t1=$(now_ns)
  echo "{\"t0_ns\": $t0, \"inject_end_ns\": $t1, \"inject_rc\": $rc}" >"$OUT/$side-inject.json"
  [ "$rc" = 0 ] || { tail -5 "$OUT/$side-inject.log" >&2; die "$INJECTOR failed on $side (exit $rc): not every message was acknowledged"; }
  echo "   all $MSGS acknowledged in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b - a) / 1e9}') s; waiting for the sink"
  CUR_SIDE=$side
  wait_until "$LIMIT" "the sink" sink_has_all || die "$side: the sink counted $(sink_count "$side") of $MSGS within ${LIMIT}s"
}

# dkim_count SIDE ALG: the daemon's DKIM counters from GET /metrics (the admin token when TOKENS=1)
# into SIDE-dkim.json: {"alg", "signed", "unsigned", "failures"}.
dkim_count() {
  local side=$1 alg=$2
  metrics_get "$side"
  awk -v alg="$alg" '$1 == "mxpipe_dkim_signed_total" {s = $2} $1 == "mxpipe_dkim_unsigned_total" {u = $2}
    $1 == "mxpipe_dkim_failures_total" {f = $2}
    END {printf "{\"alg\": \"%s\", \"signed\": %d, \"unsigned\": %d, \"failures\": %d}\n", alg, s, u, f}' \
    "$OUT/$side-metrics.txt" >"$OUT/$side-dkim.json"
  echo "   DKIM ($alg): $(cat "$OUT/$side-dkim.json")"
}

# metrics_get SIDE: the daemon's GET /metrics (the admin token when TOKENS=1) into SIDE-metrics.txt.
metrics_get() {
  local side=$1 mx=${1/#mxpipe/mx} auth=()
  [ "$TOKENS" = 1 ] && auth=(-H "Authorization: Bearer $(tr -d '\n' <"$OUT/$mx-admin.token")")
  curl -sf --max-time 10 "${auth[@]}" "http://$IP:$HTTP_PORT/metrics" >"$OUT/$side-metrics.txt" \
    || die "$side: GET /metrics failed (curl exit $?)"
}

# redis_start SIDE: a redis-server for the cluster side, on 127.0.0.1:REDIS_PORT, empty, no persistence.
redis_start() {
  local side=$1
  command -v redis-server >/dev/null || die "$side: redis-server not found (apt-get install redis-server)"
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && die "$side: something already answers on 127.0.0.1:$REDIS_PORT (REDIS_PORT=…)"
  "${ON_PEER[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --protected-mode yes --loglevel warning >"$OUT/$side-redis.log" 2>&1 &
  REDIS_PID=$!
  wait_until 10 "redis-server" sh -c "redis-cli -p $REDIS_PORT ping 2>/dev/null | grep -q PONG" \
    || die "$side: redis-server did not start: $(cat "$OUT/$side-redis.log")"
  REDIS_CPU0=$(cputime "$REDIS_PID")
}
# redis_sample SIDE: while the burst runs, the Redis round trip (PING from another client, ms:
# "min max avg count" a line, one line a second) and, with REDIS_MONITOR=1, every command.
redis_sample() {
  local side=$1
  ( for ((k = 0; k < LIMIT; k++)); do "${ON_PEER[@]}" timeout 5 redis-cli -p "$REDIS_PORT" --latency --raw || break; done ) \
    >"$OUT/$side-redis-latency.txt" 2>/dev/null &
  REDIS_AUX_PIDS+=($!)
  if [ "$REDIS_MONITOR" = 1 ]; then
    "${ON_PEER[@]}" timeout "$LIMIT" redis-cli -p "$REDIS_PORT" monitor >"$OUT/$side-redis-monitor.txt" 2>/dev/null &
    REDIS_AUX_PIDS+=($!)
  fi
}
# redis_stop SIDE: the counters of the run (calls by command, Redis CPU), then stop it.
redis_stop() {
  local side=$1 p c1
  for p in "${REDIS_AUX_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
  REDIS_AUX_PIDS=()
  redis-cli -p "$REDIS_PORT" info commandstats >"$OUT/$side-redis-commandstats.txt" 2>&1 || true
  redis-cli -p "$REDIS_PORT" --scan --count 1000 2>/dev/null | head -100000 | wc -l >"$OUT/$side-redis-keys.count" || true
  c1=$(cputime "$REDIS_PID")
  echo "{\"redis_cpu_s\": $(awk -v a="$REDIS_CPU0" -v b="$c1" 'BEGIN{printf "%.2f", b - a}')}" >"$OUT/$side-rediscpu.json"
  kill -TERM "$REDIS_PID"; wait "$REDIS_PID" || true; REDIS_PID=""
}

# capture_start SIDE / capture_stop SIDE: the daemon's packets from its injection port (its
# replies), for the acceptance time of each message.
capture_start() {
  command -v tcpdump >/dev/null || die "$1: tcpdump not found (apt-get install tcpdump, or LATENCY=0)"
  "${ON_PEER[@]}" tcpdump -i lo -n --immediate-mode -s 0 -B 16384 -w "$OUT/$1-acks.pcap" "tcp and src host $IP and src port $INJ_PORT" \
    >"$OUT/$1-tcpdump.log" 2>&1 &
  CAP_PID=$!
  wait_until 10 "tcpdump" grep -q 'listening on' "$OUT/$1-tcpdump.log" || die "tcpdump did not start: $(cat "$OUT/$1-tcpdump.log")"
}
capture_stop() { # after the side: tcpdump, pinned with the load, may lag; at SIGINT it drops what it has not read
  local side=$1
  sleep 2
  kill -INT "$CAP_PID"; wait "$CAP_PID" || true; CAP_PID=""
  grep -h 'packets' "$OUT/$side-tcpdump.log" | tr '\n' ';' | sed 's/^/   tcpdump: /; s/$/\n/'
}
# ack_latency SIDE: acceptance ("250 … queued as ID" in the capture) to delivery (ID's
# "delivered" ts in the delivery log), per message, into SIDE-latency.json.
ack_latency() {
  local side=$1 mx=${1/#mxpipe/mx}
  python3 - "$OUT/$side-acks.pcap" "$OUT/$mx-delivery.jsonl" "$OUT/$side-latency.json" <<'PY'
import json, re, struct, sys
pcap, log, out = sys.argv[1:4]
data = open(pcap, "rb").read()
magic = struct.unpack("<I", data[:4])[0]
nano = magic == 0xA1B23C4D
link = struct.unpack("<I", data[20:24])[0]
skip = {0: 4, 1: 14, 113: 16, 276: 20}[link]
acked, pos, rx = {}, 24, re.compile(rb"250 2\.0\.0 Ok: queued as (\S+)\r\n")
while pos + 16 <= len(data):
    sec, frac, incl, _ = struct.unpack("<IIII", data[pos:pos + 16])
    pkt = data[pos + 16:pos + 16 + incl]
    pos += 16 + incl
    ip = pkt[skip:]
    if len(ip) < 20 or ip[0] >> 4 != 4:
        continue
    tcp = ip[(ip[0] & 15) * 4:]
    payload = tcp[(tcp[12] >> 4) * 4:]
    t = sec + frac / (1e9 if nano else 1e6)
    for m in rx.finditer(payload):
        acked.setdefault(int(m.group(1), 16), t)   # the reply says the spool id in hex
lat = []
for line in open(log):
    o = json.loads(line)
    if o.get("status") == "delivered" and o.get("spool_id") in acked:
        lat.append(o["ts"] - acked.pop(o["spool_id"]))
lat.sort()
q = lambda p: round(1e3 * lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None
json.dump({"messages": len(lat), "unmatched_acks": len(acked), "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
           "max_ms": q(1.0), "mean_ms": round(1e3 * sum(lat) / len(lat), 3) if lat else None}, open(out, "w"))
PY
  echo "   acceptance to delivery: $(cat "$OUT/$side-latency.json")"
}

# side_mxpipe SIDE ALG [LIMITS]: the daemon's run; ALG none (unsigned) or a DKIM algorithm (ed25519, rsa).
# Its files are SIDE-… and MX-… with MX = SIDE with mxpipe → mx (the plain side's names unchanged).
# LIMITS none (default), local ([[domain]] limits held by the node) or cluster (the same limits
# shared through Redis: [cluster] with its defaults).
side_mxpipe() {
  local side=$1 alg=$2 limits=${3:-none} mx=${1/#mxpipe/mx}
  echo "== 1. mxpipe serve (release; spool fsync on; shards $SHARDS$([ "$PIN" = 1 ] && echo " on CPU $SUT_CPU"); DKIM $alg$([ "$limits" = none ] || echo "; [[domain]] limits $limits"))"
  sink_start "$side"
  [ "$limits" = cluster ] && redis_start "$side"
  rm -rf "$OUT/$mx-spool" "$OUT/$mx-dkim.pem"
  if [ "$alg" != none ]; then
    "$BIN/mxpipe" dkim keygen --domain "$DKIM_DOMAIN" --selector s1 --algorithm "$alg" --bits "$DKIM_RSA_BITS" \
      --out "$OUT/$mx-dkim.pem" >"$OUT/$mx-dkim-keygen.txt" || die "mxpipe dkim keygen ($alg) failed"
  fi
  cat >"$OUT/$side.toml" <<TOML
# generated by perf/daemon.sh
[engine]
shards = $SHARDS
max_conns_per_dest = $PF_CONC
ehlo_name = "relay.bench.test"
kx = "$MX_KX"
[dns]
nameserver = "$DNS_ADDR"
[ports]
smtp = $P25
smtps = $((P25 + 1))
[tls]
ca_files = ["$OUT/$side-ca.pem"]
[spool]
dir = "$OUT/$mx-spool"
fsync = true
$([ -n "$MX_SPOOL_MAX_DELAY" ] && echo "max_delay = \"$MX_SPOOL_MAX_DELAY\"")
[inject.smtp]
listen = "$IP:$INJ_PORT"
allowed_networks = ["127.0.0.0/8"]
# One injector host opens all $SESSIONS sessions: the per-client cap (default 50) is for
# strangers, not for the benchmark's own load side.
max_conns_per_ip = 10000
[inject.http]
listen = "$IP:$HTTP_PORT"
$([ "$TOKENS" = 1 ] && echo "tokens_file = \"$OUT/$mx-tokens\"")
[log]
$([ "$MX_DELIVERY_LOG" = 1 ] && echo "delivery_log = \"$OUT/$mx-delivery.jsonl\"")
$([ "$alg" != none ] && printf '[[dkim]]\ndomain = "%s"\nselector = "s1"\nkey = "%s"\nalgorithm = "%s"\n' "$DKIM_DOMAIN" "$OUT/$mx-dkim.pem" "$alg")
$([ "$limits" = cluster ] && printf '[cluster]\nredis = ["redis://127.0.0.1:%s/"]\nnode_id = "bench1"\n' "$REDIS_PORT")
TOML
  if [ "$limits" != none ]; then
    for ((i = 0; i < DOMAINS; i++)); do
      printf '[[domain]]\nname = "d%d.bench.test"\nmax_conns = %d\n' "$i" "$LIMIT_CONNS"
      [ "$LIMIT_RATE" = none ] || printf 'msgs_per_s = %s\n' "$LIMIT_RATE"
    done >>"$OUT/$side.toml"
  fi
  rm -f "$OUT/$mx-delivery.jsonl" "$OUT/$mx-tokens"
  # As deployed: the HTTP API takes bearer tokens (an admin one for the operator, an inject one
  # for an application); SMTP injection is the load, so tokens must cost it nothing.
  if [ "$TOKENS" = 1 ]; then
    "$BIN/mxpipe" token ops --scope admin --tokens-file "$OUT/$mx-tokens" >"$OUT/$mx-admin.token"
    "$BIN/mxpipe" token app --scope inject --tokens-file "$OUT/$mx-tokens" >"$OUT/$mx-inject.token"
  fi
  "${ON_SUT[@]}" "$MXPIPE_BIN" serve --config "$OUT/$side.toml" >"$OUT/$side-serve.out" 2>"$OUT/$side-serve.err" &
  DPID=$!
  wait_until 20 "mxpipe serve" grep -q 'injection SMTP on' "$OUT/$side-serve.out" || die "serve did not start ($side): $(cat "$OUT/$side-serve.err")"
  trace_start "$side"
  [ "$PROFILE" = 1 ] && { perf record -q $PROFILE_ARGS -p "$DPID" -o "$OUT/$mx-profile.data" >/dev/null 2>&1 & PROF_PID=$!; sleep 0.5; }
  local c0 c1; c0=$(cputime "$DPID")
  [ "$limits" = cluster ] && redis_sample "$side"
  [ "$limits" != none ] && [ "$LATENCY" = 1 ] && capture_start "$side"
  inject_and_wait "$side" "$IP:$INJ_PORT"
  c1=$(cputime "$DPID")
  # per thread, for where the daemon's time goes
  # (threads of the blocking pool that already exited are not listed: their time is in cpu_s above)
  for t in /proc/"$DPID"/task/*; do
    printf '%s\t%s\t%s\n' "$(cat "$t/comm")" "$(awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "$t/stat")" \
      "$(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status")"
  done | sort | awk -F'\t' '{c[$1] += $2; n[$1]++; x[$1] += $3}
    END {for (k in c) printf "{\"thread\": \"%s\", \"threads\": %d, \"cpu_s\": %.2f, \"ctx_switches\": %d}\n", k, n[k], c[k], x[k]}' >"$OUT/$side-threads.jsonl"
  [ "$PROFILE" = 1 ] && { kill -INT "$PROF_PID"; wait "$PROF_PID" || true; PROF_PID=""; }
  sleep 1   # late duplicates would show in the final count
  [ -n "$CAP_PID" ] && capture_stop "$side"
  [ "$alg" = none ] || dkim_count "$side" "$alg"
  if [ "$limits" = cluster ]; then
    metrics_get "$side"
    awk '$1 == "mxpipe_cluster_redis_calls_total" {c = $2} $1 == "mxpipe_cluster_redis_failures_total" {f = $2}
      $1 == "mxpipe_cluster_fallbacks_total" {b = $2} $1 == "mxpipe_cluster_live_nodes" {n = $2}
      END {printf "{\"redis_calls\": %d, \"redis_failures\": %d, \"fallbacks\": %d, \"live_nodes\": %d}\n", c, f, b, n}' \
      "$OUT/$side-metrics.txt" >"$OUT/$side-cluster.json"
    echo "   cluster: $(cat "$OUT/$side-cluster.json")"
  fi
  trace_stop "$side" "$DPID"
  kill -TERM "$DPID"; wait "$DPID" || true; DPID=""
  [ "$limits" = cluster ] && redis_stop "$side"
  echo "{\"cpu_s\": $(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b - a}')}" >"$OUT/$side-cpu.json"
  sink_stop "$side"
  grep -h 'stopped' "$OUT/$side-serve.out" | sed 's/^/   /' || true
  [ ! -f "$OUT/$mx-delivery.jsonl" ] || grep -c '"status":"delivered"' "$OUT/$mx-delivery.jsonl" >"$OUT/$side-delivered.count" || true
  if [ -f "$OUT/$side-acks.pcap" ]; then
    [ -f "$OUT/$mx-delivery.jsonl" ] && ack_latency "$side"
    rm -f "$OUT/$side-acks.pcap"
  fi
  rm -rf "$OUT/$mx-spool" "$OUT/$mx-delivery.jsonl"
  [ "$alg" = none ] || python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["signed"] == int(sys.argv[2]) else 1)' \
    "$OUT/$side-dkim.json" "$MSGS" || die "$side: the daemon signed $(cat "$OUT/$side-dkim.json") messages, not all $MSGS"
  if [ "$PROFILE" = 1 ]; then
    # flat by thread and symbol; by thread; call chains (callers) of the top symbols. perf.data is kept.
    perf report -i "$OUT/$mx-profile.data" --no-children --sort comm,dso,symbol -g none --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -80 >"$OUT/$mx-profile.txt" || true
    perf report -i "$OUT/$mx-profile.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' >"$OUT/$mx-profile-threads.txt" || true
    perf report -i "$OUT/$mx-profile.data" --no-children --sort symbol -g caller,0.5,callee --stdio 2>/dev/null | grep -v '^$' | head -400 >"$OUT/$mx-profile-callers.txt" || true
    # by thread, then user code or the system call each sample was taken in (µs per message)
    python3 perf/profile_by_syscall.py "$OUT/$mx-profile.data" "$MSGS" >"$OUT/$mx-profile-syscalls.txt" 2>&1 || true
  fi
}

side_postfix() {
  echo "== 2. Postfix $(postconf -d -h mail_version 2>/dev/null) as the relay (durable queue; smtp client TLS encrypt, caches, TLS reuse$([ "$PIN" = 1 ] && echo "; on CPU $SUT_CPU"))"
  sink_start postfix
  PF_TRANSPORT=$OUT/transport.txt PF_CA=$OUT/postfix-ca.pem PF_CPU=$PF_CPU PF_LOG=$OUT/postfix.log PF_TIMEOUT=$LIMIT \
    bash "$PFS" start | sed 's/^/   /'
  cp "$PF_CONF/main.cf" "$OUT/postfix-main.cf"; cp "$PF_CONF/master.cf" "$OUT/postfix-master.cf"
  local master c0 c1
  master=$(tr -d ' ' <"$PF_SPOOL/pid/master.pid")
  trace_start postfix
  read -r c0 _ < <(bash "$PFS" cpu)
  local roots; roots=$(descendants "$master")
  inject_and_wait postfix "$IP:$PF_PORT"
  read -r c1 _ < <(bash "$PFS" cpu)
  sleep 1
  # shellcheck disable=SC2086
  trace_stop postfix $roots
  echo "{\"cpu_s\": $(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b - a}')}" >"$OUT/postfix-cpu.json"
  wait_until 30 "Postfix's queue" sh -c "[ -z \"\$(find $PF_SPOOL/incoming $PF_SPOOL/active $PF_SPOOL/deferred -type f -print -quit 2>/dev/null)\" ]" \
    || echo "   WARNING: Postfix's queue is not empty"
  sleep 1   # postlogd writes the last lines
  grep -c 'status=sent' "$OUT/postfix.log" >"$OUT/postfix-delivered.count" || true
  grep -o 'conn_use=[0-9]*' "$OUT/postfix.log" | wc -l >"$OUT/postfix-conn-use.count" || true
  bash "$PFS" stop >/dev/null
  sink_stop postfix
}

for side in $SIDES; do
  echo "{\"loadavg\": \"$(load_avg)\"}" >"$OUT/$side-load.json"   # the machine is shared: load per side
  case "$side" in
    mxpipe) side_mxpipe mxpipe none;;
    mxpipe-ed25519) side_mxpipe mxpipe-ed25519 ed25519;;
    mxpipe-rsa) side_mxpipe mxpipe-rsa rsa;;
    mxpipe-limits) side_mxpipe mxpipe-limits none local;;
    mxpipe-cluster) side_mxpipe mxpipe-cluster none cluster;;
    postfix) side_postfix;;
    *) die "SIDES: of mxpipe, mxpipe-ed25519, mxpipe-rsa, mxpipe-limits, mxpipe-cluster and postfix, not $side";;
  esac
  python3 - "$OUT" "$side" "$MSGS" <<'PY' || die "$side lost or duplicated messages"
import json, sys
out, side, msgs = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = json.load(open(f"{out}/{side}-sink.json"))
i = json.load(open(f"{out}/{side}-inject.json"))
e2e = (s["last_ns"] - i["t0_ns"]) / 1e9
print(f"   sink: {s['messages']}/{msgs} messages, {s['starttls']['connections']} connections; "
      f"end to end {e2e:.2f} s = {msgs / e2e:,.0f} msg/s")
sys.exit(0 if s["messages"] == msgs else 1)
PY
done
echo "{\"uptime\": \"$(uptime)\", \"loadavg\": \"$(load_avg)\"}" >"$OUT/load-after.json"

cat >"$OUT/params.json" <<JSON
{"msgs": $MSGS, "domains": $DOMAINS, "injector": "$INJECTOR", "http_batch": $HTTP_BATCH, "size": $SIZE, "body": $BODY, "addrs": $ADDRS, "sessions": $SESSIONS, "p25": $P25,
 "pf_conc": $PF_CONC, "pf_cache_dests": "$PF_CACHE_DESTS", "mx_kx": "$MX_KX", "mx_delivery_log": $MX_DELIVERY_LOG, "fsync_trace": $FSYNC_TRACE,
 "dkim_domain": "$DKIM_DOMAIN", "dkim_rsa_bits": $DKIM_RSA_BITS, "limit_conns": $LIMIT_CONNS, "limit_rate": "$LIMIT_RATE", "redis_monitor": $REDIS_MONITOR, "pin": $PIN, "sut_cpu": $SUT_CPU, "peer_cpu": $PEER_CPU, "sides": "$SIDES",
 "cpus": $(nproc), "cpu_model": "$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)",
 "postfix": "$(postconf -d -h mail_version 2>/dev/null)", "git": "$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo +dirty)",
 "command": "MSGS=$MSGS DOMAINS=$DOMAINS SIZE=$SIZE ADDRS=$ADDRS SESSIONS=$SESSIONS$([ "$FSYNC_TRACE" = 1 ] || echo " FSYNC_TRACE=0")$([ "$PIN" = 1 ] || echo " PIN=0")$([ -z "$PF_CACHE_DESTS" ] || echo " PF_CACHE_DESTS=$PF_CACHE_DESTS")$([ "$SIDES" = "mxpipe postfix" ] || echo " SIDES=\\\"$SIDES\\\"")$([ "$MX_KX" = default ] || echo " MX_KX=$MX_KX")$([ "$DKIM_RSA_BITS" = 2048 ] || echo " DKIM_RSA_BITS=$DKIM_RSA_BITS")$([ "$TOKENS" = 1 ] || echo " TOKENS=0")$([ -z "$MX_SPOOL_MAX_DELAY" ] || echo " MX_SPOOL_MAX_DELAY=$MX_SPOOL_MAX_DELAY")$([ "$INJECTOR" = smtp-source ] || echo " INJECTOR=$INJECTOR")$([ "$INJECTOR" != http ] || echo " HTTP_BATCH=$HTTP_BATCH")$([ "$LIMIT_CONNS" = 8 ] || echo " LIMIT_CONNS=$LIMIT_CONNS")$([ "$LIMIT_RATE" = 100000 ] || echo " LIMIT_RATE=$LIMIT_RATE")$([ "$REDIS_MONITOR" = 0 ] || echo " REDIS_MONITOR=1") bash perf/daemon.sh"}
JSON
python3 perf/summarize_daemon.py "$OUT" | tee "$OUT/summary.md"
