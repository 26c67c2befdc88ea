//! Error classes: each failed attempt is counted under exactly one, so a report can say *why*
//! connections failed (a certificate problem reads differently from a server out of
//! processes). The mapping from `io::Error` (which is how tokio-rustls hands back TLS errors)
//! is a pure function, unit-tested here.

use std::fmt;
use std::io;

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// The TCP connect failed (refused, unreachable, no ephemeral port...).
    Connect,
    /// No valid 220 greeting: wrong code, malformed, or the connection ended before it.
    Banner,
    /// The EHLO reply did not advertise STARTTLS.
    NoStarttls,
    /// The server sent a TLS alert.
    TlsAlert,
    /// The client rejected the server's certificate.
    Certificate,
    /// Any other TLS failure (handshake ended early, protocol error, ...).
    Tls,
    /// The server closed the connection (FIN or reset) without a TLS alert or an SMTP reply
    /// saying why: during the TLS handshake, or while a reply was awaited after the greeting.
    /// A server over its connection limit on an implicit-TLS port does this.
    Closed,
    /// One step took longer than `--timeout`.
    Timeout,
    /// Still running one timeout after the end of the phase, so cut by the run's hard stop
    /// (no single step had timed out yet).
    Cut,
    /// The server answered with an unexpected reply code (or a malformed reply) after the
    /// greeting: EHLO, STARTTLS, MAIL, RCPT, DATA, end of data, QUIT.
    SmtpReply,
    /// Any other I/O failure.
    Io,
    /// The load generator's own task panicked during the attempt (a bug in this tool, never
    /// the server's doing); the attempt is still counted, with what it had done.
    Panic,
}

impl ErrorClass {
    /// Every class, in report order.
    pub const ALL: [ErrorClass; 12] = [
        ErrorClass::Connect,
        ErrorClass::Banner,
        ErrorClass::NoStarttls,
        ErrorClass::TlsAlert,
        ErrorClass::Certificate,
        ErrorClass::Tls,
        ErrorClass::Closed,
        ErrorClass::Timeout,
        ErrorClass::Cut,
        ErrorClass::SmtpReply,
        ErrorClass::Io,
        ErrorClass::Panic,
    ];

    /// The name used in reports and JSON keys.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Banner => "banner",
            ErrorClass::NoStarttls => "no_starttls",
            ErrorClass::TlsAlert => "tls_alert",
            ErrorClass::Certificate => "certificate",
            ErrorClass::Tls => "tls",
            ErrorClass::Closed => "closed",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Cut => "cut",
            ErrorClass::SmtpReply => "smtp_reply",
            ErrorClass::Io => "io",
            ErrorClass::Panic => "panic",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors counted per class; serializes as a JSON object with one key per class, zeros
/// included, so a consumer never has to guess whether a key is missing or zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub banner: u64,
    pub no_starttls: u64,
    pub tls_alert: u64,
    pub certificate: u64,
    pub tls: u64,
    pub closed: u64,
    pub timeout: u64,
    pub cut: u64,
    pub smtp_reply: u64,
    pub io: u64,
    pub panic: u64,
}

impl ErrorCounts {
    fn slot(&mut self, c: ErrorClass) -> &mut u64 {
        match c {
            ErrorClass::Connect => &mut self.connect,
            ErrorClass::Banner => &mut self.banner,
            ErrorClass::NoStarttls => &mut self.no_starttls,
            ErrorClass::TlsAlert => &mut self.tls_alert,
            ErrorClass::Certificate => &mut self.certificate,
            ErrorClass::Tls => &mut self.tls,
            ErrorClass::Closed => &mut self.closed,
            ErrorClass::Timeout => &mut self.timeout,
            ErrorClass::Cut => &mut self.cut,
            ErrorClass::SmtpReply => &mut self.smtp_reply,
            ErrorClass::Io => &mut self.io,
            ErrorClass::Panic => &mut self.panic,
        }
    }

    pub fn add(&mut self, c: ErrorClass, n: u64) {
        *self.slot(c) += n;
    }

