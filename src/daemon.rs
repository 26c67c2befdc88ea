//! `mxpipe serve`: the delivery engine as a service that never loses an accepted message.
//!
//! Injection ([`crate::inject`]: SMTP and HTTP, one intake) → spool
//! (acknowledged only once durable) → queue manager (its own thread: submission to the engine,
//! attempts recorded, retries, expiry, bounces, suspensions) → engine (with the `[[domain]]`
//! connection and rate limits). On stop: injection stops accepting and finishes its open
//! sessions, the engine finishes the transactions under way and gives back what it has not
//! started within a grace period, the spool is flushed; anything unfinished is delivered after
//! the next start.
//!
//! The HTTP API ([`crate::inject::http`]) injects too, shows messages, queues and metrics, and takes
//! the operator's commands (`mxpipe queue`).
//!
//! A client outside `[inject.smtp] allowed_networks` is refused at the greeting, unless
//! `[inject.smtp.auth] users_file` is set: then it must AUTH PLAIN ([`crate::auth`]) before MAIL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::inject::Intake;
use crate::policy::state::{PolicyState, StateOptions};
use crate::queue::board::Board;
use crate::queue::manager::{self, ManagerConfig, ManagerReport};
use crate::queue::spool::Spool;
use crate::smtp_server::PortKind;

/// What `serve` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServeReport {
    /// Messages accepted on the SMTP injection listener (those of the HTTP API are not counted).
    pub injected_messages: u64,
    /// The queue manager's counters at shutdown.
    pub manager: ManagerReport,
}

/// Run the daemon on the current tokio runtime until `stop` completes.
pub async fn serve(cfg: Config, stop: impl Future<Output = ()>) -> Result<ServeReport, String> {
    let mut engine_cfg = cfg.engine_config().map_err(|e| e.to_string())?;
    // Before anything starts: an anchor file that cannot be used stops the daemon, naming it.
    crate::dnssec::configure(&mut engine_cfg.resolver, &cfg.dns.trust_anchors).await.map_err(|e| format!("dns.trust_anchors: {e}"))?;
    // Before anything starts: a bad users file or certificate stops the daemon, naming it.
    let smtp_cfg = crate::inject::smtp::server_config(&cfg)?;
    let api_cfg = crate::inject::http::ApiConfig::load(&cfg.inject.http)?;
    // Before anything starts: a DKIM key file that cannot be used stops the daemon, naming it.
    let dkim = dkim_setup(&cfg)?;
    let spool_cfg = cfg.spool.clone();
    let dir = cfg.spool.dir.display().to_string();
    let (spool, recovered) = tokio::task::spawn_blocking(move || Spool::open(spool_cfg))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open the spool in {dir}: {e}"))?;
    let spool = Arc::new(spool);
    let recovered_n = recovered.len();
    // Pins live beside the spool: both are what this node must not forget.
    let state_opts = StateOptions { pin_ttl: cfg.policy.pin_ttl, ..StateOptions::default() };
    let state = Arc::new(PolicyState::open(&cfg.spool.dir, state_opts).map_err(|e| e.to_string())?);
    engine_cfg.state = Some(state.clone());
    let tlsrpt = tlsrpt_setup(&cfg, &engine_cfg)?;
    engine_cfg.tlsrpt = tlsrpt.as_ref().map(|t| t.store.clone());
    // Cluster mode: Redis may be down at start (the node then runs on its shares and says so).
    let cluster = match &cfg.cluster {
        Some(c) => Some(crate::cluster::Cluster::start(c.clone()).await.map_err(|e| format!("cluster: {e}"))?),
        None => None,
    };
    engine_cfg.cluster = cluster.clone();
    let (engine, outcomes) = crate::engine::Engine::start(engine_cfg).map_err(|e| e.to_string())?;

    let (acc_tx, acc_rx) = crossbeam_channel::unbounded();
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(1);
    let mcfg = ManagerConfig {
        retry: cfg.retry.clone(),
        reporting_mta: cfg.engine.ehlo_name.clone(),
        delivery_log: cfg.log.delivery_log.clone(),
        suspensions_file: Some(cfg.spool.dir.join("suspensions.json")),
        dkim: Some(dkim.dkim.clone()),
        cluster: cluster.clone(),
    };
    let board = Board::default();
    board.set_egress(engine.egress().cloned());
    let egress = engine.egress().cloned();
    let mspool = spool.clone();
    let mboard = board.clone();
    let manager = std::thread::Builder::new()
        .name("mxpipe-queue".into())
        .spawn(move || {
            let inputs = manager::Inputs { outcomes, accepted: acc_rx, control: ctl_rx, stop: stop_rx, ready: Some(ready_tx) };
            manager::run(mcfg, mspool, engine, recovered, inputs, mboard)
        })
        .map_err(|e| format!("cannot start the queue manager: {e}"))?;
    // Nothing is served before the manager has its state back (saved suspensions, recovered
    // messages): `GET /v1/queues` right after a restart must not show an empty queue.
    let ready = tokio::task::spawn_blocking(move || ready_rx.recv()).await;
    if !matches!(ready, Ok(Ok(()))) {
        return Err("the queue manager stopped while starting".into());
    }

    let mut intake = Intake::new(spool.clone(), acc_tx, board.clone());
    // Always a signer, with no keys when none is configured: a SIGHUP can then add some.
    let reload = cfg.source.clone().map(|path| spawn_dkim_reload(path, dkim.dkim.clone())).transpose()?;
    intake = intake.with_signer(dkim);
    if let Some(egress) = egress {
        // A message naming a pool (HTTP "pool", X-Mxpipe-Pool:) that is not configured is
        // refused at the door, not deferred for ever.
        intake = intake.with_pools(Arc::new(move |name: &str| egress.has_pool(name)));
    }
    let sink = crate::inject::smtp::start(smtp_cfg, intake.clone()).await?;
    board.set_injection_stats(sink.stats_reader());
    let reporter = tlsrpt.map(|t| t.start(intake.clone())).transpose()?;
    let summary = cluster.clone().map(|c| tokio::spawn(publish_summary(c, board.clone())));
    let mut api_cfg = api_cfg;
    api_cfg.cluster = cluster.clone();
    api_cfg.tlsrpt = reporter.as_ref().map(|(store, _)| store.clone());
    let api = crate::inject::http::start(api_cfg, intake, ctl_tx, state)
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
    if let Some(task) = summary {
        task.abort();
    }
    if let Some(task) = reload {
        task.abort();
    }
    tracing::info!("stopping: no new messages; finishing those in flight");
    let injected = sink.shutdown(Duration::from_secs(10)).await.stats.messages;
    api.shutdown().await;
    // Before the manager stops: a report being mailed goes through the spool.
    if let Some((_, task)) = reporter {
        task.shutdown().await;
    }
    let _ = stop_tx.send(());
    let report = tokio::task::spawn_blocking(move || manager.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the queue manager panicked; the spool keeps every unfinished message".to_string())?;
    // The engine is done: its connections are closed, their leases go back now rather than
    // at their TTL.
    if let Some(c) = &cluster {
        c.shutdown().await;
    }
    Ok(ServeReport { injected_messages: injected, manager: report })
}

/// The DKIM keys of `[[dkim]]` (perhaps none) and their signing threads.
fn dkim_setup(cfg: &Config) -> Result<crate::inject::Signer, String> {
    let dkim = Arc::new(crate::dkim::Dkim::load(&cfg.dkim)?);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = crate::dkim::workers::Workers::new(threads)?;
    if !dkim.is_empty() {
        tracing::info!(keys = dkim.len(), threads, "DKIM signing at intake");
    }
    Ok(crate::inject::Signer { dkim, workers })
}

/// On each SIGHUP, the `[[dkim]]` entries of the configuration file are read again and their
/// keys loaded, all or nothing: a file that does not parse or a key that cannot be used is
/// logged, naming it, and the keys in use stay. Other settings need a restart.
fn spawn_dkim_reload(path: std::path::PathBuf, dkim: Arc<crate::dkim::Dkim>) -> Result<tokio::task::JoinHandle<()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let p = path.clone();
            let d = dkim.clone();
            let r = tokio::task::spawn_blocking(move || {
                let cfg = Config::load(&p).map_err(|e| e.to_string())?;
                d.reload(&cfg.dkim)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match r {
                Ok(n) => {
                    tracing::info!(keys = n, file = %path.display(), "SIGHUP: DKIM keys reloaded (other settings need a restart)");
                    println!("mxpipe serve: DKIM keys reloaded: {n}");
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: DKIM keys NOT reloaded; the keys in use stay");
                    eprintln!("mxpipe serve: DKIM keys not reloaded (the keys in use stay): {e}");
                }
            }
        }
    }))
}

