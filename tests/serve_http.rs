//! The daemon's HTTP API at its door, against the real `mxpipe serve`: the browser defences
//! (415 for a non-JSON POST, 421 for a foreign Host), bearer tokens and scopes, `mxpipe queue`
//! with a token, the refusal to listen off loopback without tokens and TLS, HTTPS, and the
//! connection limits (header timeout, connection cap, requests per connection).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::*;

const MSG: &str = r#"{"from": "app@src.test", "to": ["a@dest.test"], "data": "Subject: t\r\n\r\nhi\r\n"}"#;

/// A daemon whose `[inject.http]` has `extra` lines; no destination is reachable (the DNS
/// server is a port nobody answers on), so injected messages stay queued.
fn daemon(tag: &str, extra: &str) -> (Daemon, Setup, PathBuf) {
    let dir = tmpdir(tag);
    let mut setup = Setup::new(&dir, free_addr(), free_port("127.0.0.1"));
    setup.inject_http = extra.to_string();
    let d = start_daemon(&setup.write(&dir), setup.inject);
    (d, setup, dir)
}

/// An answer: status, the header block (lower-cased), body.
#[derive(Debug)]
struct Answer {
    code: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 client connection over any stream, reading answers by Content-Length.
struct Conn<S> {
    s: S,
    buf: Vec<u8>,
}

impl Conn<TcpStream> {
    fn open(addr: SocketAddr) -> Conn<TcpStream> {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { s, buf: Vec::new() }
    }
}

impl<S: Read + Write> Conn<S> {
    fn send(&mut self, raw: &str) {
        self.s.write_all(raw.as_bytes()).unwrap();
        self.s.flush().unwrap();
    }

    /// The next answer, or `None` if the server closed (or reset) first.
    fn answer(&mut self) -> Option<Answer> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if self.buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into_owned();
                    self.buf.drain(..end + 4 + len);
                    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
                    return Some(Answer { code, head, body });
                }
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True if the server closes (EOF or reset) with nothing more to say.
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        self.buf.is_empty() && matches!(self.s.read(&mut chunk), Ok(0) | Err(_))
    }
}

/// A request on a keep-alive connection: `method path`, headers, body.
fn req(host: &str, method: &str, path: &str, headers: &[&str], body: &str) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        r += h;
        r += "\r\n";
    }
    r + "\r\n" + body
}

/// One request on a fresh connection.
fn ask(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
    let mut c = Conn::open(addr);
    c.send(&req(&addr.to_string(), method, path, headers, body));
    c.answer().expect("an answer")
}

const JSON: &str = "Content-Type: application/json";

