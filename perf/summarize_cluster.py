#!/usr/bin/env python3
"""Markdown summary (stdout) and results.json of one perf/cluster.sh run:
python3 perf/summarize_cluster.py OUTDIR

Part 1 (OUTDIR/one-K/, perf/daemon.sh runs with the sides mxpipe-limits and mxpipe-cluster):
throughput, CPU, Redis calls per message, Redis's calls by command, round trip and drain.
Part 2 (OUTDIR/three/): three nodes, one Redis, one sink: counts, peak connections per
destination, the rate-limited destination's rate, Redis calls per message."""
import glob
import json
import math
import os
import re
import statistics
import sys

out = sys.argv[1]
LABEL = {"mxpipe-limits": "local limits", "mxpipe-cluster": "limits shared through Redis"}
COST_GOAL, CALLS_GOAL = 0.10, 0.05


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def count(path):
    try:
        return int(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def commandstats(path):
    """INFO commandstats: {command: {"calls", "usec", "usec_per_call"}}."""
    stats = {}
    try:
        text = open(path).read()
    except OSError:
        return stats
    for m in re.finditer(r"cmdstat_([a-z|_-]+):calls=(\d+),usec=(\d+),usec_per_call=([\d.]+)", text):
        stats[m.group(1)] = {"calls": int(m.group(2)), "usec": int(m.group(3)), "usec_per_call": float(m.group(4))}
    return stats


def latency(path):
    """redis-cli --latency --raw lines "min max avg count" (ms), one a second."""
    rows = []
    try:
        for line in open(path):
            p = line.split()
            if len(p) == 4:
                rows.append([float(x) for x in p])
    except (OSError, ValueError):
        pass
    if not rows:
        return None
    return {"seconds": len(rows), "avg_ms": statistics.mean(r[2] for r in rows), "worst_second_avg_ms": max(r[2] for r in rows),
            "max_ms": max(r[1] for r in rows)}


def monitor(path):
    """redis-cli MONITOR: calls by command and by the key's hash-tag kind ({conn:…}, {rate:…})."""
    by = {}
    try:
        for line in open(path, errors="replace"):
            m = re.search(r'\] "([a-zA-Z]+)"(?: "([^"]*)")?(?: "([^"]*)")?(?: "([^"]*)")?', line)
            if not m:
                continue
            cmd = m.group(1).lower()
            kind = ""
            for g in m.groups()[1:]:
                k = re.search(r"\{([a-z]+):", g or "")
                if k:
                    kind = k.group(1)
                    break
            key = f"{cmd} {kind}".strip()
            by[key] = by.get(key, 0) + 1
    except OSError:
        return None
    return by or None


def side(d, name, msgs):
    sink, inj, cpu = load(f"{d}/{name}-sink.json"), load(f"{d}/{name}-inject.json"), load(f"{d}/{name}-cpu.json")
    if not sink or not inj or not cpu:
        return None
    e2e = (sink["last_ns"] - inj["t0_ns"]) / 1e9
    inject = (inj["inject_end_ns"] - inj["t0_ns"]) / 1e9
    lg = load(f"{d}/{name}-loadgen.json") or {}
    cl = load(f"{d}/{name}-cluster.json")
    r = {
        "side": name,
        "label": LABEL.get(name, name),
        "messages_at_sink": sink["messages"],
        "delivered_logged": count(f"{d}/{name}-delivered.count"),
        "e2e_s": e2e,
        "e2e_msgs_per_s": msgs / e2e if e2e > 0 else 0.0,
        "inject_msgs_per_s": msgs / inject if inject > 0 else 0.0,
        "cpu_us_per_msg": 1e6 * cpu["cpu_s"] / msgs if msgs else 0.0,
        "sink_connections": sink["starttls"]["connections"],
        "inject_ack_latency_us": lg.get("latency_us"),
        "load_at_start": (load(f"{d}/{name}-load.json") or {}).get("loadavg"),
        "cluster": cl,
        "latency": load(f"{d}/{name}-latency.json"),
    }
    if cl is not None:
        r["calls_per_msg"] = cl["redis_calls"] / msgs if msgs else None
        rc = load(f"{d}/{name}-rediscpu.json") or {}
        r["redis_cpu_us_per_msg"] = 1e6 * rc["redis_cpu_s"] / msgs if "redis_cpu_s" in rc and msgs else None
        r["commandstats"] = commandstats(f"{d}/{name}-redis-commandstats.txt")
        r["rtt"] = latency(f"{d}/{name}-redis-latency.txt")
        r["monitor"] = monitor(f"{d}/{name}-redis-monitor.txt")
        r["redis_keys_left"] = count(f"{d}/{name}-redis-keys.count")
    return r


def fmt(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}"


P = load(f"{out}/params.json") or {}
lines = []
w = lines.append
result = {"params": P, "part1": [], "part2": None}

# ---- part 1 ----
HEAD = ("| run | side | at sink | end-to-end msg/s | injection msg/s | daemon CPU µs/msg | accepted→delivered p50 / p90 / p99 ms | "
        "Redis calls | calls/msg | Redis CPU µs/msg | Redis RTT avg / max ms | sink conns | load at start |")
SEP = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
runs = sorted(glob.glob(f"{out}/one-*"), key=lambda p: int(p.rsplit("-", 1)[1]))
for extra in ("leases", "light"):
    if os.path.isdir(f"{out}/{extra}"):
        runs.append(f"{out}/{extra}")
RUN_NAME = {"leases": "L (max_conns only)", "light": "S (light load: 1 connection)"}
if runs:
    w(f"#### 1. One node: local limits against the same limits shared through Redis ({P.get('msgs', 0):,} messages, {P.get('domains')} domains)")
    w("")
    dp = load(f"{runs[0]}/params.json") or {}
    w(f"Machine: {P.get('cpus')} CPUs ({P.get('cpu_model')}); redis-server {P.get('redis')}; code of commit {P.get('git')}. "
      f"perf/daemon.sh with INJECTOR=loadgen ({dp.get('sessions')} pipelining connections), ~{P.get('size'):,} B messages, "
      f"one recipient each, STARTTLS to the sink on {dp.get('addrs')} addresses; the daemon pinned to CPU {dp.get('sut_cpu')} "
      f"with `shards = 1`, spool fsync on, delivery log on; sink, DNS, loadgen and redis-server on CPU {dp.get('peer_cpu')}. "
      f"Both sides: one `[[domain]]` per destination with `max_conns = {P.get('limit_conns')}`, `msgs_per_s = {P.get('limit_rate')}`; "
      "the cluster side adds `[cluster]` with its defaults. Runs alternate the order of the sides.")
    w("")
    w(HEAD)
    w(SEP)
    costs, cpu_ratios, calls = [], [], []
    for d in runs:
        k = d.rsplit("-", 1)[1] if "/one-" in d else RUN_NAME[os.path.basename(d)]
        dp = load(f"{d}/params.json") or {}
        msgs = dp.get("msgs", P.get("msgs", 0))
        rows = [r for r in (side(d, s, msgs) for s in dp.get("sides", "").split()) if r]
        by = {r["side"]: r for r in rows}
        for r in rows:
            rtt = r.get("rtt")
            rtt_s = "–" if not rtt else "%.2f / %.0f" % (rtt["avg_ms"], rtt["max_ms"])
            lt = r.get("latency") or {}
            lat_s = "–" if lt.get("p50_ms") is None else "%.1f / %.1f / %.1f" % (lt["p50_ms"], lt["p90_ms"], lt["p99_ms"])
            if lt.get("messages") not in (None, r["messages_at_sink"]):
                lat_s += f" ({lt['messages']:,} matched)"
            w(f"| {k} | {r['label']} | {fmt(r['messages_at_sink'])} | {fmt(r['e2e_msgs_per_s'])} | {fmt(r['inject_msgs_per_s'])} | "
              f"{fmt(r['cpu_us_per_msg'])} | {lat_s} | {fmt((r['cluster'] or {}).get('redis_calls'))} | "
              f"{fmt(r.get('calls_per_msg'), 4)} | {fmt(r.get('redis_cpu_us_per_msg'))} | "
              f"{rtt_s} | {fmt(r['sink_connections'])} | {r['load_at_start'] or '?'} |")
        run = {"run": k, "dir": d, "sides": rows}
        if "mxpipe-limits" in by and "mxpipe-cluster" in by and "/one-" not in d:
            lo, cl = by["mxpipe-limits"], by["mxpipe-cluster"]
            run["throughput_ratio"] = cl["e2e_msgs_per_s"] / lo["e2e_msgs_per_s"] if lo["e2e_msgs_per_s"] else None
            run["cpu_ratio"] = cl["cpu_us_per_msg"] / lo["cpu_us_per_msg"] if lo["cpu_us_per_msg"] else None
            result["leases_only" if d.endswith("/leases") else "light"] = run
        elif "mxpipe-limits" in by and "mxpipe-cluster" in by:
            lo, cl = by["mxpipe-limits"], by["mxpipe-cluster"]
            run["throughput_ratio"] = cl["e2e_msgs_per_s"] / lo["e2e_msgs_per_s"] if lo["e2e_msgs_per_s"] else None
            run["cpu_ratio"] = cl["cpu_us_per_msg"] / lo["cpu_us_per_msg"] if lo["cpu_us_per_msg"] else None
            if run["throughput_ratio"] is not None:
                costs.append(1 - run["throughput_ratio"])
            if run["cpu_ratio"] is not None:
                cpu_ratios.append(run["cpu_ratio"])
            if cl.get("calls_per_msg") is not None:
                calls.append(cl["calls_per_msg"])
        result["part1"].append(run)
    w("")
    if costs:
        # The median of the runs: one run on a busy machine can be off by half (another process took the CPU).
        w("| measure | per run | median | goal | |")
        w("|---|---|---:|---:|---|")
        mc, ml = statistics.median(costs), statistics.median(calls) if calls else None
        w(f"| throughput cost of cluster mode (1 − shared/local, end to end) | {', '.join(f'{100 * c:+.1f} %' for c in costs)} | "
          f"{100 * mc:+.1f} % | ≤ 10 % | {'met' if mc <= COST_GOAL else 'NOT met'} |")
        if len(costs) >= 2 and len(costs) % 2 == 0:
            # The runs alternate the order of the sides: in the geometric mean of the ratios a
            # (multiplicative) effect of running first or second cancels.
            gm = math.exp(statistics.mean(math.log(1 - c) for c in costs))
            gc = math.exp(statistics.mean(math.log(x) for x in cpu_ratios))
            result["throughput_cost_order_balanced"], result["cpu_ratio_order_balanced"] = 1 - gm, gc
            w(f"| the same, order-balanced (geometric mean of the ratios over runs of both orders) | throughput cost {100 * (1 - gm):+.1f} %, "
              f"CPU {gc:.3f}× | {100 * (1 - gm):+.1f} % | ≤ 10 % | {'met' if 1 - gm <= COST_GOAL else 'NOT met'} |")
        w(f"| daemon CPU per message, shared/local | {', '.join(f'{x:.3f}×' for x in cpu_ratios)} | {statistics.median(cpu_ratios):.3f}× | – | |")
        lo_run = result.get("leases_only")
        if lo_run and lo_run.get("throughput_ratio") is not None:
            lc = {r["side"]: r for r in lo_run["sides"]}.get("mxpipe-cluster", {})
            w(f"| run L, max_conns only: throughput cost / CPU shared/local / calls per message | "
              f"{100 * (1 - lo_run['throughput_ratio']):+.1f} % / {lo_run['cpu_ratio']:.3f}× / {fmt(lc.get('calls_per_msg'), 4)} | – | – | |")
        li = result.get("light")
        if li:
            b = {r["side"]: (r.get("latency") or {}) for r in li["sides"]}
            lo_l, cl_l = b.get("mxpipe-limits", {}), b.get("mxpipe-cluster", {})
            if lo_l.get("p50_ms") is not None and cl_l.get("p50_ms") is not None:
                w(f"| run S, light load: added latency accepted→delivered, p50 / p99 (shared − local) | "
                  f"{cl_l['p50_ms'] - lo_l['p50_ms']:+.2f} / {cl_l['p99_ms'] - lo_l['p99_ms']:+.2f} ms | – | – | |")
        if ml is not None:
            w(f"| Redis calls per delivered message | {', '.join(f'{x:.4f}' for x in calls)} | {ml:.4f} | ≤ 0.05 | "
              f"{'met' if ml <= CALLS_GOAL else 'NOT met'} |")
        result["throughput_cost_median"], result["calls_per_msg_median"] = mc, ml
        w("")
    for run in result["part1"]:
        for r in run["sides"]:
            th = []
            try:
                th = sorted((json.loads(l) for l in open(f"{run['dir']}/{r['side']}-threads.jsonl") if l.strip()),
                            key=lambda t: -t["cpu_s"])
            except (OSError, ValueError):
                pass
            if th:
                msgs = (load(f"{run['dir']}/params.json") or {}).get("msgs") or 1
                w(f"Run {run['run']}, {r['label']}, daemon CPU by thread, µs/msg: " + ", ".join(
                    f"{t['thread']}{' ×' + str(t['threads']) if t['threads'] > 1 else ''} {1e6 * t['cpu_s'] / msgs:.0f}" for t in th if t["cpu_s"] > 0) + ".")
                w("")
    for run in result["part1"]:
        for r in run["sides"]:
            cs = r.get("commandstats")
            if not cs:
                continue
            total = sum(v["calls"] for v in cs.values())
            w(f"Run {run['run']}, Redis INFO commandstats at the end of the cluster side ({total:,} commands): " + ", ".join(
                f"`{c}` {v['calls']:,} ({v['usec_per_call']:.1f} µs/call)" for c, v in sorted(cs.items(), key=lambda kv: -kv[1]["calls"]))
              + (f"; keys left in Redis: {r['redis_keys_left']}" if r.get("redis_keys_left") is not None else "") + ".")
            if r.get("monitor"):
                w(f"MONITOR, by command and key kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(r["monitor"].items(), key=lambda kv: -kv[1])) + ".")
            w("")
    w("Round trip: `redis-cli --latency --raw` (PING from another client) once a second during the burst; its average "
      "is what each Redis call of the daemon waits at least, on top of Redis's own time per call (commandstats). "
      "Accepted→delivered: per message, the daemon's `250 … queued as ID` reply on the injection port (tcpdump on lo) "
      "to ID's `delivered` time in the delivery log; with a burst, it is mostly time queued behind the burst.")
    w("")

# ---- part 2 ----
D = f"{out}/three"
p2 = load(f"{D}/params.json")
if p2:
    msgs2, N, R = p2["msgs2"], p2["n"], p2["r"]
    sink = load(f"{D}/sink.json") or {}
    conns = load(f"{D}/conns.json") or {}
    inj = load(f"{D}/inject.json") or {}
    nodes, d1_ts, calls_total = [], [], 0
    for i in range(3):
        injected = count(f"{D}/node{i}-injected.count") or 0
        st = {"delivered": 0, "deferred": 0, "bounced": 0}
        per_dom = {}
        try:
            for line in open(f"{D}/node{i}-delivery.jsonl"):
                o = json.loads(line)
                st[o["status"]] = st.get(o["status"], 0) + 1
                dom = o["rcpt"].rsplit("@", 1)[-1]
                if o["status"] == "delivered":
                    per_dom[dom] = per_dom.get(dom, 0) + 1
                    if dom == "d1.bench.test":
                        d1_ts.append(o["ts"])
        except (OSError, ValueError):
            pass
        m = {}
        try:
            for line in open(f"{D}/node{i}-metrics.txt"):
                p = line.split()
                if len(p) == 2 and p[0].startswith("mxpipe_cluster_"):
                    m[p[0]] = float(p[1])
        except OSError:
            pass
        calls_total += int(m.get("mxpipe_cluster_redis_calls_total", 0))
        nodes.append({"node": f"node{i}", "injected": injected, **st, "per_domain": per_dom,
                      "redis_calls": int(m.get("mxpipe_cluster_redis_calls_total", 0)),
                      "fallbacks": int(m.get("mxpipe_cluster_fallbacks_total", 0)), "live_nodes": int(m.get("mxpipe_cluster_live_nodes", 0))})
    d1_ts.sort()
    rate_all = (len(d1_ts) - 1) / (d1_ts[-1] - d1_ts[0]) if len(d1_ts) > 1 and d1_ts[-1] > d1_ts[0] else None
    # Steady state: from 1 s after the first delivery to 1 s before the last (the backlog is there throughout).
    rate_mid = None
    if len(d1_ts) > 1 and d1_ts[-1] - d1_ts[0] > 4:
        a, b = d1_ts[0] + 1, d1_ts[-1] - 1
        rate_mid = sum(1 for t in d1_ts if a <= t < b) / (b - a)
    # The most in any 1 s window (each starting at a delivery), and the rate while delivering:
    # the time between consecutive deliveries, gaps over 0.5 s left out.
    max_1s, j = 0, 0
    for i0, t in enumerate(d1_ts):
        while j < len(d1_ts) and d1_ts[j] < t + 1:
            j += 1
        max_1s = max(max_1s, j - i0)
    gaps = [b - a for a, b in zip(d1_ts, d1_ts[1:])]
    busy = sum(g for g in gaps if g <= 0.5)
    rate_busy = sum(1 for g in gaps if g <= 0.5) / busy if busy > 0 else None
    idle = [g for g in gaps if g > 0.5]
    delivered = sum(n["delivered"] for n in nodes)
    injected = sum(n["injected"] for n in nodes)
    peak = conns.get("peak", {})
    ok_count = sink.get("messages") == injected == delivered == msgs2 and all(n["delivered"] == n["injected"] for n in nodes)
    ok_conns = all(v <= N for v in peak.values()) and peak.get("d0.bench.test") == N
    ok_rate = rate_busy is not None and abs(rate_busy - R) <= 0.05 * R
    ok_max = max_1s <= 1.05 * R + 1
    cpm = calls_total / delivered if delivered else None
    rc = load(f"{D}/rediscpu.json") or {}
    w(f"#### 2. Three nodes, one Redis, one sink: {msgs2:,} messages ({msgs2 // 3:,} a node), a correctness demonstration (not a speed claim)")
    w("")
    w(f"Three `mxpipe serve` processes on this machine's {P.get('cpus')} cores (not pinned, `shards = 1` each, own spools, "
      f"fsync on), one redis-server, one sink (bench_sink) on 127.7.0.1 (MX of d0.bench.test) and 127.7.0.2 (MX of d1.bench.test); "
      f"`mxpipe-loadgen` injects a third of the burst into each node at once, message i to d(i mod 2). Limits, cluster-wide: "
      f"d0 `max_conns = {N}` (`msgs_per_s = {p2['rate0']}`, not binding), d1 `max_conns = {N}`, `msgs_per_s = {R}`. "
      + ("`[cluster]` defaults" if p2.get("shared2", 1) else "**no `[cluster]` section: each node holds the limits alone**") + f"; `[engine] idle_timeout = \"{p2.get('idle2', '10s')}\"`. Concurrent connections: ESTABLISHED sockets on the destination's address at the sink "
      f"(a sock_diag netlink dump every 2 ms, {conns.get('samples', 0):,} samples over {conns.get('secs', 0):.1f} s). "
      f"Rate: the `delivered` times of d1 in the three delivery logs.")
    w("")
    w("| node | injected | delivered | deferred | bounced | d0 delivered | d1 delivered | Redis calls | fallbacks | live nodes seen |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in nodes:
        w(f"| {n['node']} | {n['injected']:,} | {n['delivered']:,} | {n['deferred']:,} | {n['bounced']:,} | "
          f"{n['per_domain'].get('d0.bench.test', 0):,} | {n['per_domain'].get('d1.bench.test', 0):,} | {n['redis_calls']:,} | "
          f"{n['fallbacks']} | {n['live_nodes']} |")
    w("")
    w("| check | value | expected | |")
    w("|---|---:|---:|---|")
    w(f"| messages at the sink (each node's log: delivered = injected) | {fmt(sink.get('messages'))} | {injected:,} | {'met' if ok_count else 'NOT met'} |")
    for dname in ("d0.bench.test", "d1.bench.test"):
        v = peak.get(dname)
        exp = f"= {N}" if dname == "d0.bench.test" else f"≤ {N}"
        good = v is not None and (v == N if dname == "d0.bench.test" else v <= N)
        w(f"| peak concurrent connections, {dname} | {fmt(v)} | {exp} | {'met' if good else 'NOT met'} |")
    w(f"| d1: most deliveries in any 1 s window | {max_1s:,} | ≤ {R} + 5 % | {'met' if ok_max else 'NOT met'} |")
    w(f"| d1 rate while delivering (gaps > 0.5 s left out) | {fmt(rate_busy, 1)}/s | {R}/s ± 5 % | {'met' if ok_rate else 'NOT met'} |")
    w(f"| d1 gaps > 0.5 s with no delivery | {len(idle)}: {', '.join(f'{g:.1f} s' for g in idle) or '–'} | none | {'met' if not idle else 'NOT met'} |")
    w(f"| d1 rate, 1 s after the first to 1 s before the last delivery | {fmt(rate_mid, 1)}/s | – | |")
    w(f"| d1 rate, first to last delivery | {fmt(rate_all, 1)}/s | – | |")
    w(f"| Redis calls per delivered message (three nodes) | {fmt(cpm, 4)} | – | |")
    w(f"| Redis CPU µs per message | {fmt(1e6 * rc['redis_cpu_s'] / delivered if 'redis_cpu_s' in rc and delivered else None)} | – | |")
    if inj and sink.get("last_ns"):
        w(f"| first injection to last message at the sink | {(sink['last_ns'] - inj['t0_ns']) / 1e9:.2f} s | ≈ {msgs2 / 2 / R:.0f} s (d1 at R) | |")
    w("")
    cs = commandstats(f"{D}/redis-commandstats.txt")
    if cs:
        w("Redis INFO commandstats: " + ", ".join(f"`{c}` {v['calls']:,} ({v['usec_per_call']:.1f} µs/call)"
                                              for c, v in sorted(cs.items(), key=lambda kv: -kv[1]["calls"])) + ".")
        w("")
    result["part2"] = {"params": p2, "nodes": nodes, "sink_messages": sink.get("messages"), "peak_conns": peak, "rate_steady": rate_mid,
                       "rate_busy": rate_busy, "max_1s": max_1s, "gaps_over_half_s": idle,
                       "rate_first_to_last": rate_all, "calls_per_msg": cpm, "ok": {"count": ok_count, "conns": ok_conns, "rate": ok_rate, "max_1s": ok_max},
                       "conns_series_100ms": conns.get("series_100ms")}

w("Command:")
w("")
w("```sh")
w(P.get("command", "bash perf/cluster.sh"))
w("```")
print("\n".join(lines))
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
