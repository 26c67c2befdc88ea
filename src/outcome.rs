//! Outcomes: the one record every recipient of every submitted message ends with.
//!
//! 2xx → delivered; 4xx, connection failures and policy failures → deferred with the reason;
//! 5xx and permanent DNS failures → bounced with the reason. The engine guarantees exactly
//! one outcome per recipient; this module only says what one looks like and how it is
//! written.

use std::net::IpAddr;

use serde::Serialize;

/// The final state of one recipient in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The receiving server accepted responsibility (2xx after the data).
    Delivered,
    /// Not delivered now; retrying later may succeed (4xx, connection or policy failure).
    Deferred,
    /// Will never be delivered as addressed (5xx, NXDOMAIN, null MX).
    Bounced,
}

impl Status {
    /// The name it is written with (`delivered`, `deferred`, `bounced`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
        }
    }
}

/// How TLS was used on the connection that produced the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsUse {
    /// STARTTLS on port 25.
    Starttls,
    /// TLS from the first byte, on port 26.
    Implicit,
    /// Clear text, or no connection was made.
    None,
}

impl TlsUse {
    /// The name it is written with (`starttls`, `implicit`, `none`).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsUse::Starttls => "starttls",
            TlsUse::Implicit => "implicit",
            TlsUse::None => "none",
        }
    }
}

/// One recipient's outcome, as written to `--outcomes` (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The message id given at submission.
    pub id: String,
    /// The recipient address as submitted.
    pub rcpt: String,
    /// Delivered, deferred or bounced.
    pub status: Status,
    /// The MX host that gave the final answer, if a connection got that far.
    pub mx: Option<String>,
    /// The server address of that connection.
    pub addr: Option<IpAddr>,
    /// The port dialled on [`Outcome::addr`] (after the port map).
    pub port: Option<u16>,
    /// How TLS was used on that connection; `none` if there was none.
    pub tls: TlsUse,
    /// The policy source that decided the MX host's TLS requirement (`starttls-prefix`,
    /// `smtps-prefix`, `mta-sts`, `pin`, `domain-scope`, `floor`, `opportunistic`), if a host
    /// was chosen.
    pub policy: Option<String>,
    /// Every policy source that applied to that host (the decider among them), in a fixed order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_sources: Vec<&'static str>,
    /// What a policy that only reports (MTA-STS `testing`) would have refused on this
    /// connection: an unlisted MX host, no TLS, an unverified certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_report: Option<String>,
    /// The TLS session was resumed rather than fully negotiated.
    pub resumed: bool,
    /// The MX answer was DNSSEC-authenticated.
    pub dnssec: bool,
    /// TLS version and cipher, when TLS was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// The negotiated cipher suite, when TLS was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// The server's reply on one line, or the local reason (prefixed `mxpipe:`).
    pub reply: String,
    /// RFC 3463 code of the reply or of the local reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    /// The egress source (`[[egress.source]]` name) the connection left from, if sources are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The egress pool the message went through, if sources are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

impl Outcome {
    /// An outcome decided before any server answered (DNS, policy, connection failure).
    pub fn local(id: &str, rcpt: &str, status: Status, enhanced: &str, reason: impl Into<String>) -> Outcome {
        Outcome {
            id: id.to_string(),
            rcpt: rcpt.to_string(),
            status,
            mx: None,
            addr: None,
            port: None,
            tls: TlsUse::None,
            policy: None,
            policy_sources: Vec::new(),
            policy_report: None,
            resumed: false,
            dnssec: false,
            tls_version: None,
            cipher: None,
            reply: format!("mxpipe: {}", reason.into()),
            enhanced: Some(enhanced.to_string()),
            source: None,
            pool: None,
        }
    }

    /// One JSON line (without the newline).
    pub fn to_json(&self) -> String {
        // Serialising plain owned data with serde_json cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Outcomes counted by status, policy and TLS use: what a summary shows beside the engine's
/// own counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipients deferred (temporary failure).
    pub deferred: u64,
    /// Recipients bounced (permanent failure).
    pub bounced: u64,
    /// Recipients by the policy source that decided for the MX host that answered (`none`
    /// if no host did).
    pub by_policy: std::collections::BTreeMap<String, u64>,
    /// Recipients by every policy source that applied to that host (one recipient counts
    /// under each of its sources).
    pub by_source: std::collections::BTreeMap<String, u64>,
    /// Recipients whose connection a reporting-only policy (MTA-STS `testing`) would have
    /// refused ([`Outcome::policy_report`]).
    pub policy_reports: u64,
    /// Recipients by how TLS was used: `starttls`, `implicit`, `none`.
    pub by_tls: std::collections::BTreeMap<String, u64>,
    /// Recipients delivered over a resumed TLS session.
    pub resumed: u64,
    /// Recipients whose MX answer was DNSSEC-authenticated.
    pub dnssec: u64,
    /// Recipients by the egress source their last attempt left from (with sources configured).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub by_egress_source: std::collections::BTreeMap<String, u64>,
    /// Messages delivered by the egress source they left from: a message counts once per
    /// source that delivered any of its recipients (with sources configured).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub messages_by_egress_source: std::collections::BTreeMap<String, u64>,
    /// (message id, source) pairs already counted in `messages_by_egress_source`.
    #[serde(skip)]
    delivered_from: std::collections::HashSet<(String, String)>,
}

impl Tally {
    /// Count one outcome in every tally it belongs to.
    pub fn add(&mut self, o: &Outcome) {
        match o.status {
            Status::Delivered => self.delivered += 1,
            Status::Deferred => self.deferred += 1,
            Status::Bounced => self.bounced += 1,
        }
        *self.by_policy.entry(o.policy.clone().unwrap_or_else(|| "none".into())).or_default() += 1;
        for src in &o.policy_sources {
            *self.by_source.entry((*src).to_string()).or_default() += 1;
        }
        self.policy_reports += u64::from(o.policy_report.is_some());
        let tls = match o.tls {
            TlsUse::Starttls => "starttls",
            TlsUse::Implicit => "implicit",
            TlsUse::None => "none",
        };
        *self.by_tls.entry(tls.into()).or_default() += 1;
        self.resumed += u64::from(o.resumed);
        self.dnssec += u64::from(o.dnssec);
        if let Some(s) = &o.source {
            *self.by_egress_source.entry(s.clone()).or_default() += 1;
            if o.status == Status::Delivered && self.delivered_from.insert((o.id.clone(), s.clone())) {
                *self.messages_by_egress_source.entry(s.clone()).or_default() += 1;
            }
        }
    }

    /// Outcomes counted: delivered + deferred + bounced.
    pub fn total(&self) -> u64 {
        self.delivered + self.deferred + self.bounced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_ones() {
        for st in [Status::Delivered, Status::Deferred, Status::Bounced] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        for t in [TlsUse::Starttls, TlsUse::Implicit, TlsUse::None] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }

    #[test]
    fn json_shape() {
        let o = Outcome::local("m1", "a@b.test", Status::Bounced, "5.1.10", "null MX: domain accepts no mail");
        let v: serde_json::Value = serde_json::from_str(&o.to_json()).unwrap();
        assert_eq!(v["status"], "bounced");
        assert_eq!(v["tls"], "none");
        assert_eq!(v["resumed"], false);
        assert_eq!(v["enhanced"], "5.1.10");
        assert!(v["reply"].as_str().unwrap().starts_with("mxpipe: null MX"));
        assert!(v.get("tls_version").is_none());
    }
}
