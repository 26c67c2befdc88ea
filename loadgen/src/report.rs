//! Counting and reporting: a [`Recorder`] per worker (no shared locks on the hot path),
//! merged at the end of a phase into a [`PortReport`]; a [`Report`] prints as a table for
//! people or as JSON for machines.
//!
//! Latencies are kept in hdrhistogram (microseconds, 3 significant digits), so percentiles
//! are exact to 0.1% whatever the number of samples, and merging workers is exact too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use mxpipe::tls::{StoreStats, Verify};
use serde::Serialize;

use crate::class::{ConnError, ErrorClass, ErrorCounts};
use crate::config::{Config, Mode};
use crate::conn::Attempt;

/// Latency percentiles in microseconds. All zero (and `count` 0) when nothing was measured,
/// e.g. the STARTTLS exchange on the implicit-TLS port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples behind these figures.
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Where the time of a successful connection went, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Breakdown {
    /// TCP connect.
    pub connect: Percentiles,
    /// Banner, EHLO, STARTTLS and its 220 (STARTTLS port only).
    pub starttls: Percentiles,
    /// The TLS handshake alone.
    pub handshake: Percentiles,
    /// The whole connection, up to the server's close; with `--rate`, from the intended
    /// start, so it includes `queue`.
    pub total: Percentiles,
    /// With `--rate`: from the intended start to the actual start (waiting for a free slot;
    /// includes the timer's ~1 ms granularity and task scheduling).
    pub queue: Percentiles,
}

/// One port's figures. Invariant: `attempts == successes + errors`, each attempt counted as
/// exactly one success or one error class. `handshakes` counts completed TLS handshakes
/// whatever happened after (an attempt whose handshake completed but whose QUIT failed is one
/// handshake and one error), and `handshakes == full + resumed`.
#[derive(Debug, Clone, Serialize)]
pub struct PortReport {
    pub port: u16,
    /// `ip:port` connected to.
    pub address: String,
    /// `"starttls"` or `"implicit"`.
    pub tls: String,
    /// Connections started (TCP connect begun).
    pub attempts: u64,
    /// Attempts that went through every step, including the server's close.
    pub successes: u64,
    /// Completed TLS handshakes.
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    /// Failed attempts, all classes.
    pub errors: u64,
    pub errors_by_class: ErrorCounts,
    /// The first error message seen in each class that occurred.
    pub error_examples: BTreeMap<String, String>,
    /// Open loop: connections scheduled before the end that never started because
    /// `concurrency` were already in flight (a sign the target could not keep up).
    pub missed: u64,
    /// Messages accepted (transaction mode).
    pub messages: u64,
    pub handshakes_per_s: f64,
    pub messages_per_s: f64,
    /// Most common negotiated TLS version, key exchange group and cipher suite.
    pub tls_version: Option<String>,
    pub kx: Option<String>,
    pub cipher: Option<String>,
    /// How often each was negotiated.
    pub negotiated: Negotiated,
    /// Client process CPU (user + system) during this phase.
    pub client_cpu_s: f64,
    /// Wall time of this phase, from the first connect to the last connection's end.
    pub duration_s: f64,
    /// Total latency of successful connections (same as `latency_breakdown_us.total`).
    pub latency_us: Percentiles,
    pub latency_breakdown_us: Breakdown,
    /// The client session store's counters (resumption on).
    pub ticket_store: Option<StoreStats>,
}

/// Counts of each negotiated parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Negotiated {
    pub tls_version: BTreeMap<String, u64>,
    pub kx: BTreeMap<String, u64>,
    pub cipher: BTreeMap<String, u64>,
}

/// The settings a report was made with, so a saved JSON says what it measured.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub host: String,
    pub server_name: String,
    pub verify: &'static str,
    pub mode: &'static str,
    pub messages_per_conn: Option<u32>,
    pub size: Option<usize>,
    pub resume: String,
    pub kx: String,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub count: Option<u64>,
    pub timeout_s: f64,
    pub linger0: bool,
    pub source_spread: usize,
}

