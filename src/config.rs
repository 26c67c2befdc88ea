//! The daemon's configuration file (`mxpipe serve --config FILE`): one TOML file, read once at
//! start.
//!
//! This module owns the file's shape, its defaults, and the checks that let a person fix a
//! wrong setting from the error message alone: unknown keys are refused (a misspelt setting
//! silently left at its default is the worst kind of config bug), durations are written as
//! `"90s"`, `"5m"`, `"1h"`, `"5d"` or `"250ms"`, and network addresses are parsed when the file
//! is read, not where they are used (the value types are [`crate::value`]'s). It does no I/O beyond reading the file (and, in
//! [`Config::engine_config`], the CA files it names) and starts nothing.
//!
//! The doc comments on the section structs are the reference; `mxpipe.example.toml` at the
//! repository root is the same documentation as a file to copy, and a test keeps the two in
//! step (it must parse, and equal the defaults except for its `[[domain]]` examples).
//!
//! Every table refuses unknown keys and every setting has a default, so an empty file is a
//! valid configuration equal to [`Config::default`], whose engine settings equal
//! [`EngineConfig::default`] and the defaults of the `mxpipe send` flags.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::engine::limits::{LimitRule, LimitScope};
use crate::engine::{EngineConfig, PortMap};
use crate::logging::{LogFormat, LogLevel};
use crate::policy::Floor;
use crate::queue::spool::SpoolConfig;
use crate::schedule::RetryPolicy;
use crate::tls::Kx;
use crate::value::host::is_host_name;
// The value types are `value`'s; they are named here too because the file's settings are
// made of them (and `config::Cidr` is what the injection listener's settings hold).
pub use crate::value::{format_duration, parse_duration, Cidr, MxPattern};

/// Most shards accepted: each is an OS thread, and a typo of a few zeros must not start
/// a hundred thousand of them.
pub const MAX_SHARDS: usize = 1024;

/// Why a configuration was refused. Each variant names the setting (or the file position) and
/// says what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Io {
        /// The configuration file.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong kind, at a position in the file.
    #[error("{0}")]
    Parse(Box<ParseError>),
    /// A value of the right kind that is out of range or inconsistent with another setting.
    /// `setting` is its dotted path, e.g. `engine.connect_timeout` or
    /// `domain "example.com".max_conns`.
    #[error("{}{setting}: {message}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Invalid {
        /// The file, when read by [`Config::load`].
        file: Option<PathBuf>,
        /// The setting's dotted path.
        setting: String,
        /// What is wrong, and what is expected instead.
        message: String,
    },
    /// Two `[[domain]]` entries for the same domain or the same MX pattern: which one applies
    /// would depend on their order, so neither is chosen.
    #[error("{}[[domain]] entries {first} and {second} both have {key} = {value:?}; merge them into one",
        file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    DuplicateDomain {
        /// The file, when read by [`Config::load`].
        file: Option<PathBuf>,
        /// The key the two entries share: `name` or `mx_pattern`.
        key: &'static str,
        /// Its value, normalised (so `A.test.` and `a.test` are the same).
        value: String,
        /// The first entry's number, counted from 1 in file order.
        first: usize,
        /// The second entry's number, counted from 1 in file order.
        second: usize,
    },
    /// A file named by `tls.ca_files` could not be loaded (the source names the file).
    #[error("tls.ca_files: {source}")]
    CaFile {
        /// The file, as given in `tls.ca_files`.
        path: PathBuf,
        /// Why it could not be loaded.
        source: crate::tls::TlsError,
    },
}

impl ConfigError {
    fn invalid(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: None, setting: setting.into(), message: message.into() }
    }

    /// Name the file in errors found while checking its content.
    fn in_file(mut self, path: &Path) -> ConfigError {
        match &mut self {
            ConfigError::Parse(p) => p.file = Some(path.to_path_buf()),
            ConfigError::Invalid { file, .. } | ConfigError::DuplicateDomain { file, .. } => *file = Some(path.to_path_buf()),
            ConfigError::Io { .. } | ConfigError::CaFile { .. } => {}
        }
        self
    }
}

/// Where in the file a [`ConfigError::Parse`] is, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}line {line}, column {column}, {}: {message}\n  {line} | {excerpt}",
    file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default(),
    match (setting, table) {
        (Some(s), _) => format!("setting {s}"),
        (None, Some(t)) => format!("in {t}"),
        (None, None) => "at the top level".into(),
    })]
pub struct ParseError {
    /// The file, when read by [`Config::load`].
    pub file: Option<PathBuf>,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The header the position is under (`[engine]`, `[[domain]]`); `None` at the top level.
    pub table: Option<String>,
    /// The dotted path of the key whose value is wrong (`engine.idle_timeout`), when the
    /// error is in a value.
    pub setting: Option<String>,
    /// toml's or serde's message; for an unknown key it names the key and lists the known ones.
    pub message: String,
    /// The offending line.
    pub excerpt: String,
}

/// The whole file. Each field is one `[table]`; `domain` is the `[[domain]]` array.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[engine]`: how deliveries are made (connections, timeouts, EHLO name, key exchange).
    pub engine: EngineSection,
    /// `[dns]`: where MX records are looked up.
    pub dns: DnsSection,
    /// `[ports]`: the TCP ports dialled for SMTP and SMTP over implicit TLS.
    pub ports: PortsSection,
    /// `[tls]`: extra trust anchors for outbound verified TLS.
    pub tls: TlsSection,
    /// `[spool]`: where accepted messages are kept until every recipient has an outcome. The
    /// spool's own type, so the file and the spool share one set of defaults.
    pub spool: SpoolConfig,
    /// `[retry]`: when a temporarily failed recipient is tried again. The n-th retry waits
    /// `initial * factor^(n-1)`, capped at `max_interval`, each wait moved by a random
    /// ±`jitter` fraction; a recipient still undelivered `max_age` after injection is bounced.
    /// The scheduler's own type, so the file and the scheduler share one set of defaults.
    pub retry: RetryPolicy,
    /// `[inject]`: the SMTP listener and the HTTP API that applications inject through.
    pub inject: InjectSection,
    /// `[log]`: the delivery log and the daemon's own log.
    pub log: LogSection,
    /// `[policy]`: how the composed TLS policy reaches and what it remembers.
    pub policy: PolicySection,
    /// `[tlsrpt]`: SMTP TLS Reporting (RFC 8460), daily reports to the domains that ask.
    pub tlsrpt: TlsRptSection,
    /// `[egress]`: the local addresses mail leaves from (`[[egress.source]]`), their pools
    /// (`[[egress.pool]]`) and which pool a sender's mail uses (`[[egress.rule]]`); see
    /// [`crate::egress::EgressConfig`].
    pub egress: crate::egress::EgressConfig,
    /// Per-destination overrides, in file order (`[[domain]]` in the file).
    #[serde(rename = "domain")]
    pub domains: Vec<DomainOverride>,
    /// DKIM signing keys (`[[dkim]]` in the file), used at intake: see [`crate::dkim`]. Reloaded
    /// on SIGHUP.
    pub dkim: Vec<crate::dkim::KeyConfig>,
    /// `[cluster]`: several nodes share their limits through Redis (see
    /// [`crate::cluster::ClusterConfig`]). Absent: this node runs alone, no Redis needed.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The file this configuration was read from (set by [`Config::load`]; a SIGHUP reads it
    /// again for the DKIM keys).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

/// `[engine]`: how deliveries are made. Same meaning and defaults as the `mxpipe send` flags
/// of the same names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Shard threads, each owning its destinations: a number from 1 to [`MAX_SHARDS`], or
    /// `"auto"` for one per core (`None` here). Default `"auto"`.
    #[serde(deserialize_with = "de_shards")]
    pub shards: Option<usize>,
    /// Connections at once per destination domain (per egress source toward it, with
    /// `[[egress.source]]`s: receivers count each sending address apart). Default 8.
    pub max_conns_per_dest: usize,
    /// Connections at once (busy or idle) per destination IP address and shard (and egress
    /// source): many domains share one server, which must not get one connection per domain. Default 64.
    pub max_conns_per_ip: usize,
    /// Messages sent on one connection before it is replaced. Default 1000.
    pub max_msgs_per_conn: u32,
    /// How long an idle connection is kept for reuse, at most 1d. Default `"10s"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub idle_timeout: Duration,
    /// Time allowed for a TCP connect, 1s to 1h. Default `"10s"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub connect_timeout: Duration,
    /// Upper bound on any single SMTP wait, 1s to 1h (RFC 5321's are minutes). Default `"5m"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub command_timeout: Duration,
    /// Name sent in EHLO; should be the sending host's name, with matching forward and reverse
    /// DNS. Default `"mxpipe.localhost"`.
    pub ehlo_name: String,
    /// TLS key exchange offered: `default`, `x25519`, `x25519mlkem768` or `p256`.
    /// Default `"default"` (rustls' list, hybrid post-quantum first).
    #[serde(deserialize_with = "de_kx")]
    pub kx: Kx,
    /// Removed: it made an unsigned prefixed domain weaker (its prefix was ignored). A prefix
    /// is now always honoured; DNSSEC validation is `dns.validate_dnssec`. Kept only to say so.
    pub require_dnssec: Option<bool>,
}

