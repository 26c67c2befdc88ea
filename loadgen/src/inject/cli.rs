//! The flags of `--mode inject` and `--mode http` ([`InjectArgs`], flattened into the
//! binary's own) and their entry point [`main`]: flags to an [`InjectConfig`], the run, the
//! report on stdout, the exit status (0: messages were acknowledged; 1: none was; 2: bad
//! flags or a target that cannot be used).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mxpipe::tls::{ClientOptions, ClientResumption, Kx};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{Domains, Door, InjectConfig, Plan, SizeDist, StartTls};

/// Flags of the injection modes only.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Injection (--mode inject: SMTP; --mode http: mxpipe's HTTP API)")]
pub struct InjectArgs {
    /// The port to inject into (an MTA's relay or submission port, or the HTTP API's).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Recipients per message.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub rcpts: u16,

    /// Spread recipients over N domains d0.D .. d(N-1).D, D being --rcpt-to's domain, each
    /// local part numbered (u0@d0.D, u1@d1.D...); message i goes to domain i mod N.
    #[arg(long, value_name = "N", conflicts_with = "domains_file", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub domains: Option<u32>,

    /// Spread recipients over the domains of FILE (one a line, # comments).
    #[arg(long, value_name = "FILE")]
    pub domains_file: Option<PathBuf>,

    /// Message sizes and weights, e.g. 1k:50,10k:40,100k:10 (k = 1000, m = 1000000); instead
    /// of --size.
    #[arg(long, value_name = "LIST", value_parser = SizeDist::parse)]
    pub size_dist: Option<SizeDist>,

    /// SMTP: upgrade with STARTTLS first (verified as --ca/--insecure say).
    #[arg(long)]
    pub starttls: bool,

    /// HTTP: HTTPS, TLS from the first byte (the API with [inject.http.tls]; verified as
    /// --ca/--insecure say, the name as --server-name).
    #[arg(long)]
    pub https: bool,

    /// SMTP: AUTH PLAIN as USER:PASS after EHLO (visible to other local users in the process
    /// list: use a test account).
    #[arg(long, value_name = "USER:PASS")]
    pub auth: Option<String>,

    /// SMTP: send each message with BDAT (RFC 3030) instead of DATA; needs CHUNKING.
    #[arg(long)]
    pub bdat: bool,

    /// HTTP: messages per request.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub batch: usize,

    /// HTTP: file holding the bearer token (as `mxpipe token app --scope inject` prints it).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Which of the two modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--mode inject`.
    Smtp,
    /// `--mode http`.
    Http,
}

/// The binary's flags these modes share with the handshake load.
#[derive(Debug, Clone)]
pub struct Shared {
    pub host: Option<String>,
    pub server_name: Option<String>,
    pub ca: Option<PathBuf>,
    pub insecure: bool,
    pub kx: Kx,
    pub concurrency: usize,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub ehlo_name: String,
    pub mail_from: String,
    pub rcpt_to: String,
    pub size: usize,
    /// `--messages-per-conn`; `None`: a connection is kept for the whole run.
    pub messages_per_conn: Option<u32>,
    pub json: bool,
}

/// Flags to a config; files named by flags are read here, so their errors name them.
pub fn config(kind: Kind, a: InjectArgs, s: Shared) -> Result<InjectConfig, String> {
    if s.rate.is_some() {
        return Err("--rate: the injection modes are closed loop (-c connections back to back)".into());
    }
    let host = s.host.clone().ok_or("give --host")?;
    let port = a.port.ok_or("give --port (the port to inject into)")?;
    if kind == Kind::Http && (a.starttls || a.auth.is_some() || a.bdat) {
        return Err("--starttls, --auth and --bdat are for --mode inject (SMTP)".into());
    }
    if kind == Kind::Smtp && (a.token_file.is_some() || a.https) {
        return Err("--token-file and --https are for --mode http".into());
    }
    let (domains, n_domains) = match (a.domains, &a.domains_file) {
        (Some(n), _) => (Domains::Numbered(n as usize), n as usize),
        (None, Some(path)) => {
            let meta = std::fs::metadata(path).map_err(|e| format!("--domains-file {}: {e}", path.display()))?;
            if meta.len() > 64 * 1024 * 1024 {
                return Err(format!("--domains-file {}: larger than 64 MB", path.display()));
            }
            let text = std::fs::read_to_string(path).map_err(|e| format!("--domains-file {}: {e}", path.display()))?;
            let list = super::plan::parse_domains(&text).map_err(|e| format!("--domains-file {}: {e}", path.display()))?;
            let n = list.len();
            (Domains::List(list), n)
        }
        (None, None) => (Domains::Single, 1),
    };
    let sizes = a.size_dist.unwrap_or_else(|| SizeDist::fixed(s.size));
    let plan = Plan::new(&s.mail_from, &s.rcpt_to, domains, usize::from(a.rcpts), &sizes)?;
    let door = match kind {
        Kind::Smtp => {
            let starttls = if a.starttls { Some(starttls(&host, &s)?) } else { None };
            let auth = match a.auth {
                Some(ua) => {
                    let (u, p) = ua.split_once(':').ok_or("--auth: give USER:PASS")?;
                    Some((u.to_string(), p.to_string()))
                }
                None => None,
            };
            Door::Smtp { ehlo_name: s.ehlo_name, starttls, auth, bdat: a.bdat }
        }
        Kind::Http => {
            let token = match &a.token_file {
                Some(p) => Some(mxpipe::inject::tokens::read_token_file(p).map_err(|e| format!("--token-file: {e}"))?),
                None => None,
            };
            let tls = if a.https { Some(starttls(&host, &s)?) } else { None };
            Door::Http { batch: a.batch, token, tls }
        }
    };
    Ok(InjectConfig {
        host,
        port,
        door,
        concurrency: s.concurrency,
        count: s.count,
        duration: s.duration,
        messages_per_conn: s.messages_per_conn.map(u64::from),
        timeout: s.timeout,
        plan: Arc::new(plan),
        sizes,
        domains: n_domains,
    })
}

