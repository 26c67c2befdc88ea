//! `mxpipe-loadgen sweep` against the embedded sink: the knee found where the sink's
//! connection limit starts refusing, the steps after it not run, the sink's counters equal
//! to the sweep's, and the chart written as a PNG.

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

    let dir = std::env::temp_dir().join(format!("mxpipe-loadgen-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("sweep.png");
    mxpipe_loadgen::chart::draw(&r, &png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height.
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 1200);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 800);
    std::fs::remove_dir_all(&dir).unwrap();
}
