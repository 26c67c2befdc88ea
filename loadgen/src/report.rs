//! Counting and reporting: a [`Recorder`] per worker (no shared locks on the hot path),
//! merged at the end of a phase into a [`PortReport`]; a [`Report`] prints as a table for
//! people or as JSON for machines.
//!
//! Latencies are kept in hdrhistogram (microseconds, 3 significant digits), so percentiles
//! are exact to 0.1% whatever the number of samples, and merging workers is exact too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mxpipe::sink::StatsSnapshot;
use mxpipe::tls::{StoreStats, Verify};
use serde::Serialize;

use crate::class::{ConnError, ErrorClass, ErrorCounts};
use crate::config::{Config, Mode, PortOrder};
use crate::conn::Attempt;
use crate::verify_once::VerifyOnceStats;

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

/// Where the time went, in microseconds, one row per span. The rows and what each spans:
/// - `connect`: the TCP connect (SYN to SYN-ACK; the kernel completes it, so it does not
///   include the server's accept wait).
/// - `ttfb`: from the start of the connect to the first byte from the server: the banner on
///   a STARTTLS port, the ServerHello on an implicit-TLS port. It includes the server's
///   accept wait on both kinds of port, which makes the two comparable.
/// - `starttls` (STARTTLS port only): banner, EHLO, STARTTLS and its 220, so the accept wait
///   falls here on that port.
/// - `handshake`: the TLS handshake alone (ClientHello to Finished). On an implicit-TLS port
///   it includes the accept wait, which on a STARTTLS port fell in `starttls`.
/// - `queue` (open loop only): from the intended start to the actual start.
/// - `ok`: a whole successful connection, up to the server's close (from the intended start
///   in open loop).
/// - `failed`: a failed attempt, from its (intended) start to the failure: a step timeout
///   shows at about `--timeout`, an attempt cut at the end of the phase at its cut.
/// - `missed` (open loop only): a connection due but never started, at a lower bound of its
///   latency: the end of the phase minus its intended start.
/// - `all`: `ok`, `failed` and `missed` together, every scheduled connection once: the
///   headline figure, where overload shows.
///
/// The first four count every attempt that got that far, failed or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Breakdown {
    pub connect: Percentiles,
    pub ttfb: Percentiles,
    pub starttls: Percentiles,
    pub handshake: Percentiles,
    pub queue: Percentiles,
    pub ok: Percentiles,
    pub failed: Percentiles,
    pub missed: Percentiles,
    pub all: Percentiles,
}

/// What the warm-up before the measured window did; none of it is in the figures. The
/// server's counters include it, so `attempts + warmup.attempts` is what it saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Warmup {
    /// Length of the warm-up.
    pub seconds: f64,
    /// Attempts started during the warm-up (and missed connections due in it).
    pub attempts: u64,
    pub missed: u64,
    pub handshakes: u64,
    pub errors: u64,
}