/// `[policy]`: the composed TLS policy's reach and memory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    /// `"domain"`: the strictest MX prefix among a domain's MX hosts applies to all of them, so
    /// a blocked or stripped primary cannot push mail in clear to an unprefixed backup.
    /// `"host"`: each prefix applies to its own host only (weaker). Default `"domain"`.
    pub scope: crate::policy::Scope,
    /// How long a domain seen with a prefixed MX keeps needing verified TLS after the last
    /// such sighting, kept across restarts beside the spool; `"0s"` turns pinning off.
    /// At most a year. Default `"30d"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub pin_ttl: Duration,
    /// Authenticate MX hosts by their DNSSEC-signed TLSA records (DANE, RFC 7672). Needs
    /// `[dns] validate_dnssec = true`: without validation nothing is authenticated, so no
    /// TLSA record applies. Default true.
    pub dane: bool,
}

impl Default for PolicySection {
    fn default() -> Self {
        let o = crate::policy::PolicyOptions::default();
        let s = crate::policy::state::StateOptions::default();
        PolicySection { scope: o.scope, pin_ttl: s.pin_ttl, dane: EngineConfig::default().dane }
    }
}

/// `[tlsrpt]`: SMTP TLS Reporting (RFC 8460). The outcome of every TLS session is counted per
/// receiving domain and UTC day (file `tlsrpt.json` beside the spool); after each day, domains
/// that publish a `_smtp._tls` TXT record get a report by HTTPS or mail (`mxpipe tlsrpt show`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsRptSection {
    /// Count sessions and send reports. Default `true`.
    pub enabled: bool,
    /// `organization-name` in reports. Default: `[engine] ehlo_name`.
    pub organization_name: Option<String>,
    /// `contact-info` in reports (an address or URL). Default: the sender.
    pub contact_info: Option<String>,
    /// Sender (envelope and `From`) of mailed reports. Default `"tlsrpt-noreply@<ehlo_name>"`.
    pub sender: Option<String>,
    /// Reports go at a random moment within this time after 00:00 UTC (and after a start),
    /// so that senders do not all report at once; at most 1d. Default `"1h"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub max_delay: Duration,
}

impl Default for TlsRptSection {
    fn default() -> Self {
        TlsRptSection {
            enabled: true,
            organization_name: None,
            contact_info: None,
            sender: None,
            max_delay: crate::tlsrpt::deliver::DEFAULT_MAX_DELAY,
        }
    }
}

impl TlsRptSection {
    /// The settings checked, with the defaults that derive from `ehlo_name` filled in:
    /// (organization name, contact info, sender).
    pub fn resolved(&self, ehlo_name: &str) -> Result<(String, String, String), ConfigError> {
        in_range("tlsrpt.max_delay", self.max_delay, Duration::ZERO, Duration::from_secs(86_400))?;
        let sender = self.sender.clone().unwrap_or_else(|| format!("tlsrpt-noreply@{ehlo_name}"));
        crate::address::Mailbox::parse(&sender).map_err(|e| ConfigError::invalid("tlsrpt.sender", e.to_string()))?;
        let org = self.organization_name.clone().unwrap_or_else(|| ehlo_name.to_string());
        let contact = self.contact_info.clone().unwrap_or_else(|| sender.clone());
        Ok((org, contact, sender))
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        let e = EngineConfig::default();
        EngineSection {
            shards: None,
            max_conns_per_dest: e.max_conns_per_dest,
            max_conns_per_ip: e.max_conns_per_ip,
            max_msgs_per_conn: e.max_msgs_per_conn,
            idle_timeout: e.idle_timeout,
            connect_timeout: e.connect_timeout,
            command_timeout: e.command_timeout,
            ehlo_name: e.ehlo_name,
            kx: e.kx,
            require_dnssec: None,
        }
    }
}

/// `[dns]`: where MX records are looked up.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// Nameserver to ask, `"ADDR:PORT"` or `"ADDR"` (port 53). Unset: the system resolver
    /// (`/etc/resolv.conf`). Default unset.
    #[serde(deserialize_with = "de_nameserver")]
    pub nameserver: Option<SocketAddr>,
    /// Time allowed for one query attempt, 1ms to 1m. Default `"5s"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub timeout: Duration,
    /// Ask for DNSSEC validation: answers that fail it (bogus) become temporary failures, and
    /// each outcome records whether its MX answer was authenticated. Default false.
    pub validate_dnssec: bool,
    /// Files of DNSSEC trust anchors (DNSKEY or DS lines, see [`crate::dnssec`]) for zones the
    /// root does not lead to, added to the built-in root keys; read at start, a DS resolved
    /// to its key through `nameserver`. Any file here switches `validate_dnssec` on. At most
    /// 64 files. Default none.
    pub trust_anchors: Vec<std::path::PathBuf>,
}

impl Default for DnsSection {
    fn default() -> Self {
        let r = crate::resolve::ResolverConfig::default();
        DnsSection { nameserver: r.nameserver, timeout: r.timeout, validate_dnssec: r.validate_dnssec, trust_anchors: Vec::new() }
    }
}

/// `[ports]`: the TCP ports dialled for the logical SMTP ports (change them only to test
/// against an unprivileged sink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortsSection {
    /// Port for SMTP with STARTTLS. Default 25.
    pub smtp: u16,
    /// Port for SMTP over implicit TLS (the `smtps-` MX prefix). Default 26.
    pub smtps: u16,
    /// Port for HTTPS, where MTA-STS policies are fetched. Default 443.
    pub https: u16,
}

impl Default for PortsSection {
    fn default() -> Self {
        let p = PortMap::default();
        PortsSection { smtp: p.smtp, smtps: p.smtps, https: p.https }
    }
}

/// `[tls]`: outbound TLS trust.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM files of extra trust anchors for verified TLS, beside the Mozilla roots.
    /// Default none.
    pub ca_files: Vec<PathBuf>,
}

/// `[inject]`: how applications hand messages to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InjectSection {
    /// `[inject.smtp]`: the SMTP injection listener.
    pub smtp: SmtpInjectSection,
    /// `[inject.http]`: the HTTP API (inject, observe, the operator's commands).
    pub http: HttpInjectSection,
}

/// `[inject.smtp]`: the SMTP injection listener. A client from `allowed_networks` may send
/// without authenticating; any other client must AUTH (offered only with `auth.users_file`)
/// or is refused with 5.7.1. It is never an open relay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpInjectSection {
    /// Address to listen on, `"IP:PORT"`. Default `"127.0.0.1:2025"`.
    #[serde(deserialize_with = "crate::value::addr::deserialize_socket")]
    pub listen: SocketAddr,
    /// Client networks allowed to send without AUTH, as CIDRs (`"10.0.0.0/8"`,
    /// `"2001:db8::/32"`, or a single address). Default `["127.0.0.0/8", "::1/128"]`.
    pub allowed_networks: Vec<Cidr>,
    /// How long a client may stay silent, between commands or inside a message, before it is
    /// told 421 4.4.2 and disconnected (a half-received message is discarded), 1s to 1h.
    /// Default `"5m"` (RFC 5321 §4.5.3.2.7).
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub idle_timeout: Duration,
    /// Connections served at once; more are told 421 4.7.0 and closed. Default 1000.
    pub max_conns: usize,
    /// Connections served at once from one client (an IPv4 address, or an IPv6 /64); more
    /// are told 421 4.7.0 and closed, so one client cannot take every slot. Default 50.
    pub max_conns_per_ip: usize,
    /// How long one connection may last in all, however busy (then 421 4.4.2; the client
    /// reconnects and goes on). Bounds a client that trickles bytes to stay under
    /// `idle_timeout`. Default `"1h"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub session_timeout: Duration,
    /// A client that must AUTH (outside `allowed_networks`) and has not yet: how long it may
    /// stay connected before it is cut off with 421 4.4.2. Default `"30s"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub auth_timeout: Duration,
    /// Commands that carry no mail (NOOP, VRFY, RSET, HELP, unknown verbs) allowed per
    /// connection; the next gets 421 4.7.0 and the connection is closed. Default 100.
    pub max_idle_commands: u32,
    /// Offer REQUIRETLS (RFC 8689) once STARTTLS is done: a client may then send
    /// `MAIL FROM:<..> REQUIRETLS`, and the message is delivered only over verified TLS to
    /// next hops that offer it too, or bounced. In clear the parameter gets 530 5.7.10.
    /// Default true.
    pub requiretls: bool,
    /// Offer SMTPUTF8 (RFC 6531): a client may send `MAIL FROM:<..> SMTPUTF8` and then
    /// addresses with UTF-8 local parts (without the parameter they get 553 5.6.7); they are
    /// delivered with SMTPUTF8, or bounced with 5.6.7 where the next hop does not offer it.
    /// Off: the parameter gets 555 5.5.4. Default true.
    pub smtputf8: bool,
    /// `[inject.smtp.auth]`: AUTH PLAIN for clients outside `allowed_networks`. Default: not
    /// offered (no users file).
    pub auth: SmtpAuthSection,
    /// `[inject.smtp.tls]`: the certificate offered with STARTTLS. Default: a self-signed one,
    /// generated at each start.
    pub tls: SmtpInjectTlsSection,
}

