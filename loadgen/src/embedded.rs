//! `--embedded-sink`: run mxpipe's own sink in this process, on ephemeral loopback ports with a
//! freshly generated CA, so one command measures handshakes with verifying TLS on a machine
//! with nothing installed. Client and server then share the same cores, which halves what
//! either can do: use it to try the tool and to compare runs, not as a capacity figure.
//!
//! The sink runs on a tokio runtime of its own whose threads are a [`ThreadCpu`] group, so the
//! report can give the client's CPU and the sink's apart ([`Config::sink_threads`]).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use mxpipe::sink::{PortKind, Sink, SinkConfig, StatsSnapshot};
use mxpipe::tls::{certs, server_config, GeneratedPki, ServerResumption, Verify};

use crate::config::{Config, LoadgenError};
use crate::cpu::ThreadCpu;

/// A sink started for one run; [`EmbeddedSink::stop`] shuts it down.
pub struct EmbeddedSink {
    sink: Sink,
    runtime: tokio::runtime::Runtime,
    threads: Arc<ThreadCpu>,
}

impl EmbeddedSink {
    /// Start a sink on 127.0.0.1 (both port kinds, ephemeral ports) and point `cfg` at it:
    /// host, both ports, server name `localhost`, [`Config::sink_threads`], and, unless
    /// `cfg.verify` is already [`Verify::None`], trust in the generated CA only.
    pub async fn start(cfg: &mut Config) -> Result<EmbeddedSink, LoadgenError> {
        EmbeddedSink::start_with(cfg, |_, _| {}).await
    }

    /// [`EmbeddedSink::start`], letting `adjust` change the sink's settings first (faults,
    /// limits, its TLS configuration built from the generated identity).
    pub async fn start_with(cfg: &mut Config, adjust: impl FnOnce(&mut SinkConfig, &GeneratedPki)) -> Result<EmbeddedSink, LoadgenError> {
        let err = |e: String| LoadgenError::EmbeddedSink(e);
        let pki = certs::generate(&["localhost".into()]).map_err(|e| err(e.to_string()))?;
        let tls = server_config(pki.identity.clone(), ServerResumption::default()).map_err(|e| err(e.to_string()))?;
        let mut sc = SinkConfig::new(tls);
        sc.listen = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        sc.starttls_port = Some(0);
        sc.implicit_port = Some(0);
        adjust(&mut sc, &pki);
        let threads = Arc::new(ThreadCpu::new());
        let (on_start, on_stop) = (threads.clone(), threads.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("embedded-sink")
            .on_thread_start(move || on_start.register())
            .on_thread_stop(move || on_stop.unregister())
            .enable_all()
            .build()
            .map_err(|e| err(format!("its runtime: {e}")))?;
        let started = runtime.spawn(Sink::start(sc)).await.map_err(|e| err(e.to_string()))?;
        let sink = match started {
            Ok(s) => s,
            Err(e) => {
                runtime.shutdown_background();
                return Err(err(e.to_string()));
            }
        };
        let port = |k| sink.addr(k).map(|a| a.port());
        cfg.host = "127.0.0.1".into();
        cfg.server_name = "localhost".into();
        cfg.starttls_port = port(PortKind::StartTls);
        cfg.implicit_port = port(PortKind::Implicit);
        cfg.sink_threads = Some(threads.clone());
        if !matches!(cfg.verify, Verify::None) {
            cfg.verify = Verify::Roots(Arc::new(pki.roots()));
        }
        Ok(EmbeddedSink { sink, runtime, threads })
    }

    /// The sink's counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.sink.stats()
    }

    /// CPU time of the sink's threads so far.
    pub fn cpu(&self) -> Duration {
        self.threads.total()
    }

    /// Stop the sink (a second of grace for sessions still open) and return its counters.
    pub async fn stop(self) -> StatsSnapshot {
        let EmbeddedSink { sink, runtime, .. } = self;
        let stats = sink.stats();
        let done = runtime.spawn(sink.shutdown(Duration::from_secs(1))).await;
        // Dropping a runtime may block, which an async context must not: let it go in the
        // background (its tasks are finished by now).
        runtime.shutdown_background();
        done.map(|r| r.stats).unwrap_or(stats)
    }
}