/// One port's figures. Invariants: `attempts == successes + errors`, each attempt counted as
/// exactly one success or one error class; `scheduled == attempts + missed`; `handshakes ==
/// full + resumed`; without a warm-up, `handshakes == handshakes_in_window + tail_handshakes`
/// (with one, `handshakes_in_window` also counts warm-up attempts' handshakes that completed
/// inside the window, since the rate is what the server completed in it).
/// `handshakes` counts completed TLS handshakes whatever happened after (an attempt whose
/// handshake completed but whose QUIT failed is one handshake and one error).
#[derive(Debug, Clone, Serialize)]
pub struct PortReport {
    pub port: u16,
    /// `ip:port` connected to.
    pub address: String,
    /// `"starttls"` or `"implicit"`.
    pub tls: String,
    /// Connections due in the measured window: started or (open loop) missed.
    pub scheduled: u64,
    /// Connections started (TCP connect begun).
    pub attempts: u64,
    /// Attempts that went through every step, including the server's close.
    pub successes: u64,
    /// Completed TLS handshakes.
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    /// Full handshakes the server answered with a HelloRetryRequest (the key share offered was
    /// not for a group it wanted: one more round trip and key generation each).
    pub hello_retries: u64,
    /// Failed attempts, all classes.
    pub errors: u64,
    pub errors_by_class: ErrorCounts,
    /// The first error message seen in each class that occurred.
    pub error_examples: BTreeMap<String, String>,
    /// Open loop: connections due in the window that never started because `concurrency`
    /// were in flight until the end (the target could not keep up). Each is in the `missed`
    /// and `all` latency rows at a lower bound, and the binary exits with status 3.
    pub missed: u64,
    /// Messages accepted (transaction mode).
    pub messages: u64,
    /// Of those, accepted inside the window.
    pub messages_in_window: u64,
    /// Handshakes completed inside the measured window, over its length (as `openssl
    /// s_time` and wrk count); completions after it are the tail, reported apart.
    pub handshakes_per_s: f64,
    pub messages_per_s: f64,
    /// Handshakes completed inside the window (whichever attempt they belong to; the
    /// handshake of a warm-up attempt that completes inside the window counts here too).
    pub handshakes_in_window: u64,
    /// Handshakes completed after the window, by attempts started inside it.
    pub tail_handshakes: u64,
    /// Length of the measured window: `--duration`, or less if `--count` ended it early.
    pub window_s: f64,
    /// From the end of the window to the end of the last attempt.
    pub tail_s: f64,
    /// Most common negotiated TLS version, key exchange group and cipher suite.
    pub tls_version: Option<String>,
    pub kx: Option<String>,
    pub cipher: Option<String>,
    /// How often each was negotiated.
    pub negotiated: Negotiated,
    /// Client CPU (user + system) during this phase, warm-up included: the process's,
    /// without the embedded sink's threads when there is one.
    pub client_cpu_s: f64,
    /// With `--embedded-sink`: the sink's threads' CPU during this phase.
    pub sink_cpu_s: Option<f64>,
    /// Wall time of the measurement: `window_s + tail_s`.
    pub duration_s: f64,
    /// Latency of every scheduled connection, failures and missed ones included (the `all`
    /// row of the breakdown).
    pub latency_us: Percentiles,
    pub latency_breakdown_us: Breakdown,
    pub warmup: Warmup,
    /// The client session store's counters (resumption on).
    pub ticket_store: Option<StoreStats>,
    /// With `--verify-once`: chains verified, certificates reused, signatures checked, over
    /// the whole phase (warm-up included).
    pub verify_once: Option<VerifyOnceStats>,
    /// What a reader must know before trusting the figures (client saturated, missed
    /// connections, HelloRetryRequests, cut attempts).
    pub warnings: Vec<String>,
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
    /// `roots` (every chain and signature checked), `roots-once` (`--verify-once`: each
    /// chain once, every signature) or `none` (`--insecure`: neither).
    pub verify: &'static str,
    pub mode: &'static str,
    pub messages_per_conn: Option<u32>,
    pub size: Option<usize>,
    pub resume: String,
    pub kx: String,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// `starttls,implicit` or `implicit,starttls`.
    pub order: &'static str,
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
            verify: match (&cfg.verify, cfg.verify_once) {
                (Verify::Roots(_), false) => "roots",
                (Verify::Roots(_), true) => "roots-once",
                (Verify::None, _) => "none",
            },
            mode,
            messages_per_conn,
            size,
            resume: cfg.resume.to_string(),
            kx: cfg.kx.to_string(),
            concurrency: cfg.concurrency,
            rate: cfg.rate,
            duration_s: cfg.phase_limit().as_secs_f64(),
            warmup_s: cfg.warmup.as_secs_f64(),
            order: match cfg.order {
                PortOrder::StartTlsFirst => "starttls,implicit",
                PortOrder::ImplicitFirst => "implicit,starttls",
            },
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
    /// Client CPU for the whole run (the process's, without the embedded sink's threads).
    pub client_cpu_s: f64,
    /// With `--embedded-sink`: its threads' CPU for the whole run.
    pub sink_cpu_s: Option<f64>,
    /// With `--embedded-sink`: the sink's own counters at the end of the run.
    pub embedded_sink: Option<StatsSnapshot>,
    /// Wall time of the whole run.
    pub duration_s: f64,
    /// Cores this process could use (what "saturated" is measured against).
    pub cores: usize,
    /// Run-wide warnings (the client saturated over the whole run).
    pub warnings: Vec<String>,
    pub settings: Settings,
}

