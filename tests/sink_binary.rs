//! The `mxpipe sink` binary as a user runs it: a separate process, ten thousand connections
//! open at once, SIGTERM, the stats file, and clear errors for bad flags.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mxpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mxpipe"))
}

/// Start `mxpipe sink` on ephemeral ports and read the addresses it prints.
fn spawn_sink(extra: &[&str], stats: &std::path::Path) -> (Child, SocketAddr, SocketAddr) {
    let mut child = mxpipe()
        .args(["sink", "--starttls-port", "0", "--implicit-port", "0", "--duration", "120", "--stats-json"])
        .arg(stats)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run mxpipe");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |kind: &str| -> SocketAddr {
        let line = lines.next().expect("sink printed its listeners").unwrap();
        let prefix = format!("mxpipe sink: {kind} on ");
        line.strip_prefix(&prefix).unwrap_or_else(|| panic!("unexpected line {line:?}")).parse().unwrap()
    };
    let st = addr("starttls");
    let im = addr("implicit");
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, st, im)
}

fn terminate(mut child: Child) -> std::process::ExitStatus {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("sink did not exit within 10 s of SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_at_once_then_sigterm() {
    const N: usize = 10_000;
    mxpipe::sys::raise_nofile_limit().unwrap();
    let stats = std::env::temp_dir().join(format!("mxpipe-sink-10k-{}.json", std::process::id()));
    let (child, addr, _) = spawn_sink(&[], &stats);
    let all_open = Arc::new(tokio::sync::Barrier::new(N));
    let connects = Arc::new(tokio::sync::Semaphore::new(1000));
    let mut tasks = Vec::with_capacity(N);
    for _ in 0..N {
        let all_open = all_open.clone();
        let connects = connects.clone();
        tasks.push(tokio::spawn(async move {
            let permit = connects.acquire().await.unwrap();
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut buf = [0u8; 128];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"220 "), "{:?}", String::from_utf8_lossy(&buf[..n]));
            drop(permit);
            all_open.wait().await;
            s.write_all(b"QUIT\r\n").await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert!(rest.starts_with(b"221 "));
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("10k sessions finished in time");
    assert!(terminate(child).success());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(json["starttls"]["connections"], N as u64);
    assert_eq!(json["rejected_busy"], 0);
    assert_eq!(json["sessions_aborted"], 0);
    let _ = std::fs::remove_file(stats);
}

#[test]
fn bad_flags_give_clear_errors() {
    let out = mxpipe().args(["sink", "--temp-fail-rate", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a probability"));

    let out = mxpipe().args(["sink", "--starttls-port", "seventy"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a port number"));

    let out = mxpipe().args(["sink", "--cert", "/nonexistent/cert.pem", "--key", "/nonexistent/key.pem"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read PEM from /nonexistent/cert.pem"), "{err}");

    let out = mxpipe().args(["sink", "--starttls-port", "off", "--implicit-port", "off"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no listener"));

    let out = mxpipe().args(["sink", "--frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = mxpipe().args(["sink", "--starttls-port", &port, "--implicit-port", "off"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
}