impl Settings {
    pub fn of(cfg: &Config) -> Settings {
        let (mode, messages_per_conn, size) = match cfg.mode {
            Mode::Handshake => ("handshake", None, None),
            Mode::Transaction { messages_per_conn, size } => ("transaction", Some(messages_per_conn), Some(size)),
        };
        Settings {
            host: cfg.host.clone(),
            server_name: cfg.server_name.clone(),
            verify: match cfg.verify {
                Verify::Roots(_) => "roots",
                Verify::None => "none",
            },
            mode,
            messages_per_conn,
            size,
            resume: cfg.resume.to_string(),
            kx: cfg.kx.to_string(),
            concurrency: cfg.concurrency,
            rate: cfg.rate,
            duration_s: cfg.phase_limit().as_secs_f64(),
            count: cfg.count,
            timeout_s: cfg.timeout.as_secs_f64(),
            linger0: cfg.linger0,
            source_spread: cfg.source_spread,
        }
    }
}

/// A whole run: one entry per port, in the order measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ports: Vec<PortReport>,
    /// Client process CPU for the whole run.
    pub client_cpu_s: f64,
    /// Wall time of the whole run.
    pub duration_s: f64,
    pub settings: Settings,
}

impl Report {
    /// True when there were attempts and not one succeeded: the binary exits non-zero.
    pub fn all_failed(&self) -> bool {
        let attempts: u64 = self.ports.iter().map(|p| p.attempts).sum();
        let ok: u64 = self.ports.iter().map(|p| p.successes).sum();
        attempts > 0 && ok == 0
    }

    /// Machine-readable report (one JSON document).
    pub fn to_json(&self) -> String {
        // Only plain data and string-keyed maps: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A table for people.
    pub fn to_table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let bound = match (s.count, s.rate) {
            (Some(c), _) => format!("{c} connections or {:.0} s per port", s.duration_s),
            (None, _) => format!("{:.1} s per port", s.duration_s),
        };
        let lp = match s.rate {
            Some(r) => format!("open loop {r}/s, at most {} in flight", s.concurrency),
            None => format!("concurrency {}", s.concurrency),
        };
        let _ = writeln!(
            out,
            "mxpipe-loadgen: {} mode, {lp}, {bound}; resume {}, kx {}, verify {} (name {})",
            s.mode, s.resume, s.kx, s.verify, s.server_name
        );
        for p in &self.ports {
            let _ = writeln!(out, "\n== {} {} ==", p.address, p.tls);
            let _ = writeln!(
                out,
                "  attempts   {:>9}   ok {}   errors {}{}",
                p.attempts,
                p.successes,
                p.errors,
                if p.missed > 0 { format!("   missed (open loop) {}", p.missed) } else { String::new() }
            );
            let _ = writeln!(
                out,
                "  handshakes {:>9}   full {}   resumed {} ({:.0}%)",
                p.handshakes,
                p.full,
                p.resumed,
                pct(p.resumed, p.handshakes)
            );
            let _ = writeln!(
                out,
                "  rate       {:>9.1} handshakes/s over {:.2} s, client CPU {:.2} s",
                p.handshakes_per_s, p.duration_s, p.client_cpu_s
            );
            if s.mode == "transaction" {
                let _ = writeln!(out, "  messages   {:>9}   {:.1} messages/s", p.messages, p.messages_per_s);
            }
            let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
            let _ = writeln!(out, "  tls        {} {} {}", opt(&p.tls_version), opt(&p.kx), opt(&p.cipher));
            let _ = writeln!(out, "  latency us {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}", "p50", "p90", "p99", "p99.9", "max", "count");
            let b = &p.latency_breakdown_us;
            let mut rows = vec![("connect", b.connect), ("starttls", b.starttls), ("handshake", b.handshake)];
            if b.queue.count > 0 {
                rows.push(("queue", b.queue));
            }
            rows.push(("total", b.total));
            for (name, q) in rows {
                if q.count == 0 {
                    let _ = writeln!(out, "    {name:<9}{:>10}", "-");
                } else {
                    let _ = writeln!(
                        out,
                        "    {name:<9}{:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                        q.p50, q.p90, q.p99, q.p999, q.max, q.count
                    );
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
        }
        let _ = writeln!(out, "\nclient CPU {:.2} s over {:.2} s wall", self.client_cpu_s, self.duration_s);
        out
    }
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// Per-worker counters and histograms; merged at the end of a phase.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub attempts: u64,
    pub successes: u64,
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    pub messages: u64,
    pub missed: u64,
    pub errors: ErrorCounts,
    examples: BTreeMap<ErrorClass, String>,
    negotiated: Negotiated,
    connect: Histogram<u64>,
    starttls: Histogram<u64>,
    handshake: Histogram<u64>,
    total: Histogram<u64>,
    queue: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// 1 µs to 1 hour at 3 significant digits; larger values are clamped, never lost.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            attempts: 0,
            successes: 0,
            handshakes: 0,
            full: 0,
            resumed: 0,
            messages: 0,
            missed: 0,
            errors: ErrorCounts::default(),
            examples: BTreeMap::new(),
            negotiated: Negotiated::default(),
            connect: histogram(),
            starttls: histogram(),
            handshake: histogram(),
            total: histogram(),
            queue: histogram(),
        }
    }