/// Exit status when some scheduled connections were never started (open loop).
pub const EXIT_MISSED: u8 = 3;

impl Report {
    /// True when there were attempts and not one succeeded: the binary exits non-zero.
    pub fn all_failed(&self) -> bool {
        let attempts: u64 = self.ports.iter().map(|p| p.attempts).sum();
        let ok: u64 = self.ports.iter().map(|p| p.successes).sum();
        attempts > 0 && ok == 0
    }

    /// Connections missed on every port (open loop).
    pub fn missed(&self) -> u64 {
        self.ports.iter().map(|p| p.missed).sum()
    }

    /// The binary's exit status: 1 when every attempt failed, [`EXIT_MISSED`] when the open
    /// loop missed connections, else 0.
    pub fn exit_status(&self) -> u8 {
        if self.all_failed() {
            1
        } else if self.missed() > 0 {
            EXIT_MISSED
        } else {
            0
        }
    }

    /// Machine-readable report (one JSON document).
    pub fn to_json(&self) -> String {
        // Only plain data and string-keyed maps: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A table for people.
    pub fn to_table(&self) -> String {
        crate::table::render(self)
    }
}

/// The warning for a client that used (nearly) all its cores.
pub fn saturation_warning(cpu_s: f64, wall_s: f64) -> String {
    format!(
        "client saturated: {cpu_s:.2} s of CPU in {wall_s:.2} s is {:.0}% of {} cores; the figures may be the client's limit, not the server's",
        if wall_s > 0.0 { 100.0 * cpu_s / wall_s / crate::cpu::cores() as f64 } else { 0.0 },
        crate::cpu::cores()
    )
}

/// The measured window, `[start, end)`, on the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// A window from now on that never ends (for tests of the counting alone).
    pub fn open() -> Window {
        let now = Instant::now();
        Window { start: now, end: now + Duration::from_secs(86_400 * 365) }
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
    pub hello_retries: u64,
    pub handshakes_in_window: u64,
    pub tail_handshakes: u64,
    pub messages: u64,
    pub messages_in_window: u64,
    pub missed: u64,
    pub errors: ErrorCounts,
    window: Window,
    examples: BTreeMap<ErrorClass, String>,
    negotiated: Negotiated,
    connect: Histogram<u64>,
    ttfb: Histogram<u64>,
    starttls: Histogram<u64>,
    handshake: Histogram<u64>,
    queue: Histogram<u64>,
    ok: Histogram<u64>,
    failed: Histogram<u64>,
    missed_h: Histogram<u64>,
    all: Histogram<u64>,
}

/// 1 µs to 1 hour at 3 significant digits; larger values are clamped, never lost.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl Recorder {
    /// An empty recorder for attempts measured against `window`.
    pub fn new(window: Window) -> Recorder {
        Recorder {
            attempts: 0,
            successes: 0,
            handshakes: 0,
            full: 0,
            resumed: 0,
            hello_retries: 0,
            handshakes_in_window: 0,
            tail_handshakes: 0,
            messages: 0,
            messages_in_window: 0,
            missed: 0,
            errors: ErrorCounts::default(),
            window,
            examples: BTreeMap::new(),
            negotiated: Negotiated::default(),
            connect: histogram(),
            ttfb: histogram(),
            starttls: histogram(),
            handshake: histogram(),
            queue: histogram(),
            ok: histogram(),
            failed: histogram(),
            missed_h: histogram(),
            all: histogram(),
        }
    }

