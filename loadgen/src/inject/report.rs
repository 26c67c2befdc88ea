//! Counting and reporting for the injection load: a [`Recorder`] per connection worker (no
//! shared locks on the hot path), merged at the end into an [`InjectReport`], printed as a
//! table or JSON.
//!
//! Accounting invariant: every message started (its number taken, its first command sent)
//! ends as exactly one of `acked`, `refused_temp`, `refused_perm` or `lost`, so
//! `attempted == acked + refused_temp + refused_perm + lost`. `refused_by_reply` counts refusing
//! replies by step and class (`rcpt_5xx`, `http_401`...): a message with one of two recipients
//! refused is acked and counts one `rcpt_5xx`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::class::{ConnError, ErrorCounts};
use crate::report::Percentiles;

/// Microseconds, 3 significant digits, up to an hour.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// One worker's counts.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub connections: u64,
    /// Connections that pipelined (the server offered PIPELINING; always 0 for HTTP).
    pub pipelined_connections: u64,
    pub conn_errors: ErrorCounts,
    pub error_examples: BTreeMap<String, String>,
    pub attempted: u64,
    pub acked: u64,
    pub refused_temp: u64,
    pub refused_perm: u64,
    pub lost: u64,
    pub rcpts_acked: u64,
    pub rcpts_refused: u64,
    pub bytes_acked: u64,
    pub refused_by_reply: BTreeMap<String, u64>,
    /// HTTP: requests answered (any status).
    pub requests: u64,
    /// End of data (or of the request) to the final reply (or response), per message (SMTP)
    /// or per request (HTTP).
    pub ack: Histogram<u64>,
    /// SMTP: first command of the transaction to its final reply.
    pub transaction: Histogram<u64>,
    /// When the last acknowledgement came, since the start of the run.
    pub last_ack: Duration,
    /// This worker stopped early after too many failed connections in a row.
    pub gave_up: bool,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            connections: 0,
            pipelined_connections: 0,
            conn_errors: ErrorCounts::default(),
            error_examples: BTreeMap::new(),
            attempted: 0,
            acked: 0,
            refused_temp: 0,
            refused_perm: 0,
            lost: 0,
            rcpts_acked: 0,
            rcpts_refused: 0,
            bytes_acked: 0,
            refused_by_reply: BTreeMap::new(),
            requests: 0,
            ack: histogram(),
            transaction: histogram(),
            last_ack: Duration::ZERO,
            gave_up: false,
        }
    }
}

impl Recorder {
    /// A connection failed (after `lost` messages in flight were cut off with it).
    pub fn conn_error(&mut self, e: &ConnError) {
        self.conn_errors.add(e.class, 1);
        self.error_examples.entry(e.class.as_str().to_string()).or_insert_with(|| e.detail.clone());
    }

    /// A refusing reply at `step` with `code` (`mail`, `rcpt`, `data`, `end_of_data`: by class,
    /// `rcpt_4xx`; `http`: by status, `http_503`).
    pub fn refused_reply(&mut self, step: &str, code: u16) {
        let key = if step == "http" { format!("http_{code}") } else { format!("{step}_{}xx", code / 100) };
        *self.refused_by_reply.entry(key).or_insert(0) += 1;
    }

    /// `n` messages refused as a whole by a reply of `code`.
    pub fn refused(&mut self, code: u16, n: u64) {
        if (400..500).contains(&code) {
            self.refused_temp += n;
        } else {
            self.refused_perm += n;
        }
    }

    /// Messages acknowledged, with `rcpts` recipients and `bytes` in all; `ack` from end of
    /// data to the reply; `at` since the start.
    pub fn acked(&mut self, n: u64, rcpts: u64, bytes: u64, ack: Duration, at: Duration) {
        self.acked += n;
        self.rcpts_acked += rcpts;
        self.bytes_acked += bytes;
        let _ = self.ack.record(micros(ack));
        self.last_ack = self.last_ack.max(at);
    }

