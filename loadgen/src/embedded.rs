//! `--embedded-sink`: run mxpipe's own sink in this process, on ephemeral loopback ports with a
//! freshly generated CA, so one command measures handshakes with verifying TLS on a machine
//! with nothing installed. Client and server then share the same cores, which halves what
//! either can do: use it to try the tool and to compare runs, not as a capacity figure.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use mxpipe::sink::{PortKind, Sink, SinkConfig, StatsSnapshot};
use mxpipe::tls::{certs, server_config, ServerResumption, Verify};

use crate::config::{Config, LoadgenError};

/// A sink started for one run; [`EmbeddedSink::stop`] shuts it down.
pub struct EmbeddedSink {
    sink: Sink,
}

impl EmbeddedSink {
    /// Start a sink on 127.0.0.1 (both port kinds, ephemeral ports) and point `cfg` at it:
    /// host, both ports, server name `localhost`, and, unless `cfg.verify` is already
    /// [`Verify::None`], trust in the generated CA only.
    pub async fn start(cfg: &mut Config) -> Result<EmbeddedSink, LoadgenError> {
        let err = |e: String| LoadgenError::EmbeddedSink(e);
        let pki = certs::generate(&["localhost".into()]).map_err(|e| err(e.to_string()))?;
        let tls = server_config(pki.identity.clone(), ServerResumption::default()).map_err(|e| err(e.to_string()))?;
        let mut sc = SinkConfig::new(tls);
        sc.listen = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        sc.starttls_port = Some(0);
        sc.implicit_port = Some(0);
        let sink = Sink::start(sc).await.map_err(|e| err(e.to_string()))?;
        let port = |k| sink.addr(k).map(|a| a.port());
        cfg.host = "127.0.0.1".into();
        cfg.server_name = "localhost".into();
        cfg.starttls_port = port(PortKind::StartTls);
        cfg.implicit_port = port(PortKind::Implicit);
        if !matches!(cfg.verify, Verify::None) {
            cfg.verify = Verify::Roots(Arc::new(pki.roots()));
        }
        Ok(EmbeddedSink { sink })
    }

    /// Stop the sink (a second of grace for sessions still open) and return its counters.
    pub async fn stop(self) -> StatsSnapshot {
        self.sink.shutdown(Duration::from_secs(1)).await.stats
    }
}
