//! The MX-prefix rules (spec: `mx-prefix-policy.md` in the shared docs): for one MX host, the
//! ordered connection attempts and the TLS each one requires, plus a per-destination cache of
//! what earlier deliveries learned.
//!
//! A receiving domain states its policy in the name of its MX host: `starttls-…` means
//! "STARTTLS on 25, mandatory, certificate verified", `smtps-…` means "implicit TLS on 26, then
//! STARTTLS on 25, both mandatory and verified", anything else is opportunistic. Because the
//! policy travels in the MX answer itself, a man in the middle who strips STARTTLS cannot
//! downgrade a prefixed host.
//!
//! [`plan`] is a pure function of resolved facts: the host name, whether the MX answer was
//! DNSSEC-authenticated, the operator's [`Floor`], what the [`PolicyCache`] learned, and `now`.
//! This module does no DNS, opens no sockets and never reads the clock, so every rule is unit
//! tested here and the engine's shards can call it on their hot path without locks (the cache
//! is owned by one shard and borrowed `&mut`).
//!
//! # What the engine must do with a policy failure
//!
//! A *policy failure* is any failure of a mandatory step ([`is_policy_mandatory`]): STARTTLS not
//! advertised, a certificate that does not chain to a trusted root or does not match
//! [`HostPlan::verify_name`], a TLS handshake error. It may be an attack in progress, so it is a
//! **temporary failure of that host only**: the engine tries the host's next step, then the
//! next MX host in preference order, and when none is left it **defers** the message. It must
//! never bounce it and never send it in clear to that host.
//!
//! # Why forgetting is always safe
//!
//! The cache only saves time: a prefixed host's plan never gets weaker because of something
//! learned (port 26 being unreachable only drops the port-26 attempt; the port-25 one stays
//! mandatory and verified). Only an opportunistic host, which a STARTTLS-stripping attacker can
//! downgrade anyway, is planned in clear after STARTTLS was absent or failed. So the cache can
//! evict, expire or refuse to store anything, and the worst outcome is a wasted round trip.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::{Learned, PolicyCache};

/// What the MX host's first DNS label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Prefix {
    /// `starttls-…`: STARTTLS on port 25, mandatory and verified.
    StartTls,
    /// `smtps-…`: implicit TLS on port 26, then STARTTLS on port 25, both mandatory and verified.
    Smtps,
    /// No policy prefix: opportunistic TLS.
    #[default]
    None,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Prefix::StartTls => "starttls",
            Prefix::Smtps => "smtps",
            Prefix::None => "none",
        })
    }
}

/// Read the policy prefix of an MX host name.
///
/// Only the first label counts and it must start with `starttls-` or `smtps-` followed by at
/// least one more character, compared case-insensitively (DNS names are). A label that merely
/// contains the word (`mystarttls-mx`), the bare word (`starttls.example.com`) or a prefix in a
/// later label (`mx.starttls-a.example.com`) is not a policy: the proposal defines the prefix as
/// the start of the host's own name. Trailing dots (absolute names) are ignored.
pub fn prefix_of(mx_host: &str) -> Prefix {
    let name = mx_host.trim_end_matches('.');
    let label = name.split('.').next().unwrap_or("").as_bytes();
    // Byte comparisons: the prefixes are ASCII, and slicing bytes cannot split a UTF-8
    // character of a hostile name.
    if has_prefix(label, b"starttls-") {
        Prefix::StartTls
    } else if has_prefix(label, b"smtps-") {
        Prefix::Smtps
    } else {
        Prefix::None
    }
}

fn has_prefix(label: &[u8], prefix: &[u8]) -> bool {
    label.len() > prefix.len() && label[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The host name as the policy, the cache and the certificate check see it: lowercase, no
/// trailing dot. Borrows when the name already has that form, so cache look-ups on the hot
/// path do not allocate.
pub(crate) fn normalize(host: &str) -> Cow<'_, str> {
    let trimmed = host.trim_end_matches('.');
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// The port of a step before the engine's port map applies (25→2525 in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogicalPort {
    /// Port 25, SMTP (TLS, if any, via STARTTLS).
    Smtp,
    /// Port 26, SMTP inside implicit TLS, as the `smtps-` prefix defines it (not 465).
    Smtps,
}

impl LogicalPort {
    /// The real port number, which the engine's port map may replace.
    pub fn default_port(self) -> u16 {
        match self {
            LogicalPort::Smtp => 25,
            LogicalPort::Smtps => 26,
        }
    }
}

impl fmt::Display for LogicalPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogicalPort::Smtp => "smtp",
            LogicalPort::Smtps => "smtps",
        })
    }
}

/// How TLS begins on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsStart {
    /// After EHLO, with the STARTTLS command. With [`Security::Clear`] the engine does not
    /// issue it.
    Starttls,
    /// TLS handshake as soon as TCP connects; only on [`LogicalPort::Smtps`].
    Implicit,
}

impl fmt::Display for TlsStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsStart::Starttls => "starttls",
            TlsStart::Implicit => "implicit",
        })
    }
}

/// What TLS a step requires. Variants are declared weakest first; [`Security::strictness`]
/// orders them for combining policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Security {
    /// No TLS at all (opportunistic host that failed TLS before, or STARTTLS absent).
    Clear,
    /// STARTTLS if offered, without verifying the certificate; if not offered, continue in
    /// clear; if the handshake fails, the engine retries the same host once in clear on a fresh
    /// connection (and records [`PolicyCache::tls_failed`]).
    Opportunistic,
    /// TLS mandatory and the certificate must chain to a trusted root and match
    /// [`HostPlan::verify_name`]; any failure is a policy failure (never send in clear).
    RequireVerified,
    /// TLS mandatory, certificate not verified (an operator floor "encrypt" without "verify",
    /// or DNSSEC-signed TLSA records none of which is usable, RFC 7672 §2.2).
    /// Any failure is a policy failure, as for `RequireVerified`.
    RequireEncrypted,
    /// TLS mandatory and the server authenticated by the host's DNSSEC-signed TLSA records
    /// (DANE, RFC 7672) instead of WebPKI: DANE takes precedence over every other source for
    /// how the certificate is checked (spec: "Composition"). Any failure is a policy failure.
    RequireDane,
}

