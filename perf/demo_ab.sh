#!/usr/bin/env bash
# A/B of two `mxpipe demo` variants, side by side in one run on this machine (loopback only).
# The runner behind the thin wrappers perf/mta_sts.sh and perf/dane.sh.
#
# `mxpipe demo` is the whole engine against an in-process world (DNS server, sink on many 127.1.x.y
# addresses, an HTTPS policy host) and sends its burst twice: burst 1 cold (DNS, policy lookups,
# full handshakes), burst 2 warm (everything cached, idle connections reused).
#
# ROUNDS rounds, each one run of variant A and one of variant B, in ABBA order (odd rounds A
# first, even rounds B first) so a slow drift of the machine falls on both. Each run is a new
# process, bounded by `timeout $RUN_LIMIT`. Writes the raw JSON of every run
# (run-N-KEY.json, stderr beside it), params.json, load-{before,after}.json and summary.md
# (perf/summarize_demo_ab.py: medians, ratios of medians, paired per-round ratios, and what the
# report KIND adds) to $OUT.
#
# Usage (the caller says what the variants are, what they are called and what to show):
#   bash perf/demo_ab.sh --name NAME --kind KIND \
#     --variant 'KEY|LABEL|SHORT|DEMO ARGS' --variant 'KEY|LABEL|SHORT|DEMO ARGS' \
#     [--columns c1,c2,..] [--median-columns c1,..] [--ratio-label 'A / B'] [--command 'how to rerun']
#   KEY names the files; LABEL the variant in tables; SHORT in running text; DEMO ARGS are
#   extra `mxpipe demo` arguments, split on spaces (may be empty). KIND is a report of
#   perf/summarize_demo_ab.py (mta_sts, dane), which also lists the columns.
# Environment: DOMAINS=600 MSGS=20000 ROUNDS=3 RUN_LIMIT=300 OUT=perf/out/NAME-<time>;
#   MXPIPE_BIN=path skips the release build and runs that binary (smoke tests of the scripts
#   only: the summary marks the commit "+prebuilt").
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="" KIND="" COLUMNS="" MEDIAN_COLUMNS="" RATIO_LABEL="" COMMAND=""
VARIANTS=()
die() { echo "${NAME:-demo_ab}.sh: $*" >&2; exit 1; }
while (( $# )); do
  (( $# >= 2 )) || die "$1 needs a value"
  case $1 in
    --name) NAME=$2 ;;
    --kind) KIND=$2 ;;
    --variant) VARIANTS+=("$2") ;;
    --columns) COLUMNS=$2 ;;
    --median-columns) MEDIAN_COLUMNS=$2 ;;
    --ratio-label) RATIO_LABEL=$2 ;;
    --command) COMMAND=$2 ;;
    *) die "unknown argument: $1 (see the header of perf/demo_ab.sh)" ;;
  esac
  shift 2
done
[ -n "$NAME" ] && [ -n "$KIND" ] || die "--name and --kind are required"
(( ${#VARIANTS[@]} == 2 )) || die "give exactly two --variant 'KEY|LABEL|SHORT|ARGS'"
KEYS=() LABELS=() SHORTS=() ARGSTR=()
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r k l s a <<<"$v"
  [[ $k =~ ^[a-z0-9_]+$ ]] || die "variant key '$k' must be [a-z0-9_]+"
  KEYS+=("$k") LABELS+=("${l:-$k}") SHORTS+=("${s:-$k}") ARGSTR+=("$a")
done
[ "${KEYS[0]}" != "${KEYS[1]}" ] || die "the two variants need different keys"

DOMAINS=${DOMAINS:-600}
MSGS=${MSGS:-20000}
ROUNDS=${ROUNDS:-3}
RUN_LIMIT=${RUN_LIMIT:-300}          # seconds, bound on each demo run
OUT=${OUT:-perf/out/$NAME-$(date -u +%Y%m%dT%H%M%SZ)}
[[ $ROUNDS =~ ^[0-9]+$ ]] && (( ROUNDS >= 1 )) || die "ROUNDS must be at least 1"
[ -n "$COMMAND" ] || COMMAND="bash perf/demo_ab.sh --name $NAME --kind $KIND ..."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ -n "${MXPIPE_BIN:-}" ]; then
  BIN=$(realpath "$MXPIPE_BIN") PREBUILT=+prebuilt
else
  cargo build --release --locked -q
  BIN=$PWD/target/release/mxpipe PREBUILT=""
fi
load() { python3 -c 'import json,sys; print(json.dumps({"uptime": sys.argv[1], "loadavg": sys.argv[2]}))' "$(uptime)" "$(cut -d' ' -f1-3 /proc/loadavg)"; }
load >"$OUT/load-before.json"

run() { # round index-of-variant
  local r=$1 i=$2 rc=0 args=()
  local v=${KEYS[$i]}
  read -r -a args <<<"${ARGSTR[$i]}"
  echo "== round $r: $v"
  timeout "$RUN_LIMIT" "$BIN" demo --domains "$DOMAINS" --messages "$MSGS" --json "${args[@]}" \
    >"$OUT/run-$r-$v.json" 2>"$OUT/run-$r-$v.err" || rc=$?
  [ "$rc" = 0 ] || { tail -5 "$OUT/run-$r-$v.err" >&2; die "round $r ($v): mxpipe demo exited $rc$([ "$rc" = 124 ] && echo " (timed out after ${RUN_LIMIT}s)")"; }
  python3 perf/summarize_demo_ab.py --progress "$KIND" "$OUT/run-$r-$v.json"
}
for ((r = 1; r <= ROUNDS; r++)); do
  if (( r % 2 )); then run "$r" 0; run "$r" 1; else run "$r" 1; run "$r" 0; fi
done
load >"$OUT/load-after.json"

GIT="$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo +dirty)$PREBUILT"
CPU_MODEL=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)
python3 - "$OUT/params.json" "$NAME" "$KIND" "$DOMAINS" "$MSGS" "$ROUNDS" "$RUN_LIMIT" "$(nproc)" "$CPU_MODEL" "$GIT" \
  "$COLUMNS" "$MEDIAN_COLUMNS" "$RATIO_LABEL" "DOMAINS=$DOMAINS MSGS=$MSGS ROUNDS=$ROUNDS $COMMAND" "${VARIANTS[@]}" <<'PY'
import json, sys
(path, name, kind, domains, msgs, rounds, run_limit, cpus, cpu_model, git,
 columns, median_columns, ratio_label, command, *variants) = sys.argv[1:]
vs = []
for v in variants:
    k, l, s, a = (v.split("|", 3) + ["", "", ""])[:4]
    vs.append({"key": k, "label": l or k, "short": s or k, "args": a})
json.dump({"name": name, "kind": kind, "domains": int(domains), "msgs": int(msgs), "rounds": int(rounds),
           "run_limit": int(run_limit), "cpus": int(cpus), "cpu_model": cpu_model, "git": git, "variants": vs,
           "columns": columns, "median_columns": median_columns, "ratio_label": ratio_label, "command": command},
          open(path, "w"), indent=1)
PY

python3 perf/summarize_demo_ab.py "$OUT" | tee "$OUT/summary.md"
