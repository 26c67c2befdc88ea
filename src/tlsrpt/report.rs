//! A report as sent: the JSON of RFC 8460 §4.4, gzipped (§5.1), with its file name (§5.1),
//! and the mail that carries it (§5.3). Pure functions of a [`DayAggregate`].

use std::io::Write;
use std::net::IpAddr;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::store::DayAggregate;
use super::{PolicyType, ResultType};

/// The media type of a gzipped report (§6.4), for the POST and the attachment.
pub const GZIP_MEDIA_TYPE: &str = "application/tlsrpt+gzip";

/// Who sends a report: §4.4's `organization-name`, `contact-info` and `report-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportMeta {
    /// `organization-name`.
    pub organization_name: String,
    /// `contact-info`: an address or URL to ask about the report.
    pub contact_info: String,
    /// `report-id`: unique per report; also in the mail's Subject and Message-ID.
    pub report_id: String,
}

impl ReportMeta {
    /// Metadata with a fresh report id for `agg`: `<day>.<domain>.<random>@<submitter>`.
    pub fn new(organization_name: &str, contact_info: &str, agg: &DayAggregate, submitter: &str) -> ReportMeta {
        let (y, m, d) = crate::dsn::civil_from_days(agg.day);
        let report_id = format!("{y:04}{m:02}{d:02}.{}.{:016x}@{submitter}", agg.domain, fastrand::u64(..));
        ReportMeta { organization_name: organization_name.to_string(), contact_info: contact_info.to_string(), report_id }
    }
}

/// §4.4 `date-range`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateRange {
    /// `start-datetime`: the day's first second, `YYYY-MM-DDT00:00:00Z`.
    #[serde(rename = "start-datetime")]
    pub start: String,
    /// `end-datetime`: its last second, `YYYY-MM-DDT23:59:59Z` (as in the RFC's example).
    #[serde(rename = "end-datetime")]
    pub end: String,
}

impl DateRange {
    /// The range of `agg`'s day.
    pub fn of(agg: &DayAggregate) -> DateRange {
        DateRange { start: rfc3339(agg.start_unix()), end: rfc3339(agg.end_unix()) }
    }
}

/// §4.4 `policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyJson {
    /// `policy-type`.
    #[serde(rename = "policy-type")]
    pub policy_type: PolicyType,
    /// `policy-string` (left out when empty).
    #[serde(rename = "policy-string", default, skip_serializing_if = "Vec::is_empty")]
    pub policy_string: Vec<String>,
    /// `policy-domain`.
    #[serde(rename = "policy-domain")]
    pub policy_domain: String,
    /// `mx-host` (left out when empty).
    #[serde(rename = "mx-host", default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

/// §4.4 `summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `total-successful-session-count`.
    #[serde(rename = "total-successful-session-count")]
    pub successful: u64,
    /// `total-failure-session-count`.
    #[serde(rename = "total-failure-session-count")]
    pub failed: u64,
}

/// One §4.4 `failure-details` entry; absent fields are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetail {
    /// `result-type`.
    #[serde(rename = "result-type")]
    pub result_type: ResultType,
    /// `sending-mta-ip`.
    #[serde(rename = "sending-mta-ip", default, skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<IpAddr>,
    /// `receiving-mx-hostname`.
    #[serde(rename = "receiving-mx-hostname", default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_hostname: Option<String>,
    /// `receiving-ip`.
    #[serde(rename = "receiving-ip", default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    /// `failed-session-count`.
    #[serde(rename = "failed-session-count")]
    pub failed_session_count: u64,
    /// `additional-information`.
    #[serde(rename = "additional-information", default, skip_serializing_if = "Option::is_none")]
    pub additional_information: Option<String>,
    /// `failure-reason-code`.
    #[serde(rename = "failure-reason-code", default, skip_serializing_if = "Option::is_none")]
    pub failure_reason_code: Option<String>,
}

/// One §4.4 `policies` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// `policy`.
    pub policy: PolicyJson,
    /// `summary`.
    pub summary: Summary,
    /// `failure-details` (left out when there are none).
    #[serde(rename = "failure-details", default, skip_serializing_if = "Vec::is_empty")]
    pub failure_details: Vec<FailureDetail>,
}