impl Default for SmtpInjectSection {
    fn default() -> Self {
        SmtpInjectSection {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2025),
            allowed_networks: vec![Cidr::LOOPBACK_V4, Cidr::LOOPBACK_V6],
            idle_timeout: crate::smtp_server::IDLE_TIMEOUT,
            max_conns: 1000,
            max_conns_per_ip: 50,
            session_timeout: crate::smtp_server::SESSION_TIMEOUT,
            auth_timeout: crate::smtp_server::AUTH_TIMEOUT,
            max_idle_commands: crate::smtp_server::MAX_IDLE_COMMANDS,
            requiretls: true,
            smtputf8: true,
            auth: SmtpAuthSection::default(),
            tls: SmtpInjectTlsSection::default(),
        }
    }
}

/// `[inject.smtp.auth]`: AUTH PLAIN (RFC 4954, RFC 4616) for clients outside
/// `allowed_networks`. With a users file, such a client may connect, EHLO, STARTTLS and AUTH;
/// MAIL gets `530 5.7.0` until it has authenticated. A failed AUTH is answered `535 5.7.8`
/// after a one-second pause; the third on a connection gets `421 4.7.0` and the connection is
/// closed. After 10 failures from one address within 10 minutes, its AUTHs get `454 4.7.0`
/// without a password check until they age out. Clients from `allowed_networks` need no AUTH.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpAuthSection {
    /// File of the users allowed to AUTH, read at start (`serve` refuses to start if it is
    /// unreadable or has a bad line). One user a line,
    /// `name:pbkdf2-sha256:ITERATIONS:SALT:HASH` (salt and hash base64); `#` comments and blank
    /// lines are ignored. `mxpipe passwd NAME` reads a password on standard input and prints
    /// the line: no password is stored, only a salted PBKDF2-HMAC-SHA256 of it.
    /// Unset: AUTH is not offered, and clients outside `allowed_networks` are refused at the
    /// greeting with 554 5.7.1. Default unset.
    pub users_file: Option<PathBuf>,
    /// Offer AUTH only after STARTTLS, so that passwords never cross the network in clear:
    /// before it, `AUTH PLAIN` is not advertised and an AUTH command gets `538 5.7.11`
    /// (RFC 4954 §6, "encryption required"). May be false only when `listen` is a loopback
    /// address. Default true.
    pub require_starttls: bool,
}

impl Default for SmtpAuthSection {
    fn default() -> Self {
        SmtpAuthSection { users_file: None, require_starttls: true }
    }
}

/// `[inject.smtp.tls]`: the certificate the injection listener offers with STARTTLS.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpInjectTlsSection {
    /// Certificate chain (PEM); give `key` with it. Unset: a self-signed certificate for
    /// `engine.ehlo_name` is generated at each start (clients must then not verify it).
    /// Default unset.
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`. Default unset.
    pub key: Option<PathBuf>,
}

/// `[inject.http]`: the HTTP API (`POST /v1/messages`, `GET /v1/queues`, `GET /metrics`, ...).
///
/// Off a loopback address it needs both `tokens_file` and `tls`: `serve` refuses to start
/// otherwise. Whatever the address, it keeps browsers out: a `POST` must say
/// `Content-Type: application/json` (else 415; a web page cannot send that cross-origin
/// without a CORS preflight, which the API never grants), and the `Host` must be the address
/// the client connected to, `localhost` on loopback, or one of `allowed_hosts` (else 421: a
/// DNS-rebinding page sends its own name).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpInjectSection {
    /// Address to listen on, `"IP:PORT"`. Default `"127.0.0.1:8025"`.
    #[serde(deserialize_with = "crate::value::addr::deserialize_socket")]
    pub listen: SocketAddr,
    /// File of the bearer tokens the API accepts, read at start (`serve` refuses to start if
    /// it is unreadable or has a bad line). One token a line, `name:scope:sha256:ID:SALT:HASH`;
    /// `#` comments and blank lines are ignored. `mxpipe token NAME --scope SCOPE` makes a
    /// token and its line. Scopes: `inject` (`POST /v1/messages`, `GET /v1/messages/{id}`),
    /// `metrics` (`GET /metrics`), `admin` (everything). With it, a request without a valid
    /// token gets 401, one whose token lacks the scope 403. Unset: no token is asked for
    /// (loopback only). Default unset.
    pub tokens_file: Option<PathBuf>,
    /// The token `mxpipe queue --config` sends (a file whose first line is the token).
    /// `--token-file` and `MXPIPE_API_TOKEN` take precedence. Unused by `serve`. Default unset.
    pub client_token_file: Option<PathBuf>,
    /// More names the API may be reached by (`Host` header), e.g. `"mxpipe.example.com"`
    /// (any port) or `"mxpipe.example.com:8443"` (that port only). The address the client
    /// connected to, and `localhost` on loopback, are always allowed. Default empty.
    pub allowed_hosts: Vec<String>,
    /// How long a client may take to send a request's headers, and how long a keep-alive
    /// connection may sit idle between requests (then it is closed), 100ms to 10m. Default
    /// `"10s"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body (then 408 and the connection is
    /// closed), 100ms to 1h. Default `"60s"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub body_timeout: Duration,
    /// Connections served at once; more get 503 and are closed. Default 256.
    pub max_conns: usize,
    /// Requests on one keep-alive connection; the last is answered with `Connection: close`.
    /// Default 1000.
    pub max_requests_per_conn: u32,
    /// `[inject.http.tls]`: HTTPS on the API (required off loopback). Default unset: plain
    /// HTTP.
    pub tls: HttpInjectTlsSection,
}

impl Default for HttpInjectSection {
    fn default() -> Self {
        HttpInjectSection {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8025),
            tokens_file: None,
            client_token_file: None,
            allowed_hosts: Vec::new(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_conns: 256,
            max_requests_per_conn: 1000,
            tls: HttpInjectTlsSection::default(),
        }
    }
}