    /// Count one finished attempt. `total` is its latency (from the intended start in open
    /// loop), whether it succeeded or failed; `queue` the wait before it could start (open
    /// loop only).
    pub fn record(&mut self, a: &Attempt, result: &Result<(), ConnError>, total: Duration, queue: Option<Duration>) {
        self.attempts += 1;
        self.messages += a.messages;
        self.messages_in_window += a.messages_in_window;
        for (h, d) in [
            (&mut self.connect, a.connect),
            (&mut self.ttfb, a.ttfb),
            (&mut self.starttls, a.starttls),
            (&mut self.handshake, a.handshake),
            (&mut self.queue, queue),
        ] {
            if let Some(d) = d {
                h.saturating_record(us(d));
            }
        }
        if let Some(f) = &a.tls {
            self.handshakes += 1;
            if f.resumed {
                self.resumed += 1;
            } else {
                self.full += 1;
            }
            self.hello_retries += u64::from(a.hello_retry);
            match a.handshake_at {
                Some(at) if at >= self.window.end => self.tail_handshakes += 1,
                Some(at) if at >= self.window.start => self.handshakes_in_window += 1,
                _ => {}
            }
            *self.negotiated.tls_version.entry(f.version.clone()).or_default() += 1;
            *self.negotiated.kx.entry(f.kx.clone()).or_default() += 1;
            *self.negotiated.cipher.entry(f.cipher.clone()).or_default() += 1;
        }
        match result {
            Ok(()) => {
                self.successes += 1;
                self.ok.saturating_record(us(total));
            }
            Err(e) => {
                self.errors.add(e.class, 1);
                self.examples.entry(e.class).or_insert_with(|| e.detail.clone());
                self.failed.saturating_record(us(total));
            }
        }
        self.all.saturating_record(us(total));
    }

    /// Count `n` connections that were due but never started; `lower_bound` is the end of
    /// the window minus their intended start.
    pub fn record_missed(&mut self, lower_bound: Duration, n: u64) {
        self.missed += n;
        self.missed_h.saturating_record_n(us(lower_bound), n);
        self.all.saturating_record_n(us(lower_bound), n);
    }

    pub fn merge(&mut self, o: &Recorder) {
        self.attempts += o.attempts;
        self.successes += o.successes;
        self.handshakes += o.handshakes;
        self.full += o.full;
        self.resumed += o.resumed;
        self.hello_retries += o.hello_retries;
        self.handshakes_in_window += o.handshakes_in_window;
        self.tail_handshakes += o.tail_handshakes;
        self.messages += o.messages;
        self.messages_in_window += o.messages_in_window;
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
        for (mine, theirs) in [
            (&mut self.connect, &o.connect),
            (&mut self.ttfb, &o.ttfb),
            (&mut self.starttls, &o.starttls),
            (&mut self.handshake, &o.handshake),
            (&mut self.queue, &o.queue),
            (&mut self.ok, &o.ok),
            (&mut self.failed, &o.failed),
            (&mut self.missed_h, &o.missed_h),
            (&mut self.all, &o.all),
        ] {
            let _ = mine.add(theirs);
        }
    }