/// The whole §4.4 report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `organization-name`.
    #[serde(rename = "organization-name")]
    pub organization_name: String,
    /// `date-range`.
    #[serde(rename = "date-range")]
    pub date_range: DateRange,
    /// `contact-info`.
    #[serde(rename = "contact-info")]
    pub contact_info: String,
    /// `report-id`.
    #[serde(rename = "report-id")]
    pub report_id: String,
    /// `policies`.
    pub policies: Vec<PolicyReport>,
}

/// `agg`'s policies as §4.4 `policies` entries.
pub fn policy_reports(agg: &DayAggregate) -> Vec<PolicyReport> {
    agg.policies
        .iter()
        .map(|p| PolicyReport {
            policy: PolicyJson {
                policy_type: p.policy.policy_type,
                policy_string: p.policy.policy_string.clone(),
                policy_domain: agg.domain.clone(),
                mx_host: p.policy.mx_host.clone(),
            },
            summary: Summary { successful: p.successes, failed: p.failures },
            failure_details: p
                .details
                .iter()
                .map(|d| FailureDetail {
                    result_type: d.failure.result,
                    sending_mta_ip: d.failure.sending_mta_ip,
                    receiving_mx_hostname: d.failure.receiving_mx_hostname.clone(),
                    receiving_ip: d.failure.receiving_ip,
                    failed_session_count: d.count,
                    additional_information: d.failure.additional_information.clone(),
                    failure_reason_code: d.failure.failure_reason_code.clone(),
                })
                .collect(),
        })
        .collect()
}

/// The report for `agg`.
pub fn report(agg: &DayAggregate, meta: &ReportMeta) -> Report {
    Report {
        organization_name: meta.organization_name.clone(),
        date_range: DateRange::of(agg),
        contact_info: meta.contact_info.clone(),
        report_id: meta.report_id.clone(),
        policies: policy_reports(agg),
    }
}

/// The report for `agg` as JSON bytes (§4.4).
pub fn report_json(agg: &DayAggregate, meta: &ReportMeta) -> Vec<u8> {
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&report(agg, meta)).unwrap_or_default()
}

