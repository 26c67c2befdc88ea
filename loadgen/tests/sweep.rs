//! `mxpipe-loadgen sweep` against the embedded sink: the knee found where the sink's
//! connection limit starts refusing, the steps after it not run, the sink's counters equal
//! to the sweep's, and the chart written as a PNG; and the same sweep against the Postfix
//! peer's STARTTLS and implicit-TLS ports (SKIPPED without it).

#[path = "../../tests/common/peers.rs"]
mod peers;

use std::time::Duration;

use mxpipe::tls::{ClientResumption, Kx, Verify};
use mxpipe_loadgen::embedded::EmbeddedSink;
use mxpipe_loadgen::sweep::{sweep, Steps, SweepConfig};
use mxpipe_loadgen::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_stops_at_the_knee_and_draws_its_chart() {
    let mut base = Config::new("127.0.0.1");
    base.verify = Verify::Roots(std::sync::Arc::new(rustls::RootCertStore::empty()));
    base.kx = Kx::X25519;
    let sink = EmbeddedSink::start_with(&mut base, |s, _| {
        // Three sessions at once (one more than 2 workers need, as a session's slot is freed
        // just after its close); each holds its slot for the delayed banner and QUIT replies.
        s.max_conns = 3;
        s.faults.delay = Duration::from_millis(30);
    })
    .await
    .unwrap();
    base.starttls_port = None;
    base.duration = Some(Duration::from_millis(400));
    base.warmup = Duration::from_millis(100);
    let sc = SweepConfig {
        base,
        steps: Steps::Concurrency(vec![1, 2, 8, 16]),
        p99_bound: None,
        series: vec![ClientResumption::Off, ClientResumption::Tickets],
    };
    let mut seen = 0;
    let r = tokio::time::timeout(Duration::from_secs(120), sweep(&sc, |_, _| seen += 1)).await.unwrap().unwrap();
    let s = sink.stop().await;
    assert_eq!(r.series.len(), 2);
    let mut attempts = 0;
    for series in &r.series {
        let loads: Vec<f64> = series.steps.iter().map(|s| s.load).collect();
        // Concurrency 8 is the first step over the sink's limit: the knee; 16 is not run.
        assert_eq!(loads, [1.0, 2.0, 8.0], "{}: {loads:?}", series.resume);
        assert!(series.steps[..2].iter().all(|s| s.knee.is_none() && s.ports[0].errors == 0), "{series:?}");
        let knee = series.steps[2].knee.as_deref().unwrap();
        assert!(knee.contains("errors"), "{knee}");
        attempts += series.steps.iter().map(|s| s.ports[0].attempts + s.ports[0].warmup_attempts).sum::<u64>();
    }
    assert_eq!(seen, 6);
    assert_eq!(s.implicit.connections, attempts);
    assert!(s.rejected_busy > 0);
    let resumed: u64 = r.series[1].steps.iter().map(|s| s.ports[0].resumed).sum();
    assert!(resumed > 0 && r.series[0].steps.iter().all(|s| s.ports[0].resumed == 0));
    assert!(r.to_table().contains("knee at concurrency 8"), "{}", r.to_table());
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["series"][0]["steps"][2]["load"], 8.0);

    assert_chart(&r, "sink");
}

