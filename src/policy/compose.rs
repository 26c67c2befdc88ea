//! The composed policy: one requirement per MX host from every source that applies, the
//! strictest winning (spec: "Composition").
//!
//! [`compose`] starts from the host's own name ([`super::plan`]: the prefix's port plan and
//! what the cache learned), then raises every step to the strictest minimum among:
//! - the host's own prefix (`starttls-`, `smtps-`): verified TLS;
//! - the domain's MTA-STS policy in `enforce` mode: verified TLS, and hosts it does not list
//!   are refused; `testing` requires nothing and is only recorded;
//! - domain scope (another MX host of the domain is prefixed): verified TLS;
//! - a pin (the domain was seen with a prefixed MX within the pin's TTL): verified TLS;
//! - the operator's floors for the domain and the MX host: `encrypt` or `verify`;
//! - DANE (RFC 7672), per port: usable TLSA records make the step [`Security::RequireDane`],
//!   which takes precedence over every WebPKI requirement for how the certificate is checked
//!   (and over an MTA-STS `enforce` policy's host list, RFC 8461 §2); TLSA records none of
//!   which is usable still make TLS mandatory; a failed or bogus TLSA lookup removes the step;
//! - the message's own REQUIRETLS (RFC 8689): verified TLS, and only hosts found through DNSSEC
//!   or listed by an MTA-STS policy.
//!
//! A message marked `TLS-Required: No` (RFC 8689 §5) sets every receiver's source aside and
//! gets the opportunistic plan of an unprefixed host.
//!
//! The port plan never changes with the sources: only an `smtps-` host is tried on 26. When
//! several sources require the same, the one named as deciding is the first of: the prefix,
//! MTA-STS, domain scope, the pin, the floor (so a pin is named only when
//! today's MX answer has no prefix). Like the rest of `policy`, this is a pure function
//! of facts the caller gathered (no DNS, no clock, no locks), cheap enough for every connection.

use std::time::Instant;

use super::{plan, prefix_source, Floor, HostPlan, Learned, Prefix, Security, Source};

/// How far a prefix reaches among a domain's MX hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The strictest prefix among a domain's MX hosts applies to all of them (the default,
    /// as the spec asks): an attacker who blocks or strips the prefixed primary gains no
    /// delivery in clear through an unprefixed backup.
    #[default]
    Domain,
    /// Each host's prefix applies to that host only. Weaker: a backup without a prefix gets
    /// opportunistic TLS, which a man in the middle can strip. For receivers whose backup MX
    /// is known to have no certificate, and only by the operator's choice.
    Host,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "domain" => Ok(Scope::Domain),
            "host" => Ok(Scope::Host),
            _ => Err(format!("unknown policy scope {s:?}: use domain or host")),
        }
    }
}

/// What the domain's MTA-STS policy asks, as far as composing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sts {
    /// No policy, or `mode: none`.
    #[default]
    None,
    /// `mode: testing`: deliver as usual, count what would have failed.
    Testing,
    /// `mode: enforce`: only listed MX hosts, with verified TLS.
    Enforce,
}

/// What is known of the destination domain as a whole, gathered once per resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainFacts {
    /// The MX answer was DNSSEC-authenticated (recorded only).
    pub dnssec: bool,
    /// The operator's floor for the domain.
    pub floor: Floor,
    /// How far a prefix reaches.
    pub scope: Scope,
    /// The strictest prefix among the domain's MX hosts ([`strictest_prefix`]).
    pub strictest_prefix: Prefix,
    /// A live pin holds for the domain.
    pub pinned: bool,
    /// The domain's MTA-STS policy, if one is cached.
    pub sts: Sts,
    /// The message carries REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// The message carries `TLS-Required: No` (RFC 8689 §5).
    pub relaxed: bool,
}

