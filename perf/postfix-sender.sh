#!/usr/bin/env bash
# postfix-sender.sh — the installed Postfix reconfigured as an outbound RELAY (the sender under test
# in perf/delivery.sh), on loopback only:
#   * smtpd on ${PF_LISTEN}:${PF_PORT} (default 127.0.0.1:2600), plaintext, mynetworks=127.0.0.0/8, relay
#     permitted; every message injected there is put ON HOLD (so the burst is fully queued first), or,
#     with PF_HOLD=no, queued and delivered at once (perf/daemon.sh: end-to-end, injection included);
#   * transport_maps = hash:$PF_CONF/bench_transport (from $PF_TRANSPORT: "d{i}.bench.test smtp:[IP]:PORT");
#   * smtp client: mandatory TLS (smtp_tls_security_level=encrypt; IP-literal next hops, so no name check),
#     TLS session cache (btree, via tlsmgr), connection cache on demand (10 s), and TLS connection REUSE
#     (smtp_tls_connection_reuse=yes through tlsproxy: without it Postfix never reuses a TLS connection),
#     default_destination_concurrency_limit=$PF_CONC, max_use=$PF_MAX_USE, in_flow_delay=0, no DNS.
# It is a SEPARATE Postfix instance (config $PF_CONF=/etc/postfix-bench, queue /var/spool/postfix-bench, data
# /var/lib/postfix-bench) of the installed Postfix: the default instance (tests/peers/postfix-peer.sh, on
# 127.0.0.1:2525/2526) is neither stopped nor reconfigured, so tests using it can run meanwhile.
#
# Usage (root):
#   PF_TRANSPORT=map.txt PF_CA=ca.pem bash perf/postfix-sender.sh start    # stop any Postfix, configure, start
#   bash perf/postfix-sender.sh inject BURST.jsonl                          # python smtplib, $PF_INJECT_CONNS conns
#   bash perf/postfix-sender.sh deliver [EXPECTED]                          # release the hold, flush, wait empty;
#        prints one JSON line {"messages","elapsed_s","cpu_s",...}; fails (printing mailq) after $PF_TIMEOUT s
#   bash perf/postfix-sender.sh cpu                                         # cumulative CPU s of all Postfix processes
#   bash perf/postfix-sender.sh stop                                        # empty the queue, stop the instance
# Pinning: PF_CPU=0 pins the master (and so every child it forks) to that CPU with taskset.
set -euo pipefail
PF_LISTEN=${PF_LISTEN:-127.0.0.1}
PF_PORT=${PF_PORT:-2600}
PF_CONC=${PF_CONC:-8}
PF_PROC_LIMIT=${PF_PROC_LIMIT:-200}
PF_MAX_USE=${PF_MAX_USE:-10000}
PF_TLS_REUSE=${PF_TLS_REUSE:-yes}
PF_HOLD=${PF_HOLD:-yes}
# smtp_connection_cache_destinations: empty (Postfix's default: connections are cached only "on
# demand", for a destination with a backlog), or e.g. static:all to cache every connection.
PF_CACHE_DESTS=${PF_CACHE_DESTS:-}
# Postfix accepts in inet_interfaces only addresses configured on an interface (127.0.0.1, not the
# rest of 127/8); master.cf's listener address need not be one of them.
PF_INET_INTERFACES=${PF_INET_INTERFACES:-$PF_LISTEN}
PF_CPU=${PF_CPU:-}
PF_LOG=${PF_LOG:-/var/log/postfix-bench.log}
PF_TIMEOUT=${PF_TIMEOUT:-600}
PF_INJECT_CONNS=${PF_INJECT_CONNS:-8}
PF_CONF=${PF_CONF:-/etc/postfix-bench}
SPOOL=${PF_SPOOL:-/var/spool/postfix-bench}
DATA_DIR=${PF_DATA:-/var/lib/postfix-bench}
cmd=${1:-}
case "$PF_CONF" in /etc/postfix|/etc/postfix/) echo "refusing: PF_CONF must not be the default instance's /etc/postfix" >&2; exit 2;; esac

case "$PF_LISTEN" in 127.*) ;; *) echo "refusing: PF_LISTEN must be loopback (127.0.0.0/8)" >&2; exit 2;; esac
[ "$(id -u)" = 0 ] || { echo "postfix-sender.sh: run as root" >&2; exit 2; }

