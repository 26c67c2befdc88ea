//! Shared by the integration tests: start a sink on ephemeral loopback ports, and a minimal
//! SMTP client over a real socket (plain or TLS) that reads replies with the library's parser.
#![allow(dead_code)]

pub mod daemon;
pub mod engine;
pub mod https;
pub mod tmpfs;

use std::sync::Arc;
use std::time::Duration;

use mxpipe::reply::{parse_reply, Reply};
use mxpipe::sink::{Sink, SinkConfig};
use mxpipe::tls::{self, ClientOptions, ClientResumption, GeneratedPki, Kx, ServerResumption, Verify};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const T: Duration = Duration::from_secs(10);

/// Start a sink on 127.0.0.1 with ephemeral ports and a fresh CA, after letting the test
/// adjust the config.
pub async fn start_sink(adjust: impl FnOnce(&mut SinkConfig)) -> (Sink, GeneratedPki) {
    start_sink_with(ServerResumption::default(), adjust).await
}

pub async fn start_sink_with(res: ServerResumption, adjust: impl FnOnce(&mut SinkConfig)) -> (Sink, GeneratedPki) {
    let pki = tls::certs::generate(&["localhost".into()]).unwrap();
    let server = tls::server_config(pki.identity.clone(), res).unwrap();
    let mut cfg = SinkConfig::new(server);
    cfg.starttls_port = Some(0);
    cfg.implicit_port = Some(0);
    adjust(&mut cfg);
    (Sink::start(cfg).await.unwrap(), pki)
}

/// A verifying client config trusting only the sink's CA.
pub fn client_tls(pki: &GeneratedPki) -> Arc<rustls::ClientConfig> {
    let opts = ClientOptions {
        verify: Verify::Roots(Arc::new(pki.roots())),
        kx: Kx::X25519,
        resumption: ClientResumption::Off,
        tls12_only: false,
    };
    tls::client_config(&opts, None).unwrap()
}

/// A client config that encrypts without verifying (a server with a generated self-signed
/// certificate, like `mxpipe serve` without `[inject.smtp.tls]`).
pub fn client_tls_unverified() -> Arc<rustls::ClientConfig> {
    let opts = ClientOptions { verify: Verify::None, kx: Kx::X25519, resumption: ClientResumption::Off, tls12_only: false };
    tls::client_config(&opts, None).unwrap()
}

pub struct Client<S> {
    pub io: S,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        Client { io: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    /// Connect from a chosen local address (e.g. one of 127/8, to be inside or outside a
    /// server's allowed networks).
    pub async fn connect_from(addr: std::net::SocketAddr, from: std::net::IpAddr) -> Self {
        let sock = if from.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.unwrap();
        sock.bind(std::net::SocketAddr::new(from, 0)).unwrap();
        Client { io: sock.connect(addr).await.unwrap(), buf: Vec::new() }
    }

    /// Upgrade after a `220` to STARTTLS (or straight away, for implicit TLS).
    pub async fn tls(self, cfg: Arc<rustls::ClientConfig>) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
        assert!(self.buf.is_empty(), "bytes pending before TLS: {:?}", String::from_utf8_lossy(&self.buf));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let io = tokio_rustls::TlsConnector::from(cfg).connect(name, self.io).await.unwrap();
        Client { io, buf: Vec::new() }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub async fn send(&mut self, s: impl AsRef<[u8]>) {
        self.io.write_all(s.as_ref()).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next reply, or `None` if the server closed the connection first.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        loop {
            if let Some((r, n)) = parse_reply(&self.buf).expect("server sent a malformed reply") {
                self.buf.drain(..n);
                return Some(r);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(T, self.io.read(&mut chunk)).await.expect("reply timed out").unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn reply(&mut self) -> Reply {
        self.try_reply().await.expect("connection closed before a reply")
    }

    /// Send a command and return the reply code.
    pub async fn cmd(&mut self, s: &str) -> u16 {
        self.send(format!("{s}\r\n")).await;
        self.reply().await.code
    }

    /// Read until the server closes; return what came (must be nothing unexpected).
    pub async fn expect_close(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buf);
        let _ = tokio::time::timeout(T, self.io.read_to_end(&mut rest)).await.expect("server did not close");
        rest
    }

    /// True if nothing arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(wait, self.io.read(&mut chunk)).await {
            Err(_) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Ok(Err(_)) => false,
        }
    }
}