/// What DANE says of one port of an MX host, as the engine found it (RFC 7672 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dane {
    /// No DANE: the MX answer or the host's addresses are not DNSSEC-authenticated, there are
    /// no TLSA records, or validation is off.
    #[default]
    None,
    /// DNSSEC-signed TLSA records, at least one usable: TLS authenticated by them.
    Usable,
    /// DNSSEC-signed TLSA records, none usable: TLS mandatory, without authentication.
    Unusable,
    /// The TLSA lookup failed or was DNSSEC-bogus: the port is not used until it succeeds.
    Failed,
}

/// What is known of one MX host.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts<'a> {
    /// The MX host name as published.
    pub name: &'a str,
    /// The operator's floor for MX hosts matching a pattern that matches this one.
    pub floor: Floor,
    /// What earlier deliveries learned about the host.
    pub learned: Option<&'a Learned>,
    /// The domain's MTA-STS policy lists this host (ignored unless it is enforced).
    pub sts_listed: bool,
    /// DANE for port 25 (`_25._tcp.<host>`).
    pub dane: Dane,
    /// DANE for the implicit-TLS port 26 of an `smtps-` host (`_26._tcp.<host>`).
    pub dane_smtps: Dane,
}

impl HostFacts<'_> {
    fn dane_at(&self, port: super::LogicalPort) -> Dane {
        match port {
            super::LogicalPort::Smtp => self.dane,
            super::LogicalPort::Smtps => self.dane_smtps,
        }
    }
}

/// The strictest prefix among a domain's MX host names: `smtps` or `starttls` if any host has
/// one (both require verified TLS; `smtps` is named first only for its port plan), else none.
pub fn strictest_prefix<'a>(names: impl IntoIterator<Item = &'a str>) -> Prefix {
    let mut best = Prefix::None;
    for n in names {
        match super::prefix_of(n) {
            Prefix::Smtps => return Prefix::Smtps,
            Prefix::StartTls => best = Prefix::StartTls,
            Prefix::None => {}
        }
    }
    best
}