    pub fn get(&self, c: ErrorClass) -> u64 {
        match c {
            ErrorClass::Connect => self.connect,
            ErrorClass::Banner => self.banner,
            ErrorClass::NoStarttls => self.no_starttls,
            ErrorClass::TlsAlert => self.tls_alert,
            ErrorClass::Certificate => self.certificate,
            ErrorClass::Tls => self.tls,
            ErrorClass::Closed => self.closed,
            ErrorClass::Timeout => self.timeout,
            ErrorClass::Cut => self.cut,
            ErrorClass::SmtpReply => self.smtp_reply,
            ErrorClass::Io => self.io,
            ErrorClass::Panic => self.panic,
        }
    }

    pub fn total(&self) -> u64 {
        ErrorClass::ALL.iter().map(|&c| self.get(c)).sum()
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        for c in ErrorClass::ALL {
            self.add(c, other.get(c));
        }
    }
}

/// One failed attempt: its class and a human-readable detail for the report's examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnError {
    pub class: ErrorClass,
    pub detail: String,
}

impl ConnError {
    pub fn new(class: ErrorClass, detail: impl Into<String>) -> ConnError {
        ConnError { class, detail: detail.into() }
    }

    /// Classify an I/O error from step `what`; `fallback` is the class when the error is
    /// neither TLS nor a timeout (e.g. `Connect` for the connect step).
    pub fn io(what: &str, e: &io::Error, fallback: ErrorClass) -> ConnError {
        ConnError::new(classify_io(e, fallback), format!("{what}: {e}"))
    }
}

/// Map an I/O error to a class. tokio-rustls wraps the `rustls::Error` inside the
/// `io::Error`, so look there first: an alert from the server, a certificate the client
/// rejected, or some other TLS failure. Then timeouts; otherwise `fallback`.
pub fn classify_io(e: &io::Error, fallback: ErrorClass) -> ErrorClass {
    if let Some(tls) = mxpipe::tls::rustls_error(e) {
        return classify_tls(tls);
    }
    match e.kind() {
        io::ErrorKind::TimedOut => ErrorClass::Timeout,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
            if fallback != ErrorClass::Connect && fallback != ErrorClass::Banner =>
        {
            ErrorClass::Closed
        }
        _ => fallback,
    }
}

/// Map a rustls error to a class.
pub fn classify_tls(e: &rustls::Error) -> ErrorClass {
    match e {
        rustls::Error::AlertReceived(_) => ErrorClass::TlsAlert,
        rustls::Error::InvalidCertificate(_) => ErrorClass::Certificate,
        _ => ErrorClass::Tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: rustls::Error) -> io::Error {
        // This is how tokio-rustls reports a failed handshake.
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn tls_errors_inside_io_errors() {
        let alert = wrapped(rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure));
        assert_eq!(classify_io(&alert, ErrorClass::Io), ErrorClass::TlsAlert);
        let cert = wrapped(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        assert_eq!(classify_io(&cert, ErrorClass::Io), ErrorClass::Certificate);
        let other = wrapped(rustls::Error::DecryptError);
        assert_eq!(classify_io(&other, ErrorClass::Io), ErrorClass::Tls);
    }

    #[test]
    fn plain_io_errors() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_io(&refused, ErrorClass::Connect), ErrorClass::Connect);
        let to = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(classify_io(&to, ErrorClass::Connect), ErrorClass::Timeout);
        // A close without an alert is told apart from a TLS failure.
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(classify_io(&eof, ErrorClass::Tls), ErrorClass::Closed);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(classify_io(&reset, ErrorClass::Io), ErrorClass::Closed);
        assert_eq!(classify_io(&reset, ErrorClass::Banner), ErrorClass::Banner);
        let other = io::Error::other("boom");
        assert_eq!(classify_io(&other, ErrorClass::Io), ErrorClass::Io);
    }

    #[test]
    fn counts_serialize_as_a_map_with_every_class() {
        let mut c = ErrorCounts::default();
        c.add(ErrorClass::NoStarttls, 2);
        c.add(ErrorClass::Io, 1);
        let mut d = ErrorCounts::default();
        d.add(ErrorClass::Io, 4);
        c.merge(&d);
        assert_eq!(c.total(), 7);
        let v = serde_json::to_value(c).unwrap();
        let m = v.as_object().unwrap();
        assert_eq!(m.len(), ErrorClass::ALL.len());
        for class in ErrorClass::ALL {
            assert!(m.contains_key(class.as_str()), "{class}");
        }
        assert_eq!(m["no_starttls"], 2);
        assert_eq!(m["io"], 5);
    }
}
