//! `mxpipe send` and `mxpipe demo` as a user runs them: a JSONL file in, one outcome per
//! recipient out, a summary, clear errors for bad input; against a DNS server and sink
//! started by the test on loopback.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::sink::PortKind;

fn mxpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mxpipe"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_writes_one_outcome_per_recipient_and_reports_bad_lines() {
    let dir = std::env::temp_dir().join(format!("mxpipe-send-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The sink's certificate is for localhost; MX "localhost.t.test" would not match, so use
    // a plain (opportunistic) MX name: verification is not required for it.
    let (sink, pki) = common::start_sink(|_| {}).await;
    let st = sink.addr(PortKind::StartTls).unwrap();
    let im = sink.addr(PortKind::Implicit).unwrap();
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("a.t.test", 10, "mx.t.test").a("mx.t.test", Ipv4Addr::LOCALHOST);
    z.null_mx("null.t.test");
    let dns = DnsServer::start(vec![z], SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.join("body.eml"), "Subject: from a file\r\n\r\nfile body\r\n").unwrap();
    let input = [
        r#"{"id":"m1","from":"s@x.test","to":["a@a.t.test","b@a.t.test"],"data":"Subject: one\r\n\r\nhello\r\n"}"#.to_string(),
        format!(r#"{{"id":"m2","from":"s@x.test","to":["c@a.t.test","d@null.t.test"],"data_file":"{}"}}"#, dir.join("body.eml").display()),
        r#"{"id":"m3","from":"s@x.test","to":["e@a.t.test"]}"#.to_string(),
        "this is not json".to_string(),
        r#"{"id":"m4","from":"s@x.test","to":["f@a.t.test"],"data":"x","surprise":1}"#.to_string(),
    ]
    .join("\n");
    std::fs::write(dir.join("in.jsonl"), input).unwrap();
    let out = tokio::task::spawn_blocking({
        let dir = dir.clone();
        let dns = dns.addr().to_string();
        move || {
            mxpipe()
                .args(["send", "--json", "--input"])
                .arg(dir.join("in.jsonl"))
                .arg("--outcomes")
                .arg(dir.join("out.jsonl"))
                .args(["--dns", &dns, "--port-map", &format!("25={},26={}", st.port(), im.port()), "--ca"])
                .arg(dir.join("ca.pem"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "rejected lines make the exit status 1: {stderr}");
    for n in [3, 4, 5] {
        assert!(stderr.contains(&format!("input line {n} rejected")), "line {n}: {stderr}");
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(summary["rejected_input_lines"], 3);
    assert_eq!(summary["outcomes"]["delivered"], 3);
    assert_eq!(summary["outcomes"]["bounced"], 1);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.join("out.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "one outcome per recipient of the accepted lines");
    let null = lines.iter().find(|o| o["rcpt"] == "d@null.t.test").unwrap();
    assert_eq!((null["status"].as_str(), null["enhanced"].as_str()), (Some("bounced"), Some("5.1.10")));
    for o in lines.iter().filter(|o| o["status"] == "delivered") {
        assert_eq!(
            (o["tls"].as_str(), o["policy"].as_str(), o["mx"].as_str()),
            (Some("starttls"), Some("opportunistic"), Some("mx.t.test"))
        );
        assert_eq!(o["port"], st.port());
    }
    let s = sink.shutdown(Duration::from_secs(2)).await.stats;
    assert_eq!((s.messages, s.recipients), (2, 3));
    dns.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn send_with_a_missing_input_file_says_so() {
    let out = mxpipe().args(["send", "--input", "/nonexistent/in.jsonl"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open --input /nonexistent/in.jsonl"));
    let out = mxpipe().args(["send", "--input", "x", "--port-map", "587=1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only ports 25, 26 and 443"));
}

#[test]
fn demo_delivers_everything_with_nothing_installed() {
    let out = mxpipe().args(["demo", "--domains", "12", "--messages", "120", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Two bursts by default, 240 recipients each.
    assert_eq!(r["outcomes"]["delivered"], 480);
    assert_eq!(r["sink"]["recipients"], 480);
    // Domains 0-2 and 9-11 publish TLSA records (one of each kind of MX name per group of
    // three): DANE decides for them, whatever else applies.
    assert_eq!(r["outcomes"]["by_policy"]["dane"], 240);
    assert_eq!(r["outcomes"]["by_source"]["dane"], 240);
    for policy in ["starttls-prefix", "smtps-prefix"] {
        assert_eq!(r["outcomes"]["by_policy"][policy], 80, "{policy}");
    }
    // The plain domains publish MTA-STS, half enforce (decided by it unless DANE applies) and
    // half testing (opportunistic decides; testing applied): 4 policies fetched, once.
    assert_eq!(r["outcomes"]["by_policy"]["mta-sts"], 40);
    assert_eq!(r["outcomes"]["by_policy"]["opportunistic"], 40);
    assert_eq!(r["outcomes"]["by_source"]["mta-sts-testing"], 80);
    assert_eq!(r["outcomes"]["dnssec"], 480, "the demo's zone is signed and validated");
    assert_eq!(r["engine"]["mta_sts_fetches"], 4);
    assert_eq!(r["outcomes"]["policy_reports"], 0, "the demo's sink has valid certificates for every MX host");
    assert_eq!(r["outcomes"]["by_tls"]["implicit"], 160);
    // The second burst finds everything warm: no new connection, no DNS query.
    let b2 = &r["bursts"][1];
    assert_eq!((b2["connections_opened"].as_u64(), b2["dns_queries"].as_u64()), (Some(0), Some(0)), "{b2}");
    assert!(b2["connections_reused"].as_u64().unwrap() >= 12, "{b2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_keeps_pins_in_its_state_dir_and_policy_shows_and_forgets_them() {
    let dir = std::env::temp_dir().join(format!("mxpipe-send-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state");
    // The sink's certificate is for localhost, so the prefixed host fails verification: the
    // message is deferred, and the resolution alone pins the domain.
    let (sink, _pki) = common::start_sink(|_| {}).await;
    let st = sink.addr(PortKind::StartTls).unwrap();
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("p.t.test", 10, "starttls-mx.p.t.test").a("starttls-mx.p.t.test", Ipv4Addr::LOCALHOST);
    let dns = DnsServer::start(vec![z], SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    std::fs::write(dir.join("in.jsonl"), r#"{"id":"m1","from":"s@x.test","to":["a@p.t.test"],"data":"Subject: pin\r\n\r\nhi\r\n"}"#)
        .unwrap();
    let (d, dns_addr) = (dir.clone(), dns.addr().to_string());
    let state2 = state.clone();
    let out = tokio::task::spawn_blocking(move || {
        mxpipe()
            .args(["send", "--input"])
            .arg(d.join("in.jsonl"))
            .args(["--dns", &dns_addr, "--port-map", &format!("25={}", st.port()), "--connect-timeout", "2", "--state-dir"])
            .arg(&state2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("deferred 1"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let policy = |args: &[&str]| {
        let o = mxpipe().arg("policy").args(args).arg("--state-dir").arg(&state).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (ok, out, err) = policy(&["show", "p.t.test"]);
    assert!(ok && out.contains("p.t.test: pinned (starttls prefix, seen on starttls-mx.p.t.test)"), "{out}{err}");
    assert!(out.contains("p.t.test: no MTA-STS policy cached"), "{out}");
    let (ok, out, _) = policy(&["forget", "P.T.TEST."]);
    assert!(ok && out.contains("forgotten: its pin"), "{out}");
    let (ok, out, _) = policy(&["show", "p.t.test"]);
    assert!(ok && out.contains("no pin"), "the forget was saved: {out}");
    let o = mxpipe().args(["policy", "show", "p.t.test", "--state-dir", "/nonexistent/mxpipe-state"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no policy-state.json"), "{err}");
    sink.shutdown(Duration::from_secs(2)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--trust-anchors`: a DS file written by the test DNS server makes the signed zone's MX
/// answers authenticated (validation implied); a malformed file stops `send`, `demo` and
/// `serve` before anything is sent, naming the file and line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_anchors_from_a_file_authenticate_a_private_zone_and_bad_files_stop_the_command() {
    use mxpipe::dnsserver::AnchorFormat;
    let dir = std::env::temp_dir().join(format!("mxpipe-send-anchors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (sink, _pki) = common::start_sink(|_| {}).await;
    let st = sink.addr(PortKind::StartTls).unwrap();
    let im = sink.addr(PortKind::Implicit).unwrap();
    let mut z = ZoneBuilder::new("s.test.").dnssec();
    z.mx("a.s.test", 10, "mx.s.test").a("mx.s.test", Ipv4Addr::LOCALHOST);
    let dns = DnsServer::start(vec![z], SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    dns.write_trust_anchors(&dir.join("anchors.ds"), AnchorFormat::Ds).unwrap();
    dns.write_trust_anchors(&dir.join("anchors.dnskey"), AnchorFormat::Dnskey).unwrap();
    std::fs::write(dir.join("bad.anchors"), "; ok\ns.test. IN DNSKEY 257 3 13 not-base64!\n").unwrap();
    std::fs::write(dir.join("in.jsonl"), r#"{"id":"m1","from":"s@x.test","to":["a@a.s.test"],"data":"Subject: x\r\n\r\nx\r\n"}"#).unwrap();
    let run = |anchors: &'static str| {
        let dir = dir.clone();
        let dns = dns.addr().to_string();
        tokio::task::spawn_blocking(move || {
            mxpipe()
                .args(["send", "--json", "--input"])
                .arg(dir.join("in.jsonl"))
                .arg("--outcomes")
                .arg(dir.join("out.jsonl"))
                .args(["--dns", &dns, "--port-map", &format!("25={},26={}", st.port(), im.port()), "--trust-anchors"])
                .arg(dir.join(anchors))
                .output()
                .unwrap()
        })
    };
    let out = run("anchors.ds").await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let o: serde_json::Value = serde_json::from_str(std::fs::read_to_string(dir.join("out.jsonl")).unwrap().trim()).unwrap();
    assert_eq!((o["status"].as_str(), o["dnssec"].as_bool()), (Some("delivered"), Some(true)), "{o}");

    let out = run("bad.anchors").await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let named = format!("--trust-anchors: trust anchor file {}, line 2", dir.join("bad.anchors").display());
    assert!(stderr.contains(&named), "{stderr}");

    // demo: the same bad file stops it before the burst.
    let out =
        mxpipe().args(["demo", "--domains", "2", "--messages", "2", "--trust-anchors"]).arg(dir.join("bad.anchors")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    // demo with a key for another zone: its own zone is signed and validated too. (A DS for
    // s.test would be refused: the demo resolves DS anchors through its own DNS server.)
    let out = mxpipe()
        .args(["demo", "--domains", "3", "--messages", "3", "--bursts", "1", "--json", "--trust-anchors"])
        .arg(dir.join("anchors.dnskey"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["outcomes"]["delivered"].as_u64(), r["outcomes"]["dnssec"].as_u64()), (Some(6), Some(6)), "{}", r["outcomes"]);

    // serve: refused at start, before the spool is opened.
    std::fs::write(dir.join("serve.toml"), format!("[spool]\ndir = \"{}\"\n", dir.join("spool").display())).unwrap();
    let out = mxpipe()
        .args(["serve", "--config"])
        .arg(dir.join("serve.toml"))
        .arg("--trust-anchors")
        .arg(dir.join("bad.anchors"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("dns.trust_anchors: trust anchor file") && stderr.contains("line 2"), "{stderr}");
    assert!(!dir.join("spool").exists(), "the spool is not created");

    sink.shutdown(Duration::from_secs(2)).await;
    dns.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