/// The plan for one MX host, composed from every source (module docs).
pub fn compose(d: &DomainFacts, h: &HostFacts<'_>, now: Instant) -> HostPlan {
    let mut p = plan(h.name, d.dnssec, Floor::None, h.learned, now);
    if d.relaxed && !d.requiretls {
        // The sender asked that receivers' policies be ignored for this message: what an
        // unprefixed host gets, learning included.
        let knows = |fact: fn(&Learned, Instant) -> bool| h.learned.is_some_and(|l| fact(l, now));
        let clear = knows(Learned::starttls_absent) || knows(Learned::tls_failed);
        p.steps = vec![super::Step::starttls(if clear { Security::Clear } else { Security::Opportunistic })];
        p.source = Source::TlsRequiredNo;
        p.sources = vec![Source::TlsRequiredNo];
        return p;
    }
    let dane_usable = h.dane == Dane::Usable || (p.prefix == Prefix::Smtps && h.dane_smtps == Dane::Usable);
    // (source, the minimum it requires), in the order that names the decider among equals.
    let mut asks: [(Source, Security); 7] = [(Source::Opportunistic, Security::Clear); 7];
    let mut n = 0;
    let mut ask = |s: Source, sec: Security| {
        asks[n] = (s, sec);
        n += 1;
    };
    if p.prefix != Prefix::None {
        ask(prefix_source(p.prefix), Security::RequireVerified);
    }
    let mut testing = false;
    match d.sts {
        Sts::Enforce => {
            ask(Source::MtaSts, Security::RequireVerified);
            // DANE takes precedence over MTA-STS for a host with usable TLSA (RFC 8461 §2).
            if !h.sts_listed && !dane_usable {
                p.refused = Some(format!("{}: not an MX host listed by the domain's MTA-STS policy (mode enforce)", p.host));
            }
        }
        Sts::Testing => {
            testing = true;
            if !h.sts_listed && !dane_usable {
                p.report = Some(format!("mta-sts testing: {} is not an MX host listed by the policy", p.host));
            }
        }
        Sts::None => {}
    }
    if d.scope == Scope::Domain && d.strictest_prefix != Prefix::None && p.prefix == Prefix::None {
        ask(Source::DomainScope, Security::RequireVerified);
    }
    // A pin speaks only when today's answer has no prefix at all (else the prefix, or domain
    // scope, already says the same); so host scope keeps its documented meaning.
    if d.pinned && d.strictest_prefix == Prefix::None && p.prefix == Prefix::None {
        ask(Source::Pin, Security::RequireVerified);
    }
    let floor = d.floor.max(h.floor);
    if floor != Floor::None {
        ask(Source::Floor, floor.minimum());
    }
    let steps_dane = p.steps.iter().map(|s| h.dane_at(s.port));
    let (mut any_dane, mut unusable) = (false, false);
    for fact in steps_dane {
        any_dane |= fact != Dane::None;
        unusable |= fact == Dane::Unusable;
    }
    if unusable {
        ask(Source::Dane, Security::RequireEncrypted);
    }
    if d.requiretls {
        ask(Source::RequireTls, Security::RequireVerified);
        let listed = d.sts != Sts::None && h.sts_listed;
        if !d.dnssec && !listed && p.refused.is_none() {
            p.refused = Some(format!(
                "{}: REQUIRETLS: the MX host was found neither through DNSSEC nor through an MTA-STS policy that lists it",
                p.host
            ));
        }
    }
    let asks = &asks[..n];

    let required = asks.iter().fold(Security::Clear, |acc, &(_, s)| acc.max(s));
    let mut by_dane = false;
    for step in &mut p.steps {
        step.security = step.security.max(required);
        if h.dane_at(step.port) == Dane::Usable {
            step.security = Security::RequireDane;
            by_dane = true;
        }
    }
    // A failed or bogus TLSA lookup: that port is not used until the lookup succeeds.
    p.steps.retain(|s| h.dane_at(s.port) != Dane::Failed);
    if p.steps.is_empty() && p.refused.is_none() {
        p.refused =
            Some(format!("{}: its TLSA lookup failed or was DNSSEC-bogus; the host is not used until it succeeds (RFC 7672 §2.2)", p.host));
    }
    p.source = if by_dane {
        Source::Dane
    } else {
        asks.iter().find(|&&(_, s)| s == required && required != Security::Clear).map_or(Source::Opportunistic, |&(s, _)| s)
    };
    let mut sources: Vec<Source> = asks.iter().map(|&(s, _)| s).collect();
    if any_dane {
        sources.push(Source::Dane);
    }
    if sources.is_empty() {
        sources.push(Source::Opportunistic);
    }
    if testing {
        sources.push(Source::MtaStsTesting);
    }
    sources.sort_unstable();
    sources.dedup();
    p.sources = sources;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LogicalPort, PolicyCache, PolicyOptions, Step, TlsStart};
    use Security::{Clear, Opportunistic, RequireEncrypted, RequireVerified};

    fn facts(strictest: Prefix) -> DomainFacts {
        DomainFacts { strictest_prefix: strictest, ..DomainFacts::default() }
    }

    fn host(name: &str) -> HostFacts<'_> {
        HostFacts { name, floor: Floor::None, learned: None, sts_listed: false, dane: Dane::None, dane_smtps: Dane::None }
    }

    fn securities(p: &HostPlan) -> Vec<(LogicalPort, Security)> {
        p.steps.iter().map(|s| (s.port, s.security)).collect()
    }

    fn c(d: &DomainFacts, h: &HostFacts<'_>) -> HostPlan {
        compose(d, h, Instant::now())
    }

    #[test]
    fn strictest_prefix_of_a_domain() {
        assert_eq!(strictest_prefix(["mx1.a", "mx2.a"]), Prefix::None);
        assert_eq!(strictest_prefix(["mx1.a", "starttls-mx2.a"]), Prefix::StartTls);
        assert_eq!(strictest_prefix(["starttls-mx1.a", "smtps-mx2.a", "mx3.a"]), Prefix::Smtps);
        assert_eq!(strictest_prefix([]), Prefix::None);
    }

    /// The spec's composition table, one row per source, against a prefixed and a plain host.
    #[test]
    fn composition_table() {
        use LogicalPort::{Smtp, Smtps};
        use Prefix as P;
        use Source as S;
        let pinned = DomainFacts { pinned: true, ..facts(P::None) };
        let enforce = DomainFacts { sts: Sts::Enforce, ..facts(P::None) };
        let testing = DomainFacts { sts: Sts::Testing, ..facts(P::None) };
        let floor_enc = DomainFacts { floor: Floor::Encrypted, ..facts(P::None) };
        let floor_ver = DomainFacts { floor: Floor::Verified, ..facts(P::None) };
        let scoped = facts(P::StartTls);
        let host_scope = DomainFacts { scope: Scope::Host, ..facts(P::StartTls) };
        let (plain, st, sm) = (facts(P::None), facts(P::StartTls), facts(P::Smtps));
        type Row<'a> = (&'a str, &'a DomainFacts, bool, S, Vec<S>, Vec<(LogicalPort, Security)>);
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            // domain facts        host                 listed decided             sources                                   steps
            ("mx.a",              &plain,      false, S::Opportunistic,  vec![S::Opportunistic],                   vec![(Smtp, Opportunistic)]),
            ("starttls-mx.a",     &st,         false, S::StartTlsPrefix, vec![S::StartTlsPrefix],           vec![(Smtp, RequireVerified)]),
            ("smtps-mx.a",        &sm,         false, S::SmtpsPrefix,   vec![S::SmtpsPrefix],                     vec![(Smtps, RequireVerified), (Smtp, RequireVerified)]),
            ("mx.a",              &pinned,     false, S::Pin,                vec![S::Pin],                             vec![(Smtp, RequireVerified)]),
            ("starttls-mx.a",     &pinned,     false, S::StartTlsPrefix,     vec![S::StartTlsPrefix],          vec![(Smtp, RequireVerified)]),
            ("mx.a",              &enforce,    true,  S::MtaSts,             vec![S::MtaSts],                          vec![(Smtp, RequireVerified)]),
            ("starttls-mx.a",     &enforce,    true,  S::StartTlsPrefix,     vec![S::StartTlsPrefix, S::MtaSts],       vec![(Smtp, RequireVerified)]),
            ("mx.a",              &testing,    true,  S::Opportunistic,      vec![S::MtaStsTesting, S::Opportunistic], vec![(Smtp, Opportunistic)]),
            ("smtps-mx.a",        &testing,    false, S::SmtpsPrefix,        vec![S::SmtpsPrefix, S::MtaStsTesting],   vec![(Smtps, RequireVerified), (Smtp, RequireVerified)]),
            ("mx.a",              &floor_enc,  false, S::Floor,              vec![S::Floor],                           vec![(Smtp, RequireEncrypted)]),
            ("mx.a",              &floor_ver,  false, S::Floor,              vec![S::Floor],                           vec![(Smtp, RequireVerified)]),
            ("starttls-mx.a",     &floor_enc,  false, S::StartTlsPrefix,     vec![S::StartTlsPrefix, S::Floor],        vec![(Smtp, RequireVerified)]),
            ("backup.a",          &scoped,     false, S::DomainScope,        vec![S::DomainScope],                     vec![(Smtp, RequireVerified)]),
            ("backup.a",          &host_scope, false, S::Opportunistic,      vec![S::Opportunistic],                   vec![(Smtp, Opportunistic)]),
        ];
        for (name, d, listed, decided, sources, steps) in rows {
            let p = c(d, &HostFacts { sts_listed: listed, ..host(name) });
            assert_eq!(p.source, decided, "{name} {d:?}");
            assert_eq!(p.sources, sources, "{name} {d:?}");
            assert_eq!(securities(&p), steps, "{name} {d:?}");
            assert_eq!(p.refused, None, "{name} {d:?}");
            assert_eq!(p.verify_name, name, "the certificate is checked for the MX name as published");
        }
    }

    #[test]
    fn enforce_refuses_hosts_the_policy_does_not_list() {
        let d = DomainFacts { sts: Sts::Enforce, ..facts(Prefix::None) };
        let p = c(&d, &host("rogue.example"));
        assert!(p.refused.as_deref().is_some_and(|r| r.contains("rogue.example") && r.contains("MTA-STS")), "{p:?}");
        assert_eq!(p.source, Source::MtaSts);
        // A testing policy never refuses; it reports.
        let t = DomainFacts { sts: Sts::Testing, ..facts(Prefix::None) };
        let p = c(&t, &host("rogue.example"));
        assert_eq!(p.refused, None);
        assert!(p.report.as_deref().is_some_and(|r| r.contains("not an MX host listed")), "{p:?}");
        assert_eq!(c(&t, &HostFacts { sts_listed: true, ..host("mx.example") }).report, None);
    }

    #[test]
    fn domain_scope_covers_a_backup_that_learned_no_starttls() {
        // The attack: strip STARTTLS at the unprefixed backup. Learning "STARTTLS absent" makes
        // a plain host clear, but under a prefixed sibling it stays verified.
        let mut cache = PolicyCache::new(&PolicyOptions::default());
        let now = Instant::now();
        cache.starttls_absent("backup.a", now);
        let learned = cache.get("backup.a", now);
        let h = HostFacts { learned, ..host("backup.a") };
        let scoped = compose(&facts(Prefix::StartTls), &h, now);
        assert_eq!(scoped.steps, vec![Step { port: LogicalPort::Smtp, start: TlsStart::Starttls, security: RequireVerified }]);
        assert!(scoped.is_mandatory());
        let per_host = compose(&DomainFacts { scope: Scope::Host, ..facts(Prefix::StartTls) }, &h, now);
        assert_eq!(securities(&per_host), vec![(LogicalPort::Smtp, Clear)], "host scope is weaker, as documented");
        // A pin does the same when the prefix vanished from the answer altogether.
        let pinned = compose(&DomainFacts { pinned: true, ..facts(Prefix::None) }, &h, now);
        assert!(pinned.is_mandatory());
        assert_eq!(pinned.source, Source::Pin);
    }

    #[test]
    fn the_mx_floor_and_the_domain_floor_combine() {
        let d = DomainFacts { floor: Floor::Encrypted, ..facts(Prefix::None) };
        let p = c(&d, &HostFacts { floor: Floor::Verified, ..host("mx.a") });
        assert_eq!(securities(&p), vec![(LogicalPort::Smtp, RequireVerified)]);
        assert_eq!(p.source, Source::Floor);
    }

    /// DANE per port: usable records decide how the certificate is checked, whatever else
    /// applies; unusable ones still make TLS mandatory; a failed lookup removes the port.
    #[test]
    fn dane_takes_precedence_and_fails_closed() {
        use LogicalPort::{Smtp, Smtps};
        use Security::RequireDane;
        let (plain, sm) = (facts(Prefix::None), facts(Prefix::Smtps));
        let usable = HostFacts { dane: Dane::Usable, ..host("mx.a") };
        let p = c(&plain, &usable);
        assert_eq!((p.source, securities(&p)), (Source::Dane, vec![(Smtp, RequireDane)]));
        assert_eq!(p.sources, vec![Source::Dane]);
        assert!(p.is_mandatory());

        // Over a prefix, a floor and MTA-STS enforce: DANE decides, and the MTA-STS host list
        // does not refuse a host with usable TLSA (RFC 8461 §2).
        let strict = DomainFacts { sts: Sts::Enforce, floor: Floor::Verified, ..facts(Prefix::StartTls) };
        let p = c(&strict, &HostFacts { dane: Dane::Usable, ..host("starttls-mx.a") });
        assert_eq!((p.source, securities(&p), p.refused.as_deref()), (Source::Dane, vec![(Smtp, RequireDane)], None));
        assert_eq!(p.sources, vec![Source::StartTlsPrefix, Source::MtaSts, Source::Floor, Source::Dane]);
        // Without DANE the same unlisted host is refused.
        assert!(c(&strict, &host("starttls-mx.a")).refused.is_some());

        // Unusable records: encrypted, not verified, named DANE; a prefix still wins verified.
        let p = c(&plain, &HostFacts { dane: Dane::Unusable, ..host("mx.a") });
        assert_eq!((p.source, securities(&p)), (Source::Dane, vec![(Smtp, RequireEncrypted)]));
        let p = c(&facts(Prefix::StartTls), &HostFacts { dane: Dane::Unusable, ..host("starttls-mx.a") });
        assert_eq!((p.source, securities(&p)), (Source::StartTlsPrefix, vec![(Smtp, RequireVerified)]));

        // Port 26 of an smtps- host has its own records.
        let p = c(&sm, &HostFacts { dane_smtps: Dane::Usable, ..host("smtps-mx.a") });
        assert_eq!(securities(&p), vec![(Smtps, RequireDane), (Smtp, RequireVerified)]);
        let p = c(&sm, &HostFacts { dane_smtps: Dane::Failed, dane: Dane::Usable, ..host("smtps-mx.a") });
        assert_eq!(securities(&p), vec![(Smtp, RequireDane)], "a bogus _26 drops only port 26");

        // A failed or bogus lookup: the host is not used at all (so the message defers).
        let p = c(&plain, &HostFacts { dane: Dane::Failed, ..host("mx.a") });
        assert!(p.steps.is_empty() && p.refused.as_deref().is_some_and(|r| r.contains("TLSA")), "{p:?}");
    }

    #[test]
    fn requiretls_needs_an_authenticated_route_and_verified_tls() {
        use LogicalPort::Smtp;
        let req = DomainFacts { requiretls: true, ..facts(Prefix::None) };
        // Neither DNSSEC nor MTA-STS: refused.
        let p = c(&req, &host("mx.a"));
        assert!(p.refused.as_deref().is_some_and(|r| r.contains("REQUIRETLS")), "{p:?}");
        // DNSSEC: verified TLS on an otherwise opportunistic host.
        let p = c(&DomainFacts { dnssec: true, ..req }, &host("mx.a"));
        assert_eq!((p.source, securities(&p), p.refused), (Source::RequireTls, vec![(Smtp, RequireVerified)], None));
        // MTA-STS testing that lists the host is enough; one that does not list it is not.
        let testing = DomainFacts { sts: Sts::Testing, ..req };
        assert_eq!(c(&testing, &HostFacts { sts_listed: true, ..host("mx.a") }).refused, None);
        assert!(c(&testing, &host("mx.a")).refused.is_some());
        // DANE authenticates as well as WebPKI does.
        let p = c(&DomainFacts { dnssec: true, ..req }, &HostFacts { dane: Dane::Usable, ..host("mx.a") });
        assert_eq!(securities(&p), vec![(Smtp, Security::RequireDane)]);
    }

    #[test]
    fn tls_required_no_sets_the_receivers_policies_aside() {
        use LogicalPort::Smtp;
        let relaxed = DomainFacts { relaxed: true, sts: Sts::Enforce, pinned: true, floor: Floor::Verified, ..facts(Prefix::Smtps) };
        let p = c(&relaxed, &HostFacts { dane: Dane::Usable, ..host("smtps-mx.a") });
        assert_eq!((p.source, securities(&p), p.refused), (Source::TlsRequiredNo, vec![(Smtp, Opportunistic)], None));
        // REQUIRETLS wins over the header (RFC 8689 §5).
        let both = DomainFacts { requiretls: true, dnssec: true, ..relaxed };
        assert_eq!(c(&both, &host("smtps-mx.a")).source, Source::SmtpsPrefix);
    }

    #[test]
    fn scope_parses() {
        assert_eq!("domain".parse::<Scope>(), Ok(Scope::Domain));
        assert_eq!("host".parse::<Scope>(), Ok(Scope::Host));
        assert!("global".parse::<Scope>().unwrap_err().contains("domain or host"));
    }
}
