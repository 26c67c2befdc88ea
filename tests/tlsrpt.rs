//! TLS-RPT (RFC 8460) end to end: the counters' report JSON (§4.4) read back with serde_json,
//! gzip, persistence, the TXT record (§3), the HTTPS POST (§5.4) to a real HTTPS server on
//! loopback found through `mxpipe::dnsserver`, and the mail (§5.3) through a running
//! `mxpipe serve` to a sink's mail directory, and the operator's view over the HTTP API.

mod common;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use common::daemon::*;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::policy::mta_sts::fetch::FetchConfig;
use mxpipe::resolve::{MxResolver, ResolverConfig};
use mxpipe::tls::{self, ClientOptions, ClientResumption, GeneratedPki, Identity, Kx, Verify};
use mxpipe::tlsrpt::deliver::RunSummary;
use mxpipe::tlsrpt::{
    gzip, parse_record, report_json, Failure, Limits, PolicyDesc, PolicyType, ReportMeta, Reporter, ReporterConfig, ResultType, Rua, TlsRpt,
};
use serde_json::Value;

const DAY: u64 = 86_400;
/// 2025-12-01: a fixed day makes the expected dates exact.
const DAY_N: u64 = 20_423;

fn at(day: u64, secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(day * DAY + secs)
}

fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut out).expect("valid gzip");
    out
}

fn sts_policy() -> PolicyDesc {
    PolicyDesc {
        policy_type: PolicyType::Sts,
        policy_string: vec!["version: STSv1".into(), "mode: enforce".into(), "mx: *.mx.rcpt.test".into(), "max_age: 86400".into()],
        mx_host: vec!["*.mx.rcpt.test".into()],
    }
}

fn failure(result: ResultType, mx: &str, ip: [u8; 4]) -> Failure {
    Failure {
        result,
        sending_mta_ip: Some("192.0.2.1".parse().unwrap()),
        receiving_mx_hostname: Some(mx.into()),
        receiving_ip: Some(IpAddr::from(ip)),
        additional_information: None,
        failure_reason_code: None,
    }
}

/// A mix for rcpt.test on DAY_N: 3 successes under STS, 2 + 1 failures in two detail groups,
/// and 1 MX-prefix failure under its convention; plus noise on another day and domain.
fn count_mix(s: &TlsRpt) {
    let sts = sts_policy();
    for i in 0..3 {
        s.success("rcpt.test", &sts, at(DAY_N, 60 + i));
    }
    let expired = failure(ResultType::CertificateExpired, "a.mx.rcpt.test", [203, 0, 113, 5]);
    s.failure("rcpt.test", &sts, &expired, at(DAY_N, 100));
    s.failure("RCPT.test.", &sts, &expired, at(DAY_N, 200));
    let mut no_tls = failure(ResultType::StarttlsNotSupported, "b.mx.rcpt.test", [203, 0, 113, 6]);
    no_tls.failure_reason_code = Some("EHLO without STARTTLS".into());
    s.failure("rcpt.test", &sts, &no_tls, at(DAY_N, 86_399));
    let prefix = PolicyDesc::mx_prefix("starttls-", "starttls-mx.rcpt.test");
    s.failure("rcpt.test", &prefix, &failure(ResultType::ValidationFailure, "starttls-mx.rcpt.test", [203, 0, 113, 7]), at(DAY_N, 300));
    s.success("rcpt.test", &sts, at(DAY_N + 1, 10));
    s.success("other.test", &PolicyDesc::none(), at(DAY_N, 10));
}

