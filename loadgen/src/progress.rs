//! The live progress line: shared counters the workers bump, and a task that redraws one
//! line on stderr about once a second. Only on a terminal, so logs and pipes stay clean, and
//! never on stdout, which belongs to the report (`--json` must be the only thing there).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters updated by every worker as attempts finish (relaxed atomics: a display does not
/// need ordering, and the report is built from the workers' own recorders).
#[derive(Debug, Default)]
pub struct Live {
    pub attempts: AtomicU64,
    pub handshakes: AtomicU64,
    pub resumed: AtomicU64,
    pub errors: AtomicU64,
    pub messages: AtomicU64,
}

impl Live {
    pub fn bump(&self, handshake: bool, resumed: bool, error: bool, messages: u64) {
        let add = |a: &AtomicU64, n: u64| {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.attempts, 1);
        add(&self.handshakes, u64::from(handshake));
        add(&self.resumed, u64::from(resumed));
        add(&self.errors, u64::from(error));
        add(&self.messages, messages);
    }
}

/// A running display; [`Display::finish`] stops it and clears the line.
pub struct Display {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    /// Start redrawing `label` and the counters of `live`, if `wanted` and stderr is a
    /// terminal; otherwise do nothing.
    pub fn start(wanted: bool, label: String, live: Arc<Live>) -> Display {
        if !wanted || !std::io::stderr().is_terminal() {
            return Display { task: None };
        }
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut last_hs = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let hs = live.handshakes.load(Ordering::Relaxed);
                let messages = live.messages.load(Ordering::Relaxed);
                let line = format!(
                    "{label}  {:>4.0}s  attempts {}  handshakes {} ({}/s, {:.0}% resumed)  errors {}{}",
                    t0.elapsed().as_secs_f64(),
                    live.attempts.load(Ordering::Relaxed),
                    hs,
                    hs - last_hs,
                    if hs > 0 { 100.0 * live.resumed.load(Ordering::Relaxed) as f64 / hs as f64 } else { 0.0 },
                    live.errors.load(Ordering::Relaxed),
                    if messages > 0 { format!("  messages {messages}") } else { String::new() },
                );
                last_hs = hs;
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            }
        });
        Display { task: Some(task) }
    }

    /// Stop the display and clear its line.
    pub fn finish(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
