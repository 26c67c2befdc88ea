//! An HTTPS server for the tests: an axum `Router` behind tokio-rustls and hyper's HTTP/1,
//! one task per connection, every connection (handshake included) and the server itself
//! bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use mxpipe::tls::{self, Identity, ServerResumption};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long one connection (its handshake and its requests) may last.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// Serve `app` over HTTPS with `identity` on `bind` until `lifetime` has passed or the
/// returned task is aborted; the address it listens on. A failed handshake only ends that
/// connection: the client reports it, and that is what some tests are about.
pub async fn serve_https(bind: SocketAddr, identity: Identity, app: Router, lifetime: Duration) -> (SocketAddr, JoinHandle<()>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(identity, ServerResumption::default()).unwrap());
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let serve = async {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(tokio::time::timeout(CONNECTION_LIFETIME, async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                }));
            }
        };
        let _ = tokio::time::timeout(lifetime, serve).await;
    });
    (addr, task)
}