/// `mxpipe_messages_accepted_total`, once it has reached `n` (the board counts a message a
/// moment after its 202): it must then be exactly `n`, so a message that should not have been
/// spooled shows up as one too many.
fn accepted(addr: SocketAddr, auth: &[&str], n: u64) {
    let t0 = Instant::now();
    loop {
        let a = ask(addr, "GET", "/metrics", auth, "");
        assert_eq!(a.code, 200, "{a:?}");
        let line = a.body.lines().find(|l| l.starts_with("mxpipe_messages_accepted_total ")).expect("the counter");
        let got: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        if got >= n || t0.elapsed() > Duration::from_secs(5) {
            assert_eq!(got, n, "messages accepted");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn browser_requests_are_refused() {
    let (d, s, _) = daemon("http-browser", "");
    let api = s.http;

    // A page's cross-origin POST without a preflight: text/plain (or a form) with a JSON body.
    let a = ask(api, "POST", "/v1/messages", &["Content-Type: text/plain;charset=UTF-8"], MSG);
    assert_eq!(a.code, 415, "{a:?}");
    assert!(a.body.contains("application/json"), "{a:?}");
    let a = ask(api, "POST", "/v1/messages", &[], MSG);
    assert_eq!(a.code, 415, "no Content-Type: {a:?}");
    let a = ask(api, "POST", "/v1/messages", &["Content-Type: application/jsonx"], MSG);
    assert_eq!(a.code, 415, "{a:?}");
    accepted(api, &[], 0);
    let a = ask(api, "POST", "/v1/queues/x.test/bounce", &["Content-Type: application/x-www-form-urlencoded"], "");
    assert_eq!(a.code, 415, "{a:?}");
    let a = ask(api, "POST", "/v1/queues/x.test/suspend", &["Content-Type: multipart/form-data; boundary=x"], "");
    assert_eq!(a.code, 415, "{a:?}");

    // JSON, parameters allowed, is taken.
    let a = ask(api, "POST", "/v1/messages", &["Content-Type: Application/JSON; charset=utf-8"], MSG);
    assert_eq!(a.code, 202, "{a:?}");
    accepted(api, &[], 1);
    assert_eq!(ask(api, "POST", "/v1/queues/x.test/resume", &[JSON], "").code, 200);

    // DNS rebinding: the page's own name in Host.
    let port = api.port();
    for host in ["evil.example", &format!("evil.example:{port}"), &format!("127.0.0.2:{port}"), "127.0.0.1:1", "127.0.0.1"] {
        let mut c = Conn::open(api);
        c.send(&format!("GET /v1/queues HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        let a = c.answer().unwrap();
        assert_eq!(a.code, 421, "Host {host}: {a:?}");
    }
    // An absolute request URI naming another host, with a good Host header.
    let mut c = Conn::open(api);
    c.send(&format!("GET http://evil.example/v1/queues HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"));
    assert_eq!(c.answer().unwrap().code, 421);
    // The listener's own names pass.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("LOCALHOST.:{port}")] {
        let mut c = Conn::open(api);
        c.send(&format!("GET /v1/queues HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(c.answer().unwrap().code, 200, "Host {host}");
    }
    assert!(terminate(d));
}

#[test]
fn allowed_hosts_extend_the_names() {
    let (d, s, _) = daemon("http-hosts", "allowed_hosts = [\"mxpipe.example.net\", \"api.example.net:1\"]\n");
    let port = s.http.port();
    for (host, code) in [
        ("mxpipe.example.net".to_string(), 200),
        (format!("mxpipe.example.net:{port}"), 200),
        ("api.example.net:1".to_string(), 200),
        (format!("api.example.net:{port}"), 421),
        ("other.example.net".to_string(), 421),
    ] {
        let mut c = Conn::open(s.http);
        c.send(&format!("GET /v1/queues HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(c.answer().unwrap().code, code, "Host {host}");
    }
    assert!(terminate(d));
}

/// `mxpipe token NAME --scope SCOPE --tokens-file FILE`: the token (stdout).
fn make_token(name: &str, scope: &str, file: &Path) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_mxpipe")).args(["token", name, "--scope", scope, "--tokens-file"]).arg(file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("mxp_") && !token.contains('\n'), "{token}");
    token
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

/// `mxpipe queue --api API list` with `env` set: (success, stdout, stderr).
fn queue_list(api: SocketAddr, env: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxpipe"));
    cmd.args(["queue", "--api", &api.to_string(), "list"]).env_remove("MXPIPE_API_TOKEN");
    if let Some(t) = env {
        cmd.env("MXPIPE_API_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn tokens_and_scopes() {
    let dir = tmpdir("http-tokens-files");
    let file = dir.join("tokens");
    let inject = make_token("app", "inject", &file);
    let admin = make_token("ops", "admin", &file);
    let metrics = make_token("prom", "metrics", &file);
    // A second token of the same name is refused, and the file is left as it was.
    let before = std::fs::read_to_string(&file).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_mxpipe")).args(["token", "app", "--scope", "admin", "--tokens-file"]).arg(&file).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already has a token named \"app\""));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    assert!(!before.contains(&inject[20..]), "the file holds the token itself");

    let (d, s, _) = daemon("http-tokens", &format!("tokens_file = \"{}\"\n", file.display()));
    let api = s.http;

    // No token, a wrong one, a malformed header: 401 with the challenge.
    let unknown = bearer("mxp_0011223344556677_nope");
    for auth in [vec![], vec![unknown.as_str()], vec!["Authorization: Basic b3BzOng="]] {
        let a = ask(api, "POST", "/v1/messages", &[&[JSON][..], &auth].concat(), MSG);
        assert_eq!(a.code, 401, "{auth:?}: {a:?}");
        assert!(a.head.contains("www-authenticate: bearer"), "{a:?}");
    }
    let mut forged = admin.clone();
    forged.pop();
    forged.push(if admin.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(ask(api, "GET", "/v1/queues", &[&bearer(&forged)], "").code, 401, "one character changed");
    accepted(api, &[&bearer(&admin)], 0);

    // inject: injects and reads a message's state, nothing else.
    let a = ask(api, "POST", "/v1/messages", &[JSON, &bearer(&inject)], MSG);
    assert_eq!(a.code, 202, "{a:?}");
    let id = serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["ids"][0].as_str().unwrap().to_string();
    assert_eq!(ask(api, "GET", &format!("/v1/messages/{id}"), &[&bearer(&inject)], "").code, 200);
    let a = ask(api, "POST", "/v1/queues/dest.test/suspend", &[JSON, &bearer(&inject)], "");
    assert_eq!(a.code, 403, "{a:?}");
    assert!(a.body.contains("admin"), "{a:?}");
    assert_eq!(ask(api, "GET", "/v1/queues", &[&bearer(&inject)], "").code, 403);
    assert_eq!(ask(api, "GET", "/metrics", &[&bearer(&inject)], "").code, 403);

    // metrics: /metrics only.
    assert_eq!(ask(api, "GET", "/metrics", &[], "").code, 401);
    accepted(api, &[&bearer(&metrics)], 1);
    assert_eq!(ask(api, "POST", "/v1/messages", &[JSON, &bearer(&metrics)], MSG).code, 403);
    assert_eq!(ask(api, "GET", "/v1/queues", &[&bearer(&metrics)], "").code, 403);

    // admin: everything.
    let a = ask(api, "POST", "/v1/queues/dest.test/suspend", &[JSON, &bearer(&admin)], r#"{"for": "5m"}"#);
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(ask(api, "POST", "/v1/messages", &[JSON, &bearer(&admin)], MSG).code, 202);
    accepted(api, &[&bearer(&admin)], 2);

    // mxpipe queue: the token from the environment; without it, a message saying what to do.
    let (ok, out, err) = queue_list(api, Some(&admin));
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("dest.test ") && l.contains("until in ")), "{out}");
    let (ok, _, err) = queue_list(api, None);
    assert!(!ok && err.contains("requires a token") && err.contains("MXPIPE_API_TOKEN") && err.contains("--token-file"), "{err}");
    let (ok, _, err) = queue_list(api, Some(&inject));
    assert!(!ok && err.contains("HTTP 403") && err.contains("admin token"), "{err}");
    // --token-file.
    let tf = dir.join("ops.token");
    std::fs::write(&tf, format!("{admin}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["queue", "--api", &api.to_string(), "--token-file"])
        .arg(&tf)
        .arg("list")
        .env_remove("MXPIPE_API_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(terminate(d));
}

/// Run `mxpipe serve` that is expected to refuse to start: (stdout, stderr). Fails the test
/// if it is still running after 10 s.
fn serve_refused(config: &Path) -> (String, String) {
    let out = serve_expecting_exit(config, Duration::from_secs(10));
    assert!(!out.status.success());
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn refuses_to_listen_off_loopback_without_tokens_and_tls() {
    let dir = tmpdir("http-open");
    let mut setup = Setup::new(&dir, free_addr(), free_port("127.0.0.1"));
    setup.http = format!("0.0.0.0:{}", free_port("0.0.0.0")).parse().unwrap();
    let (out, err) = serve_refused(&setup.write(&dir));
    assert!(!out.contains("HTTP API on"), "it started: {out}");
    assert!(err.contains("inject.http.listen") && err.contains("inject.http.tokens_file") && err.contains("inject.http.tls"), "{err}");

    // Tokens alone are not enough: the token would cross the network in clear.
    std::fs::write(dir.join("tokens"), "").unwrap();
    setup.inject_http = format!("tokens_file = \"{}\"\n", dir.join("tokens").display());
    let (out, err) = serve_refused(&setup.write(&dir));
    assert!(!out.contains("HTTP API on"), "it started: {out}");
    assert!(err.contains("inject.http.tls") && !err.contains("inject.http.tokens_file"), "{err}");
}

#[test]
fn a_bad_tokens_file_stops_serve_naming_the_line() {
    let dir = tmpdir("http-badtokens");
    let tokens = dir.join("tokens");
    make_token("ops", "admin", &tokens);
    let mut text = std::fs::read_to_string(&tokens).unwrap();
    text += "app:root:sha256:0011223344556677:AAAA:BBBB\n";
    std::fs::write(&tokens, text).unwrap();
    let mut setup = Setup::new(&dir, free_addr(), free_port("127.0.0.1"));
    setup.inject_http = format!("tokens_file = \"{}\"\n", tokens.display());
    let (out, err) = serve_refused(&setup.write(&dir));
    assert!(!out.contains("HTTP API on"), "it started: {out}");
    assert!(err.contains("inject.http.tokens_file") && err.contains(&format!("{}, line 2", tokens.display())), "{err}");
    assert!(err.contains("unknown scope \"root\""), "{err}");
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

#[test]
fn tls_api() {
    let dir = tmpdir("http-tls");
    let pki = mxpipe::tls::certs::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let chain: String = pki.identity.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(dir.join("api.crt"), chain).unwrap();
    std::fs::write(dir.join("api.key"), pem("PRIVATE KEY", pki.identity.key.secret_der())).unwrap();
    std::fs::write(dir.join("ca.crt"), &pki.ca_pem).unwrap();
    let tokens = dir.join("tokens");
    let admin = make_token("ops", "admin", &tokens);
    std::fs::write(dir.join("ops.token"), &admin).unwrap();
    let mut setup = Setup::new(&dir, free_addr(), free_port("127.0.0.1"));
    setup.inject_http = format!(
        "tokens_file = \"{}\"\nclient_token_file = \"{}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        tokens.display(),
        dir.join("ops.token").display(),
        dir.join("api.crt").display(),
        dir.join("api.key").display()
    );
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let api = setup.http;

    // HTTPS, verified against the CA, with the token.
    let client = common::client_tls(&pki);
    let tls = |name: &str| {
        let conn = rustls::ClientConnection::new(client.clone(), name.to_string().try_into().unwrap()).unwrap();
        let s = TcpStream::connect(api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { s: rustls::StreamOwned::new(conn, s), buf: Vec::new() }
    };
    let mut c = tls("localhost");
    c.send(&req(&format!("localhost:{}", api.port()), "GET", "/v1/queues", &[&bearer(&admin)], ""));
    let a = c.answer().unwrap();
    assert_eq!(a.code, 200, "{a:?}");
    c.send(&req(&api.to_string(), "POST", "/v1/messages", &[JSON, &bearer(&admin)], MSG));
    assert_eq!(c.answer().unwrap().code, 202);
    let mut c = tls("127.0.0.1");
    c.send(&req(&api.to_string(), "GET", "/v1/queues", &[], ""));
    assert_eq!(c.answer().unwrap().code, 401);

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut c = Conn::open(api);
    c.send(&req(&api.to_string(), "GET", "/v1/queues", &[&bearer(&admin)], ""));
    assert!(c.answer().is_none(), "plain HTTP was answered on the TLS port");

    // mxpipe queue --config: TLS trusting the configured certificate, its client_token_file.
    let out = Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["queue", "--config"])
        .arg(&config)
        .arg("list")
        .env_remove("MXPIPE_API_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dest.test "), "{}", String::from_utf8_lossy(&out.stdout));
    // --ca, and a plain-HTTP client against it fails.
    let q = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxpipe"));
        cmd.args(["queue", "--api", &api.to_string()]).args(args).arg("list").env("MXPIPE_API_TOKEN", &admin);
        cmd.output().unwrap()
    };
    let ca = dir.join("ca.crt").display().to_string();
    assert!(q(&["--ca", &ca]).status.success());
    let out = q(&[]);
    assert!(!out.status.success(), "plain HTTP to the TLS port worked");
    // A CA that did not sign it: refused.
    let other = mxpipe::tls::certs::generate(&["localhost".into()]).unwrap();
    std::fs::write(dir.join("other.crt"), &other.ca_pem).unwrap();
    let out = q(&["--ca", &dir.join("other.crt").display().to_string()]);
    assert!(!out.status.success(), "a certificate from another CA was trusted");
    assert!(terminate(d));
}

#[test]
fn a_slow_client_is_cut_off_and_others_are_served() {
    let (d, s, _) = daemon("http-slow", "header_timeout = \"1s\"\nbody_timeout = \"1s\"\n");
    let api = s.http;

    // Half a header, then nothing.
    let mut slow = Conn::open(api);
    let t0 = Instant::now();
    slow.send(&format!("GET /v1/queues HTTP/1.1\r\nHost: {api}\r\nX-Slow: "));
    // Meanwhile another client is served at once.
    let a = ask(api, "GET", "/v1/queues", &[], "");
    assert_eq!(a.code, 200);
    assert!(t0.elapsed() < Duration::from_millis(900), "the other client waited {:?}", t0.elapsed());
    match slow.answer() {
        None => {}
        Some(a) => assert_eq!(a.code, 408, "{a:?}"),
    }
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "cut off after {waited:?}");

    // Headers in time, then half the body: 408 and closed, nothing spooled.
    let mut slow = Conn::open(api);
    let t0 = Instant::now();
    slow.send(&format!("POST /v1/messages HTTP/1.1\r\nHost: {api}\r\n{JSON}\r\nContent-Length: {}\r\n\r\n{}", MSG.len(), &MSG[..10]));
    let a = slow.answer().expect("an answer to a slow body");
    assert_eq!(a.code, 408, "{a:?}");
    assert!(a.head.contains("connection: close"), "{a:?}");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    accepted(api, &[], 0);

    // An idle keep-alive connection is closed after header_timeout too.
    let mut idle = Conn::open(api);
    idle.send(&req(&api.to_string(), "GET", "/v1/queues", &[], ""));
    assert_eq!(idle.answer().unwrap().code, 200);
    let t0 = Instant::now();
    assert!(idle.closed());
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(terminate(d));
}

#[test]
fn connection_cap_and_requests_per_connection() {
    let (d, s, _) = daemon("http-conns", "max_conns = 2\nmax_requests_per_conn = 3\nheader_timeout = \"20s\"\n");
    let api = s.http;
    let get = req(&api.to_string(), "GET", "/v1/queues", &[], "");

    // Two connections, each with a request answered and kept alive.
    let mut first = Conn::open(api);
    let mut second = Conn::open(api);
    for c in [&mut first, &mut second] {
        c.send(&get);
        let a = c.answer().unwrap();
        assert_eq!(a.code, 200);
        assert!(!a.head.contains("connection: close"), "{a:?}");
    }
    // A third: 503, closed.
    let mut third = Conn::open(api);
    third.send(&get);
    let a = third.answer().expect("an answer to the extra connection");
    assert_eq!(a.code, 503, "{a:?}");
    assert!(third.closed(), "the extra connection was kept open");
    // The first two still work; the third request on one is its last.
    second.send(&get);
    assert_eq!(second.answer().unwrap().code, 200);
    second.send(&get);
    let a = second.answer().unwrap();
    assert_eq!(a.code, 200);
    assert!(a.head.contains("connection: close"), "the 3rd request of 3: {a:?}");
    assert!(second.closed(), "open after max_requests_per_conn");
    // Its slot is free again.
    let mut again = None;
    for _ in 0..50 {
        let mut c = Conn::open(api);
        c.send(&get);
        if let Some(a) = c.answer().filter(|a| a.code == 200) {
            again = Some(a);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(again.is_some(), "the freed slot was not reused");
    first.send(&get);
    assert_eq!(first.answer().unwrap().code, 200);
    assert!(terminate(d));
}