impl Security {
    /// Rank for "the strictest applicable rule wins": higher is stricter.
    pub fn strictness(self) -> u8 {
        match self {
            Security::Clear => 0,
            Security::Opportunistic => 1,
            Security::RequireEncrypted => 2,
            Security::RequireVerified => 3,
            Security::RequireDane => 4,
        }
    }

    /// The stricter of the two.
    pub fn max(self, other: Security) -> Security {
        if other.strictness() > self.strictness() {
            other
        } else {
            self
        }
    }

    /// Whether the certificate must be verified against trusted roots and the host name.
    pub fn verifies_certificate(self) -> bool {
        self == Security::RequireVerified
    }

    /// Whether the server must be authenticated, by WebPKI or by DANE.
    pub fn authenticates(self) -> bool {
        matches!(self, Security::RequireVerified | Security::RequireDane)
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::Clear => "clear",
            Security::Opportunistic => "opportunistic",
            Security::RequireVerified => "require-verified",
            Security::RequireEncrypted => "require-encrypted",
            Security::RequireDane => "require-dane",
        })
    }
}

/// One connection attempt to the MX host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Step {
    /// Which logical port to dial (the engine maps it to a real one).
    pub port: LogicalPort,
    /// [`TlsStart::Implicit`] only on [`LogicalPort::Smtps`].
    pub start: TlsStart,
    /// What TLS this step insists on, and so whether its failure is a policy failure.
    pub security: Security,
}

impl Step {
    pub(crate) const fn starttls(security: Security) -> Step {
        Step { port: LogicalPort::Smtp, start: TlsStart::Starttls, security }
    }
    const IMPLICIT_VERIFIED: Step = Step { port: LogicalPort::Smtps, start: TlsStart::Implicit, security: Security::RequireVerified };
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.port, self.start, self.security)
    }
}

/// Whether a failure of this step (no STARTTLS, bad certificate, handshake error) is a policy
/// failure: a temporary failure of the host, after which the engine tries the next step or MX
/// and finally defers, and never sends in clear.
pub fn is_policy_mandatory(step: &Step) -> bool {
    matches!(step.security, Security::RequireVerified | Security::RequireEncrypted | Security::RequireDane)
}

/// A source of a host's TLS requirement (spec: "Composition"). Each plan lists every source
/// that applied and names the one that decided; outcomes and summaries carry both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Source {
    /// The host is named `starttls-…`: verified STARTTLS on port 25.
    #[serde(rename = "starttls-prefix")]
    StartTlsPrefix,
    /// The host is named `smtps-…`: verified implicit TLS on port 26 first, then on 25.
    #[serde(rename = "smtps-prefix")]
    SmtpsPrefix,
    /// The receiving domain's MTA-STS policy in `enforce` mode: only listed MX hosts, verified TLS.
    #[serde(rename = "mta-sts")]
    MtaSts,
    /// The domain's MTA-STS policy in `testing` mode: nothing required, failures are counted.
    #[serde(rename = "mta-sts-testing")]
    MtaStsTesting,
    /// Domain scope: another MX host of the same domain is prefixed, and its requirement
    /// applies to every MX host of the domain (so a blocked primary cannot push mail in clear
    /// to a backup).
    #[serde(rename = "domain-scope")]
    DomainScope,
    /// A pin: the domain was seen with a prefixed MX host within the pin's TTL, so its
    /// requirement (verified TLS) holds even when today's MX answer lacks the prefix.
    #[serde(rename = "pin")]
    Pin,
    /// The operator's [`Floor`] for the domain or the MX host made the plan stricter.
    #[serde(rename = "floor")]
    Floor,
    /// DANE (RFC 7672): the DNSSEC-signed TLSA records of the host authenticate its TLS, or,
    /// when none is usable, still make TLS mandatory.
    #[serde(rename = "dane")]
    Dane,
    /// The message carries REQUIRETLS (RFC 8689): verified TLS (WebPKI or DANE), only to MX
    /// hosts found through DNSSEC or MTA-STS, and only to a next hop that advertises it.
    #[serde(rename = "requiretls")]
    RequireTls,
    /// The message carries `TLS-Required: No` (RFC 8689 §5): the receiver's policies are
    /// set aside for it, and it goes with opportunistic TLS.
    #[serde(rename = "tls-required-no")]
    TlsRequiredNo,
    /// Nothing required TLS: STARTTLS when offered.
    #[serde(rename = "opportunistic")]
    Opportunistic,
}

