//! What the binary's entry points share (the handshake run, `sweep`, and the injection modes
//! in [`crate::inject::cli`]): the runtime they run on, how a report reaches stdout, and the
//! trust settings of `--insecure` and `--ca`. Each prints its own errors, prefixed
//! `mxpipe-loadgen`, and turns failures into exit status 2; none of it measures anything.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use mxpipe::tls::Verify;

/// A multi-thread runtime, with the open-file limit raised first (a warning if it cannot
/// be); exit status 2 after a message when the runtime cannot start.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    if let Err(e) = mxpipe::sys::raise_nofile_limit() {
        eprintln!("mxpipe-loadgen: warning: cannot raise the open-file limit: {e}");
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| {
        eprintln!("mxpipe-loadgen: cannot start the tokio runtime: {e}");
        ExitCode::from(2)
    })
}

/// A report the binary prints: a table for people, or one JSON document.
pub trait Printable {
    /// The table.
    fn table(&self) -> String;
    /// The JSON document, without a final newline.
    fn json(&self) -> String;
}

impl Printable for crate::Report {
    fn table(&self) -> String {
        self.to_table()
    }
    fn json(&self) -> String {
        self.to_json()
    }
}

impl Printable for crate::sweep::SweepReport {
    fn table(&self) -> String {
        self.to_table()
    }
    fn json(&self) -> String {
        self.to_json()
    }
}

impl Printable for crate::inject::InjectReport {
    fn table(&self) -> String {
        self.to_table()
    }
    fn json(&self) -> String {
        self.to_json()
    }
}

/// Write `report` to stdout, as JSON (and nothing else) with `json`, else as its table;
/// exit status 2 when stdout cannot take it (a closed pipe).
pub fn print(report: &impl Printable, json: bool) -> Result<(), ExitCode> {
    let text = if json { report.json() + "\n" } else { report.table() };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(|_| ExitCode::from(2))
}

/// What `--insecure` and `--ca` say about the server's certificate: no verification, or the
/// webpki roots plus the certificates of the `--ca` file (its errors name the flag).
pub fn verify(insecure: bool, ca: Option<&Path>) -> Result<Verify, String> {
    if insecure {
        return Ok(Verify::None);
    }
    let extra = match ca {
        Some(path) => mxpipe::tls::certs::load_certs(path).map_err(|e| format!("--ca: {e}"))?,
        None => Vec::new(),
    };
    Verify::webpki_plus(&extra).map_err(|e| format!("--ca: {e}"))
}