    /// Count one finished attempt. `total` is its latency (from the intended start in open
    /// loop); `queue` the wait before it could start (open loop only).
    pub fn record(&mut self, a: &Attempt, result: &Result<(), ConnError>, total: Duration, queue: Option<Duration>) {
        self.attempts += 1;
        self.messages += a.messages;
        if let Some(d) = a.connect {
            self.connect.saturating_record(us(d));
        }
        if let Some(d) = a.starttls {
            self.starttls.saturating_record(us(d));
        }
        if let Some(d) = a.handshake {
            self.handshake.saturating_record(us(d));
        }
        if let Some(d) = queue {
            self.queue.saturating_record(us(d));
        }
        if let Some(f) = &a.tls {
            self.handshakes += 1;
            if f.resumed {
                self.resumed += 1;
            } else {
                self.full += 1;
            }
            *self.negotiated.tls_version.entry(f.version.clone()).or_default() += 1;
            *self.negotiated.kx.entry(f.kx.clone()).or_default() += 1;
            *self.negotiated.cipher.entry(f.cipher.clone()).or_default() += 1;
        }
        match result {
            Ok(()) => {
                self.successes += 1;
                self.total.saturating_record(us(total));
            }
            Err(e) => {
                self.errors.add(e.class, 1);
                self.examples.entry(e.class).or_insert_with(|| e.detail.clone());
            }
        }
    }