running() { [ -f "$PF_CONF/main.cf" ] && postfix -c "$PF_CONF" status >/dev/null 2>&1; }
master_pid() { tr -d ' ' < "$SPOOL/pid/master.pid"; }

# Sum of utime+stime (+cutime+cstime: children already reaped) of the master and every live
# descendant, in seconds. Before/after differences give Postfix's CPU over an interval: a child
# alive at the first reading that exits later moves its whole time into the master's cutime.
pf_cpu() {
  local m; m=$(master_pid)
  python3 - "$m" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK"); master = int(sys.argv[1])
procs = {}
for p in os.listdir("/proc"):
    if not p.isdigit(): continue
    try:
        s = open(f"/proc/{p}/stat").read()
    except OSError:
        continue
    f = s[s.rindex(")") + 2:].split()
    procs[int(p)] = (int(f[1]), sum(int(x) for x in f[11:15]))   # ppid, utime+stime+cutime+cstime
keep = {master}; changed = True
while changed:
    changed = False
    for pid, (pp, _) in procs.items():
        if pp in keep and pid not in keep:
            keep.add(pid); changed = True
print(f"{sum(procs[p][1] for p in keep if p in procs) / hz:.2f} {len(keep)}")
PY
}

queue_files() {  # 0 when no message is in incoming/active/deferred/maildrop/hold (stops at the first file)
  local n
  n=$(find "$SPOOL/incoming" "$SPOOL/active" "$SPOOL/deferred" "$SPOOL/maildrop" "$SPOOL/hold" -type f -print -quit 2>/dev/null | wc -l)
  echo "$n"
}

case "$cmd" in
  stop)
    if command -v postfix >/dev/null && running; then
      postsuper -c "$PF_CONF" -d ALL >/dev/null 2>&1 || true
      postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
    fi
    echo "postfix sender ($PF_CONF) stopped"
    exit 0;;
  cpu) pf_cpu; exit 0;;
  inject)
    burst=${2:?usage: inject BURST.jsonl}
    python3 - "$burst" "$PF_LISTEN" "$PF_PORT" "$PF_INJECT_CONNS" <<'PY'
import json, smtplib, sys, threading, time
path, host, port, conns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = [json.loads(l) for l in open(path) if l.strip()]
errors = []
def worker(k):
    try:
        s = smtplib.SMTP(host, port, local_hostname="inject.bench.test", timeout=60)
        for i in range(k, len(lines), conns):
            m = lines[i]
            s.sendmail(m["from"], m["to"], m["data"].encode())
        s.quit()
    except Exception as e:
        errors.append(f"connection {k}: {e!r}")
t0 = time.time()
ts = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
if errors:
    sys.exit("inject failed: " + "; ".join(errors))
print(f"injected {len(lines)} messages in {time.time() - t0:.1f} s over {conns} connections", file=sys.stderr)
PY
    exit 0;;
  deliver)
    expected=${2:-}
    held=$(find "$SPOOL/hold" -type f | wc -l)
    [ -z "$expected" ] || [ "$held" -eq "$expected" ] || { echo "postfix-sender: $held messages on hold, expected $expected" >&2; postqueue -c "$PF_CONF" -p | tail -5 >&2; exit 1; }
    postsuper -c "$PF_CONF" -H ALL >/dev/null 2>&1   # hold -> deferred (not timed: a rename per message)
    read -r c0 _ < <(pf_cpu)
    t0=$(date +%s.%N)
    postqueue -c "$PF_CONF" -f              # flush: qmgr schedules every deferred message now
    deadline=$(( $(date +%s) + PF_TIMEOUT ))
    while [ "$(queue_files)" != 0 ]; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "postfix-sender: queue not empty after ${PF_TIMEOUT}s; mailq (first 40 lines):" >&2
        postqueue -c "$PF_CONF" -p 2>&1 | head -40 >&2; exit 1
      fi
      sleep 0.2
    done
    t1=$(date +%s.%N)
    read -r c1 nproc < <(pf_cpu)
    python3 -c "import json,sys; t0,t1,c0,c1=map(float,sys.argv[1:5]); print(json.dumps({'messages':int(sys.argv[5]),'elapsed_s':round(t1-t0,3),'cpu_s':round(c1-c0,2),'processes_now':int(sys.argv[6])}))" \
      "$t0" "$t1" "$c0" "$c1" "$held" "$nproc"
    exit 0;;
  start) ;;
  *) echo "usage: $0 start|inject BURST|deliver [N]|cpu|stop" >&2; exit 2;;
