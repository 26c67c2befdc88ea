//! `mxpipe serve` as a child process for the daemon tests: a config written from a few
//! settings, start (waiting for its readiness line), SIGTERM, SMTP and HTTP injection, and
//! what a destination sink wrote to disk.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Client;
use mxpipe::sink::{Sink, SinkConfig};
use mxpipe::tls::{self, ServerResumption};

/// A port free on `ip` a moment ago.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap()
}

/// A fresh, empty directory for one test.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxpipe-serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A destination sink (STARTTLS only) on `ip:port`, writing what it accepts to `dir`.
pub async fn sink_on(ip: Ipv4Addr, port: u16, dir: &Path, adjust: impl FnOnce(&mut SinkConfig)) -> Sink {
    let pki = tls::certs::generate(&["localhost".into()]).unwrap();
    let mut c = SinkConfig::new(tls::server_config(pki.identity, ServerResumption::default()).unwrap());
    c.listen = vec![IpAddr::V4(ip)];
    c.starttls_port = Some(port);
    c.implicit_port = None;
    mxpipe::sink::MailDir::install(&mut c, dir);
    adjust(&mut c);
    Sink::start(c).await.unwrap()
}

/// What goes into a test daemon's config file. `new` gives fast retries (1-2 s), short
/// timeouts and a delivery log in the test directory; change fields before `write`.
pub struct Setup {
    pub dns: SocketAddr,
    /// Port of the destination sinks (`[ports] smtp` and `smtps`).
    pub smtp_port: u16,
    pub inject: SocketAddr,
    pub http: SocketAddr,
    /// `allowed_networks`, as TOML array items.
    pub allowed: String,
    pub spool: PathBuf,
    /// Extra lines in `[engine]`.
    pub engine: String,
    /// The whole `[retry]` table body.
    pub retry: String,
    /// Extra lines in `[inject.smtp]`.
    pub inject_smtp: String,
    /// Extra lines in `[log]`.
    pub log: String,
    /// Extra lines in `[inject.http]`.
    pub inject_http: String,
    /// Appended at the end (more tables, `[[domain]]` entries).
    pub tail: String,
}

impl Setup {
    pub fn new(dir: &Path, dns: SocketAddr, smtp_port: u16) -> Setup {
        Setup {
            dns,
            smtp_port,
            inject: free_addr(),
            http: free_addr(),
            allowed: r#""127.0.0.0/8""#.into(),
            spool: dir.join("spool"),
            engine: String::new(),
            retry: "initial = \"1s\"\nmax_interval = \"2s\"\nmax_age = \"1h\"\n".into(),
            inject_smtp: String::new(),
            log: String::new(),
            inject_http: String::new(),
            tail: String::new(),
        }
    }

    /// Write `dir/mxpipe.toml` and return its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let cfg = format!(
            r#"
[engine]
ehlo_name = "serve.test"
connect_timeout = "2s"
command_timeout = "10s"
idle_timeout = "1s"
{engine}
[dns]
nameserver = "{dns}"

[ports]
smtp = {port}
smtps = {port}

[spool]
dir = "{spool}"

[retry]
{retry}
[inject.smtp]
listen = "{inject}"
allowed_networks = [{allowed}]
{inject_smtp}
[inject.http]
listen = "{http}"
{inject_http}

[log]
delivery_log = "{log}"
{log_extra}
{tail}
"#,
            engine = self.engine,
            dns = self.dns,
            port = self.smtp_port,
            spool = self.spool.display(),
            retry = self.retry,
            inject = self.inject,
            allowed = self.allowed,
            inject_smtp = self.inject_smtp,
            http = self.http,
            inject_http = self.inject_http,
            log = dir.join("delivery.jsonl").display(),
            log_extra = self.log,
            tail = self.tail,
        );
        let path = dir.join("mxpipe.toml");
        std::fs::write(&path, cfg).unwrap();
        path
    }
}

/// A running `mxpipe serve`; killed if dropped (a failing test must not leave it running).
pub struct Daemon {
    pub child: Child,
    pub inject: SocketAddr,
    /// The first line serve printed (its listeners and how many messages it recovered).
    pub banner: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// The N of "(N unfinished messages recovered)" in the first line.
    pub fn recovered(&self) -> usize {
        let (head, _) = self.banner.rsplit_once(" unfinished messages recovered").expect(&self.banner);
        head.rsplit('(').next().and_then(|n| n.parse().ok()).expect(&self.banner)
    }

    /// `kill -9`, and wait for it to be gone.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Start `mxpipe serve --config config` and wait until it says it listens.
pub fn start_daemon(config: &Path, inject: SocketAddr) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("serve prints its listener").unwrap();
    assert!(first.contains("injection SMTP on"), "{first}");
    std::thread::spawn(move || for _ in lines {});
    Daemon { child, inject, banner: first }
}

/// Run `mxpipe serve --config config` that is expected to exit by itself (a configuration it
/// must refuse) within `limit`; its output. Kills it and fails the test if it is still running.
pub fn serve_expecting_exit(config: &Path, limit: Duration) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            panic!("serve started; it should have refused this configuration: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// SIGTERM, and wait (30 s at most) for a clean exit: true if it exited with success.
pub fn terminate(mut d: Daemon) -> bool {
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Some(s) = d.child.try_wait().unwrap() {
            return s.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    d.child.kill().unwrap();
    panic!("serve did not stop within 30 s of SIGTERM");
}

/// Inject one message over SMTP; true if the daemon acknowledged it (250 after the data).
pub async fn inject(addr: SocketAddr, from: &str, to: &str, subject: &str) -> bool {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app.test").await, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).await, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n")).await;
    let ok = c.reply().await.code == 250;
    let _ = c.cmd("QUIT").await;
    ok
}

/// Subjects of the messages a sink wrote to `dir`.
pub fn subjects(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "eml") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.starts_with("Subject: ")) {
                v.push(l["Subject: ".len()..].to_string());
            }
        }
    }
    v
}

/// Poll `f` every 50 ms until it holds; fail the test after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, body). Blocking.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    (code, body)
}

/// [`http`] from async code.
pub async fn http_async(addr: SocketAddr, method: &'static str, path: String, body: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || http(addr, method, &path, &body)).await.unwrap()
}