/// `[inject.http.tls]`: HTTPS on the API. Unset: plain HTTP (loopback only).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpInjectTlsSection {
    /// Certificate chain (PEM); give `key` with it. `mxpipe queue --config` trusts the
    /// certificates in it. Default unset.
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`. Default unset.
    pub key: Option<PathBuf>,
}

impl HttpInjectTlsSection {
    /// Whether HTTPS is configured (both files given).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// `[log]`: records of what happened: the delivery log (each message's attempts) and the
/// daemon's own log on standard error (what it is doing, what went wrong).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Delivery log: one JSON line per attempt and outcome, with its TLS facts. Appended to;
    /// rotate it by renaming and restarting. Unset: no delivery log. Default unset.
    pub delivery_log: Option<PathBuf>,
    /// How the daemon's own log on standard error is written: `"text"`, a line for a person,
    /// or `"json"`, one JSON object a line for a log collector. Default `"text"`.
    pub format: LogFormat,
    /// The least severe of the daemon's own events written: `"error"`, `"warn"`, `"info"`,
    /// `"debug"` or `"trace"` (other libraries' events from `warn` up). The `RUST_LOG`
    /// environment variable, when set, replaces it with its own filter. Default `"info"`.
    pub level: LogLevel,
}

/// One `[[domain]]` entry: limits for one destination domain (`name`), or a budget shared by
/// every MX host matching `mx_pattern`. Exactly one of the two is given.
///
/// - A `name` entry sets that domain's own connection limit (instead of
///   `engine.max_conns_per_dest`), message rate and TLS floor.
/// - An `mx_pattern` entry is one budget for all connections and messages to the MX hosts
///   matching it, whatever domain they serve: `max_conns = 50` for `*.outlook.com` means 50
///   connections to Microsoft's MX hosts in all. An MX host takes its budget (`max_conns`
///   and `msgs_per_s` together) from the first pattern in file order that matches it and
///   sets either, and its floor from the first that matches it and sets `tls_floor`.
///
/// Both apply when both match: a domain with its own entry whose MX hosts fall under a
/// pattern is held to the stricter of the two at every moment.
///
/// With `[[egress.source]]`s, `max_conns` and `msgs_per_s` hold per source: receivers
/// throttle each sending address apart, so a pool of three sources may have three times
/// the connections and the rate toward a destination, each source within the limit.
///
/// An `mx_pattern` entry (even one with no limit) also makes its hosts one *site* for
/// suspensions of an egress source: a 421 or a rate-limit reply from any of them to one
/// source suspends that source toward all of them, for every domain they serve, while the
/// pool's other sources go on (`*.google.com`: a 421 from Gmail to one address stops that
/// address for every Google-hosted domain). Without egress sources, or for an MX host no
/// pattern matches, a suspension holds for the recipient's domain.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DomainOverride {
    /// Destination domain, matched exactly (case-insensitive, trailing dot ignored).
    pub name: Option<String>,
    /// MX host name pattern: a host name, or `*.` and a suffix, e.g.
    /// `"*.mail.protection.outlook.com"` (matches hosts under it at any depth, not the suffix
    /// itself).
    pub mx_pattern: Option<MxPattern>,
    /// Connections at once (busy or idle): to this domain (instead of
    /// `engine.max_conns_per_dest`), or to all the MX hosts matching the pattern together.
    pub max_conns: Option<usize>,
    /// Messages (transactions) per second, e.g. 0.5 for one every two seconds: to this
    /// domain, or to all the MX hosts matching the pattern together. Messages over the rate
    /// wait in the queue (nothing is deferred for it).
    pub msgs_per_s: Option<f64>,
    /// Minimum TLS: `"none"`, `"encrypt"` (TLS required, certificate not verified) or
    /// `"verify"` (TLS required and verified); the strictest of this and the MX-prefix policy
    /// applies. On an `mx_pattern` entry it applies to every matching MX host, and the
    /// stricter of it and the domain's own floor wins. Default `"none"`.
    pub tls_floor: Floor,
}

impl DomainOverride {
    /// How the entry is named in messages: `domain "example.com"` or `domain "*.x.test"`.
    fn label(&self) -> String {
        match (&self.name, &self.mx_pattern) {
            (Some(n), _) => format!("domain {n:?}"),
            (None, Some(p)) => format!("domain {:?}", p.as_str()),
            (None, None) => "domain (unnamed)".into(),
        }
    }
}

impl Config {
    /// Parse and check a configuration. Errors carry no file name; [`Config::load`] adds it.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(s).map_err(|e| parse_error(s, &e))?;
        cfg.normalize_and_check()?;
        if let Some(c) = &cfg.cluster {
            c.validate().map_err(|m| {
                let (setting, message) = m.split_once(": ").unwrap_or(("cluster", m.as_str()));
                ConfigError::invalid(setting, message)
            })?;
        }
        Ok(cfg)
    }

    /// Read, parse and check the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let mut cfg = Config::from_toml_str(&text).map_err(|e| e.in_file(path))?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// The engine's settings: `[engine]`, `[dns]`, `[ports]`, `[tls]` (whose CA files are read
    /// here) and the TLS floors of `[[domain]]` entries with a `name`.
    ///
    /// A `tls_floor` on an `mx_pattern` entry applies to every MX host matching it (the first
    /// pattern in file order that matches a host), together with its domain's floor.
    /// `max_conns` and `msgs_per_s` become the engine's limit rules: on a `name` entry they
    /// limit that domain; on an `mx_pattern` entry they are one budget shared by every
    /// connection and message to the MX hosts matching it, whatever their domain.
    pub fn engine_config(&self) -> Result<EngineConfig, ConfigError> {
        let e = &self.engine;
        let mut c = EngineConfig::default();
        if let Some(n) = e.shards {
            c.shards = n;
        }
        c.max_conns_per_dest = e.max_conns_per_dest;
        c.max_conns_per_ip = e.max_conns_per_ip;
        c.max_msgs_per_conn = e.max_msgs_per_conn;
        c.idle_timeout = e.idle_timeout;
        c.connect_timeout = e.connect_timeout;
        c.command_timeout = e.command_timeout;
        c.ehlo_name = e.ehlo_name.clone();
        c.kx = e.kx;
        if e.require_dnssec.is_some() {
            return Err(ConfigError::invalid(
                "engine.require_dnssec",
                "removed: it made unsigned prefixed domains weaker; a prefix is now always honoured. \
                 For DNSSEC validation (a bogus answer defers) set [dns] validate_dnssec = true",
            ));
        }
        if self.policy.pin_ttl > crate::policy::state::MAX_PIN_TTL {
            return Err(ConfigError::invalid("policy.pin_ttl", "at most a year (31557600 s)"));
        }
        c.policy.scope = self.policy.scope;
        c.dane = self.policy.dane;
        c.resolver.nameserver = self.dns.nameserver;
        c.resolver.timeout = self.dns.timeout;
        c.resolver.validate_dnssec = self.dns.validate_dnssec;
        c.port_map = PortMap { smtp: self.ports.smtp, smtps: self.ports.smtps, https: self.ports.https };
        for path in &self.tls.ca_files {
            // An empty file is an error there: a trust anchor the operator meant to add is missing.
            let certs = crate::tls::certs::load_certs(path).map_err(|source| ConfigError::CaFile { path: path.clone(), source })?;
            c.extra_roots.extend(certs);
        }
        // Every pattern, in file order, also names a site for egress suspensions.
        c.mx_sites = self.domains.iter().filter_map(|d| d.mx_pattern.as_ref()).map(|p| p.as_str().to_string()).collect();
        for d in &self.domains {
            if d.max_conns.is_some() || d.msgs_per_s.is_some() {
                let scope = match (&d.name, &d.mx_pattern) {
                    (Some(name), _) => LimitScope::Domain(name.clone()),
                    (None, Some(p)) => LimitScope::MxHosts(p.as_str().to_string()),
                    (None, None) => unreachable!("checked at load: every entry has a name or a pattern"),
                };
                c.limits.push(LimitRule { scope, max_conns: d.max_conns, msgs_per_s: d.msgs_per_s });
            }
            match (&d.name, &d.mx_pattern) {
                (Some(name), _) if d.tls_floor != Floor::None => {
                    c.floors.insert(name.clone(), d.tls_floor);
                }
                (None, Some(p)) if d.tls_floor != Floor::None => {
                    c.mx_floors.push((p.as_str().to_string(), d.tls_floor));
                }
                _ => {}
            }
        }
        c.tickets_per_host = c.tickets_per_host.max(c.max_conns_per_dest);
        if !self.egress.is_empty() {
            // Binds each source address once: an address this host lacks is an error at start.
            let state = self.spool.dir.join("warmup-state.json");
            let eg = crate::egress::Egress::with_warmup_state(&self.egress, Some(state))
                .map_err(|e| ConfigError::invalid(e.setting, e.message))?;
            c.egress = Some(std::sync::Arc::new(eg));
        }
        Ok(c)
    }

    /// Checks that span settings or need a range, after serde has checked kinds.
    fn normalize_and_check(&mut self) -> Result<(), ConfigError> {
        let e = &self.engine;
        if let Some(n) = e.shards {
            if !(1..=MAX_SHARDS).contains(&n) {
                return Err(ConfigError::invalid("engine.shards", format!("must be from 1 to {MAX_SHARDS}, or \"auto\"")));
            }
        }
        at_least_one("engine.max_conns_per_dest", e.max_conns_per_dest)?;
        at_least_one("engine.max_conns_per_ip", e.max_conns_per_ip)?;
        at_least_one("engine.max_msgs_per_conn", e.max_msgs_per_conn as usize)?;
        // Bounded, so that deadlines computed from them cannot overflow (as the CLI does).
        in_range("engine.idle_timeout", e.idle_timeout, Duration::ZERO, Duration::from_secs(86_400))?;
        in_range("engine.connect_timeout", e.connect_timeout, Duration::from_secs(1), Duration::from_secs(3600))?;
        in_range("engine.command_timeout", e.command_timeout, Duration::from_secs(1), Duration::from_secs(3600))?;
        // An address literal ("[192.0.2.1]") is a valid EHLO argument too.
        if !(e.ehlo_name.starts_with('[') && e.ehlo_name.ends_with(']')) {
            check_host_name("engine.ehlo_name", &e.ehlo_name)?;
        }
        in_range("dns.timeout", self.dns.timeout, Duration::from_millis(1), Duration::from_secs(60))?;
        if self.ports.smtp == 0 || self.ports.smtps == 0 {
            let which = if self.ports.smtp == 0 { "ports.smtp" } else { "ports.smtps" };
            return Err(ConfigError::invalid(which, "must be a port from 1 to 65535"));
        }

        at_least_one("spool.max_batch", self.spool.max_batch)?;
        in_range("spool.max_delay", self.spool.max_delay, Duration::ZERO, Duration::from_secs(1))?;
        if self.spool.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("spool.dir", "must not be empty"));
        }

        let r = &self.retry;
        in_range("retry.initial", r.initial, Duration::from_secs(1), Duration::from_secs(86_400))?;
        if !(1.0..=10.0).contains(&r.factor) {
            return Err(ConfigError::invalid("retry.factor", format!("must be from 1 to 10, not {}", r.factor)));
        }
        in_range("retry.max_interval", r.max_interval, r.initial, Duration::from_secs(7 * 86_400))
            .map_err(|_| ConfigError::invalid("retry.max_interval", "must be at least retry.initial and at most 7d"))?;
        in_range("retry.max_age", r.max_age, r.initial, Duration::from_secs(30 * 86_400))
            .map_err(|_| ConfigError::invalid("retry.max_age", "must be at least retry.initial and at most 30d"))?;
        if !(0.0..=1.0).contains(&r.jitter) {
            return Err(ConfigError::invalid("retry.jitter", format!("must be a fraction from 0 to 1, not {}", r.jitter)));
        }

        self.egress.check().map_err(|e| ConfigError::invalid(e.setting, e.message))?;

        let smtp = &self.inject.smtp;
        in_range("inject.smtp.idle_timeout", smtp.idle_timeout, Duration::from_secs(1), Duration::from_secs(3600))?;
        in_range("inject.smtp.session_timeout", smtp.session_timeout, Duration::from_secs(1), Duration::from_secs(86_400))?;
        in_range("inject.smtp.auth_timeout", smtp.auth_timeout, Duration::from_secs(1), Duration::from_secs(3600))?;
        for (key, v, max) in
            [("inject.smtp.max_conns", smtp.max_conns, 1_000_000), ("inject.smtp.max_conns_per_ip", smtp.max_conns_per_ip, 1_000_000)]
        {
            if v == 0 || v > max {
                return Err(ConfigError::invalid(key, format!("must be from 1 to {max}, not {v}")));
            }
        }
        if smtp.max_idle_commands == 0 {
            return Err(ConfigError::invalid("inject.smtp.max_idle_commands", "must be at least 1"));
        }
        if !smtp.auth.require_starttls && !smtp.listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "inject.smtp.auth.require_starttls",
                format!("may be false only on a loopback address, not {} (passwords would cross the network in clear)", smtp.listen),
            ));
        }
        if smtp.tls.cert.is_some() != smtp.tls.key.is_some() {
            return Err(ConfigError::invalid("inject.smtp.tls", "give both `cert` and `key`, or neither"));
        }
        if smtp.listen == self.inject.http.listen {
            return Err(ConfigError::invalid("inject.http.listen", format!("{} is also inject.smtp.listen", smtp.listen)));
        }
        self.check_http()?;

        self.check_domains()
    }

    fn check_http(&self) -> Result<(), ConfigError> {
        let http = &self.inject.http;
        in_range("inject.http.header_timeout", http.header_timeout, Duration::from_millis(100), Duration::from_secs(600))?;
        in_range("inject.http.body_timeout", http.body_timeout, Duration::from_millis(100), Duration::from_secs(3600))?;
        if !(1..=100_000).contains(&http.max_conns) {
            return Err(ConfigError::invalid("inject.http.max_conns", format!("must be from 1 to 100000, not {}", http.max_conns)));
        }
        if !(1..=1_000_000).contains(&http.max_requests_per_conn) {
            return Err(ConfigError::invalid(
                "inject.http.max_requests_per_conn",
                format!("must be from 1 to 1000000, not {}", http.max_requests_per_conn),
            ));
        }
        if http.tls.cert.is_some() != http.tls.key.is_some() {
            return Err(ConfigError::invalid("inject.http.tls", "give both `cert` and `key`, or neither"));
        }
        for h in &http.allowed_hosts {
            let name = h.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(h.as_str(), |(n, _)| n);
            check_host_name("inject.http.allowed_hosts", name)?;
        }
        // Off loopback, anyone who can reach the port could inject and bounce mail: both a
        // token and TLS (so the token does not cross the network in clear) are required.
        if !http.listen.ip().is_loopback() {
            let missing: Vec<&str> = [
                (http.tokens_file.is_none(), "inject.http.tokens_file (bearer tokens; make them with `mxpipe token`)"),
                (!http.tls.enabled(), "inject.http.tls (cert and key, for HTTPS)"),
            ]
            .into_iter()
            .filter_map(|(m, what)| m.then_some(what))
            .collect();
            if !missing.is_empty() {
                return Err(ConfigError::invalid(
                    "inject.http.listen",
                    format!("{} is not a loopback address: it needs {}", http.listen, missing.join(" and ")),
                ));
            }
        }
        Ok(())
    }

    fn check_domains(&mut self) -> Result<(), ConfigError> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut patterns: HashMap<String, usize> = HashMap::new();
        for (i, d) in self.domains.iter_mut().enumerate() {
            let n = i + 1; // as a person counts the entries in the file
            let (key, value, seen) = match (&mut d.name, &d.mx_pattern) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ConfigError::invalid(
                        format!("[[domain]] entry {n}"),
                        "give exactly one of `name` (a destination domain) and `mx_pattern` (an MX host pattern)",
                    ))
                }
                (Some(name), None) => {
                    *name = crate::address::Domain::parse(name)
                        .map_err(|e| ConfigError::invalid(format!("[[domain]] entry {n}: name"), format!("not a domain name: {e}")))?
                        .into_string();
                    ("name", name.clone(), &mut names)
                }
                (None, Some(p)) => ("mx_pattern", p.as_str().to_string(), &mut patterns),
            };
            if let Some(&first) = seen.get(&value) {
                return Err(ConfigError::DuplicateDomain { file: None, key, value, first, second: n });
            }
            seen.insert(value, n);
            if d.max_conns.is_some_and(|c| !(1..=MAX_CONNS_LIMIT).contains(&c)) {
                return Err(ConfigError::invalid(format!("{}.max_conns", d.label()), format!("must be from 1 to {MAX_CONNS_LIMIT}")));
            }
            if let Some(r) = d.msgs_per_s {
                if !(r.is_finite() && r > 0.0) {
                    return Err(ConfigError::invalid(
                        format!("{}.msgs_per_s", d.label()),
                        format!("must be a number of messages per second above 0, not {r}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Most connections a `[[domain]]` entry may allow (more than any server takes from one sender).
const MAX_CONNS_LIMIT: usize = 100_000;

fn at_least_one(setting: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(setting, "must be at least 1"));
    }
    Ok(())
}

fn in_range(setting: &str, v: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::invalid(
            setting,
            format!("must be from {} to {}, not {}", format_duration(min), format_duration(max), format_duration(v)),
        ));
    }
    Ok(())
}

/// A DNS name as written in mail ([`is_host_name`]), or an error naming the setting.
fn check_host_name(setting: &str, name: &str) -> Result<(), ConfigError> {
    if !is_host_name(name) {
        return Err(ConfigError::invalid(setting, format!("{name:?} is not a host name (letters, digits, '-' and dots)")));
    }
    Ok(())
}

/// Turn toml's error into one that says where, in which table, and what.
fn parse_error(input: &str, e: &toml::de::Error) -> ConfigError {
    let Some(span) = e.span() else {
        // Not seen with toml 1 (its errors carry a span), but never guess a position.
        return ConfigError::invalid("configuration", e.message().trim_end());
    };
    let mut start = span.start.min(input.len());
    while !input.is_char_boundary(start) {
        start -= 1;
    }
    let line_start = input[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = input[start..].find('\n').map_or(input.len(), |i| start + i);
    let line = input[..start].matches('\n').count() + 1;
    let column = input[line_start..start].chars().count() + 1;
    // The innermost `[table]` or `[[table]]` header above the error.
    let header = input[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix('[')?;
        let (array, inner) = match inner.strip_prefix('[') {
            Some(i) => (true, i),
            None => (false, inner),
        };
        let name = inner[..inner.find(']')?].trim().to_string();
        Some((array, name))
    });
    // When the error is in a value, the key before `=` on that line names the setting.
    let line_text = &input[line_start..line_end];
    let setting = line_text.split_once('=').and_then(|(key, _)| {
        let key = key.trim();
        let simple = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        let in_value = start - line_start > line_text.find('=').unwrap_or(usize::MAX);
        (simple && in_value).then(|| match &header {
            Some((_, table)) => format!("{table}.{key}"),
            None => key.to_string(),
        })
    });
    ConfigError::Parse(Box::new(ParseError {
        file: None,
        line,
        column,
        table: header.map(|(array, t)| if array { format!("[[{t}]]") } else { format!("[{t}]") }),
        setting,
        message: e.message().trim_end().to_string(),
        excerpt: line_text.trim_end().to_string(),
    }))
}

// ---- other scalar kinds -------------------------------------------------------------------

fn de_shards<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number of shards or \"auto\"")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Option<usize>, E> {
            if s.eq_ignore_ascii_case("auto") {
                Ok(None)
            } else {
                Err(E::custom(format!("{s:?} is not a number of shards or \"auto\"")))
            }
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Option<usize>, E> {
            usize::try_from(n).map(Some).map_err(|_| E::custom(format!("{n} is not a number of shards (1 or more) or \"auto\"")))
        }
    }
    d.deserialize_any(V)
}

fn de_kx<'de, D: Deserializer<'de>>(d: D) -> Result<Kx, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn de_nameserver<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    crate::engine::parse_dns(s.trim()).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(toml: &str) -> String {
        Config::from_toml_str(toml).expect_err(toml).to_string()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c, Config::default());
        assert!(c.domains.is_empty());
        // The CLI defaults of `mxpipe send` (src/main.rs EngineArgs and SendArgs).
        assert_eq!(c.engine.shards, None);
        assert_eq!(c.engine.max_conns_per_dest, 8);
        assert_eq!(c.engine.max_conns_per_ip, 64);
        assert_eq!(c.engine.max_msgs_per_conn, 1000);
        assert_eq!(c.engine.idle_timeout, Duration::from_secs(10));
        assert_eq!(c.engine.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.engine.command_timeout, Duration::from_secs(300));
        assert_eq!(c.engine.ehlo_name, "mxpipe.localhost");
        assert_eq!(c.engine.kx, Kx::Default);
        assert_eq!(c.engine.require_dnssec, None);
        assert_eq!(c.dns.nameserver, None);
        assert_eq!((c.ports.smtp, c.ports.smtps), (25, 26));
        assert!(c.tls.ca_files.is_empty());
        // Defaults named in the issue.
        assert_eq!(c.inject.smtp.listen, "127.0.0.1:2025".parse().unwrap());
        assert_eq!(c.inject.http.listen, "127.0.0.1:8025".parse().unwrap());
        assert!(c.inject.smtp.auth.require_starttls);
        assert!(c.spool.fsync);
        // The values chosen where the file and the runtime types used to disagree.
        assert_eq!(c.retry.initial, Duration::from_secs(300));
        assert_eq!((c.spool.max_batch, c.spool.max_delay), (256, Duration::ZERO));
        assert_eq!(c.inject.smtp.idle_timeout, Duration::from_secs(300));
        assert_runtime_types_are_their_defaults(&c);

        // ...and the engine built from it equals EngineConfig::default().
        let e = c.engine_config().unwrap();
        let d = EngineConfig::default();
        assert_eq!(e.shards, d.shards);
        assert_eq!(e.max_conns_per_dest, d.max_conns_per_dest);
        assert_eq!(e.max_conns_per_ip, d.max_conns_per_ip);
        assert_eq!(e.max_msgs_per_conn, d.max_msgs_per_conn);
        assert_eq!(e.idle_timeout, d.idle_timeout);
        assert_eq!(e.connect_timeout, d.connect_timeout);
        assert_eq!(e.tls_handshake_timeout, d.tls_handshake_timeout);
        assert_eq!(e.command_timeout, d.command_timeout);
        assert_eq!(e.ehlo_name, d.ehlo_name);
        assert_eq!(e.kx, d.kx);
        assert_eq!(e.policy, d.policy);
        assert_eq!(e.port_map, d.port_map);
        assert_eq!(e.resolver.nameserver, d.resolver.nameserver);
        assert_eq!(e.resolver.timeout, d.resolver.timeout);
        assert_eq!(e.resolver.validate_dnssec, d.resolver.validate_dnssec);
        assert!(e.extra_roots.is_empty() && e.floors.is_empty() && e.limits.is_empty());
        assert_eq!(e.tickets_per_host, d.tickets_per_host);
        assert_eq!(e.ticket_hosts, d.ticket_hosts);
    }

    /// Every runtime type the daemon builds from `c` equals that type's own default, except
    /// for what `[[domain]]` entries add: one set of defaults, whether a setting is left out
    /// of the file, written as documented, or not a setting at all. (`[retry]` and `[spool]`
    /// are the runtime types themselves; the engine's settings and the injection listener's
    /// are copied into theirs.)
    fn assert_runtime_types_are_their_defaults(c: &Config) {
        assert_eq!(c.retry, RetryPolicy::default(), "[retry] vs RetryPolicy::default()");
        assert_eq!(c.spool, SpoolConfig::new(&c.spool.dir), "[spool] vs SpoolConfig::new()");
        assert_eq!(c.spool, SpoolConfig::default(), "[spool] vs SpoolConfig::default()");

        // Every field, the resolver's and the policy's included (EngineConfig has no
        // PartialEq: its trust anchors do not compare).
        let mut e = c.engine_config().unwrap();
        e.floors.clear();
        e.mx_floors.clear();
        e.mx_sites.clear();
        e.limits.clear();
        assert_eq!(format!("{e:#?}"), format!("{:#?}", EngineConfig::default()), "[engine], [dns], [ports], [tls] vs EngineConfig");

        // The injection listener is a sink with the daemon's settings copied in.
        let pki = crate::tls::certs::generate(&["localhost".to_string()]).unwrap();
        let tls = crate::tls::server_config(pki.identity, crate::tls::ServerResumption::default()).unwrap();
        let server = crate::smtp_server::Config::new(tls);
        assert_eq!(c.inject.smtp.idle_timeout, server.idle_timeout, "inject.smtp.idle_timeout vs smtp_server::Config::new()");
        assert_eq!(c.inject.smtp.session_timeout, server.session_timeout, "inject.smtp.session_timeout");
        assert_eq!(c.inject.smtp.auth_timeout, server.auth_timeout, "inject.smtp.auth_timeout");
        assert_eq!(c.inject.smtp.max_idle_commands, server.max_idle_commands, "inject.smtp.max_idle_commands");
        let users = std::sync::Arc::new(crate::auth::Users::parse("", Path::new("users")).unwrap());
        let auth = crate::smtp_server::Auth::new(users);
        assert_eq!(c.inject.smtp.auth.require_starttls, auth.require_tls, "inject.smtp.auth.require_starttls vs smtp_server::Auth::new()");
    }

    /// The shipped example parses, and equals the defaults except for its `[[domain]]` and
    /// `[[dkim]]` entries, which it shows on purpose (the only deliberate difference); and the runtime
    /// types built from it are their own defaults, so a default defined twice and drifted
    /// fails here.
    #[test]
    fn dkim_entries_refuse_unknown_settings_and_missing_keys() {
        let e =
            Config::from_toml_str("[[dkim]]\ndomain = \"a.example\"\nselector = \"s\"\nkey = \"k\"\nsign_everything = true\n").unwrap_err();
        assert!(e.to_string().contains("sign_everything"), "{e}");
        let e = Config::from_toml_str("[[dkim]]\ndomain = \"a.example\"\nselector = \"s\"\n").unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
        let e =
            Config::from_toml_str("[[dkim]]\ndomain = \"a.example\"\nselector = \"s\"\nkey = \"k\"\nalgorithm = \"dsa\"\n").unwrap_err();
        assert!(e.to_string().contains("dsa"), "{e}");
    }

    #[test]
    fn example_file_is_the_defaults_plus_domain_examples() {
        let c = Config::from_toml_str(include_str!("../mxpipe.example.toml")).unwrap();
        assert_runtime_types_are_their_defaults(&c);
        let mut without_domains = c.clone();
        without_domains.domains.clear();
        without_domains.dkim.clear();
        assert_eq!(without_domains, Config::default());
        assert_eq!(c.domains.len(), 2);
        assert_eq!(c.dkim.len(), 2);
        assert_eq!(c.dkim[1].name.as_deref(), Some("esp"));
        assert_eq!(c.dkim[1].expiry, Some(std::time::Duration::from_secs(7 * 86400)));
        assert!(c.dkim[1].always && !c.dkim[0].always);
        assert_eq!(c.dkim[0].oversign, ["From"]);
        let e = c.engine_config().unwrap();
        assert_eq!(e.floors.len(), 1);
        assert_eq!(e.floors.get("example.com"), Some(&Floor::Verified));
        assert_eq!(
            e.limits,
            [
                LimitRule { scope: LimitScope::Domain("example.com".into()), max_conns: Some(4), msgs_per_s: Some(20.0) },
                LimitRule {
                    scope: LimitScope::MxHosts("*.mail.protection.outlook.com".into()),
                    max_conns: Some(20),
                    msgs_per_s: Some(100.0),
                },
            ]
        );
    }

    #[test]
    fn the_removed_require_dnssec_says_what_replaces_it() {
        let c = Config::from_toml_str("[engine]\nrequire_dnssec = true\n").unwrap();
        let e = c.engine_config().unwrap_err().to_string();
        assert!(e.contains("engine.require_dnssec") && e.contains("validate_dnssec") && e.contains("always honoured"), "{e}");
        let c = Config::from_toml_str("[policy]\nscope = \"host\"\npin_ttl = \"2d\"\n").unwrap();
        assert_eq!(c.engine_config().unwrap().policy.scope, crate::policy::Scope::Host);
        assert_eq!(c.policy.pin_ttl, Duration::from_secs(2 * 86_400));
        assert!(Config::from_toml_str("[policy]\nscope = \"global\"\n").is_err());
        let c = Config::from_toml_str("[policy]\npin_ttl = \"400d\"\n").unwrap();
        assert!(c.engine_config().unwrap_err().to_string().contains("policy.pin_ttl"));
    }

    /// Every setting the example documents is a real key: uncommenting the commented-out
    /// ones still parses (so the example cannot show a setting the code does not have).
    #[test]
    fn example_file_commented_settings_are_real() {
        let text: String = include_str!("../mxpipe.example.toml")
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::from_toml_str(&text).unwrap();
        assert_eq!(c.dns.nameserver, Some("127.0.0.1:53".parse().unwrap()));
        assert!(c.inject.smtp.auth.users_file.is_some());
        assert!(c.inject.smtp.tls.cert.is_some() && c.inject.smtp.tls.key.is_some());
        assert!(c.log.delivery_log.is_some());
    }

    /// No input panics: prefixes of the example cut anywhere, and a few odd lines.
    #[test]
    fn no_panic_on_any_prefix_or_odd_input() {
        let example = include_str!("../mxpipe.example.toml");
        // Every 5th position (every one takes seconds in a debug build) and every line end.
        let cuts = example.char_indices().map(|(i, _)| i).step_by(5).chain(example.match_indices('\n').map(|(i, _)| i));
        for i in cuts {
            let _ = Config::from_toml_str(&example[..i]);
        }
        for odd in [
            "é = 1",
            "[é]\nx = 1",
            "[engine]\nidle_timeout = \"5é\"",
            "[[domain]]\nmx_pattern = \"*.é\"",
            "\u{0}",
            "[engine]\nkx = \"\u{0}\"",
        ] {
            assert!(Config::from_toml_str(odd).is_err(), "{odd:?}");
        }
    }

    #[test]
    fn every_section() {
        let c = Config::from_toml_str(
            r#"
            [engine]
            shards = 3
            max_conns_per_dest = 2
            max_conns_per_ip = 5
            max_msgs_per_conn = 7
            idle_timeout = "0s"
            connect_timeout = "250ms500ms1s"
            command_timeout = "1h"
            ehlo_name = "out.example.org"
            kx = "x25519"

            [dns]
            nameserver = "127.0.0.1:5353"
            timeout = "250ms"

            [ports]
            smtp = 2525
            smtps = 2526

            [tls]
            ca_files = ["/nonexistent/ca.pem"]

            [spool]
            dir = "/tmp/spool"
            max_batch = 10
            max_delay = "0s"
            fsync = false

            [retry]
            initial = "90s"
            factor = 1.5
            max_interval = "2h"
            max_age = "1d"
            jitter = 0

            [inject.smtp]
            listen = "[::]:25"
            allowed_networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
            idle_timeout = "30s"
            auth = { users_file = "/etc/mxpipe/users" }
            tls = { cert = "c.pem", key = "k.pem" }

            [inject.http]
            listen = "0.0.0.0:80"
            tokens_file = "/etc/mxpipe/tokens"
            allowed_hosts = ["mxpipe.example.com", "api.example.com:8443"]
            header_timeout = "2s"
            max_conns = 10
            tls = { cert = "api.pem", key = "api.key" }

            [log]
            delivery_log = "/var/log/d.jsonl"
            "#,
        )
        .unwrap();
        assert_eq!(c.engine.shards, Some(3));
        assert_eq!(c.engine.connect_timeout, Duration::from_millis(1750));
        assert_eq!(c.engine.idle_timeout, Duration::ZERO);
        assert_eq!(c.engine.kx, Kx::X25519);
        assert_eq!(c.dns.nameserver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(c.spool, SpoolConfig { max_batch: 10, max_delay: Duration::ZERO, fsync: false, ..SpoolConfig::new("/tmp/spool") });
        assert_eq!(c.retry.initial, Duration::from_secs(90));
        assert_eq!(c.retry.max_age, Duration::from_secs(86_400));
        assert_eq!(c.inject.smtp.listen, "[::]:25".parse().unwrap());
        assert_eq!(c.inject.smtp.allowed_networks[2].to_string(), "192.0.2.7/32");
        assert_eq!(c.inject.smtp.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.inject.smtp.auth.users_file.as_deref(), Some(Path::new("/etc/mxpipe/users")));
        assert!(c.inject.smtp.auth.require_starttls);
        assert_eq!(c.inject.http.listen.port(), 80);
        assert_eq!(c.inject.http.tokens_file.as_deref(), Some(Path::new("/etc/mxpipe/tokens")));
        assert_eq!(c.inject.http.header_timeout, Duration::from_secs(2));
        assert_eq!(c.inject.http.max_conns, 10);
        assert!(c.inject.http.tls.enabled());
        assert_eq!(c.log.delivery_log.as_deref(), Some(Path::new("/var/log/d.jsonl")));

        // The CA file does not exist: engine_config says which setting and file.
        let e = c.engine_config().unwrap_err().to_string();
        assert!(e.contains("tls.ca_files") && e.contains("/nonexistent/ca.pem"), "{e}");

        let mut c = c;
        c.tls.ca_files.clear();
        let e = c.engine_config().unwrap();
        assert_eq!(e.shards, 3);
        assert_eq!(e.port_map, PortMap { smtp: 2525, smtps: 2526, https: 443 });
        assert_eq!(e.resolver.timeout, Duration::from_millis(250));
        assert_eq!(e.command_timeout, Duration::from_secs(3600));
        // Tickets kept per host cover the connection limit.
        assert!(e.tickets_per_host >= e.max_conns_per_dest);
    }

    #[test]
    fn dns_trust_anchors_is_a_list_of_paths() {
        let c = Config::from_toml_str("[dns]\ntrust_anchors = [\"/etc/mxpipe/a.key\", \"b.ds\"]\n").unwrap();
        assert_eq!(c.dns.trust_anchors, [std::path::PathBuf::from("/etc/mxpipe/a.key"), "b.ds".into()]);
        assert!(Config::from_toml_str("[dns]\ntrust_anchors = \"one.key\"\n").is_err(), "a list, not a string");
    }

    #[test]
    fn engine_config_reads_ca_files() {
        let dir = std::env::temp_dir().join(format!("mxpipe-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = crate::tls::certs::generate(&["localhost".to_string()]).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let mut c = Config::default();
        c.tls.ca_files = vec![ca];
        assert_eq!(c.engine_config().unwrap().extra_roots.len(), 1);
        c.tls.ca_files.push(empty.clone());
        let e = c.engine_config().unwrap_err().to_string();
        assert!(e.contains("tls.ca_files") && e.contains("empty.pem") && e.contains("no CERTIFICATE"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_name_the_key_table_and_position() {
        let e = err("listen = 1\n");
        assert!(e.contains("`listen`") && e.contains("line 1, column 1") && e.contains("top level"), "{e}");

        let e = err("[engine]\nshards = 2\nmax_conn = 3\n");
        assert!(e.contains("`max_conn`") && e.contains("line 3, column 1") && e.contains("in [engine]"), "{e}");
        assert!(e.contains("max_conns_per_dest"), "the message lists the known keys: {e}");

        let e = err("[inject.smtp.auth]\nrequire_tls = true\n");
        assert!(e.contains("`require_tls`") && e.contains("in [inject.smtp.auth]") && e.contains("line 2"), "{e}");

        let e = err("[[domain]]\nname = \"a.test\"\nmax_connections = 3\n");
        assert!(e.contains("`max_connections`") && e.contains("in [[domain]]") && e.contains("line 3"), "{e}");

        // Unknown tables too.
        let e = err("[engines]\n");
        assert!(e.contains("`engines`"), "{e}");
        let e = err("[inject.smtpd]\n");
        assert!(e.contains("`smtpd`"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("mxpipe-config-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[spool]\nfsnyc = true\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&path.display().to_string()) && e.contains("`fsnyc`") && e.contains("line 2"), "{e}");
        let good = dir.join("good.toml");
        std::fs::write(&good, "[spool]\nfsync = false\n").unwrap();
        assert!(!Config::load(&good).unwrap().spool.fsync);
        let e = Config::load(&dir.join("missing.toml")).unwrap_err().to_string();
        assert!(e.contains("missing.toml") && e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_durations_name_the_setting_and_the_form() {
        let e = err("[retry]\nmax_age = \"5 days\"\n");
        assert!(e.contains("retry.max_age") && e.contains("\"5 days\"") && e.contains("unit (ms, s, m, h, d)"), "{e}");
        let e = err("[engine]\nidle_timeout = 10\n");
        assert!(e.contains("engine.idle_timeout") && e.contains("\"10s\""), "{e}");
        let e = err("[engine]\nconnect_timeout = \"0s\"\n");
        assert!(e.contains("engine.connect_timeout") && e.contains("from 1s to 1h"), "{e}");
        let e = err("[retry]\ninitial = \"1h\"\nmax_interval = \"5m\"\n");
        assert!(e.contains("retry.max_interval") && e.contains("retry.initial"), "{e}");
    }

    #[test]
    fn bad_cidr_and_addresses_say_which() {
        let e = err("[inject.smtp]\nallowed_networks = [\"10.0.0.0/8\", \"192.168.0.0/33\"]\n");
        assert!(e.contains("inject.smtp.allowed_networks") && e.contains("192.168.0.0/33") && e.contains("/33"), "{e}");
        let e = err("[inject.smtp]\nidle_timeout = \"0s\"\n");
        assert!(e.contains("inject.smtp.idle_timeout") && e.contains("from 1s to 1h"), "{e}");
        let e = err("[inject.smtp]\nlisten = \"localhost:2025\"\n");
        assert!(e.contains("inject.smtp.listen") && e.contains("IP:PORT"), "{e}");
        let e = err("[inject.http]\nlisten = \"127.0.0.1\"\n");
        assert!(e.contains("inject.http.listen"), "{e}");
        let e = err("[dns]\nnameserver = \"dns.example:53\"\n");
        assert!(e.contains("dns.nameserver"), "{e}");
        assert_eq!(
            Config::from_toml_str("[dns]\nnameserver = \"192.0.2.1\"").unwrap().dns.nameserver,
            Some("192.0.2.1:53".parse().unwrap())
        );
        let e = err("[inject.http]\nlisten = \"127.0.0.1:2025\"\n");
        assert!(e.contains("inject.http.listen") && e.contains("inject.smtp.listen"), "{e}");
    }

    #[test]
    fn log_settings() {
        let c = Config::from_toml_str("[log]\nformat = \"json\"\nlevel = \"debug\"\n").unwrap();
        assert_eq!((c.log.format, c.log.level), (LogFormat::Json, LogLevel::Debug));
        assert_eq!((Config::default().log.format, Config::default().log.level), (LogFormat::Text, LogLevel::Info));
        let e = err("[log]\nformat = \"xml\"\n");
        assert!(e.contains("log.format") && e.contains("line 2") && e.contains("`json`"), "{e}");
        let e = err("[log]\nlevel = \"loud\"\n");
        assert!(e.contains("log.level") && e.contains("`debug`"), "{e}");
    }

    #[test]
    fn http_api_off_loopback_needs_tokens_and_tls() {
        let tls = "tls = { cert = \"c.pem\", key = \"k.pem\" }\n";
        let tokens = "tokens_file = \"/etc/mxpipe/tokens\"\n";
        let e = err("[inject.http]\nlisten = \"0.0.0.0:8025\"\n");
        assert!(e.contains("inject.http.listen") && e.contains("inject.http.tokens_file") && e.contains("inject.http.tls"), "{e}");
        let e = err(&format!("[inject.http]\nlisten = \"0.0.0.0:8025\"\n{tls}"));
        assert!(e.contains("inject.http.tokens_file") && !e.contains("inject.http.tls"), "{e}");
        let e = err(&format!("[inject.http]\nlisten = \"[::]:8025\"\n{tokens}"));
        assert!(!e.contains("inject.http.tokens_file") && e.contains("inject.http.tls"), "{e}");
        assert!(Config::from_toml_str(&format!("[inject.http]\nlisten = \"0.0.0.0:8025\"\n{tokens}{tls}")).is_ok());
        // Loopback, IPv4 (all of 127/8) and IPv6, needs neither.
        for l in ["127.0.0.1:8025", "127.3.4.5:8025", "[::1]:8025"] {
            assert!(Config::from_toml_str(&format!("[inject.http]\nlisten = \"{l}\"\n")).is_ok(), "{l}");
        }
        assert!(err("[inject.http]\ntls = { cert = \"c.pem\" }\n").contains("inject.http.tls"));
        assert!(err("[inject.http]\nmax_conns = 0\n").contains("inject.http.max_conns"));
        assert!(err("[inject.http]\nmax_requests_per_conn = 0\n").contains("inject.http.max_requests_per_conn"));
        assert!(err("[inject.http]\nheader_timeout = \"10ms\"\n").contains("inject.http.header_timeout"));
        assert!(err("[inject.http]\nbody_timeout = \"2h\"\n").contains("inject.http.body_timeout"));
        assert!(err("[inject.http]\nallowed_hosts = [\"bad host\"]\n").contains("inject.http.allowed_hosts"));
    }

    #[test]
    fn other_checks() {
        assert!(err("[engine]\nshards = 0").contains("engine.shards"));
        assert!(err("[engine]\nshards = 100000").contains("engine.shards"));
        assert!(err("[engine]\nshards = \"many\"").contains("engine.shards"));
        assert_eq!(Config::from_toml_str("[engine]\nshards = \"auto\"").unwrap().engine.shards, None);
        assert!(err("[engine]\nmax_conns_per_dest = 0").contains("engine.max_conns_per_dest"));
        assert!(err("[engine]\nkx = \"rsa\"").contains("engine.kx"));
        assert!(err("[engine]\nehlo_name = \"bad name\"").contains("engine.ehlo_name"));
        assert!(Config::from_toml_str("[engine]\nehlo_name = \"[192.0.2.1]\"").is_ok());
        assert!(err("[ports]\nsmtp = 0").contains("ports.smtp"));
        assert!(err("[ports]\nsmtp = 70000").contains("ports.smtp"));
        assert!(err("[retry]\njitter = 1.5").contains("retry.jitter"));
        assert!(err("[retry]\nfactor = 0.5").contains("retry.factor"));
        assert!(err("[spool]\nmax_delay = \"2s\"").contains("spool.max_delay"));
        assert!(err("[inject.smtp.tls]\ncert = \"c.pem\"").contains("inject.smtp.tls"));
        // Passwords in clear only on loopback.
        assert!(Config::from_toml_str("[inject.smtp.auth]\nrequire_starttls = false").is_ok());
        let e = err("[inject.smtp]\nlisten = \"0.0.0.0:2025\"\n[inject.smtp.auth]\nrequire_starttls = false");
        assert!(e.contains("inject.smtp.auth.require_starttls"), "{e}");
    }

    #[test]
    fn domain_entries_are_checked() {
        let e = err("[[domain]]\nname = \"a.test\"\n[[domain]]\nname = \"A.test.\"\n");
        assert!(e.contains("entries 1 and 2") && e.contains("name = \"a.test\""), "{e}");
        let e = err("[[domain]]\nmx_pattern = \"*.x.test\"\n[[domain]]\nname = \"b.test\"\n[[domain]]\nmx_pattern = \"*.X.test\"\n");
        assert!(e.contains("entries 1 and 3") && e.contains("mx_pattern"), "{e}");
        assert!(err("[[domain]]\nmax_conns = 3\n").contains("exactly one of `name`"));
        assert!(err("[[domain]]\nname = \"a.test\"\nmx_pattern = \"*.a.test\"\n").contains("exactly one of"));
        assert!(err("[[domain]]\nname = \"a.test\"\nmax_conns = 0\n").contains("domain \"a.test\".max_conns"));
        assert!(err("[[domain]]\nmx_pattern = \"*.a.test\"\nmax_conns = 9223372036854775807\n").contains("must be from 1 to 100000"));
        assert!(err("[[domain]]\nname = \"a.test\"\nmsgs_per_s = 0.0\n").contains("domain \"a.test\".msgs_per_s"));
        assert!(err("[[domain]]\nname = \"a.test\"\nmsgs_per_s = nan\n").contains("msgs_per_s"));
        assert!(err("[[domain]]\nname = \"a test\"\n").contains("name"));
        let e = err("[[domain]]\nname = \"a.test\"\ntls_floor = \"strict\"\n");
        assert!(e.contains("domain.tls_floor") && e.contains("verify"), "{e}");
        for bad in ["*", "mx.*.test", "*mx.test", "*.*.test", "a..test", ""] {
            let e = err(&format!("[[domain]]\nmx_pattern = {bad:?}\n"));
            assert!(e.contains("domain.mx_pattern"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn floors_reach_the_engine_by_name_only() {
        let c = Config::from_toml_str(
            "[[domain]]\nname = \"Secure.TEST.\"\ntls_floor = \"verify\"\n\
             [[domain]]\nname = \"enc.test\"\ntls_floor = \"encrypt\"\n\
             [[domain]]\nname = \"plain.test\"\nmax_conns = 2\n",
        )
        .unwrap();
        let e = c.engine_config().unwrap();
        assert_eq!(e.floors.len(), 2);
        assert_eq!(e.floors.get("secure.test"), Some(&Floor::Verified));
        assert_eq!(e.floors.get("enc.test"), Some(&Floor::Encrypted));

        // A floor by MX pattern goes to the engine's MX floors, in file order.
        let c = Config::from_toml_str(
            "[[domain]]\nmx_pattern = \"*.X.test\"\ntls_floor = \"verify\"\n[[domain]]\nmx_pattern = \"mx.y.test\"\ntls_floor = \"encrypt\"\n",
        )
        .unwrap();
        let e = c.engine_config().unwrap();
        assert_eq!(e.mx_floors, vec![("*.x.test".to_string(), Floor::Verified), ("mx.y.test".to_string(), Floor::Encrypted)]);
        assert!(e.floors.is_empty());
    }

    #[test]
    fn limit_rules_reach_the_engine() {
        let c = Config::from_toml_str(
            r#"
            [[domain]]
            mx_pattern = "*.Protection.Outlook.COM."
            max_conns = 1
            [[domain]]
            mx_pattern = "*.mail.protection.outlook.com"
            msgs_per_s = 0.5
            [[domain]]
            name = "Contoso.TEST."
            max_conns = 3
            msgs_per_s = 10.0
            [[domain]]
            name = "floor-only.test"
            tls_floor = "verify"
            [[domain]]
            mx_pattern = "mx.exact.test"
            max_conns = 4
            "#,
        )
        .unwrap();
        let e = c.engine_config().unwrap();
        let rule = |scope, max_conns, msgs_per_s| LimitRule { scope, max_conns, msgs_per_s };
        let mx = |p: &str| LimitScope::MxHosts(p.into());
        // One rule per entry with a limit, in file order, names and patterns normalized; an
        // entry with neither `max_conns` nor `msgs_per_s` (a floor only) is no rule.
        assert_eq!(
            e.limits,
            [
                rule(mx("*.protection.outlook.com"), Some(1), None),
                rule(mx("*.mail.protection.outlook.com"), None, Some(0.5)),
                rule(LimitScope::Domain("contoso.test".into()), Some(3), Some(10.0)),
                rule(mx("mx.exact.test"), Some(4), None),
            ]
        );
        assert_eq!(e.floors.get("floor-only.test"), Some(&Floor::Verified));

        // File order is meaning: the engine puts an MX host under the first pattern matching
        // it, even if a later one is narrower. A domain's own rule applies beside its MX
        // hosts' budget (the engine holds it to both).
        let limits = crate::engine::limits::Limits::new(&e.limits);
        let budget = |host: &str| limits.mx(host).map(|b| b.pattern.clone());
        assert_eq!(budget("contoso-test.mail.protection.outlook.com").as_deref(), Some("*.protection.outlook.com"));
        assert_eq!(budget("MX.exact.test.").as_deref(), Some("mx.exact.test"));
        assert_eq!(budget("mx.other.test"), None);
        assert_eq!(limits.domain("contoso.test").and_then(|d| d.max_conns), Some(3));
        assert!(limits.domain("floor-only.test").is_none());
    }
}