/// The TLS client for STARTTLS or HTTPS: `--insecure`, else the webpki roots plus `--ca`;
/// no resumption (one handshake per connection, many messages after it).
fn starttls(host: &str, s: &Shared) -> Result<StartTls, String> {
    let verify = crate::cli::verify(s.insecure, s.ca.as_deref())?;
    let opts = ClientOptions { verify, kx: s.kx, resumption: ClientResumption::Off, tls12_only: false };
    let tls = mxpipe::tls::client_config(&opts, None).map_err(|e| format!("TLS configuration: {e}"))?;
    let name = s.server_name.clone().unwrap_or_else(|| crate::config::default_server_name(host));
    let server_name =
        ServerName::try_from(name.clone()).map_err(|_| format!("{name:?} is not a valid TLS server name; set --server-name"))?;
    Ok(StartTls { connector: TlsConnector::from(tls), server_name })
}

/// Run the mode and print its report; the exit status.
pub fn main(kind: Kind, args: InjectArgs, shared: Shared) -> ExitCode {
    let json = shared.json;
    let cfg = match config(kind, args, shared) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mxpipe-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match crate::cli::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = match runtime.block_on(super::run(&cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mxpipe-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(code) = crate::cli::print(&report, json) {
        return code;
    }
    if report.none_acked() {
        eprintln!("mxpipe-loadgen: no message was acknowledged (see the errors above)");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> InjectArgs {
        InjectArgs {
            port: Some(2525),
            rcpts: 1,
            domains: None,
            domains_file: None,
            size_dist: None,
            starttls: false,
            https: false,
            auth: None,
            bdat: false,
            batch: 100,
            token_file: None,
        }
    }

    fn shared() -> Shared {
        Shared {
            host: Some("127.0.0.1".into()),
            server_name: None,
            ca: None,
            insecure: true,
            kx: Kx::X25519,
            concurrency: 2,
            duration: None,
            count: Some(10),
            rate: None,
            timeout: Duration::from_secs(5),
            ehlo_name: "inject.test".into(),
            mail_from: "a@src.test".into(),
            rcpt_to: "u@bench.test".into(),
            size: 2048,
            messages_per_conn: None,
            json: false,
        }
    }

    #[test]
    fn flags_that_do_not_fit_the_mode_are_refused() {
        assert!(config(Kind::Smtp, args(), shared()).is_ok());
        let e = config(Kind::Smtp, args(), Shared { rate: Some(5.0), ..shared() }).unwrap_err();
        assert!(e.contains("--rate"), "{e}");
        assert!(config(Kind::Http, InjectArgs { starttls: true, ..args() }, shared()).is_err());
        assert!(config(Kind::Smtp, InjectArgs { token_file: Some("t".into()), ..args() }, shared()).is_err());
        assert!(config(Kind::Smtp, InjectArgs { https: true, ..args() }, shared()).unwrap_err().contains("--https"));
        let c = config(Kind::Http, InjectArgs { https: true, ..args() }, shared()).unwrap();
        assert!(matches!(c.door, Door::Http { tls: Some(_), .. }));
        assert!(config(Kind::Smtp, InjectArgs { port: None, ..args() }, shared()).unwrap_err().contains("--port"));
        assert!(config(Kind::Smtp, InjectArgs { auth: Some("nocolon".into()), ..args() }, shared()).is_err());
    }

    #[test]
    fn a_domains_file_is_read_and_its_errors_name_it() {
        let dir = std::env::temp_dir().join(format!("loadgen-inject-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "# two\na.test\nb.test\n").unwrap();
        let c = config(Kind::Smtp, InjectArgs { domains_file: Some(good), rcpts: 2, ..args() }, shared()).unwrap();
        assert_eq!(c.domains, 2);
        assert_eq!(c.plan.rcpt(0, 1), "u1@b.test");
        let bad = dir.join("bad");
        std::fs::write(&bad, "a.test\nnot a domain\n").unwrap();
        let e = config(Kind::Smtp, InjectArgs { domains_file: Some(bad.clone()), ..args() }, shared()).unwrap_err();
        assert!(e.contains(&bad.display().to_string()) && e.contains("line 2"), "{e}");
        let missing = config(Kind::Smtp, InjectArgs { domains_file: Some(dir.join("none")), ..args() }, shared()).unwrap_err();
        assert!(missing.contains("--domains-file"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