/// The report holds exactly what was counted, in §4.4's field names, with the day's range in
/// RFC 3339 UTC.
#[test]
fn counters_make_the_rfc_8460_json() {
    let s = TlsRpt::open(None, Limits::default()).unwrap();
    count_mix(&s);
    let due = s.take_due(at(DAY_N + 1, 3600));
    assert_eq!(due.iter().map(|a| a.domain.as_str()).collect::<Vec<_>>(), ["other.test", "rcpt.test"], "only ended days");
    let agg = due.iter().find(|a| a.domain == "rcpt.test").unwrap();
    let meta =
        ReportMeta { organization_name: "Sender Org".into(), contact_info: "tls@sender.test".into(), report_id: "r-1@sender.test".into() };
    let v: Value = serde_json::from_slice(&report_json(agg, &meta)).unwrap();

    assert_eq!(v["organization-name"], "Sender Org");
    assert_eq!(v["contact-info"], "tls@sender.test");
    assert_eq!(v["report-id"], "r-1@sender.test");
    assert_eq!(v["date-range"]["start-datetime"], "2025-12-01T00:00:00Z");
    assert_eq!(v["date-range"]["end-datetime"], "2025-12-01T23:59:59Z");
    let policies = v["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);

    let sts = &policies[0];
    assert_eq!(sts["policy"]["policy-type"], "sts");
    assert_eq!(sts["policy"]["policy-domain"], "rcpt.test");
    assert_eq!(
        sts["policy"]["policy-string"],
        serde_json::json!(["version: STSv1", "mode: enforce", "mx: *.mx.rcpt.test", "max_age: 86400"])
    );
    assert_eq!(sts["policy"]["mx-host"], serde_json::json!(["*.mx.rcpt.test"]));
    assert_eq!(sts["summary"]["total-successful-session-count"], 3);
    assert_eq!(sts["summary"]["total-failure-session-count"], 3);
    let details = sts["failure-details"].as_array().unwrap();
    assert_eq!(details.len(), 2);
    assert_eq!(details[0]["result-type"], "certificate-expired");
    assert_eq!(details[0]["sending-mta-ip"], "192.0.2.1");
    assert_eq!(details[0]["receiving-ip"], "203.0.113.5");
    assert_eq!(details[0]["receiving-mx-hostname"], "a.mx.rcpt.test");
    assert_eq!(details[0]["failed-session-count"], 2);
    assert!(details[0].get("failure-reason-code").is_none(), "absent fields are left out: {}", details[0]);
    assert_eq!(details[1]["result-type"], "starttls-not-supported");
    assert_eq!(details[1]["failed-session-count"], 1);
    assert_eq!(details[1]["failure-reason-code"], "EHLO without STARTTLS");

    let prefix = &policies[1];
    assert_eq!(prefix["policy"]["policy-type"], "no-policy-found");
    assert_eq!(prefix["policy"]["policy-string"], serde_json::json!(["mx-prefix: starttls-"]));
    assert_eq!(prefix["summary"]["total-successful-session-count"], 0);
    assert_eq!(prefix["summary"]["total-failure-session-count"], 1);
    assert_eq!(prefix["failure-details"][0]["result-type"], "validation-failure");

    // The operator's view holds the same policies.
    let pending = serde_json::to_value(s.pending("rcpt.test")).unwrap();
    assert_eq!(pending[0]["policies"], v["policies"]);
    assert_eq!(pending[1]["policies"][0]["summary"]["total-successful-session-count"], 1, "the next day, still open");
}

#[test]
fn gzip_round_trips() {
    let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
    let gz = gzip(&data);
    assert_eq!(&gz[..2], [0x1f, 0x8b], "gzip magic");
    assert!(gz.len() < data.len() / 2);
    assert_eq!(gunzip(&gz), data);
    assert_eq!(gunzip(&gzip(b"")), b"");
}

/// Flushed counters come back after a reopen, from a private file written by rename.
#[test]
fn counters_survive_a_reopen() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("tlsrpt-reopen");
    let path = dir.join("state").join("tlsrpt.json");
    let before = {
        let s = TlsRpt::open(Some(path.clone()), Limits::default()).unwrap();
        count_mix(&s);
        s.flush().unwrap();
        s.pending("rcpt.test")
    };
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!path.with_extension("json.tmp").exists(), "the temporary file was renamed");
    let s = TlsRpt::open(Some(path.clone()), Limits::default()).unwrap();
    assert_eq!(s.pending("rcpt.test"), before);
    assert_eq!(before.len(), 2);
    // Sent days are gone after the next flush and reopen.
    for agg in s.take_due(at(DAY_N + 2, 0)) {
        s.sent(&agg);
    }
    s.flush().unwrap();
    assert!(TlsRpt::open(Some(path.clone()), Limits::default()).unwrap().pending("rcpt.test").is_empty());
    std::fs::write(&path, "{not json").unwrap();
    let err = TlsRpt::open(Some(path.clone()), Limits::default()).unwrap_err();
    assert!(err.contains("tlsrpt.json"), "{err}");
}

