//! A real `redis-server` for one test: started on a free loopback port with no persistence
//! (`--save '' --appendonly no`), stopped (SIGKILL, as a crash) and restarted on the same
//! port, and stopped for good when dropped. Absent binary: a SKIPPED banner, or a failure
//! with `MXPIPE_REQUIRE_PEERS` set.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One redis-server child process.
pub struct Redis {
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
}

fn binary() -> Option<PathBuf> {
    // Set: that binary, or none at all if it is not there (how the SKIPPED path is tried).
    if let Ok(p) = std::env::var("MXPIPE_REDIS_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    for d in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/sbin"]) {
        let p = PathBuf::from(d).join("redis-server");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// Whether Redis on `port` answers PING.
pub fn pings(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Redis {
    /// A redis-server on a free port, or `None` after a SKIPPED banner.
    pub fn start(test: &str) -> Option<Redis> {
        let Some(bin) = binary() else {
            if std::env::var("MXPIPE_REQUIRE_PEERS").is_ok() {
                panic!("{test}: MXPIPE_REQUIRE_PEERS is set but redis-server is not installed");
            }
            let line = "#".repeat(78);
            // Straight to stderr, past the test harness's capture: it shows when the test passes.
            let banner = format!(
                "\n{line}\n  SKIPPED {test}: no redis-server on PATH.\n  \
                 Install it (apt-get install redis-server) or run `bash scripts/test-all.sh`.\n{line}\n"
            );
            let _ = std::io::stderr().write_all(banner.as_bytes());
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis { port, bin, child: None };
        r.restart();
        Some(r)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kill it (SIGKILL: as a crash) and wait until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it (again) on the same port, empty, and wait until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let t = Instant::now();
        while !pings(self.port) {
            assert!(t.elapsed() < Duration::from_secs(10), "redis-server did not answer on port {} within 10 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