    /// The report for one port. `warm` is what the warm-up recorded (its window handshakes
    /// count towards the rate, nothing else of it does); `tail` runs from the end of the
    /// window to the end of the last attempt.
    pub fn into_port_report(self, address: std::net::SocketAddr, tls: &str, warm: &Recorder, phase: PhaseFacts) -> PortReport {
        let window_s = phase.window.as_secs_f64();
        let per_s = |n: u64| if window_s > 0.0 { n as f64 / window_s } else { 0.0 };
        let most = |m: &BTreeMap<String, u64>| m.iter().max_by_key(|(_, &n)| n).map(|(k, _)| k.clone());
        let all = Percentiles::of(&self.all);
        let in_window = self.handshakes_in_window + warm.handshakes_in_window;
        let errors = self.errors.total();
        let mut warnings = Vec::new();
        if crate::cpu::saturated(phase.client_cpu_s, phase.wall_s, crate::cpu::cores()) {
            warnings.push(saturation_warning(phase.client_cpu_s, phase.wall_s));
        }
        if self.missed > 0 {
            warnings.push(format!(
                "{} of {} scheduled connections were never started (all {} slots busy): the target did not keep up with the rate; they are in the latency figures at a lower bound",
                self.missed,
                self.attempts + self.missed,
                phase.concurrency
            ));
        }
        if self.hello_retries > 0 {
            warnings.push(format!(
                "{} of {} full handshakes needed a HelloRetryRequest: the server wanted a key share for another group (offer it with --kx)",
                self.hello_retries, self.full
            ));
        }
        if self.errors.cut > 0 {
            warnings.push(format!("{} attempts were still running one timeout after the end of the window and were cut", self.errors.cut));
        }
        if self.errors.panic > 0 {
            warnings.push(format!("{} attempts ended in a panic of the load generator (a bug: please report it)", self.errors.panic));
        }
        PortReport {
            port: address.port(),
            address: address.to_string(),
            tls: tls.to_string(),
            scheduled: self.attempts + self.missed,
            attempts: self.attempts,
            successes: self.successes,
            handshakes: self.handshakes,
            full: self.full,
            resumed: self.resumed,
            hello_retries: self.hello_retries,
            errors,
            errors_by_class: self.errors,
            error_examples: self.examples.iter().map(|(c, e)| (c.as_str().to_string(), e.clone())).collect(),
            missed: self.missed,
            messages: self.messages,
            messages_in_window: self.messages_in_window + warm.messages_in_window,
            handshakes_per_s: per_s(in_window),
            messages_per_s: per_s(self.messages_in_window + warm.messages_in_window),
            handshakes_in_window: in_window,
            tail_handshakes: self.tail_handshakes,
            window_s,
            tail_s: phase.tail.as_secs_f64(),
            tls_version: most(&self.negotiated.tls_version),
            kx: most(&self.negotiated.kx),
            cipher: most(&self.negotiated.cipher),
            negotiated: self.negotiated,
            client_cpu_s: phase.client_cpu_s,
            sink_cpu_s: phase.sink_cpu_s,
            duration_s: window_s + phase.tail.as_secs_f64(),
            latency_us: all,
            latency_breakdown_us: Breakdown {
                connect: Percentiles::of(&self.connect),
                ttfb: Percentiles::of(&self.ttfb),
                starttls: Percentiles::of(&self.starttls),
                handshake: Percentiles::of(&self.handshake),
                queue: Percentiles::of(&self.queue),
                ok: Percentiles::of(&self.ok),
                failed: Percentiles::of(&self.failed),
                missed: Percentiles::of(&self.missed_h),
                all,
            },
            warmup: Warmup {
                seconds: phase.warmup.as_secs_f64(),
                attempts: warm.attempts,
                missed: warm.missed,
                handshakes: warm.handshakes,
                errors: warm.errors.total(),
            },
            ticket_store: phase.ticket_store,
            verify_once: phase.verify_once,
            warnings,
        }
    }
}