#[test]
fn txt_record_per_section_3() {
    let r = parse_record("v=TLSRPTv1; rua=mailto:reports@rcpt.test, https://reporting.rcpt.test/v1/tlsrpt ;x-ext=1;").unwrap();
    assert_eq!(r.rua, [Rua::Mailto("reports@rcpt.test".into()), Rua::Https("https://reporting.rcpt.test/v1/tlsrpt".into())]);
    let r = parse_record("v=TLSRPTv1;rua=mailto:tls%2Brpt@rcpt.test?subject=x").unwrap();
    assert_eq!(r.rua, [Rua::Mailto("tls+rpt@rcpt.test".into())]);
    assert!(parse_record("v=TLSRPTv1;foo=bar;rua=https://r.test").is_ok(), "unknown fields before rua are ignored");
    for bad in [
        "rua=mailto:a@b.test; v=TLSRPTv1",                     // version not first
        "v=TLSRPTv2; rua=mailto:a@b.test",                     // wrong version
        "v=TLSRPTv1",                                          // no rua
        "v=TLSRPTv1; rua=",                                    // empty rua
        "v=TLSRPTv1; rua=http://r.test/",                      // not https
        "v=TLSRPTv1; rua=ftp://r.test/",                       // unknown scheme
        "v=TLSRPTv1; rua=mailto:not-an-address",               // bad mailto
        "v=TLSRPTv1; rua=https://",                            // no host
        "v=TLSRPTv1; rua=mailto:a@b.test;;x=1",                // empty field
        "v=TLSRPTv1; rua=mailto:a@b.test; rua=https://r.test", // two rua
        "v=TLSRPTv1; rua=mailto:a@b.test; junk",               // field without '='
    ] {
        assert!(parse_record(bad).is_err(), "accepted {bad:?}");
    }
}

/// `[tlsrpt]`: defaults derived from the EHLO name, and the checks.
#[test]
fn config_section() {
    let c = mxpipe::config::Config::from_toml_str("").unwrap();
    assert!(c.tlsrpt.enabled);
    let (org, contact, sender) = c.tlsrpt.resolved("mta.sender.test").unwrap();
    assert_eq!(
        (org.as_str(), contact.as_str(), sender.as_str()),
        ("mta.sender.test", "tlsrpt-noreply@mta.sender.test", "tlsrpt-noreply@mta.sender.test")
    );
    let c = mxpipe::config::Config::from_toml_str("[tlsrpt]\nmax_delay = \"2d\"\n").unwrap();
    let err = c.tlsrpt.resolved("h.test").unwrap_err().to_string();
    assert!(err.contains("tlsrpt.max_delay"), "{err}");
    let c = mxpipe::config::Config::from_toml_str("[tlsrpt]\nsender = \"no at sign\"\n").unwrap();
    assert!(c.tlsrpt.resolved("h.test").unwrap_err().to_string().contains("tlsrpt.sender"));
    assert!(mxpipe::config::Config::from_toml_str("[tlsrpt]\nbogus = 1\n").is_err(), "unknown keys are refused");
}

