//! DKIM signing at intake, end to end: `mxpipe serve` signs what it is given over SMTP and
//! HTTP, delivers it to a sink that stores it, and the stored messages are verified by a DKIM
//! verifier that is not the signing code (mail-auth's verifier, and dkimpy when installed)
//! against public keys served by the project's DNS server. Also: alignment with the From
//! domain, an explicit choice by header and by API field, the directive headers gone before
//! delivery, unsigned mail counted, a message altered after signing failing, a bad key file
//! stopping the daemon, and a SIGHUP reload (good and bad).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::*;
use common::Client;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use mxpipe::dkim::keys::{generate, Algorithm};
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};

/// A key written to `dir/NAME.key`, its TXT record published in `zone`; the `[[dkim]]` entry.
fn key(dir: &Path, zone: &mut ZoneBuilder, domain: &str, selector: &str, alg: Algorithm, extra: &str) -> String {
    let (pem, public) = generate(alg, 2048).unwrap();
    let path = dir.join(format!("{selector}.{domain}.key"));
    std::fs::write(&path, pem).unwrap();
    zone.txt(&format!("{selector}._domainkey.{domain}"), &mxpipe::dkim::keys::txt_record(alg, &public));
    format!("[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey = \"{}\"\n{extra}\n", path.display())
}

fn authenticator(dns: SocketAddr) -> MessageAuthenticator {
    let mut ns = NameServerConfig::udp_and_tcp(dns.ip());
    for c in &mut ns.connections {
        c.port = dns.port();
    }
    MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![ns]), ResolverOpts::default()).unwrap()
}

/// (d=, s=, passed) of every DKIM signature of `msg`.
async fn verify(auth: &MessageAuthenticator, msg: &[u8]) -> Vec<(String, String, bool)> {
    let m = AuthenticatedMessage::parse(msg).expect("a parsable message");
    let out = auth.verify_dkim(&m).await;
    out.iter()
        .map(|o| {
            let (d, s) = o.signature().map_or((String::new(), String::new()), |s| (s.d.clone(), s.s.clone()));
            (d, s, matches!(o.result(), DkimResult::Pass))
        })
        .collect()
}

/// The stored messages, by Subject.
fn stored(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "eml") {
            let bytes = std::fs::read(&p).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let subject = text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or("").to_string();
            v.push((subject, bytes));
        }
    }
    v
}

fn by_subject<'a>(all: &'a [(String, Vec<u8>)], s: &str) -> &'a [u8] {
    &all.iter().find(|(subj, _)| subj == s).unwrap_or_else(|| panic!("no message {s:?} stored")).1
}

async fn smtp_inject(addr: SocketAddr, from_header: &str, subject: &str, extra_headers: &str) -> u16 {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app.test").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<bounces@esp.example>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<u@d.t.test>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(format!(
        "From: {from_header}\r\nTo: u@d.t.test\r\nSubject: {subject}\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@esp.example>\r\n{extra_headers}\r\nHello,\r\n\r\nthis is {subject}.\r\n.\r\n"
    ))
    .await;
    let code = c.reply().await.code;
    let _ = c.cmd("QUIT").await;
    code
}

struct World {
    dir: PathBuf,
    mail: PathBuf,
    dns: DnsServer,
    _sink: mxpipe::sink::Sink,
    setup: Setup,
}