    fn merge(&mut self, o: &Recorder) {
        self.connections += o.connections;
        self.pipelined_connections += o.pipelined_connections;
        self.conn_errors.merge(&o.conn_errors);
        for (k, v) in &o.error_examples {
            self.error_examples.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self.attempted += o.attempted;
        self.acked += o.acked;
        self.refused_temp += o.refused_temp;
        self.refused_perm += o.refused_perm;
        self.lost += o.lost;
        self.rcpts_acked += o.rcpts_acked;
        self.rcpts_refused += o.rcpts_refused;
        self.bytes_acked += o.bytes_acked;
        for (k, v) in &o.refused_by_reply {
            *self.refused_by_reply.entry(k.clone()).or_insert(0) += v;
        }
        self.requests += o.requests;
        let _ = self.ack.add(&o.ack);
        let _ = self.transaction.add(&o.transaction);
        self.last_ack = self.last_ack.max(o.last_ack);
    }
}

/// The settings a report was made with, so a JSON file says what it measured.
#[derive(Debug, Clone, Serialize)]
pub struct InjectSettings {
    /// `"smtp"`, `"http"` or `"https"`.
    pub door: String,
    pub concurrency: usize,
    pub count: Option<u64>,
    pub duration_s: Option<f64>,
    pub messages_per_conn: Option<u64>,
    pub rcpts_per_message: usize,
    pub domains: usize,
    /// `SIZE:WEIGHT` entries.
    pub sizes: Vec<(usize, u64)>,
    pub starttls: bool,
    pub auth: bool,
    pub bdat: bool,
    pub batch: usize,
}

/// The whole run. Invariant: `attempted == acked + refused_temp + refused_perm + lost`.
#[derive(Debug, Clone, Serialize)]
pub struct InjectReport {
    /// `ip:port` injected into.
    pub target: String,
    pub settings: InjectSettings,
    pub connections: u64,
    pub pipelined_connections: u64,
    /// Connections that failed (connect, banner, TLS, AUTH, timeout, I/O...), by class.
    pub connection_errors: u64,
    pub errors_by_class: ErrorCounts,
    /// The first error message seen in each class that occurred.
    pub error_examples: BTreeMap<String, String>,
    /// Messages started.
    pub attempted: u64,
    /// Messages acknowledged (250 after the data; HTTP: 202 with their ids).
    pub acked: u64,
    /// Messages refused with a 4xx (HTTP: 5xx, which a client retries), and with a 5xx (HTTP: 4xx).
    pub refused_temp: u64,
    pub refused_perm: u64,
    /// Messages whose connection failed before their final reply: the client cannot know
    /// whether the server kept them.
    pub lost: u64,
    pub rcpts_acked: u64,
    pub rcpts_refused: u64,
    pub bytes_acked: u64,
    /// Refusing replies by step and class.
    pub refused_by_reply: BTreeMap<String, u64>,
    /// HTTP requests answered.
    pub requests: u64,
    /// Acknowledged messages per second, from the start to the last acknowledgement.
    pub acked_per_s: f64,
    /// SMTP: end of data to the final reply, per message; HTTP: request to response, per
    /// request (a whole batch).
    pub ack_latency_us: Percentiles,
    /// SMTP: the first command of a transaction (MAIL) to its final reply.
    pub transaction_latency_us: Percentiles,
    /// Workers that stopped early after failed connections in a row (the target is down or
    /// refuses everyone).
    pub workers_gave_up: u64,
    /// Workers that panicked (a bug: their counts are lost).
    pub workers_panicked: u64,
    /// Client process CPU (user + system) during the run.
    pub client_cpu_s: f64,
    /// Wall time of the run, up to the last connection's end.
    pub duration_s: f64,
}

impl InjectReport {
    /// Merge the workers' recorders.
    pub fn of(target: String, settings: InjectSettings, recs: &[Recorder], panicked: u64, cpu_s: f64, wall: Duration) -> InjectReport {
        let mut all = Recorder::default();
        for r in recs {
            all.merge(r);
        }
        let window = all.last_ack.as_secs_f64();
        InjectReport {
            target,
            settings,
            connections: all.connections,
            pipelined_connections: all.pipelined_connections,
            connection_errors: all.conn_errors.total(),
            errors_by_class: all.conn_errors,
            error_examples: all.error_examples,
            attempted: all.attempted,
            acked: all.acked,
            refused_temp: all.refused_temp,
            refused_perm: all.refused_perm,
            lost: all.lost,
            rcpts_acked: all.rcpts_acked,
            rcpts_refused: all.rcpts_refused,
            bytes_acked: all.bytes_acked,
            refused_by_reply: all.refused_by_reply,
            requests: all.requests,
            acked_per_s: if window > 0.0 { (all.acked as f64 / window * 10.0).round() / 10.0 } else { 0.0 },
            ack_latency_us: Percentiles::of(&all.ack),
            transaction_latency_us: Percentiles::of(&all.transaction),
            workers_gave_up: recs.iter().filter(|r| r.gave_up).count() as u64,
            workers_panicked: panicked,
            client_cpu_s: (cpu_s * 1000.0).round() / 1000.0,
            duration_s: (wall.as_secs_f64() * 1000.0).round() / 1000.0,
        }
    }