/// A CA and a certificate for `names`.
fn pki(names: &[&str]) -> GeneratedPki {
    tls::certs::generate(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
}

/// Serve `app` over HTTPS with `identity` on 127.0.0.1 for at most a minute (the test is
/// bounded at 30 s).
async fn serve_https(identity: Identity, app: Router) -> SocketAddr {
    common::https::serve_https((Ipv4Addr::LOCALHOST, 0).into(), identity, app, Duration::from_secs(60)).await.0
}

type Seen = Arc<Mutex<Vec<(Method, String, Option<String>, Vec<u8>)>>>;

/// The Reporter's HTTPS path: record and host from DNS, the report POSTed over verified TLS;
/// a domain without a record is dropped, one whose server fails is kept for a retry.
#[tokio::test]
async fn https_report_is_posted() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let pki = pki(&["reports.rcpt.test", "broken.fail.test"]);
        let seen: Seen = Arc::default();
        let s2 = seen.clone();
        let app = Router::new().route(
            "/{*path}",
            any(move |method: Method, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let seen = s2.clone();
                async move {
                    let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let path = uri.path().to_string();
                    seen.lock().unwrap().push((method, path.clone(), ct, body.to_vec()));
                    if path == "/fail" {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::CREATED
                    }
                }
            }),
        );
        let addr = serve_https(pki.identity.clone(), app).await;

        let mut zone = ZoneBuilder::new("test.");
        zone.txt("_smtp._tls.rcpt.test", "v=TLSRPTv1; rua=https://reports.rcpt.test/v1/tlsrpt")
            .a("reports.rcpt.test", Ipv4Addr::LOCALHOST)
            .txt("_smtp._tls.fail.test", "v=TLSRPTv1; rua=https://broken.fail.test/fail")
            .a("broken.fail.test", Ipv4Addr::LOCALHOST)
            .txt("_smtp._tls.other.test", "v=spf1 -all");
        let dns = DnsServer::start(vec![zone], SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
        let resolver = MxResolver::new(ResolverConfig { nameserver: Some(dns.addr()), ..Default::default() }).unwrap();

        let opts = ClientOptions {
            verify: Verify::webpki_plus(std::slice::from_ref(&pki.ca_der)).unwrap(),
            kx: Kx::X25519,
            resumption: ClientResumption::Off,
            tls12_only: false,
        };
        let mut https = FetchConfig::new(tls::client_config(&opts, None).unwrap());
        https.port = addr.port();
        https.timeout = Duration::from_secs(5);
        let mut cfg = ReporterConfig::new("sender.test", https);
        cfg.organization_name = "Sender Org".into();

        let store = Arc::new(TlsRpt::open(None, Limits::default()).unwrap());
        let yesterday = SystemTime::now() - Duration::from_secs(DAY);
        store.success("rcpt.test", &sts_policy(), yesterday);
        store.failure(
            "rcpt.test",
            &sts_policy(),
            &failure(ResultType::CertificateNotTrusted, "a.mx.rcpt.test", [203, 0, 113, 9]),
            yesterday,
        );
        store.success("other.test", &PolicyDesc::none(), yesterday);
        store.success("fail.test", &PolicyDesc::none(), yesterday);
        store.success("rcpt.test", &sts_policy(), SystemTime::now());

        let reporter = Reporter::new(store.clone(), resolver, None, cfg);
        let sum = reporter.run_once(SystemTime::now()).await;
        assert_eq!(sum, RunSummary { sent: 1, no_record: 1, failed: 1, dropped: 0 });

        let seen = seen.lock().unwrap().clone();
        let ok = seen.iter().find(|s| s.1 == "/v1/tlsrpt").expect("the report reached the server");
        assert_eq!(ok.0, Method::POST);
        assert_eq!(ok.2.as_deref(), Some("application/tlsrpt+gzip"));
        let v: Value = serde_json::from_slice(&gunzip(&ok.3)).unwrap();
        assert_eq!(v["organization-name"], "Sender Org");
        assert_eq!(v["policies"][0]["policy"]["policy-domain"], "rcpt.test");
        assert_eq!(v["policies"][0]["summary"]["total-successful-session-count"], 1);
        assert_eq!(v["policies"][0]["failure-details"][0]["result-type"], "certificate-not-trusted");
        assert!(v["report-id"].as_str().unwrap().ends_with("@sender.test"), "{v}");
        assert!(seen.iter().any(|s| s.1 == "/fail"), "the failing server was tried");

        // Sent and record-less days are gone; the failed one waits; today is untouched.
        let left: Vec<String> = store.take_due(SystemTime::now()).into_iter().map(|a| a.domain).collect();
        assert_eq!(left, ["fail.test"]);
        assert_eq!(store.pending("rcpt.test").len(), 1);
        // Two days after its day ended, a report that cannot be sent is dropped.
        let later = SystemTime::now() + Duration::from_secs(2 * DAY);
        let sum = reporter.run_once(later).await;
        assert_eq!(sum.dropped, 1, "{sum:?}");
        assert_eq!(sum.sent, 1, "rcpt.test's day that was today ended meanwhile: {sum:?}");
        assert!(store.take_due(later).is_empty());
    })
    .await
    .expect("test timed out");
}

/// One HTTP/1.1 GET with an optional bearer token: (status, body).
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string()))
}

