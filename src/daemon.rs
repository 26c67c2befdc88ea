//! `mxpipe serve`: the delivery engine as a service that never loses an accepted message.
//!
//! Injection (SMTP, the sink's server session with the spool as its acceptor) → spool
//! (acknowledged only once durable) → queue manager (its own thread: submission to the engine,
//! attempts recorded, retries, expiry, bounces, suspensions) → engine (with the `[[domain]]`
//! connection and rate limits). On stop: injection stops accepting and finishes its open
//! sessions, the engine finishes the transactions under way and gives back what it has not
//! started within a grace period, the spool is flushed; anything unfinished is delivered after
//! the next start.
//!
//! The HTTP API ([`crate::api`]) injects too, shows messages, queues and metrics, and takes
//! the operator's commands (`mxpipe queue`).
//!
//! A client outside `[inject.smtp] allowed_networks` is refused at the greeting, unless
//! `[inject.smtp.auth] users_file` is set: then it must AUTH PLAIN ([`crate::auth`]) before MAIL.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::queue::board::Board;
use crate::queue::manager::{self, Intake, ManagerConfig, ManagerReport};
use crate::queue::spool::Spool;
use crate::sink::{Acceptor, AcceptorRef, PortKind, Sink, SinkAuth, SinkConfig};
use crate::tls;

/// What `serve` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServeReport {
    pub injected_messages: u64,
    pub manager: ManagerReport,
}

/// The injection listener's acceptor: a message is acknowledged only after the spool has it
/// on disk ([`Intake::accept`]).
struct SpoolAcceptor(Intake);

impl Acceptor for SpoolAcceptor {
    fn accept(
        &self,
        from: Vec<u8>,
        rcpts: Vec<Vec<u8>>,
        data: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            let from = String::from_utf8(from).map_err(|_| "sender is not UTF-8".to_string())?;
            let rcpts: Vec<String> =
                rcpts.into_iter().map(String::from_utf8).collect::<Result<_, _>>().map_err(|_| "recipient is not UTF-8".to_string())?;
            let ids = self.0.accept(vec![(from, rcpts, data.into())]).await.map_err(|e| {
                if e.is_disk_full() {
                    "spool disk full".to_string()
                } else {
                    format!("spool error: {e}")
                }
            })?;
            // One message in, one id out.
            ids.first().map(|id| format!("{id:X}")).ok_or_else(|| "spool returned no id".to_string())
        })
    }
}

/// Run the daemon on the current tokio runtime until `stop` completes.
pub async fn serve(cfg: Config, stop: impl Future<Output = ()>) -> Result<ServeReport, String> {
    let engine_cfg = cfg.engine_config().map_err(|e| e.to_string())?;
    // Before anything starts: a bad users file stops the daemon with the file and line.
    let auth = match &cfg.inject.smtp.auth.users_file {
        Some(path) => {
            let users = crate::auth::Users::load(path).map_err(|e| format!("inject.smtp.auth.users_file: {e}"))?;
            let mut a = SinkAuth::new(Arc::new(users));
            a.require_tls = cfg.inject.smtp.auth.require_starttls;
            Some(a)
        }
        None => None,
    };
    let spool_cfg = cfg.spool.clone();
    let dir = cfg.spool.dir.display().to_string();
    let (spool, recovered) = tokio::task::spawn_blocking(move || Spool::open(spool_cfg))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open the spool in {dir}: {e}"))?;
    let spool = Arc::new(spool);
    let recovered_n = recovered.len();
    let (engine, outcomes) = crate::engine::Engine::start(engine_cfg).map_err(|e| e.to_string())?;

    let (acc_tx, acc_rx) = crossbeam_channel::unbounded();
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let mcfg = ManagerConfig {
        retry: cfg.retry.clone(),
        reporting_mta: cfg.engine.ehlo_name.clone(),
        delivery_log: cfg.log.delivery_log.clone(),
        suspensions_file: Some(cfg.spool.dir.join("suspensions.json")),
    };
    let board = Board::default();
    let mspool = spool.clone();
    let mboard = board.clone();
    let manager = std::thread::Builder::new()
        .name("mxpipe-queue".into())
        .spawn(move || {
            let inputs = manager::Inputs { outcomes, accepted: acc_rx, control: ctl_rx, stop: stop_rx };
            manager::run(mcfg, mspool, engine, recovered, inputs, mboard)
        })
        .map_err(|e| format!("cannot start the queue manager: {e}"))?;

    // The injection listener: STARTTLS offered with the configured or a generated certificate.
    let inject = &cfg.inject.smtp;
    let identity = match (&inject.tls.cert, &inject.tls.key) {
        (Some(c), Some(k)) => tls::certs::load_identity(c, k).map_err(|e| e.to_string())?,
        _ => tls::certs::generate(std::slice::from_ref(&cfg.engine.ehlo_name)).map_err(|e| e.to_string())?.identity,
    };
    let server_tls = tls::server_config(identity, tls::ServerResumption::default()).map_err(|e| e.to_string())?;
    let mut sc = SinkConfig::new(server_tls);
    let listen: IpAddr = inject.listen.ip();
    sc.listen = vec![listen];
    sc.starttls_port = Some(inject.listen.port());
    sc.implicit_port = None;
    sc.hostname = cfg.engine.ehlo_name.clone();
    let intake = Intake::new(spool.clone(), acc_tx, board.clone());
    sc.acceptor = Some(AcceptorRef(Arc::new(SpoolAcceptor(intake.clone()))));
    sc.allowed_clients = Some(inject.allowed_networks.clone());
    sc.auth = auth;
    sc.idle_timeout = inject.idle_timeout;
    let sink = Sink::start(sc).await.map_err(|e| format!("cannot start the injection listener: {e}"))?;
    board.set_injection_stats(sink.stats_reader());
    let api = crate::api::start(cfg.inject.http.listen, intake, ctl_tx)
        .await
        .map_err(|e| format!("cannot start the HTTP API on {}: {e}", cfg.inject.http.listen))?;
    let inject_addr = sink.addr(PortKind::StartTls).map_or_else(|| "?".into(), |a| a.to_string());
    tracing::info!(inject = %inject_addr, http = %api.addr, spool = %cfg.spool.dir.display(), recovered = recovered_n, "serving");
    // The announcement on stdout stays: scripts and tests wait for this line.
    println!(
        "mxpipe serve: injection SMTP on {}, HTTP API on {}; spool {} ({} unfinished messages recovered)",
        inject_addr,
        api.addr,
        cfg.spool.dir.display(),
        recovered_n
    );

    stop.await;
    tracing::info!("stopping: no new messages; finishing those in flight");
    let injected = sink.shutdown(Duration::from_secs(10)).await.stats.messages;
    api.shutdown().await;
    let _ = stop_tx.send(());
    let report = tokio::task::spawn_blocking(move || manager.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the queue manager panicked; the spool keeps every unfinished message".to_string())?;
    Ok(ServeReport { injected_messages: injected, manager: report })
}