/// The chart of `r` is written as a 1200x800 PNG.
fn assert_chart(r: &mxpipe_loadgen::sweep::SweepReport, name: &str) {
    let dir = std::env::temp_dir().join(format!("mxpipe-loadgen-sweep-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("sweep.png");
    mxpipe_loadgen::chart::draw(r, &png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height.
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 1200);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 800);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A short sweep of the Postfix peer, both ports (STARTTLS on one, implicit TLS on the
/// other), verified against its CA, full and resumed handshakes: every step is measured (no
/// knee at these loads), every figure is non-zero, every attempt is a success, and the
/// counts add up to what the load generator says it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_postfix_sweep_both_ports() {
    let Some(pf) = peers::postfix("interop_postfix_sweep_both_ports") else { return };
    let mut roots = rustls::RootCertStore::empty();
    mxpipe::tls::certs::add_roots_from_file(&mut roots, &pf.ca).expect("read the Postfix peer's CA");
    let mut base = Config::new(pf.addr.to_string());
    base.server_name = "localhost".into();
    base.verify = Verify::Roots(std::sync::Arc::new(roots));
    base.kx = Kx::X25519;
    base.starttls_port = Some(pf.starttls_port);
    base.implicit_port = Some(pf.implicit_port);
    base.duration = Some(Duration::from_millis(600));
    base.warmup = Duration::from_millis(200);
    let sc = SweepConfig {
        base,
        steps: Steps::Concurrency(vec![1, 4, 8]),
        // Far above what a loopback handshake with Postfix takes (tens of ms, with its
        // delayed-ACK stall), so only a real failure makes a knee.
        p99_bound: Some(Duration::from_secs(5)),
        series: vec![ClientResumption::Off, ClientResumption::Tickets],
    };
    let mut seen = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(120), sweep(&sc, |s, st| seen.push((s.to_string(), st.load))))
        .await
        .expect("the sweep ends in bounded time")
        .expect("the sweep runs");
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(r.series.iter().map(|s| s.resume.as_str()).collect::<Vec<_>>(), ["off", "tickets"]);
    for series in &r.series {
        let loads: Vec<f64> = series.steps.iter().map(|s| s.load).collect();
        assert_eq!(loads, [1.0, 4.0, 8.0], "{}: {}", series.resume, r.to_table());
        for st in &series.steps {
            assert!(st.knee.is_none(), "{:?}\n{}", st.knee, r.to_table());
            let ports: Vec<&str> = st.ports.iter().map(|p| p.tls.as_str()).collect();
            assert_eq!(ports, ["starttls", "implicit"]);
            for p in &st.ports {
                let at = format!("resume {} at {} on {}", series.resume, st.load, p.tls);
                assert!(p.attempts > 0 && p.warmup_attempts > 0, "{at}: {p:?}");
                assert_eq!((p.errors, p.missed), (0, 0), "{at}: {p:?}");
                assert_eq!(p.attempts, p.successes + p.errors, "{at}: {p:?}");
                // Every success went through its handshake; handshakes split into full and
                // resumed; the rate is the window's handshakes over the window.
                assert!(p.handshakes >= p.successes, "{at}: {p:?}");
                assert_eq!(p.handshakes, p.full + p.resumed, "{at}: {p:?}");
                assert!(p.handshakes_in_window > 0 && p.window_s > 0.0, "{at}: {p:?}");
                let rate = p.handshakes_in_window as f64 / p.window_s;
                assert!(p.handshakes_per_s > 0.0 && (p.handshakes_per_s - rate).abs() < 1e-6 * rate, "{at}: {p:?}");
                assert!(p.p50_us > 0 && p.p99_us >= p.p50_us, "{at}: {p:?}");
                assert!(p.client_cpu_s > 0.0, "{at}: {p:?}");
                if series.resume == "off" {
                    assert_eq!(p.resumed, 0, "{at}: {p:?}");
                }
            }
        }
    }
    // Postfix issues a ticket after each full handshake, so about every second connection of
    // the tickets series resumes, on both ports.
    for port in 0..2 {
        let resumed: u64 = r.series[1].steps.iter().map(|s| s.ports[port].resumed).sum();
        let full: u64 = r.series[1].steps.iter().map(|s| s.ports[port].full).sum();
        assert!(resumed > 0 && full > 0, "port {port}: {resumed} resumed, {full} full\n{}", r.to_table());
    }
    let table = r.to_table();
    assert!(table.contains("== resume tickets ==") && table.contains("implicit") && !table.contains("knee at concurrency"), "{table}");
    assert_chart(&r, "postfix");
}