fn make_token(name: &str, scope: &str, file: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["token", name, "--scope", scope, "--tokens-file"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The mailto path through a running daemon: yesterday's counts (in tlsrpt.json before the
/// start) become a multipart/report mailed through the daemon's own spool and engine to the
/// sink of the rua's domain; today's stay pending, shown by `GET /v1/tlsrpt/{domain}` (admin
/// token only) and `mxpipe tlsrpt show`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailed_report_through_the_daemon_and_the_operator_view() {
    let dir = tmpdir("tlsrpt-mail");
    let mail = dir.join("reports-mail");
    std::fs::create_dir_all(&mail).unwrap();
    let ip = Ipv4Addr::new(127, 8, 7, 1);
    let port = free_port("127.8.7.1");
    let _sink = sink_on(ip, port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.txt("_smtp._tls.rcpt.t.test", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.t.test")
        .mx("reports.t.test", 10, "mx.reports.t.test")
        .a("mx.reports.t.test", ip);
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();

    let mut setup = Setup::new(&dir, dns.addr(), port);
    let tokens = dir.join("tokens");
    let admin = make_token("ops", "admin", &tokens);
    let inject = make_token("app", "inject", &tokens);
    setup.inject_http = format!("tokens_file = \"{}\"\n", tokens.display());
    setup.tail = "[tlsrpt]\nmax_delay = \"0s\"\norganization_name = \"Serve Org\"\n".into();
    {
        let s = TlsRpt::open(Some(setup.spool.join("tlsrpt.json")), Limits::default()).unwrap();
        let yesterday = SystemTime::now() - Duration::from_secs(DAY);
        s.success("rcpt.t.test", &sts_policy(), yesterday);
        s.failure("rcpt.t.test", &sts_policy(), &failure(ResultType::CertificateExpired, "a.mx.rcpt.t.test", [203, 0, 113, 5]), yesterday);
        for _ in 0..4 {
            s.success("rcpt.t.test", &PolicyDesc::none(), SystemTime::now());
        }
        s.flush().unwrap();
    }
    let d = start_daemon(&setup.write(&dir), setup.inject);

    wait_for("the mailed report", Duration::from_secs(30), || std::fs::read_dir(&mail).unwrap().count() > 0).await;
    let path = std::fs::read_dir(&mail).unwrap().next().unwrap().unwrap().path();
    let msg = std::fs::read_to_string(&path).unwrap();
    assert!(msg.contains("Content-Type: multipart/report; report-type=\"tlsrpt\""), "{msg}");
    assert!(msg.contains("TLS-Report-Domain: rcpt.t.test\r\n") && msg.contains("TLS-Report-Submitter: serve.test\r\n"), "{msg}");
    assert!(msg.contains("Subject: Report Domain: rcpt.t.test\r\n Submitter: serve.test\r\n Report-ID: <"), "{msg}");
    assert!(msg.contains("From: <tlsrpt-noreply@serve.test>"), "{msg}");
    let (_, attachment) = msg.split_once("Content-Type: application/tlsrpt+gzip\r\n").expect("the gzip part");
    assert!(attachment.contains("filename=\"serve.test!rcpt.t.test!"), "{attachment}");
    let (_, b64) = attachment.split_once("\r\n\r\n").unwrap();
    let b64: String = b64.lines().take_while(|l| !l.starts_with("--")).collect();
    let gz = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap();
    let v: Value = serde_json::from_slice(&gunzip(&gz)).unwrap();
    assert_eq!(v["organization-name"], "Serve Org");
    assert_eq!(v["policies"][0]["policy"]["policy-domain"], "rcpt.t.test");
    assert_eq!(v["policies"][0]["summary"]["total-failure-session-count"], 1);
    let id = v["report-id"].as_str().unwrap();
    assert!(msg.contains(&format!("Report-ID: <{id}>")), "the Subject carries the JSON's report-id");

    // The operator's view: admin token only; today's counts, yesterday's are gone.
    let http = setup.http;
    let (code, _) = tokio::task::spawn_blocking(move || get(http, "/v1/tlsrpt/rcpt.t.test", None)).await.unwrap();
    assert_eq!(code, 401);
    let (code, _) = tokio::task::spawn_blocking(move || get(http, "/v1/tlsrpt/rcpt.t.test", Some(&inject))).await.unwrap();
    assert_eq!(code, 403);
    let a2 = admin.clone();
    let (code, body) = tokio::task::spawn_blocking(move || get(http, "/v1/tlsrpt/RCPT.t.test", Some(&a2))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let days = v["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{v}");
    assert_eq!(days[0]["policies"][0]["policy"]["policy-type"], "no-policy-found");
    assert_eq!(days[0]["policies"][0]["summary"]["total-successful-session-count"], 4);

    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{admin}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["tlsrpt", "show", "rcpt.t.test", "--api", &http.to_string(), "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("no-policy-found: 4 successful, 0 failed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(terminate(d));
    // Saved at shutdown: the sent day is gone from the file, today's is there.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["tlsrpt", "show", "rcpt.t.test", "--json", "--state-dir"])
        .arg(&setup.spool)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["days"].as_array().unwrap().len(), 1, "{v}");
}