impl Source {
    /// The name used in outcomes, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Source::StartTlsPrefix => "starttls-prefix",
            Source::SmtpsPrefix => "smtps-prefix",
            Source::MtaSts => "mta-sts",
            Source::MtaStsTesting => "mta-sts-testing",
            Source::Pin => "pin",
            Source::DomainScope => "domain-scope",
            Source::Floor => "floor",
            Source::Dane => "dane",
            Source::RequireTls => "requiretls",
            Source::TlsRequiredNo => "tls-required-no",
            Source::Opportunistic => "opportunistic",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The decided plan for one MX host: try `steps` in order on fresh connections.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostPlan {
    /// The MX host as published, lowercase, without trailing dot.
    pub host: String,
    /// The source that decided the steps' TLS requirement (the strictest one; see
    /// [`crate::policy::compose()`] for the order among equals).
    pub source: Source,
    /// Every source that applied to this host, including ones that required nothing more
    /// (`mta-sts-testing`), in [`Source`] order.
    pub sources: Vec<Source>,
    /// Set when a source that only reports (MTA-STS `testing`) would have refused this host
    /// (it is not listed): counted and recorded with each outcome, never enforced.
    pub report: Option<String>,
    /// Set when a source forbids this host altogether (an MTA-STS `enforce` policy that does not
    /// list it): the engine skips it with this reason and tries the next MX host.
    pub refused: Option<String>,
    /// Never empty.
    pub steps: Vec<Step>,
    /// The name the certificate must match: the full MX name including its prefix, because
    /// that is the name the receiving domain published.
    pub verify_name: String,
    /// Whether the MX answer was DNSSEC-authenticated, recorded with each delivery.
    pub dnssec: bool,
    /// What the host's own name says.
    pub prefix: Prefix,
}

impl HostPlan {
    /// Whether every step is mandatory TLS, i.e. this host must never receive mail in clear.
    pub fn is_mandatory(&self) -> bool {
        self.steps.iter().all(is_policy_mandatory)
    }
}

/// An operator's minimum for a domain or MX pattern (strictest of floor and prefix wins).
/// Ordered from weakest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Floor {
    /// No minimum: the MX prefix (or opportunistic TLS) decides.
    #[default]
    None,
    /// "encrypt": TLS mandatory, certificate not verified.
    #[serde(alias = "encrypt")]
    Encrypted,
    /// "verify": TLS mandatory and the certificate verified.
    #[serde(alias = "verify")]
    Verified,
}

impl Floor {
    /// The weakest security this floor allows.
    pub fn minimum(self) -> Security {
        match self {
            Floor::None => Security::Clear,
            Floor::Encrypted => Security::RequireEncrypted,
            Floor::Verified => Security::RequireVerified,
        }
    }
}

impl fmt::Display for Floor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Floor::None => "none",
            Floor::Encrypted => "encrypted",
            Floor::Verified => "verified",
        })
    }
}

/// A TLS floor that is not one of the known words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TLS floor {0:?}: use none, encrypt or verify")]
pub struct ParseFloorError(pub String);

impl FromStr for Floor {
    type Err = ParseFloorError;
    fn from_str(s: &str) -> Result<Floor, ParseFloorError> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Floor::None),
            "encrypt" | "encrypted" => Ok(Floor::Encrypted),
            "verify" | "verified" => Ok(Floor::Verified),
            _ => Err(ParseFloorError(s.to_string())),
        }
    }
}

/// Settings of the policy and its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOptions {
    /// How long a learned fact (port 26 unreachable, STARTTLS absent, handshake failed, last
    /// failure) is used. Long enough that a burst does not pay a timeout again, short enough
    /// that a receiver that fixed its setup is retried the same day. Capped at
    /// [`MAX_LEARNED_TTL`].
    pub learned_ttl: Duration,
    /// Most destinations remembered. Each costs a few hundred bytes; 0 disables the cache.
    pub max_entries: usize,
    /// How far a prefix reaches among a domain's MX hosts (default: the whole domain).
    pub scope: super::Scope,
    /// Honour receivers' MTA-STS policies (RFC 8461). Default on.
    pub mta_sts: bool,
    /// Bound on fetching one MTA-STS policy (every address, TLS, the body). Default 20 s.
    pub mta_sts_timeout: Duration,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            learned_ttl: Duration::from_secs(3600),
            max_entries: 100_000,
            scope: super::Scope::Domain,
            mta_sts: true,
            mta_sts_timeout: super::mta_sts::fetch::DEFAULT_TIMEOUT,
        }
    }
}

/// Upper bound on [`PolicyOptions::learned_ttl`]: a fact a week old says little about a server
/// today, and the cap keeps `Instant` arithmetic far from overflow.
pub const MAX_LEARNED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest failure reason kept, in bytes: reasons may quote server text, which a hostile
/// server controls, and the cache must stay bounded in bytes as well as entries.
pub const MAX_REASON_LEN: usize = 256;

/// Decide the connection plan for one MX host.
///
/// `host` is the MX target as resolved (any case, trailing dot allowed); `dnssec` whether its
/// MX answer was authenticated; `floor` the operator's minimum for this domain or host;
/// `learned` what the cache knows about this host (expired facts are ignored against `now`).
pub fn plan(host: &str, dnssec: bool, floor: Floor, learned: Option<&Learned>, now: Instant) -> HostPlan {
    let host = normalize(host).into_owned();
    let prefix = prefix_of(&host);
    // A prefix is always honoured, authenticated or not: honouring it can only make delivery
    // stricter (spec, "DNSSEC"). `dnssec` is only recorded.
    let trusted = prefix;
    let knows = |fact: fn(&Learned, Instant) -> bool| learned.is_some_and(|l| fact(l, now));

    let (mut source, mut steps) = match trusted {
        Prefix::StartTls => (Source::StartTlsPrefix, vec![Step::starttls(Security::RequireVerified)]),
        Prefix::Smtps => {
            let fallback = Step::starttls(Security::RequireVerified);
            if knows(Learned::port26_unusable) {
                // Port 26 failed recently (any way): do not pay for it again. The
                // port-25 step is just as strict, so this saves time without weakening.
                (Source::SmtpsPrefix, vec![fallback])
            } else {
                (Source::SmtpsPrefix, vec![Step::IMPLICIT_VERIFIED, fallback])
            }
        }
        Prefix::None => {
            // Only here may learning downgrade: an opportunistic host would end in clear
            // anyway, after a wasted STARTTLS round trip or handshake.
            let security =
                if knows(Learned::starttls_absent) || knows(Learned::tls_failed) { Security::Clear } else { Security::Opportunistic };
            (Source::Opportunistic, vec![Step::starttls(security)])
        }
    };

    let minimum = floor.minimum();
    for step in &mut steps {
        let raised = step.security.max(minimum);
        if raised != step.security {
            step.security = raised;
            source = Source::Floor;
        }
    }

    let sources =
        if source == Source::Floor && trusted != Prefix::None { vec![prefix_source(trusted), Source::Floor] } else { vec![source] };
    HostPlan { verify_name: host.clone(), host, source, sources, report: None, refused: None, steps, dnssec, prefix }
}