/// What the phase knows beside the recorders.
#[derive(Debug, Clone, Default)]
pub struct PhaseFacts {
    /// Length of the measured window.
    pub window: Duration,
    /// From the end of the window to the end of the last attempt.
    pub tail: Duration,
    /// Length of the warm-up.
    pub warmup: Duration,
    /// Wall time of the whole phase (warm-up, window and tail), for the saturation check.
    pub wall_s: f64,
    pub client_cpu_s: f64,
    pub sink_cpu_s: Option<f64>,
    pub concurrency: usize,
    pub ticket_store: Option<StoreStats>,
    pub verify_once: Option<VerifyOnceStats>,
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
            handshake: Some(Duration::from_micros(hs_us)),
            handshake_at: Some(Instant::now()),
            tls: Some(facts(resumed)),
            ..Attempt::default()
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
        let mut a = Recorder::new(Window::open());
        let mut b = Recorder::new(Window::open());
        a.record(&ok_attempt(false, 300), &Ok(()), Duration::from_millis(2), None);
        a.record(&ok_attempt(true, 100), &Ok(()), Duration::from_millis(1), None);
        // Handshake done, then QUIT failed: one handshake and one error.
        b.record(&ok_attempt(true, 100), &Err(ConnError::new(ErrorClass::Io, "reset")), Duration::from_millis(3), None);
        let refused = Attempt::default();
        b.record(&refused, &Err(ConnError::new(ErrorClass::Connect, "refused")), Duration::ZERO, None);
        b.record(&refused, &Err(ConnError::new(ErrorClass::Connect, "refused again")), Duration::ZERO, None);
        b.record_missed(Duration::from_millis(9), 2);
        a.merge(&b);
        let addr = "127.0.0.1:2525".parse().unwrap();
        let facts = PhaseFacts { window: Duration::from_secs(2), client_cpu_s: 0.5, ..PhaseFacts::default() };
        let p = a.into_port_report(addr, "starttls", &Recorder::new(Window::open()), facts);
        assert_eq!(p.attempts, 5);
        assert_eq!(p.attempts, p.successes + p.errors);
        assert_eq!((p.handshakes, p.full, p.resumed), (3, 1, 2));
        assert_eq!(p.errors_by_class.connect, 2);
        assert_eq!(p.errors_by_class.io, 1);
        assert_eq!(p.error_examples["connect"], "refused");
        assert_eq!(p.handshakes_per_s, 1.5);
        assert_eq!((p.handshakes_in_window, p.tail_handshakes), (3, 0));
        assert_eq!((p.missed, p.scheduled), (2, 7));
        // Every scheduled connection is in the headline row: 2 ok, 3 failed, 2 missed.
        assert_eq!(p.latency_us.count, 7);
        assert_eq!(p.latency_breakdown_us.ok.count, 2);
        assert_eq!(p.latency_breakdown_us.failed.count, 3);
        assert_eq!(p.latency_breakdown_us.missed.count, 2);
        assert_eq!(p.latency_us.max, 9007, "{:?}", p.latency_us);
        assert!(p.warnings.iter().any(|w| w.contains("never started")), "{:?}", p.warnings);
        assert_eq!(p.latency_breakdown_us.handshake.count, 3);
        assert_eq!(p.latency_breakdown_us.starttls, Percentiles::default());
        assert_eq!(p.tls_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(p.kx.as_deref(), Some("X25519"));
    }

    #[test]
    fn json_shape_and_table() {
        let mut r = Recorder::new(Window::open());
        r.record(&ok_attempt(false, 300), &Ok(()), Duration::from_millis(2), None);
        let facts = PhaseFacts { window: Duration::from_secs(1), client_cpu_s: 0.1, ..PhaseFacts::default() };
        let port = r.into_port_report("127.0.0.1:2526".parse().unwrap(), "implicit", &Recorder::new(Window::open()), facts);
        let mut cfg = Config::new("127.0.0.1");
        cfg.implicit_port = Some(2526);
        let report = Report {
            ports: vec![port],
            client_cpu_s: 0.2,
            sink_cpu_s: None,
            embedded_sink: None,
            duration_s: 1.0,
            cores: 2,
            warnings: Vec::new(),
            settings: Settings::of(&cfg),
        };
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
            for part in ["connect", "ttfb", "starttls", "handshake", "queue", "ok", "failed", "missed", "all"] {
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