esac

# ---- start
: "${PF_TRANSPORT:?PF_TRANSPORT=file with 'domain smtp:[ip]:port' lines is required}"
: "${PF_CA:?PF_CA=the sink CA (PEM) is required}"
if ! command -v postfix >/dev/null; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  [ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix
fi
if running; then postfix -c "$PF_CONF" stop >/dev/null; fi
for _ in $(seq 50); do running || break; sleep 0.1; done
mkdir -p "$PF_CONF" "$SPOOL" "$DATA_DIR"
rm -rf "${SPOOL:?}"/{incoming,active,deferred,hold,maildrop,defer,bounce,trace,corrupt,saved,flush}  # a clean queue
rm -f "$DATA_DIR"/*_scache.db          # TLS sessions of an earlier sink are useless
cp "$PF_TRANSPORT" "$PF_CONF/bench_transport"
cat > "$PF_CONF/main.cf" <<MAIN
# generated by perf/postfix-sender.sh — loopback-only relay: the sender under test
compatibility_level = 3.6
queue_directory = $SPOOL
data_directory = $DATA_DIR
myhostname = relay.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
inet_interfaces = $PF_INET_INTERFACES
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
maillog_file_prefixes = /var, /dev/stdout, $(dirname "$PF_LOG")
maillog_file = $PF_LOG
# routing: every bench domain -> the sink address its MX has in DNS; nothing else goes anywhere
transport_maps = hash:$PF_CONF/bench_transport
default_transport = error:not a bench destination
relay_transport = error:not a bench destination
smtp_dns_support_level = disabled
# load-test friendly (the same settings tests/peers/postfix-peer.sh uses for the receiving side)
in_flow_delay = 0
default_process_limit = $PF_PROC_LIMIT
max_use = $PF_MAX_USE
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_error_sleep_time = 0
smtpd_peername_lookup = no
message_size_limit = 52428800
# scheduling: as many connections per destination as mxpipe's --max-conns default
default_destination_concurrency_limit = $PF_CONC
# SMTP client: mandatory TLS, session cache, connection cache, TLS connection reuse
smtp_tls_security_level = encrypt
smtp_tls_CAfile = $PF_CA
smtp_tls_session_cache_database = btree:\${data_directory}/smtp_scache
smtp_tls_session_cache_timeout = 3600s
smtp_tls_loglevel = 0
smtp_connection_cache_on_demand = yes
smtp_connection_cache_destinations = $PF_CACHE_DESTS
smtp_connection_cache_time_limit = 10s
smtp_tls_connection_reuse = $PF_TLS_REUSE
smtp_helo_name = relay.bench.test
MAIN

cat > "$PF_CONF/master.cf" <<MASTER
# generated by perf/postfix-sender.sh
$PF_LISTEN:$PF_PORT inet n - n - - smtpd
$( [ "$PF_HOLD" = yes ] && echo "  -o smtpd_end_of_data_restrictions=check_client_access,static:HOLD" )
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
tlsproxy  unix  -       -       n       -       0       tlsproxy
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
MASTER

postmap -c "$PF_CONF" "hash:$PF_CONF/bench_transport"
postfix -c "$PF_CONF" set-permissions >/dev/null 2>&1 || true
postfix -c "$PF_CONF" check
if [ -n "$PF_CPU" ]; then taskset -c "$PF_CPU" postfix -c "$PF_CONF" start >/dev/null; else postfix -c "$PF_CONF" start >/dev/null; fi
for _ in $(seq 50); do ss -Hltn 2>/dev/null | grep "$PF_LISTEN:$PF_PORT " >/dev/null && break; sleep 0.1; done
ss -Hltn | grep "$PF_LISTEN:$PF_PORT " >/dev/null || { echo "postfix-sender: smtpd not listening on $PF_LISTEN:$PF_PORT" >&2; tail -20 "$PF_LOG" >&2 || true; exit 1; }
if [ -n "$PF_CPU" ]; then taskset -a -p -c "$PF_CPU" "$(master_pid)" >/dev/null; fi   # children inherit
echo "postfix sender ($PF_CONF) up: inject on $PF_LISTEN:$PF_PORT ($( [ "$PF_HOLD" = yes ] && echo held || echo "delivered at once")), master pid $(master_pid), log $PF_LOG"