/// The source a prefix stands for.
pub fn prefix_source(p: Prefix) -> Source {
    match p {
        Prefix::StartTls => Source::StartTlsPrefix,
        Prefix::Smtps => Source::SmtpsPrefix,
        Prefix::None => Source::Opportunistic,
    }
}

/// [`plan`] with the facts looked up in `cache`.
pub fn plan_cached(cache: &PolicyCache, host: &str, dnssec: bool, floor: Floor, now: Instant) -> HostPlan {
    plan(host, dnssec, floor, cache.get(host, now), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::learned::truncate;
    use crate::policy::*;
    use LogicalPort::{Smtp, Smtps};
    use Security::{Clear, Opportunistic, RequireEncrypted, RequireVerified};
    use TlsStart::{Implicit, Starttls};

    const HOUR: Duration = Duration::from_secs(3600);

    fn opts() -> PolicyOptions {
        PolicyOptions::default()
    }

    fn step(port: LogicalPort, start: TlsStart, security: Security) -> Step {
        Step { port, start, security }
    }

    fn p(host: &str) -> HostPlan {
        plan(host, false, Floor::None, None, Instant::now())
    }

    #[test]
    fn prefix_of_reads_the_first_label() {
        let cases = [
            ("starttls-mx1.example.com", Prefix::StartTls),
            ("smtps-mx1.example.com", Prefix::Smtps),
            ("mx1.example.com", Prefix::None),
            ("starttls-x", Prefix::StartTls),
            ("smtps-x", Prefix::Smtps),
            ("STARTTLS-MX1.Example.COM", Prefix::StartTls),
            ("SmTpS-Mx1.example.com", Prefix::Smtps),
            ("starttls-mx1.example.com.", Prefix::StartTls),
            ("smtps-mx1.example.com.", Prefix::Smtps),
            ("starttls-x.", Prefix::StartTls),
            ("starttls--x.example", Prefix::StartTls),
            ("smtps-é.example", Prefix::Smtps),
            // Words, not prefixes.
            ("starttls", Prefix::None),
            ("starttls.example.com", Prefix::None),
            ("starttls-.example.com", Prefix::None),
            ("starttls-", Prefix::None),
            ("smtps", Prefix::None),
            ("smtps-", Prefix::None),
            ("smtps-.example.com", Prefix::None),
            ("smtps.example.com", Prefix::None),
            ("mystarttls-x.example.com", Prefix::None),
            ("xsmtps-a.example.com", Prefix::None),
            ("starttlsx-a.example.com", Prefix::None),
            ("smtpsx-a.example.com", Prefix::None),
            ("starttls_mx.example.com", Prefix::None),
            ("mx.starttls-a.example.com", Prefix::None),
            ("mx.smtps-a.example.com", Prefix::None),
            ("mx-starttls-a.example.com", Prefix::None),
            (".starttls-a.example.com", Prefix::None),
            ("", Prefix::None),
            (".", Prefix::None),
            ("é", Prefix::None),
            ("smtp-mx.example.com", Prefix::None),
            ("tls-mx.example.com", Prefix::None),
        ];
        for (host, want) in cases {
            assert_eq!(prefix_of(host), want, "{host:?}");
        }
    }

    #[test]
    fn spec_table_starttls_row() {
        let plan = p("starttls-mx1.example.com");
        assert_eq!(plan.source, Source::StartTlsPrefix);
        assert_eq!(plan.steps, vec![step(Smtp, Starttls, RequireVerified)]);
        assert_eq!(plan.verify_name, "starttls-mx1.example.com");
        assert!(plan.is_mandatory());
    }

    #[test]
    fn spec_table_smtps_row() {
        let plan = p("smtps-mx1.example.com");
        assert_eq!(plan.source, Source::SmtpsPrefix);
        assert_eq!(plan.steps, vec![step(Smtps, Implicit, RequireVerified), step(Smtp, Starttls, RequireVerified)]);
        assert_eq!(plan.verify_name, "smtps-mx1.example.com");
        assert!(plan.is_mandatory());
    }

    #[test]
    fn spec_table_plain_row() {
        let plan = p("mx1.example.com");
        assert_eq!(plan.source, Source::Opportunistic);
        assert_eq!(plan.steps, vec![step(Smtp, Starttls, Opportunistic)]);
        assert_eq!(plan.verify_name, "mx1.example.com");
        assert_eq!(plan.prefix, Prefix::None);
        assert!(!plan.is_mandatory());
    }

    #[test]
    fn names_are_case_insensitive_and_normalized() {
        let plan = p("STARTTLS-MX1.Example.COM");
        assert_eq!(plan.source, Source::StartTlsPrefix);
        assert_eq!(plan.host, "starttls-mx1.example.com");
        assert_eq!(plan.verify_name, "starttls-mx1.example.com");
        let plan = p("SMTPS-MX1.Example.COM.");
        assert_eq!(plan.source, Source::SmtpsPrefix);
        assert_eq!(plan.host, "smtps-mx1.example.com");
        assert_eq!(plan.verify_name, "smtps-mx1.example.com");
    }

    #[test]
    fn trailing_dot_is_tolerated() {
        for (host, source) in [
            ("starttls-mx1.example.com.", Source::StartTlsPrefix),
            ("smtps-mx1.example.com.", Source::SmtpsPrefix),
            ("mx1.example.com.", Source::Opportunistic),
        ] {
            let plan = p(host);
            assert_eq!(plan.source, source, "{host}");
            assert_eq!(plan.host, host.trim_end_matches('.'));
            assert_eq!(plan.verify_name, plan.host);
        }
    }

    #[test]
    fn words_inside_labels_are_not_policies() {
        for host in ["mystarttls-x.example.com", "starttls.example.com", "mx.smtps-a.example.com", "smtps-.example.com"] {
            let plan = p(host);
            assert_eq!(plan.source, Source::Opportunistic, "{host}");
            assert_eq!(plan.steps, vec![step(Smtp, Starttls, Opportunistic)], "{host}");
        }
    }

    #[test]
    fn verify_name_is_the_full_prefixed_name() {
        for host in ["starttls-mx1.example.com", "smtps-a.b.c.example", "mx.example.com"] {
            let plan = p(host);
            assert_eq!(plan.verify_name, host);
            assert_eq!(plan.host, host);
        }
    }

    #[test]
    fn smtps_with_port26_fact_goes_straight_to_25() {
        let t0 = Instant::now();
        let mut cache = PolicyCache::new(&opts());
        cache.port26_unusable("smtps-mx1.example.com", t0);
        let at = |now| plan_cached(&cache, "smtps-mx1.example.com", false, Floor::None, now);
        let plan = at(t0 + Duration::from_secs(60));
        assert_eq!(plan.source, Source::SmtpsPrefix);
        assert_eq!(plan.steps, vec![step(Smtp, Starttls, RequireVerified)]);
        // Expired, at the instant of expiry and after: port 26 is tried again.
        let both = vec![step(Smtps, Implicit, RequireVerified), step(Smtp, Starttls, RequireVerified)];
        assert_eq!(at(t0 + HOUR).steps, both);
        assert_eq!(at(t0 + 2 * HOUR).steps, both);
        // Without the fact.
        let fresh = PolicyCache::new(&opts());
        assert_eq!(plan_cached(&fresh, "smtps-mx1.example.com", false, Floor::None, t0).steps, both);
    }

    #[test]
    fn expired_facts_in_a_held_learned_are_ignored() {
        // The engine may hold a `Learned` across time; `plan` checks expiry itself.
        let t0 = Instant::now();
        let mut cache = PolicyCache::new(&opts());
        cache.port26_unusable("smtps-a.example", t0);
        cache.starttls_absent("mx.example", t0);
        let l26 = cache.get("smtps-a.example", t0).cloned();
        let labs = cache.get("mx.example", t0).cloned();
        let later = t0 + 2 * HOUR;
        let plan26 = plan("smtps-a.example", false, Floor::None, l26.as_ref(), later);
        assert_eq!(plan26.steps.len(), 2);
        let plan_abs = plan("mx.example", false, Floor::None, labs.as_ref(), later);
        assert_eq!(plan_abs.steps, vec![step(Smtp, Starttls, Opportunistic)]);
    }

    #[test]
    fn opportunistic_with_learned_facts_goes_clear_until_expiry() {
        let t0 = Instant::now();
        for learn in [PolicyCache::starttls_absent, PolicyCache::tls_failed] {
            let mut cache = PolicyCache::new(&opts());
            learn(&mut cache, "mx1.example.com", t0);
            let at = |now| plan_cached(&cache, "MX1.example.com.", false, Floor::None, now);
            let plan = at(t0 + Duration::from_secs(1));
            assert_eq!(plan.steps, vec![step(Smtp, Starttls, Clear)]);
            assert_eq!(plan.source, Source::Opportunistic);
            assert_eq!(at(t0 + HOUR).steps, vec![step(Smtp, Starttls, Opportunistic)]);
            assert_eq!(at(t0 + 3 * HOUR).steps, vec![step(Smtp, Starttls, Opportunistic)]);
        }
    }

    #[test]
    fn prefixed_hosts_never_downgrade_on_learned_facts() {
        let t0 = Instant::now();
        let mut cache = PolicyCache::new(&opts());
        for host in ["starttls-a.example", "smtps-b.example"] {
            cache.starttls_absent(host, t0);
            cache.tls_failed(host, t0);
            cache.failure(host, "handshake failed", t0);
            let plan = plan_cached(&cache, host, false, Floor::None, t0);
            assert!(plan.is_mandatory(), "{host}");
            assert!(plan.steps.iter().all(|s| s.security == RequireVerified), "{host}");
        }
    }

    #[test]
    fn port26_fact_does_not_affect_other_kinds() {
        let t0 = Instant::now();
        let mut cache = PolicyCache::new(&opts());
        cache.port26_unusable("starttls-a.example", t0);
        cache.port26_unusable("mx.example", t0);
        assert_eq!(plan_cached(&cache, "starttls-a.example", false, Floor::None, t0).steps, vec![step(Smtp, Starttls, RequireVerified)]);
        assert_eq!(plan_cached(&cache, "mx.example", false, Floor::None, t0).steps, vec![step(Smtp, Starttls, Opportunistic)]);
    }

    #[test]
    fn a_prefix_is_honoured_without_dnssec() {
        // The old `require_dnssec_for_prefix` made an unsigned prefixed domain *weaker*; a
        // prefix now always counts, and DNSSEC is only recorded.
        let now = Instant::now();
        for dnssec in [false, true] {
            let plan = plan("starttls-mx.example", dnssec, Floor::None, None, now);
            assert_eq!(plan.source, Source::StartTlsPrefix);
            assert_eq!(plan.steps, vec![step(Smtp, Starttls, RequireVerified)]);
            assert_eq!(plan.dnssec, dnssec);
            let plan = plan_s("smtps-mx.example", dnssec, now);
            assert_eq!(plan.source, Source::SmtpsPrefix);
            assert_eq!(plan.steps.len(), 2);
            assert!(plan.is_mandatory());
        }
    }

    fn plan_s(host: &str, dnssec: bool, now: Instant) -> HostPlan {
        super::plan(host, dnssec, Floor::None, None, now)
    }

    #[test]
    fn floor_by_prefix_table() {
        let t0 = Instant::now();
        let mut cache = PolicyCache::new(&opts());
        cache.port26_unusable("smtps-learned.example", t0);
        cache.starttls_absent("plain-absent.example", t0);
        cache.tls_failed("plain-failed.example", t0);
        use Floor as F;
        use Source as S;
        let v2 = [(Smtps, RequireVerified), (Smtp, RequireVerified)];
        type Row = (&'static str, Floor, Source, Vec<(LogicalPort, Security)>);
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("starttls-a.example",    F::None,      S::StartTlsPrefix, vec![(Smtp, RequireVerified)]),
            ("starttls-a.example",    F::Encrypted, S::StartTlsPrefix, vec![(Smtp, RequireVerified)]),
            ("starttls-a.example",    F::Verified,  S::StartTlsPrefix, vec![(Smtp, RequireVerified)]),
            ("smtps-a.example",       F::None,      S::SmtpsPrefix,    v2.to_vec()),
            ("smtps-a.example",       F::Encrypted, S::SmtpsPrefix,    v2.to_vec()),
            ("smtps-a.example",       F::Verified,  S::SmtpsPrefix,    v2.to_vec()),
            ("smtps-learned.example", F::None,      S::SmtpsPrefix,    vec![(Smtp, RequireVerified)]),
            ("smtps-learned.example", F::Encrypted, S::SmtpsPrefix,    vec![(Smtp, RequireVerified)]),
            ("smtps-learned.example", F::Verified,  S::SmtpsPrefix,    vec![(Smtp, RequireVerified)]),
            ("plain.example",         F::None,      S::Opportunistic,  vec![(Smtp, Opportunistic)]),
            ("plain.example",         F::Encrypted, S::Floor,       vec![(Smtp, RequireEncrypted)]),
            ("plain.example",         F::Verified,  S::Floor,       vec![(Smtp, RequireVerified)]),
            ("plain-absent.example",  F::None,      S::Opportunistic,  vec![(Smtp, Clear)]),
            ("plain-absent.example",  F::Encrypted, S::Floor,       vec![(Smtp, RequireEncrypted)]),
            ("plain-absent.example",  F::Verified,  S::Floor,       vec![(Smtp, RequireVerified)]),
            ("plain-failed.example",  F::None,      S::Opportunistic,  vec![(Smtp, Clear)]),
            ("plain-failed.example",  F::Encrypted, S::Floor,       vec![(Smtp, RequireEncrypted)]),
            ("plain-failed.example",  F::Verified,  S::Floor,       vec![(Smtp, RequireVerified)]),
        ];
        for (host, floor, source, want) in table {
            let plan = plan_cached(&cache, host, false, floor, t0);
            let got: Vec<_> = plan.steps.iter().map(|s| (s.port, s.security)).collect();
            assert_eq!(got, want, "{host} {floor}");
            assert_eq!(plan.source, source, "{host} {floor}");
            assert_eq!(plan.verify_name, host);
            for s in &plan.steps {
                assert!(s.security.strictness() >= floor.minimum().strictness(), "{host} {floor}");
                assert_eq!(s.start == Implicit, s.port == Smtps);
            }
        }
    }

    #[test]
    fn strictness_order() {
        let all = [Clear, Opportunistic, RequireEncrypted, RequireVerified];
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate() {
                assert_eq!(a.max(*b), all[i.max(j)]);
            }
        }
        assert!(RequireVerified.verifies_certificate());
        assert!(!RequireEncrypted.verifies_certificate());
    }

    #[test]
    fn policy_mandatory_steps() {
        assert!(is_policy_mandatory(&step(Smtp, Starttls, RequireVerified)));
        assert!(is_policy_mandatory(&step(Smtps, Implicit, RequireVerified)));
        assert!(is_policy_mandatory(&step(Smtp, Starttls, RequireEncrypted)));
        assert!(!is_policy_mandatory(&step(Smtp, Starttls, Opportunistic)));
        assert!(!is_policy_mandatory(&step(Smtp, Starttls, Clear)));
    }

    #[test]
    fn names_for_reports() {
        for (s, text) in [
            (Source::StartTlsPrefix, "starttls-prefix"),
            (Source::SmtpsPrefix, "smtps-prefix"),
            (Source::Opportunistic, "opportunistic"),
            (Source::Floor, "floor"),
            (Source::MtaSts, "mta-sts"),
            (Source::MtaStsTesting, "mta-sts-testing"),
            (Source::Pin, "pin"),
            (Source::DomainScope, "domain-scope"),
        ] {
            assert_eq!(s.to_string(), text);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{text}\""));
        }
        for sec in [Clear, Opportunistic, RequireEncrypted, RequireVerified] {
            assert_eq!(serde_json::to_string(&sec).unwrap(), format!("\"{sec}\""));
        }
        assert_eq!(step(Smtps, Implicit, RequireVerified).to_string(), "smtps/implicit/require-verified");
        assert_eq!(Smtp.default_port(), 25);
        assert_eq!(Smtps.default_port(), 26);
        let json = serde_json::to_value(p("smtps-a.example")).unwrap();
        assert_eq!(json["source"], "smtps-prefix");
        assert_eq!(json["steps"][0]["port"], "smtps");
        assert_eq!(json["steps"][0]["start"], "implicit");
        assert_eq!(json["prefix"], "smtps");
    }

    #[test]
    fn floor_parses() {
        assert_eq!("none".parse::<Floor>().unwrap(), Floor::None);
        assert_eq!("Encrypt".parse::<Floor>().unwrap(), Floor::Encrypted);
        assert_eq!("encrypted".parse::<Floor>().unwrap(), Floor::Encrypted);
        assert_eq!("VERIFY".parse::<Floor>().unwrap(), Floor::Verified);
        assert_eq!("verified".parse::<Floor>().unwrap(), Floor::Verified);
        let err = "dane".parse::<Floor>().unwrap_err();
        assert!(err.to_string().contains("\"dane\""), "{err}");
        assert_eq!(serde_json::from_str::<Floor>("\"verify\"").unwrap(), Floor::Verified);
        assert_eq!(serde_json::from_str::<Floor>("\"encrypted\"").unwrap(), Floor::Encrypted);
        assert_eq!(Floor::default(), Floor::None);
    }

    #[test]
    fn options_defaults() {
        let o = PolicyOptions::default();
        assert_eq!(o.learned_ttl, HOUR);
        assert_eq!(o.max_entries, 100_000);
    }

    #[test]
    fn cache_facts_and_expiry() {
        let t0 = Instant::now();
        let mut cache = PolicyCache::new(&opts());
        assert!(cache.is_empty());
        assert!(cache.get("mx.example", t0).is_none());
        cache.port26_unusable("SMTPS-A.Example.", t0);
        let l = cache.get("smtps-a.example", t0).unwrap();
        assert!(l.port26_unusable(t0));
        assert!(!l.starttls_absent(t0));
        assert!(!l.tls_failed(t0));
        assert!(l.last_failure(t0).is_none());
        assert!(cache.get("smtps-a.example", t0 + HOUR - Duration::from_nanos(1)).is_some());
        assert!(cache.get("smtps-a.example", t0 + HOUR).is_none());
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.purge_expired(t0 + HOUR), 1);
        assert!(cache.is_empty());
    }

    #[test]
    fn facts_expire_independently() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1800);
        let mut cache = PolicyCache::new(&opts());
        cache.port26_unusable("smtps-a.example", t0);
        cache.failure("smtps-a.example", "port 26: connection refused", t1);
        let t2 = t0 + HOUR + Duration::from_secs(1);
        let l = cache.get("smtps-a.example", t2).unwrap();
        assert!(!l.port26_unusable(t2));
        assert_eq!(l.last_failure(t2), Some(("port 26: connection refused", t1)));
        // The entry lives as long as its newest fact, not its first.
        assert_eq!(cache.purge_expired(t2), 0);
        assert_eq!(cache.purge_expired(t1 + HOUR), 1);
    }

    #[test]
    fn success_clears_the_failure_only() {
        let t0 = Instant::now();
        let mut cache = PolicyCache::new(&opts());
        cache.port26_unusable("smtps-a.example", t0);
        cache.failure("smtps-a.example", "timeout", t0);
        cache.success("smtps-a.example", t0);
        let l = cache.get("smtps-a.example", t0).unwrap();
        assert!(l.last_failure(t0).is_none());
        assert!(l.port26_unusable(t0));
        // Success on an unknown host creates nothing; an entry left empty is dropped.
        cache.success("mx.example", t0);
        assert!(cache.get("mx.example", t0).is_none());
        assert_eq!(cache.len(), 1);
        cache.failure("mx.example", "450 try later", t0);
        assert_eq!(cache.len(), 2);
        cache.success("MX.example.", t0);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("mx.example", t0).is_none());
    }

    #[test]
    fn failure_reason_is_bounded() {
        let t0 = Instant::now();
        let mut cache = PolicyCache::new(&opts());
        let long = "é".repeat(MAX_REASON_LEN); // 2 bytes each
        cache.failure("mx.example", &long, t0);
        let (reason, at) = cache.get("mx.example", t0).unwrap().last_failure(t0).unwrap();
        assert!(reason.len() <= MAX_REASON_LEN);
        assert_eq!(reason.len(), MAX_REASON_LEN);
        assert!(long.starts_with(reason));
        assert_eq!(at, t0);
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("", 2), "");
    }

    #[test]
    fn cache_bound_evicts_oldest() {
        let t0 = Instant::now();
        let small = PolicyOptions { max_entries: 3, ..opts() };
        let mut cache = PolicyCache::new(&small);
        let s = Duration::from_secs;
        cache.starttls_absent("a.example", t0);
        cache.starttls_absent("b.example", t0 + s(1));
        cache.starttls_absent("c.example", t0 + s(2));
        // Refreshing a makes b the oldest.
        cache.tls_failed("a.example", t0 + s(3));
        cache.starttls_absent("d.example", t0 + s(4));
        assert_eq!(cache.len(), 3);
        let now = t0 + s(5);
        assert!(cache.get("b.example", now).is_none());
        for h in ["a.example", "c.example", "d.example"] {
            assert!(cache.get(h, now).is_some(), "{h}");
        }
        // Updating an existing entry never evicts.
        cache.failure("c.example", "x", now);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("a.example", now).is_some());
        // Same-instant inserts are still distinct and evicted in order.
        let mut cache = PolicyCache::new(&small);
        for h in ["p", "q", "r", "s", "t"] {
            cache.starttls_absent(h, t0);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get("p", t0).is_none() && cache.get("q", t0).is_none());
        assert!(cache.get("t", t0).is_some());
    }

    #[test]
    fn cache_bound_evicts_expired_first() {
        let t0 = Instant::now();
        let small = PolicyOptions { max_entries: 3, learned_ttl: Duration::from_secs(60), ..opts() };
        let mut cache = PolicyCache::new(&small);
        let s = Duration::from_secs;
        cache.starttls_absent("a.example", t0);
        cache.starttls_absent("b.example", t0 + s(10));
        cache.starttls_absent("c.example", t0 + s(50));
        // At t0+65 a has expired, b and c have not: inserting d sweeps a and keeps both.
        cache.starttls_absent("d.example", t0 + s(65));
        assert_eq!(cache.len(), 3);
        let now = t0 + s(66);
        assert!(cache.get("a.example", now).is_none());
        assert!(cache.get("b.example", now).is_some());
        assert!(cache.get("c.example", now).is_some());
        // At t0+115 a, b and c have all expired: every write sweeps them.
        cache.success("d.example", t0 + s(115));
        cache.port26_unusable("e.example", t0 + s(115));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn cache_zero_entries_and_huge_ttl() {
        let t0 = Instant::now();
        let mut off = PolicyCache::new(&PolicyOptions { max_entries: 0, ..opts() });
        off.port26_unusable("smtps-a.example", t0);
        off.failure("smtps-a.example", "x", t0);
        assert!(off.is_empty());
        let mut forever = PolicyCache::new(&PolicyOptions { learned_ttl: Duration::MAX, ..opts() });
        forever.starttls_absent("mx.example", t0);
        assert!(forever.get("mx.example", t0 + MAX_LEARNED_TTL - Duration::from_secs(1)).is_some());
        assert!(forever.get("mx.example", t0 + MAX_LEARNED_TTL).is_none());
        let mut zero = PolicyCache::new(&PolicyOptions { learned_ttl: Duration::ZERO, ..opts() });
        zero.starttls_absent("mx.example", t0);
        assert!(zero.get("mx.example", t0).is_none());
        let plan = plan_cached(&zero, "mx.example", false, Floor::None, t0);
        assert_eq!(plan.steps[0].security, Opportunistic);
    }

    #[test]
    fn cache_normalizes_names() {
        let t0 = Instant::now();
        let mut cache = PolicyCache::new(&opts());
        cache.port26_unusable("SMTPS-MX.Example.com.", t0);
        cache.port26_unusable("smtps-mx.example.com", t0);
        assert_eq!(cache.len(), 1);
        let plan = plan_cached(&cache, "smtps-mx.EXAMPLE.com", false, Floor::None, t0);
        assert_eq!(plan.steps, vec![step(Smtp, Starttls, RequireVerified)]);
    }

    /// A small deterministic generator, so the test needs no dependency and replays exactly.
    struct Lcg(u64);
    impl Lcg {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
    }

    #[test]
    fn random_hosts_never_panic_and_prefixed_hosts_stay_mandatory() {
        const PIECES: &[&str] = &[
            "starttls-",
            "smtps-",
            "STARTTLS-",
            "SmTpS-",
            "starttls",
            "smtps",
            "mx",
            "a",
            "-",
            ".",
            "..",
            "é",
            "\u{1F600}",
            "x",
            "Example",
            "com",
            "_",
            " ",
            "\0",
            "1",
        ];
        let t0 = Instant::now();
        let mut rng = Lcg(0x5eed);
        let mut cache = PolicyCache::new(&PolicyOptions { max_entries: 64, ..opts() });
        let floors = [Floor::None, Floor::Encrypted, Floor::Verified];
        let mut prefixed = 0;
        for i in 0..20_000u64 {
            let mut host = String::new();
            for _ in 0..rng.below(8) {
                host.push_str(PIECES[rng.below(PIECES.len())]);
            }
            let now = t0 + Duration::from_secs(i);
            match rng.below(6) {
                0 => cache.port26_unusable(&host, now),
                1 => cache.starttls_absent(&host, now),
                2 => cache.tls_failed(&host, now),
                3 => cache.failure(&host, &host, now),
                4 => cache.success(&host, now),
                _ => {}
            }
            assert!(cache.len() <= 64);
            let dnssec = rng.below(2) == 0;
            let floor = floors[rng.below(3)];
            let plan = plan_cached(&cache, &host, dnssec, floor, now);

            assert!(!plan.steps.is_empty(), "{host:?}");
            assert_eq!(plan.verify_name, plan.host);
            assert!(!plan.host.ends_with('.') && !plan.host.bytes().any(|b| b.is_ascii_uppercase()), "{host:?}");
            assert_eq!(plan.prefix, prefix_of(&host));
            for s in &plan.steps {
                assert_eq!(s.start == Implicit, s.port == Smtps, "{host:?}");
                assert!(s.security.strictness() >= floor.minimum().strictness(), "{host:?}");
            }
            let trusted = prefix_of(&host) != Prefix::None;
            if trusted {
                prefixed += 1;
                assert!(plan.is_mandatory(), "{host:?}");
                for s in &plan.steps {
                    assert!(!matches!(s.security, Clear | Opportunistic), "{host:?}");
                    assert_eq!(s.security, RequireVerified, "{host:?}");
                }
                assert_ne!(plan.source, Source::Opportunistic);
                assert_ne!(plan.source, Source::Floor);
            }
        }
        // The generator must actually produce prefixed names for the property to mean much.
        assert!(prefixed > 1_000, "only {prefixed} prefixed hosts generated");
    }
}