/// TLS-RPT (RFC 8460) for the daemon: the counters the engine feeds, kept in
/// [`crate::tlsrpt::store::FILE_NAME`] beside the spool and the policy state, and the settings
/// of the task that reports them.
struct TlsRptSetup {
    store: Arc<crate::tlsrpt::TlsRpt>,
    reporter: crate::tlsrpt::ReporterConfig,
    resolver: crate::resolve::ResolverConfig,
}

/// `[tlsrpt]` read and the counters opened; `None` when it is disabled.
fn tlsrpt_setup(cfg: &Config, engine: &crate::engine::EngineConfig) -> Result<Option<TlsRptSetup>, String> {
    if !cfg.tlsrpt.enabled {
        return Ok(None);
    }
    let (org, contact, sender) = cfg.tlsrpt.resolved(&cfg.engine.ehlo_name).map_err(|e| e.to_string())?;
    let path = cfg.spool.dir.join(crate::tlsrpt::store::FILE_NAME);
    let store = Arc::new(crate::tlsrpt::TlsRpt::open(Some(path), crate::tlsrpt::Limits::default())?);
    let https = crate::tlsrpt::deliver::https_for(engine).map_err(|e| format!("tlsrpt: {e}"))?;
    let mut reporter = crate::tlsrpt::ReporterConfig::new(&cfg.engine.ehlo_name, https);
    reporter.organization_name = org;
    reporter.contact_info = contact;
    reporter.sender = sender;
    reporter.max_delay = cfg.tlsrpt.max_delay;
    Ok(Some(TlsRptSetup { store, reporter, resolver: engine.resolver.clone() }))
}

impl TlsRptSetup {
    /// Start the reporter, mailing reports through `intake`.
    fn start(self, intake: Intake) -> Result<(Arc<crate::tlsrpt::TlsRpt>, crate::tlsrpt::deliver::ReporterTask), String> {
        let resolver = crate::resolve::MxResolver::new(self.resolver).map_err(|e| format!("tlsrpt: {e}"))?;
        let task = crate::tlsrpt::Reporter::new(self.store.clone(), resolver, Some(intake), self.reporter).spawn();
        Ok((self.store, task))
    }
}

/// Cluster mode: this node's queue summary (waiting recipients per destination), published
/// with its heartbeats for `GET /v1/cluster` and `mxpipe queue list --cluster`.
async fn publish_summary(c: Arc<crate::cluster::Cluster>, board: Board) {
    loop {
        let queues = board.queues();
        c.set_summary(&serde_json::json!({ "queues": queues }));
        tokio::time::sleep(c.config().heartbeat).await;
    }
}