    /// Nothing was acknowledged although something was tried (or nothing could be tried).
    pub fn none_acked(&self) -> bool {
        self.acked == 0
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// For people.
    pub fn to_table(&self) -> String {
        let s = &self.settings;
        let mut o = String::new();
        let sizes: Vec<String> = s.sizes.iter().map(|(b, w)| format!("{b}:{w}")).collect();
        let _ = writeln!(
            o,
            "{} injection into {}: {} connections (-c {}), {} recipient(s) a message over {} domain(s), sizes {}{}{}{}",
            s.door,
            self.target,
            self.connections,
            s.concurrency,
            s.rcpts_per_message,
            s.domains.max(1),
            sizes.join(","),
            if s.starttls { ", STARTTLS" } else { "" },
            if s.auth { ", AUTH PLAIN" } else { "" },
            if s.door == "http" {
                format!(", batches of {}", s.batch)
            } else if s.bdat {
                ", BDAT".into()
            } else {
                String::new()
            },
        );
        if s.door == "smtp" {
            let _ = writeln!(o, "pipelined connections: {} of {}", self.pipelined_connections, self.connections);
        } else {
            let _ = writeln!(o, "requests answered: {}", self.requests);
        }
        let _ = writeln!(
            o,
            "messages: {} attempted, {} acked, {} refused (4xx {} / 5xx {}), {} lost with their connection",
            self.attempted,
            self.acked,
            self.refused_temp + self.refused_perm,
            self.refused_temp,
            self.refused_perm,
            self.lost
        );
        let _ = writeln!(
            o,
            "recipients: {} acked, {} refused; {:.1} MB acked",
            self.rcpts_acked,
            self.rcpts_refused,
            self.bytes_acked as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "rate: {:.1} acked messages/s over {:.2} s (client CPU {:.2} s)",
            self.acked_per_s, self.duration_s, self.client_cpu_s
        );
        let _ = writeln!(o, "latency (µs)        count      p50      p90      p99    p99.9      max");
        let ack = if s.door == "http" { "request→response" } else { "end of data→reply" };
        for (name, p) in [(ack, &self.ack_latency_us), ("MAIL→final reply", &self.transaction_latency_us)] {
            if p.count > 0 {
                let _ = writeln!(o, "{name:<18} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}", p.count, p.p50, p.p90, p.p99, p.p999, p.max);
            }
        }
        if !self.refused_by_reply.is_empty() {
            let v: Vec<String> = self.refused_by_reply.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(o, "refusing replies: {}", v.join(", "));
        }
        if self.connection_errors > 0 {
            let _ = writeln!(o, "connection errors: {}", self.connection_errors);
            for c in crate::class::ErrorClass::ALL {
                let n = self.errors_by_class.get(c);
                if n > 0 {
                    let ex = self.error_examples.get(c.as_str()).map_or("", String::as_str);
                    let _ = writeln!(o, "  {:<12} {n:>8}  e.g. {ex}", c.as_str());
                }
            }
        }
        if self.workers_gave_up > 0 {
            let _ = writeln!(o, "WARNING: {} worker(s) stopped after 10 failed connections in a row", self.workers_gave_up);
        }
        if self.workers_panicked > 0 {
            let _ = writeln!(o, "WARNING: {} worker(s) panicked; their counts are missing", self.workers_panicked);
        }
        o
    }
}
