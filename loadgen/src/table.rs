//! The report as a table for people ([`crate::Report::to_table`]). What each latency row
//! spans is documented on [`crate::report::Breakdown`] and in `--help`.

use std::fmt::Write as _;

use crate::class::ErrorClass;
use crate::report::{PortReport, Report};

/// Render `r`.
pub fn render(r: &Report) -> String {
    let s = &r.settings;
    let mut out = String::new();
    let bound = match s.count {
        Some(c) => format!("{c} connections or {:.0} s per port", s.duration_s),
        None => format!("{:.1} s per port", s.duration_s),
    };
    let warm = if s.warmup_s > 0.0 { format!(" after {:.1} s of warm-up", s.warmup_s) } else { String::new() };
    let lp = match s.rate {
        Some(rate) => format!("open loop {rate}/s, at most {} in flight", s.concurrency),
        None => format!("concurrency {}", s.concurrency),
    };
    let _ = writeln!(
        out,
        "mxpipe-loadgen: {} mode, {lp}, {bound}{warm}; order {}; resume {}, kx {}, verify {} (name {})",
        s.mode, s.order, s.resume, s.kx, s.verify, s.server_name
    );
    for p in &r.ports {
        port(&mut out, p, s.mode == "transaction");
    }
    let sink = r.sink_cpu_s.map(|c| format!(", embedded sink CPU {c:.2} s")).unwrap_or_default();
    let _ = writeln!(out, "\nclient CPU {:.2} s{sink} over {:.2} s wall ({} cores)", r.client_cpu_s, r.duration_s, r.cores);
    if let Some(k) = &r.embedded_sink {
        let _ = writeln!(out, "embedded sink's own counters:");
        for (name, side) in [("starttls", k.starttls), ("implicit", k.implicit)] {
            let _ = writeln!(
                out,
                "  {name:<9} connections {}   handshakes full {} resumed {}   handshake failures {}",
                side.connections, side.handshakes_full, side.handshakes_resumed, side.handshake_failures
            );
        }
        let _ = writeln!(
            out,
            "  messages {}   refused busy {}   timeouts {}   sessions cut at stop {}",
            k.messages, k.rejected_busy, k.timeouts, k.sessions_aborted
        );
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn port(out: &mut String, p: &PortReport, transaction: bool) {
    let _ = writeln!(out, "\n== {} {} ==", p.address, p.tls);
    let _ = writeln!(
        out,
        "  attempts   {:>9}   ok {}   errors {}{}",
        p.attempts,
        p.successes,
        p.errors,
        if p.missed > 0 { format!("   MISSED {} of {} scheduled (never started)", p.missed, p.scheduled) } else { String::new() }
    );
    let _ = writeln!(
        out,
        "  handshakes {:>9}   full {}   resumed {} ({:.0}%){}",
        p.handshakes,
        p.full,
        p.resumed,
        pct(p.resumed, p.handshakes),
        if p.hello_retries > 0 { format!("   HelloRetryRequest {}", p.hello_retries) } else { String::new() }
    );
    let missed = if p.missed > 0 { format!(", {} missed", p.missed) } else { String::new() };
    let _ = writeln!(
        out,
        "  rate       {:>9.1} handshakes/s: {} completed in the {:.2} s window{missed}; tail {} more in {:.2} s after it",
        p.handshakes_per_s, p.handshakes_in_window, p.window_s, p.tail_handshakes, p.tail_s
    );
    let sink = p.sink_cpu_s.map(|c| format!(", embedded sink CPU {c:.2} s")).unwrap_or_default();
    let _ = writeln!(out, "  cpu        client {:.2} s{sink}", p.client_cpu_s);
    if p.warmup.seconds > 0.0 {
        let _ = writeln!(
            out,
            "  warm-up    {:.1} s: {} attempts, {} handshakes, {} errors (not in the figures)",
            p.warmup.seconds, p.warmup.attempts, p.warmup.handshakes, p.warmup.errors
        );
    }
    if transaction {
        let _ = writeln!(out, "  messages   {:>9}   {:.1} messages/s in the window", p.messages, p.messages_per_s);
    }
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "  tls        {} {} {}", opt(&p.tls_version), opt(&p.kx), opt(&p.cipher));
    if let Some(v) = &p.verify_once {
        let _ = writeln!(
            out,
            "  verify     chains verified {}, reused {}, handshake signatures checked {}",
            v.chain_checks, v.reused, v.signature_checks
        );
    }
    let _ = writeln!(out, "  latency us {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}", "p50", "p90", "p99", "p99.9", "max", "count");
    let b = &p.latency_breakdown_us;
    let mut rows = vec![("connect", b.connect), ("ttfb", b.ttfb), ("starttls", b.starttls), ("handshake", b.handshake)];
    if b.queue.count > 0 {
        rows.push(("queue", b.queue));
    }
    rows.push(("ok", b.ok));
    if b.failed.count > 0 {
        rows.push(("failed", b.failed));
    }
    if b.missed.count > 0 {
        rows.push(("missed>=", b.missed));
    }
    rows.push(("all", b.all));
    for (name, q) in rows {
        if q.count == 0 {
            let _ = writeln!(out, "    {name:<9}{:>10}", "-");
        } else {
            let _ = writeln!(out, "    {name:<9}{:>10} {:>10} {:>10} {:>10} {:>10} {:>10}", q.p50, q.p90, q.p99, q.p999, q.max, q.count);
        }
    }
    if p.errors > 0 {
        let classes: Vec<String> = ErrorClass::ALL
            .iter()
            .filter(|&&c| p.errors_by_class.get(c) > 0)
            .map(|&c| format!("{c} {}", p.errors_by_class.get(c)))
            .collect();
        let _ = writeln!(out, "  errors     {}", classes.join(", "));
        for (class, example) in &p.error_examples {
            let _ = writeln!(out, "    {class}: {example}");
        }
    }
    for w in &p.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}