/// `bytes` gzipped (RFC 1952), as §5.1 asks of reports.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4 + 64), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// §5.1's file name: `submitter!policy-domain!begin!end.json.gz` (Unix times of the range).
pub fn report_filename(agg: &DayAggregate, submitter: &str) -> String {
    format!("{submitter}!{}!{}!{}.json.gz", agg.domain, agg.start_unix(), agg.end_unix())
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
pub fn rfc3339(t: u64) -> String {
    let (y, mo, d) = crate::dsn::civil_from_days(t / 86_400);
    let s = t % 86_400;
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

/// The whole RFC 5322 message of §5.3, CRLF line endings: `multipart/report;
/// report-type="tlsrpt"` with a short text part and the gzipped report `gz` as a base64
/// `application/tlsrpt+gzip` attachment named by [`report_filename`]; `TLS-Report-Domain`,
/// `TLS-Report-Submitter` and a Subject of `Report Domain: … Submitter: … Report-ID: <…>`.
pub fn mail_message(agg: &DayAggregate, meta: &ReportMeta, gz: &[u8], from: &str, to: &str, submitter: &str, date: SystemTime) -> Vec<u8> {
    // Base64 and the text part never contain "=_", so the boundary cannot occur in them.
    let boundary = format!("=_mxpipe-tlsrpt_{:016x}", fastrand::u64(..));
    let domain = &agg.domain;
    let id = &meta.report_id;
    let mut m = String::with_capacity(gz.len() * 4 / 3 + 1024);
    m.push_str(&format!("From: <{from}>\r\n"));
    m.push_str(&format!("To: <{to}>\r\n"));
    m.push_str(&format!("Date: {}\r\n", crate::dsn::rfc5322_date(date)));
    m.push_str(&format!("Subject: Report Domain: {domain}\r\n Submitter: {submitter}\r\n Report-ID: <{id}>\r\n"));
    m.push_str(&format!("Message-ID: <{id}>\r\n"));
    m.push_str(&format!("TLS-Report-Domain: {domain}\r\n"));
    m.push_str(&format!("TLS-Report-Submitter: {submitter}\r\n"));
    m.push_str("Auto-Submitted: auto-generated\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!("Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n"));
    m.push_str("\r\nThis is a multipart message in MIME format.\r\n");
    m.push_str(&format!("\r\n--{boundary}\r\n"));
    m.push_str("Content-Type: text/plain; charset=\"us-ascii\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n");
    m.push_str(&format!(
        "This is an aggregate TLS report (RFC 8460)\r\nfrom {submitter}\r\nfor {domain}, {}.\r\n",
        &DateRange::of(agg).start[..10]
    ));
    m.push_str(&format!("\r\n--{boundary}\r\n"));
    m.push_str(&format!("Content-Type: {GZIP_MEDIA_TYPE}\r\nContent-Transfer-Encoding: base64\r\n"));
    m.push_str(&format!("Content-Disposition: attachment;\r\n\tfilename=\"{}\"\r\n\r\n", report_filename(agg, submitter)));
    let b64 = B64.encode(gz);
    for line in b64.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(line).unwrap_or_default());
        m.push_str("\r\n");
    }
    m.push_str(&format!("\r\n--{boundary}--\r\n"));
    m.into_bytes()
}

/// What `mxpipe tlsrpt show` prints for `domain`'s pending days: one block per day, one line
/// per policy, one indented line per failure-detail group.
pub fn describe_pending(domain: &str, days: &[super::DayReport]) -> String {
    if days.is_empty() {
        return format!("{domain}: no TLS-RPT counts pending (nothing counted since the last report, or TLS-RPT is new)");
    }
    let mut out = String::new();
    for d in days {
        out.push_str(&format!("{domain} {} to {}:\n", d.date_range.start, d.date_range.end));
        for p in &d.policies {
            let mut what = serde_json::to_value(p.policy.policy_type).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            if !p.policy.policy_string.is_empty() {
                what.push_str(&format!(" [{}]", p.policy.policy_string.join("; ")));
            }
            out.push_str(&format!("  {what}: {} successful, {} failed\n", p.summary.successful, p.summary.failed));
            for f in &p.failure_details {
                let mx = f.receiving_mx_hostname.as_deref().unwrap_or("?");
                let ip = f.receiving_ip.map_or_else(|| "?".to_string(), |i| i.to_string());
                out.push_str(&format!("    {} x{} to {mx} ({ip})\n", f.result_type.name(), f.failed_session_count));
            }
        }
        if d.sessions_not_counted > 0 {
            out.push_str(&format!("  ({} sessions not counted: too many policies that day)\n", d.sessions_not_counted));
        }
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_lines_are_crlf_and_short() {
        let agg = DayAggregate { domain: "rcpt.test".into(), day: 20_423, policies: Vec::new(), sessions_not_counted: 0 };
        let meta = ReportMeta::new("Org", "c@s.test", &agg, "s.test");
        let gz = gzip(&report_json(&agg, &meta));
        let m = mail_message(&agg, &meta, &gz, "f@s.test", "t@rcpt.test", "s.test", std::time::UNIX_EPOCH);
        let text = String::from_utf8(m).unwrap();
        assert!(text.ends_with("--\r\n"));
        for line in text.split_inclusive('\n') {
            assert!(line.ends_with("\r\n") && !line[..line.len() - 2].contains('\r'), "{line:?}");
            assert!(line.len() <= 80, "{line:?}");
        }
        assert!(text.contains("filename=\"s.test!rcpt.test!1764547200!1764633599.json.gz\""), "{text}");
        assert!(meta.report_id.starts_with("20251201.rcpt.test.") && meta.report_id.ends_with("@s.test"));
    }

    #[test]
    fn rfc3339_at_day_boundaries() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_633_599), "2025-12-01T23:59:59Z");
    }
}
