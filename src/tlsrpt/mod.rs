//! SMTP TLS Reporting (RFC 8460): count what happened to each TLS session, per policy domain,
//! per UTC day and per policy, and once a day send each domain that asks for it (a
//! `_smtp._tls.<domain>` TXT record) an aggregate report, gzipped JSON, by HTTPS POST or by
//! mail through the daemon's own queue.
//!
//! - [`record`]: the `_smtp._tls` TXT record (§3): `v=TLSRPTv1; rua=...`.
//! - [`store`]: [`TlsRpt`], the counters the engine's hot path feeds (bounded, persistent).
//! - [`report`]: the report's JSON (§4.4), gzip, the file name (§5.1) and the mail (§5.3).
//! - [`deliver`]: [`Reporter`], the daemon task that sends due reports (§5.3, §5.4).
//!
//! What this module does not do: decide what counts as a success or a failure (the engine
//! calls [`TlsRpt::success`] and [`TlsRpt::failure`] once per TLS session it attempted), look
//! up policies, or sign reports (no DKIM yet, which §5.3 asks for).
//!
//! **MX-prefix policies.** A failure enforced by an MX-name prefix (`starttls-`, `smtps-`; see
//! `mx-prefix-policy.md`) has no RFC 8460 policy type. It is reported with policy-type
//! `no-policy-found` and policy-string `["mx-prefix: starttls-"]` or `["mx-prefix: smtps-"]`
//! ([`PolicyDesc::mx_prefix`]), so that a receiver sees which rule refused the session.

pub mod deliver;
pub mod record;
pub mod report;
pub mod store;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use deliver::{Reporter, ReporterConfig};
pub use record::{parse_record, Record, Rua};
pub use report::{gzip, mail_message, report_filename, report_json, ReportMeta};
pub use store::{DayAggregate, DayReport, Limits, TlsRpt};

/// The kind of policy a session was checked against (RFC 8460 §4.4 `policy-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    /// An MTA-STS policy (RFC 8461): `"sts"`.
    #[serde(rename = "sts")]
    Sts,
    /// DANE TLSA records (RFC 7672): `"tlsa"`.
    #[serde(rename = "tlsa")]
    Tlsa,
    /// Neither: `"no-policy-found"`; also how MX-prefix policies are reported (module docs).
    #[serde(rename = "no-policy-found")]
    NoPolicyFound,
}

/// The policy a session was checked against: §4.4's `policy` object without
/// `policy-domain`, which is the key it is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyDesc {
    /// `policy-type`.
    #[serde(rename = "policy-type")]
    pub policy_type: PolicyType,
    /// `policy-string`: the policy as published, one string per line (MTA-STS) or per TLSA
    /// record; empty for `no-policy-found` (left out of the JSON when empty).
    #[serde(rename = "policy-string", default, skip_serializing_if = "Vec::is_empty")]
    pub policy_string: Vec<String>,
    /// `mx-host`: the MX patterns of an MTA-STS policy, or the MX host of a TLSA policy
    /// (left out of the JSON when empty).
    #[serde(rename = "mx-host", default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

impl PolicyDesc {
    /// No policy applied: `no-policy-found`, no strings, no hosts.
    pub fn none() -> PolicyDesc {
        PolicyDesc { policy_type: PolicyType::NoPolicyFound, policy_string: Vec::new(), mx_host: Vec::new() }
    }

    /// The convention for an MX-prefix policy (module docs): `no-policy-found` with
    /// policy-string `["mx-prefix: <prefix>"]`, e.g. `prefix` = `"starttls-"`, and the MX host.
    pub fn mx_prefix(prefix: &str, mx_host: &str) -> PolicyDesc {
        PolicyDesc {
            policy_type: PolicyType::NoPolicyFound,
            policy_string: vec![format!("mx-prefix: {prefix}")],
            mx_host: vec![mx_host.to_string()],
        }
    }
}

/// Why a session failed (RFC 8460 §4.3 result types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    /// §4.3.1 `starttls-not-supported`: the MX did not offer STARTTLS.
    StarttlsNotSupported,
    /// §4.3.1 `certificate-host-mismatch`: the certificate is not for the MX host.
    CertificateHostMismatch,
    /// §4.3.1 `certificate-expired`.
    CertificateExpired,
    /// §4.3.1 `certificate-not-trusted`: no chain to a trusted root.
    CertificateNotTrusted,
    /// §4.3.1 `validation-failure`: any other failure to negotiate or validate TLS.
    ValidationFailure,
    /// §4.3.2 `tlsa-invalid`: the TLSA records are unusable or do not match.
    TlsaInvalid,
    /// §4.3.2 `dnssec-invalid`: DNSSEC validation failed (bogus answer).
    DnssecInvalid,
    /// §4.3.2 `dane-required`: DANE was required but not possible (e.g. no TLSA).
    DaneRequired,
    /// §4.3.2 `sts-policy-fetch-error`: the MTA-STS policy could not be fetched.
    StsPolicyFetchError,
    /// §4.3.2 `sts-policy-invalid`: the fetched policy is invalid.
    StsPolicyInvalid,
    /// §4.3.2 `sts-webpki-invalid`: the policy host's certificate did not validate.
    StsWebpkiInvalid,
}

impl ResultType {
    /// Every result type, in the RFC's order.
    pub const ALL: [ResultType; 11] = [
        ResultType::StarttlsNotSupported,
        ResultType::CertificateHostMismatch,
        ResultType::CertificateExpired,
        ResultType::CertificateNotTrusted,
        ResultType::ValidationFailure,
        ResultType::TlsaInvalid,
        ResultType::DnssecInvalid,
        ResultType::DaneRequired,
        ResultType::StsPolicyFetchError,
        ResultType::StsPolicyInvalid,
        ResultType::StsWebpkiInvalid,
    ];

    /// The RFC's name, e.g. `"certificate-expired"`.
    pub fn name(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// The result type named `s` (exactly as the RFC spells it, e.g. what
    /// [`crate::policy::mta_sts::fetch::FetchError::kind`] returns).
    pub fn parse(s: &str) -> Option<ResultType> {
        ResultType::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// One failed session, as the engine saw it. Sessions with equal fields are counted together
/// (§4.4 `failure-details`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Failure {
    /// `result-type`.
    pub result: ResultType,
    /// `sending-mta-ip`: the local address the session came from.
    pub sending_mta_ip: Option<IpAddr>,
    /// `receiving-mx-hostname`: the MX host name as resolved.
    pub receiving_mx_hostname: Option<String>,
    /// `receiving-ip`: the MX address connected to.
    pub receiving_ip: Option<IpAddr>,
    /// `additional-information`: a URI with more detail, if the sender has one.
    pub additional_information: Option<String>,
    /// `failure-reason-code`: free text, e.g. the TLS library's error.
    pub failure_reason_code: Option<String>,
}

impl Failure {
    /// A failure of type `result` with no details.
    pub fn new(result: ResultType) -> Failure {
        Failure {
            result,
            sending_mta_ip: None,
            receiving_mx_hostname: None,
            receiving_ip: None,
            additional_information: None,
            failure_reason_code: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_type_names_round_trip_and_match_serde() {
        for r in ResultType::ALL {
            assert_eq!(ResultType::parse(r.name()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.name());
        }
        assert_eq!(ResultType::parse("Certificate-Expired"), None);
        assert_eq!(serde_json::to_value(PolicyType::NoPolicyFound).unwrap(), "no-policy-found");
        let p = PolicyDesc::mx_prefix("smtps-", "smtps-mx.a.test");
        assert_eq!(p.policy_string, ["mx-prefix: smtps-"]);
    }
}
