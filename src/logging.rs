//! The daemon's own log: what it is doing and what went wrong, as `tracing` events on
//! standard error (not the delivery log, which records each message's attempts).
//!
//! Library code only emits events; the binary calls [`init`] once at start, with the
//! `[log] format` and `level` of the configuration (or the defaults for the other commands).
//! `RUST_LOG`, when set, replaces the level with its own filter directives.

use serde::Deserialize;

/// `[log] format`: how each event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line for a person: time, level, message, `key=value` fields.
    #[default]
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields.message`, the other fields,
    /// `target`), for a log collector.
    Json,
}

/// `[log] level`: the least severe events of mxpipe's own that are written (other crates'
/// events from `warn` up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only what failed.
    Error,
    /// Also what went wrong but was worked around.
    Warn,
    /// Also the daemon's milestones (serving, stopping); the default.
    #[default]
    Info,
    /// Also detail for diagnosing a problem.
    Debug,
    /// Everything mxpipe emits.
    Trace,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The filter `init` uses: `RUST_LOG` if it is set (an unparsable one is an error, not
/// silently ignored), else `level` for mxpipe and `warn` for its dependencies.
fn filter(level: LogLevel, rust_log: Option<&str>) -> Result<tracing_subscriber::EnvFilter, String> {
    match rust_log {
        Some(directives) => tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| format!("RUST_LOG={directives:?}: {e}")),
        // hickory-server (the embedded test/demo DNS server) warns on every negative answer to
        // a DNSSEC-OK query for an unsigned zone, which is what it should give: not news.
        None => Ok(tracing_subscriber::EnvFilter::new(format!("warn,hickory_server=error,mxpipe={}", level.as_str()))),
    }
}

/// Send this process's events to standard error, in `format`, from `level` up. Call once;
/// a second call (a subscriber is already set) is an error.
pub fn init(format: LogFormat, level: LogLevel) -> Result<(), String> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let filter = filter(level, rust_log.as_deref())?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    let set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    set.map_err(|e| format!("cannot set up the log: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let directives = |f: tracing_subscriber::EnvFilter| {
            let mut d: Vec<String> = f.to_string().split(',').map(String::from).collect();
            d.sort();
            d
        };
        assert_eq!(directives(filter(LogLevel::Info, None).unwrap()), ["hickory_server=error", "mxpipe=info", "warn"]);
        assert_eq!(directives(filter(LogLevel::Trace, None).unwrap()), ["hickory_server=error", "mxpipe=trace", "warn"]);
        assert!(filter(LogLevel::Info, Some("mxpipe=debug")).unwrap().to_string().contains("mxpipe=debug"));
        let e = filter(LogLevel::Info, Some("mxpipe=loud")).unwrap_err();
        assert!(e.contains("RUST_LOG"), "{e}");
    }
}