    pub fn merge(&mut self, o: &Recorder) {
        self.attempts += o.attempts;
        self.successes += o.successes;
        self.handshakes += o.handshakes;
        self.full += o.full;
        self.resumed += o.resumed;
        self.messages += o.messages;
        self.missed += o.missed;
        self.errors.merge(&o.errors);
        for (c, e) in &o.examples {
            self.examples.entry(*c).or_insert_with(|| e.clone());
        }
        for (mine, theirs) in [
            (&mut self.negotiated.tls_version, &o.negotiated.tls_version),
            (&mut self.negotiated.kx, &o.negotiated.kx),
            (&mut self.negotiated.cipher, &o.negotiated.cipher),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.connect.add(&o.connect);
        let _ = self.starttls.add(&o.starttls);
        let _ = self.handshake.add(&o.handshake);
        let _ = self.total.add(&o.total);
        let _ = self.queue.add(&o.queue);
    }

    /// The report for one port, given the phase's wall time and client CPU.
    pub fn into_port_report(
        self,
        address: std::net::SocketAddr,
        tls: &str,
        duration: Duration,
        client_cpu_s: f64,
        ticket_store: Option<StoreStats>,
    ) -> PortReport {
        let secs = duration.as_secs_f64();
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let most = |m: &BTreeMap<String, u64>| m.iter().max_by_key(|(_, &n)| n).map(|(k, _)| k.clone());
        let total = Percentiles::of(&self.total);
        PortReport {
            port: address.port(),
            address: address.to_string(),
            tls: tls.to_string(),
            attempts: self.attempts,
            successes: self.successes,
            handshakes: self.handshakes,
            full: self.full,
            resumed: self.resumed,
            errors: self.errors.total(),
            errors_by_class: self.errors,
            error_examples: self.examples.iter().map(|(c, e)| (c.as_str().to_string(), e.clone())).collect(),
            missed: self.missed,
            messages: self.messages,
            handshakes_per_s: per_s(self.handshakes),
            messages_per_s: per_s(self.messages),
            tls_version: most(&self.negotiated.tls_version),
            kx: most(&self.negotiated.kx),
            cipher: most(&self.negotiated.cipher),
            negotiated: self.negotiated,
            client_cpu_s,
            duration_s: secs,
            latency_us: total,
            latency_breakdown_us: Breakdown {
                connect: Percentiles::of(&self.connect),
                starttls: Percentiles::of(&self.starttls),
                handshake: Percentiles::of(&self.handshake),
                total,
                queue: Percentiles::of(&self.queue),
            },
            ticket_store,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxpipe::tls::TlsFacts;

    fn facts(resumed: bool) -> TlsFacts {
        TlsFacts { version: "TLSv1.3".into(), cipher: "TLS13_AES_128_GCM_SHA256".into(), kx: "X25519".into(), resumed }
    }

    fn ok_attempt(resumed: bool, hs_us: u64) -> Attempt {
        Attempt {
            connect: Some(Duration::from_micros(50)),
            starttls: None,
            handshake: Some(Duration::from_micros(hs_us)),
            tls: Some(facts(resumed)),
            messages: 0,
        }
    }

    #[test]
    fn percentiles_of_known_samples() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500);
        assert_eq!(p.p90, 900);
        assert_eq!(p.p99, 990);
        assert_eq!(p.p999, 999);
        assert_eq!(p.max, 1000);
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }

    #[test]
    fn accounting_invariant_and_merge() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record(&ok_attempt(false, 300), &Ok(()), Duration::from_millis(2), None);
        a.record(&ok_attempt(true, 100), &Ok(()), Duration::from_millis(1), None);
        // Handshake done, then QUIT failed: one handshake and one error.
        b.record(&ok_attempt(true, 100), &Err(ConnError::new(ErrorClass::Io, "reset")), Duration::ZERO, None);
        let refused = Attempt::default();
        b.record(&refused, &Err(ConnError::new(ErrorClass::Connect, "refused")), Duration::ZERO, None);
        b.record(&refused, &Err(ConnError::new(ErrorClass::Connect, "refused again")), Duration::ZERO, None);
        a.merge(&b);
        let addr = "127.0.0.1:2525".parse().unwrap();
        let p = a.into_port_report(addr, "starttls", Duration::from_secs(2), 0.5, None);
        assert_eq!(p.attempts, 5);
        assert_eq!(p.attempts, p.successes + p.errors);
        assert_eq!((p.handshakes, p.full, p.resumed), (3, 1, 2));
        assert_eq!(p.errors_by_class.connect, 2);
        assert_eq!(p.errors_by_class.io, 1);
        assert_eq!(p.error_examples["connect"], "refused");
        assert_eq!(p.handshakes_per_s, 1.5);
        assert_eq!(p.latency_us.count, 2);
        assert_eq!(p.latency_breakdown_us.handshake.count, 3);
        assert_eq!(p.latency_breakdown_us.starttls, Percentiles::default());
        assert_eq!(p.tls_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(p.kx.as_deref(), Some("X25519"));
    }

    #[test]
    fn json_shape_and_table() {
        let mut r = Recorder::new();
        r.record(&ok_attempt(false, 300), &Ok(()), Duration::from_millis(2), None);
        let port = r.into_port_report("127.0.0.1:2526".parse().unwrap(), "implicit", Duration::from_secs(1), 0.1, None);
        let mut cfg = Config::new("127.0.0.1");
        cfg.implicit_port = Some(2526);
        let report = Report { ports: vec![port], client_cpu_s: 0.2, duration_s: 1.0, settings: Settings::of(&cfg) };
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let p = &v["ports"][0];
        for key in [
            "port",
            "tls",
            "handshakes",
            "full",
            "resumed",
            "errors",
            "errors_by_class",
            "handshakes_per_s",
            "latency_us",
            "latency_breakdown_us",
            "tls_version",
            "kx",
            "client_cpu_s",
            "duration_s",
        ] {
            assert!(!p[key].is_null(), "missing {key}");
        }
        assert_eq!(p["port"], 2526);
        assert_eq!(p["tls"], "implicit");
        for q in ["p50", "p90", "p99", "p999", "max"] {
            assert!(p["latency_us"][q].is_u64(), "{q}");
            for part in ["connect", "starttls", "handshake", "total"] {
                assert!(p["latency_breakdown_us"][part][q].is_u64(), "{part} {q}");
            }
        }
        assert!(v["client_cpu_s"].is_f64());
        assert!(!report.all_failed());
        let t = report.to_table();
        assert!(t.contains("127.0.0.1:2526 implicit"), "{t}");
        assert!(t.contains("handshakes"), "{t}");
    }
}