async fn world(tag: &str, ip: Ipv4Addr, keys: impl FnOnce(&Path, &mut ZoneBuilder) -> String) -> World {
    let dir = tmpdir(tag);
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port(&ip.to_string());
    let sink = sink_on(ip, port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("test.");
    z.mx("d.t.test", 10, "mx.t.test").a("mx.t.test", ip);
    // The key records live in their own zones (the signing domains).
    let mut kz = ZoneBuilder::new("example.");
    let dkim = keys(&dir, &mut kz);
    let dns = DnsServer::start(vec![z, kz], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup { tail: dkim, ..Setup::new(&dir, dns.addr(), port) };
    World { dir, mail, dns, _sink: sink, setup }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_at_intake_and_verified_after_delivery() {
    let w = world("dkim-sign", Ipv4Addr::new(127, 5, 0, 1), |dir, z| {
        key(dir, z, "shop.example", "ed", Algorithm::Ed25519, "")
            + &key(dir, z, "shop.example", "rsa", Algorithm::Rsa, "algorithm = \"rsa\"")
            + &key(dir, z, "esp.example", "s2026", Algorithm::Rsa, "name = \"esp\"\nexpiry = \"7d\"")
    })
    .await;
    let config = w.setup.write(&w.dir);
    let d = start_daemon(&config, w.setup.inject);

    // Aligned by the From domain's parent: both shop.example keys.
    assert_eq!(smtp_inject(d.inject, "Shop News <news@news.shop.example>", "aligned", "").await, 250);
    // No key for the From domain: unsigned.
    assert_eq!(smtp_inject(d.inject, "x@elsewhere.example", "unsigned", "").await, 250);
    // An explicit choice by header (removed before delivery), and by the API's field.
    assert_eq!(smtp_inject(d.inject, "x@elsewhere.example", "by-header", "X-Mxpipe-Dkim: esp\r\n").await, 250);
    let body = serde_json::json!({"from": "bounces@esp.example", "to": ["u@d.t.test"], "dkim": ["esp", "shop.example"],
        "data": "From: x@elsewhere.example\nTo: u@d.t.test\nSubject: by-api\n\nbare LF lines\nare normalised first\n"});
    let (code, text) = http_async(w.setup.http, "POST", "/v1/messages".into(), body.to_string()).await;
    assert_eq!(code, 202, "{text}");
    // Unknown keys are refused at the door, on both.
    let bad = serde_json::json!({"from": "a@esp.example", "to": ["u@d.t.test"], "dkim": ["nope"], "data": "Subject: x\n\nx\n"});
    let (code, text) = http_async(w.setup.http, "POST", "/v1/messages".into(), bad.to_string()).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("nope"), "{text}");
    assert_eq!(smtp_inject(d.inject, "x@elsewhere.example", "refused", "X-Mxpipe-Dkim: nope\r\n").await, 550);

    wait_for("four deliveries", Duration::from_secs(30), || stored(&w.mail).len() >= 4).await;
    let all = stored(&w.mail);
    let auth = authenticator(w.dns.addr());

    let aligned = by_subject(&all, "aligned");
    let mut sigs = verify(&auth, aligned).await;
    sigs.sort();
    assert_eq!(
        sigs,
        vec![("shop.example".into(), "ed".into(), true), ("shop.example".into(), "rsa".into(), true)],
        "{}",
        String::from_utf8_lossy(aligned)
    );
    assert!(verify(&auth, by_subject(&all, "unsigned")).await.is_empty());
    let by_header = by_subject(&all, "by-header");
    assert_eq!(verify(&auth, by_header).await, vec![("esp.example".into(), "s2026".into(), true)]);
    assert!(!String::from_utf8_lossy(by_header).to_ascii_lowercase().contains("x-mxpipe-dkim"), "directive delivered");
    let text = String::from_utf8_lossy(by_header);
    assert!(text.contains("x="), "expiry tag: {text}");
    let mut api = verify(&auth, by_subject(&all, "by-api")).await;
    api.sort();
    assert_eq!(api.len(), 3, "{api:?}");
    assert!(api.iter().all(|(_, _, pass)| *pass), "{api:?}");

    // Over-signed From: h= names From one more time than the message has it.
    let h = String::from_utf8_lossy(aligned);
    let sig = h.split("DKIM-Signature:").nth(1).unwrap();
    let hv: String = sig.split("h=").nth(1).unwrap().split(';').next().unwrap().split_whitespace().collect();
    assert_eq!(hv.to_ascii_lowercase().matches("from").count(), 2, "h={hv}");

    // Altered after signing: the body, or a signed header field.
    let tampered_body = String::from_utf8_lossy(aligned).replace("this is aligned.", "this is altered.");
    assert!(verify(&auth, tampered_body.as_bytes()).await.iter().all(|(_, _, pass)| !pass));
    let tampered_subject = String::from_utf8_lossy(aligned).replace("Subject: aligned", "Subject: aligned!");
    assert!(verify(&auth, tampered_subject.as_bytes()).await.iter().all(|(_, _, pass)| !pass));
    // A second From added after signing (what over-signing guards against) fails too.
    let added_from = format!("From: evil@attacker.example\r\n{}", String::from_utf8_lossy(aligned));
    assert!(verify(&auth, added_from.as_bytes()).await.iter().all(|(_, _, pass)| !pass));

    // The counters.
    let (_, metrics) = http_async(w.setup.http, "GET", "/metrics".into(), String::new()).await;
    assert!(metrics.contains("mxpipe_dkim_signed_total 3"), "{metrics}");
    assert!(metrics.contains("mxpipe_dkim_unsigned_total 1"), "{metrics}");
    assert!(metrics.contains("mxpipe_dkim_signatures_total{domain=\"esp.example\",selector=\"s2026\"} 2"), "{metrics}");

    dkimpy_cross_check(&w, &all);
    assert!(terminate(d));
}

/// dkimpy (Python, an independent implementation) verifies the same stored messages against
/// the same DNS server. Skipped, loudly, where python3-dkim and python3-dnspython are missing.
fn dkimpy_cross_check(w: &World, all: &[(String, Vec<u8>)]) {
    let probe = std::process::Command::new(python()).args(["-c", "import dkim, dns.resolver"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("\n==== SKIPPED: dkimpy cross-check (install python3-dkim python3-dnspython; scripts/test-all.sh does) ====\n");
        return;
    }
    let script = format!(
        r#"
import sys, dkim, dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["{ip}"]
r.port = {port}
def txt(name, timeout=5):
    a = r.resolve(name.decode().rstrip("."), "TXT")
    return b"".join(b"".join(x.strings) for x in a)
msg = sys.stdin.buffer.read()
n = msg.count(b"DKIM-Signature:")
def one(i):
    try:
        return dkim.DKIM(msg).verify(idx=i, dnsfunc=txt)
    except dkim.DKIMException as e:
        print(e, file=sys.stderr)
        return False
ok = all(one(i) for i in range(n)) if n else False
print("pass" if ok else "fail")
"#,
        ip = w.dns.addr().ip(),
        port = w.dns.addr().port()
    );
    for subject in ["aligned", "by-header", "by-api"] {
        let msg = by_subject(all, subject);
        let out = run_python(&script, msg);
        assert_eq!(out.trim(), "pass", "dkimpy on {subject}");
        let tampered = String::from_utf8_lossy(msg).replace(&format!("this is {subject}."), "altered.");
        if tampered.as_bytes() != msg {
            assert_eq!(run_python(&script, tampered.as_bytes()).trim(), "fail", "dkimpy on altered {subject}");
        }
    }
    eprintln!("dkimpy cross-check: passed");
}

/// Debian's python3 (where apt installs python3-dkim), else whatever `python3` is.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn run_python(script: &str, stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_file_stops_serve_naming_it() {
    let dir = tmpdir("dkim-badkey");
    let bad = dir.join("broken.key");
    std::fs::write(&bad, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let dns: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let setup = Setup {
        tail: format!("[[dkim]]\ndomain = \"shop.example\"\nselector = \"s\"\nkey = \"{}\"\n", bad.display()),
        ..Setup::new(&dir, dns, 2525)
    };
    let out = serve_expecting_exit(&setup.write(&dir), Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("broken.key") && err.contains("dkim[0]"), "{err}");
    // A missing file, and an algorithm that does not match the file.
    let (pem, _) = generate(Algorithm::Ed25519, 0).unwrap();
    let ed = dir.join("ed.key");
    std::fs::write(&ed, pem).unwrap();
    let setup = Setup {
        tail: format!("[[dkim]]\ndomain = \"shop.example\"\nselector = \"s\"\nkey = \"{}\"\nalgorithm = \"rsa\"\n", ed.display()),
        ..Setup::new(&dir, dns, 2525)
    };
    let out = serve_expecting_exit(&setup.write(&dir), Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ed.key") && err.contains("ed25519"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_keys_and_a_bad_reload_keeps_them() {
    let mut second = String::new();
    let w = world("dkim-hup", Ipv4Addr::new(127, 5, 0, 2), |dir, z| {
        second = key(dir, z, "other.example", "new", Algorithm::Ed25519, "");
        key(dir, z, "shop.example", "ed", Algorithm::Ed25519, "")
    })
    .await;
    let config = w.setup.write(&w.dir);
    let mut d = start_daemon(&config, w.setup.inject);
    let pid = d.child.id() as i32;
    assert_eq!(smtp_inject(d.inject, "a@other.example", "before", "").await, 250);

    // Add the other.example key and reload.
    let setup2 = Setup { tail: w.setup.tail.clone() + &second, ..Setup::new(&w.dir, w.dns.addr(), w.setup.smtp_port) };
    let setup2 = Setup { inject: w.setup.inject, http: w.setup.http, ..setup2 };
    setup2.write(&w.dir);
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let auth = authenticator(w.dns.addr());
    // Poll: the reload is asynchronous; inject until a message is signed by the new key.
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 100, "the reload never took effect");
        let subject = format!("after-{n}");
        assert_eq!(smtp_inject(d.inject, "a@other.example", &subject, "").await, 250);
        wait_for("delivery", Duration::from_secs(30), || stored(&w.mail).iter().any(|(s, _)| *s == subject)).await;
        if !verify(&auth, by_subject(&stored(&w.mail), &subject)).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = stored(&w.mail);
    assert!(verify(&auth, by_subject(&all, "before")).await.is_empty(), "signed before the key existed");
    assert_eq!(verify(&auth, by_subject(&all, &format!("after-{n}"))).await, vec![("other.example".into(), "new".into(), true)]);

    // Break the new key file and reload: an error, and the keys in use stay.
    let other_key = w.dir.join("new.other.example.key");
    std::fs::write(&other_key, "garbage").unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(d.child.try_wait().unwrap().is_none(), "serve died on a bad reload");
    assert_eq!(smtp_inject(d.inject, "a@other.example", "kept", "").await, 250);
    wait_for("delivery", Duration::from_secs(30), || stored(&w.mail).iter().any(|(s, _)| s == "kept")).await;
    let all = stored(&w.mail);
    assert_eq!(verify(&auth, by_subject(&all, "kept")).await, vec![("other.example".into(), "new".into(), true)]);
    let (_, metrics) = http_async(w.setup.http, "GET", "/metrics".into(), String::new()).await;
    assert!(metrics.contains("mxpipe_dkim_reloads_total 1"), "{metrics}");
    assert!(terminate(d));
}

/// A bounce (DSN) the daemon writes is signed like accepted mail, with the keys aligned with
/// its From domain (`MAILER-DAEMON@` the reporting MTA, here `serve.test`), and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsn_is_signed_with_the_reporting_mtas_key() {
    let ip = Ipv4Addr::new(127, 5, 3, 1);
    let dir = tmpdir("dkim-dsn");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port(&ip.to_string());
    // Every recipient at the destination is refused for good; the sender's domain takes the DSN.
    let bouncing = Ipv4Addr::new(127, 5, 3, 2);
    let _refuser = sink_on(bouncing, port, &dir.join("refused"), |c| c.faults.perm_fail_rate = 1.0).await;
    let _sink = sink_on(ip, port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("test.");
    z.mx("d.t.test", 10, "mx.d.t.test").a("mx.d.t.test", bouncing);
    z.mx("app.t.test", 10, "mx.app.t.test").a("mx.app.t.test", ip);
    let dkim = key(&dir, &mut z, "serve.test", "dsn", Algorithm::Ed25519, "");
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup { tail: dkim, ..Setup::new(&dir, dns.addr(), port) };
    let d = start_daemon(&setup.write(&dir), setup.inject);
    assert!(inject(d.inject, "sender@app.t.test", "u@d.t.test", "doomed").await);
    wait_for("the DSN delivered to the sender", Duration::from_secs(30), || !stored(&mail).is_empty()).await;
    let all = stored(&mail);
    let (_, dsn) = &all[0];
    let text = String::from_utf8_lossy(dsn);
    assert!(text.contains("MAILER-DAEMON@serve.test") && text.contains("multipart/report"), "{text}");
    let auth = authenticator(dns.addr());
    assert_eq!(verify(&auth, dsn).await, vec![("serve.test".into(), "dsn".into(), true)], "{text}");
    assert!(terminate(d));
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
