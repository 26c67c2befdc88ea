//! [`Reporter`]: the daemon's task that sends each day's reports (RFC 8460 §5).
//!
//! Once a day, a random delay after 00:00 UTC (so that senders do not all report at once),
//! and once at start for days a restart left unsent: for every day that ended, look up the
//! domain's `_smtp._tls` record; no valid record, no report (the counts are dropped). Each
//! `rua` gets the gzipped report: `https:` by POST through the MTA-STS fetcher's bounded
//! HTTPS client ([`crate::policy::mta_sts::fetch::post`]), `mailto:` as a message injected into
//! the daemon's own spool ([`crate::inject::Intake`]), which the engine then delivers like any
//! mail. A report that reached no destination stays for a retry ([`ReporterConfig::retry_every`])
//! until [`ReporterConfig::give_up_after`] has passed since its day ended; then it is dropped,
//! and the log says so.
//!
//! It does not count (that is [`super::TlsRpt`]) and does not sign the mail (no DKIM yet).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::record::{https_target, select_record, Record, Rua};
use super::report::{gzip, mail_message, report_json, ReportMeta, GZIP_MEDIA_TYPE};
use super::store::{DayAggregate, TlsRpt};
use crate::inject::Intake;
use crate::policy::mta_sts::fetch::{post, FetchConfig, Post};
use crate::resolve::MxResolver;

/// Destinations of one record that get a report; the rest of a longer `rua` list are ignored,
/// so that one record cannot make the daemon send without bound.
pub const MAX_DESTINATIONS: usize = 8;

/// Default for [`ReporterConfig::max_delay`].
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(3600);

/// How reports are made and sent.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// `organization-name` in every report.
    pub organization_name: String,
    /// `contact-info` in every report.
    pub contact_info: String,
    /// The report submitter (§5.3 `TLS-Report-Submitter`, the file name's first part): the
    /// sending MTA's domain, e.g. the EHLO name.
    pub submitter: String,
    /// Envelope sender and `From` of mailed reports.
    pub sender: String,
    /// Most time after 00:00 UTC before the day's reports go (a random part of it); zero
    /// sends at once.
    pub max_delay: Duration,
    /// When some report reached none of its destinations: try again after this.
    pub retry_every: Duration,
    /// Drop a report not sent this long after its day ended.
    pub give_up_after: Duration,
    /// How often the counters are written to their file while the daemon runs.
    pub flush_every: Duration,
    /// How `https:` destinations are reached: roots, port, time and size bounds.
    pub https: FetchConfig,
}

impl ReporterConfig {
    /// Defaults for the sender `submitter` (the EHLO name): organization `submitter`, contact
    /// and sender `tlsrpt-noreply@<submitter>`, up to an hour's delay, an hourly retry,
    /// dropped after two days, counters written every 30 s.
    pub fn new(submitter: &str, https: FetchConfig) -> ReporterConfig {
        let noreply = format!("tlsrpt-noreply@{submitter}");
        ReporterConfig {
            organization_name: submitter.to_string(),
            contact_info: noreply.clone(),
            submitter: submitter.to_string(),
            sender: noreply,
            max_delay: DEFAULT_MAX_DELAY,
            retry_every: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(2 * 86_400),
            flush_every: Duration::from_secs(30),
            https,
        }
    }
}

/// How the engine `e` would reach an HTTPS host (as its MTA-STS fetches do): the Mozilla roots
/// plus `e.extra_roots`, `e.kx`, HTTP/1.1 by ALPN, the mapped HTTPS port and the MTA-STS timeout.
pub fn https_for(e: &crate::engine::EngineConfig) -> Result<FetchConfig, String> {
    use crate::tls::{ClientOptions, ClientResumption, Verify};
    let verify = Verify::webpki_plus(&e.extra_roots).map_err(|err| err.to_string())?;
    let opts = ClientOptions { verify, kx: e.kx, resumption: ClientResumption::Off, tls12_only: false };
    let mut tls = Arc::unwrap_or_clone(crate::tls::client_config(&opts, None).map_err(|err| err.to_string())?);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut f = FetchConfig::new(Arc::new(tls));
    f.port = e.port_map.https;
    f.timeout = e.policy.mta_sts_timeout;
    Ok(f)
}

/// What one run of [`Reporter::run_once`] did with the due days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// Reports that reached at least one destination (and were removed).
    pub sent: usize,
    /// Days dropped: the domain publishes no valid TLS-RPT record.
    pub no_record: usize,
    /// Reports that reached no destination, kept for a retry.
    pub failed: usize,
    /// Reports dropped after [`ReporterConfig::give_up_after`].
    pub dropped: usize,
}

/// Sends due reports (module docs).
pub struct Reporter {
    store: Arc<TlsRpt>,
    resolver: MxResolver,
    intake: Option<Intake>,
    cfg: ReporterConfig,
}

impl Reporter {
    /// A reporter over `store`, looking records and hosts up with `resolver`, mailing through
    /// `intake` (without one, `mailto:` destinations are skipped and logged).
    pub fn new(store: Arc<TlsRpt>, resolver: MxResolver, intake: Option<Intake>, cfg: ReporterConfig) -> Reporter {
        Reporter { store, resolver, intake, cfg }
    }

    /// Send every day that ended before `now` (the days are taken from the store).
    pub async fn run_once(&self, now: SystemTime) -> RunSummary {
        let mut sum = RunSummary::default();
        for agg in self.store.take_due(now) {
            if now.duration_since(agg.ended()).unwrap_or_default() >= self.cfg.give_up_after {
                tracing::warn!(domain = %agg.domain, day = %day_name(&agg), "TLS-RPT report could not be sent in time; dropped");
                self.store.sent(&agg);
                sum.dropped += 1;
                continue;
            }
            let name = format!("_smtp._tls.{}", agg.domain);
            let record = match self.resolver.txt(&name).await {
                Ok(txts) => select_record(&txts),
                Err(e) => {
                    tracing::warn!(domain = %agg.domain, error = %e, "TLS-RPT: cannot look up {name}; will try again");
                    sum.failed += 1;
                    continue;
                }
            };
            match record {
                Ok(Some(record)) => {
                    if self.send(&agg, &record, now).await {
                        self.store.sent(&agg);
                        sum.sent += 1;
                    } else {
                        sum.failed += 1;
                    }
                }
                Ok(None) => {
                    tracing::debug!(domain = %agg.domain, "no TLS-RPT record; counts dropped");
                    self.store.sent(&agg);
                    sum.no_record += 1;
                }
                Err(e) => {
                    tracing::info!(domain = %agg.domain, error = %e, "invalid TLS-RPT record; counts dropped");
                    self.store.sent(&agg);
                    sum.no_record += 1;
                }
            }
        }
        sum
    }

    /// One report to each destination of `record`; whether any took it.
    async fn send(&self, agg: &DayAggregate, record: &Record, now: SystemTime) -> bool {
        let meta = ReportMeta::new(&self.cfg.organization_name, &self.cfg.contact_info, agg, &self.cfg.submitter);
        let gz = gzip(&report_json(agg, &meta));
        let mut any = false;
        for rua in record.rua.iter().take(MAX_DESTINATIONS) {
            let result = match rua {
                Rua::Https(url) => self.post(url, &gz).await,
                Rua::Mailto(to) => self.mail(agg, &meta, &gz, to, now).await,
            };
            let (dest, done) = match rua {
                Rua::Https(u) => (u.as_str(), "TLS-RPT report posted"),
                Rua::Mailto(u) => (u.as_str(), "TLS-RPT report queued for mail"),
            };
            match result {
                Ok(()) => {
                    any = true;
                    tracing::info!(domain = %agg.domain, day = %day_name(agg), to = dest, report_id = %meta.report_id, bytes = gz.len(), "{done}");
                }
                Err(e) => tracing::warn!(domain = %agg.domain, day = %day_name(agg), to = dest, error = %e, "TLS-RPT report not sent"),
            }
        }
        any
    }

    async fn post(&self, url: &str, gz: &[u8]) -> Result<(), String> {
        let target = https_target(url)?;
        let addrs: Vec<IpAddr> = self.resolver.host_addrs(&target.host).await.map_err(|e| e.to_string())?;
        let req = Post {
            host: &target.host,
            port: target.port,
            path: &target.path,
            content_type: GZIP_MEDIA_TYPE,
            body: hyper::body::Bytes::copy_from_slice(gz),
        };
        post(&req, &addrs, &self.cfg.https).await.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn mail(&self, agg: &DayAggregate, meta: &ReportMeta, gz: &[u8], to: &str, now: SystemTime) -> Result<(), String> {
        let Some(intake) = &self.intake else { return Err("no spool to mail reports through".into()) };
        let c = &self.cfg;
        let data = mail_message(agg, meta, gz, &c.sender, to, &c.submitter, now);
        let incoming: crate::queue::spool::Incoming = (c.sender.clone(), vec![to.to_string()], std::sync::Arc::<[u8]>::from(data)).into();
        intake.accept(vec![incoming]).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Run in the background: a first run after a random part of [`ReporterConfig::max_delay`],
    /// then one each day after 00:00 UTC (sooner when a report is to be retried), the
    /// counters written every [`ReporterConfig::flush_every`].
    pub fn spawn(self) -> ReporterTask {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let store = self.store.clone();
        let task = tokio::spawn(async move {
            let mut next = tokio::time::Instant::now() + random_up_to(self.cfg.max_delay);
            let mut flush = tokio::time::interval(self.cfg.flush_every.max(Duration::from_millis(100)));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = flush.tick() => {
                        flush_now(&self.store).await;
                        continue;
                    }
                    _ = stopped.changed() => return,
                }
                let now = SystemTime::now();
                // A stop cuts a run short: what it has not marked sent is offered again later.
                let sum = tokio::select! {
                    sum = self.run_once(now) => sum,
                    _ = stopped.changed() => return,
                };
                if sum != RunSummary::default() {
                    tracing::info!(sent = sum.sent, no_record = sum.no_record, failed = sum.failed, dropped = sum.dropped, "TLS-RPT run");
                }
                flush_now(&self.store).await;
                let mut wait = until_next_day(now) + random_up_to(self.cfg.max_delay);
                if sum.failed > 0 {
                    wait = wait.min(self.cfg.retry_every);
                }
                next = tokio::time::Instant::now() + wait;
            }
        });
        ReporterTask { stop, task, store }
    }
}

/// The running [`Reporter`].
pub struct ReporterTask {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    store: Arc<TlsRpt>,
}

impl ReporterTask {
    /// Stop it (a run under way is cut short; what it did not send stays) and write the counters.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        flush_now(&self.store).await;
    }
}

async fn flush_now(store: &Arc<TlsRpt>) {
    let s = store.clone();
    match tokio::task::spawn_blocking(move || s.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not save the TLS-RPT counters; will try again"),
        Err(e) => tracing::warn!(error = %e, "could not save the TLS-RPT counters"),
    }
}

fn random_up_to(max: Duration) -> Duration {
    Duration::from_millis(fastrand::u64(0..=max.as_millis().min(u64::MAX as u128) as u64))
}

/// From `now` to the next 00:00 UTC.
fn until_next_day(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    Duration::from_secs((secs.as_secs() / 86_400 + 1) * 86_400).saturating_sub(secs)
}

fn day_name(agg: &DayAggregate) -> String {
    super::report::rfc3339(agg.start_unix())[..10].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_day_is_the_next_midnight() {
        let t = UNIX_EPOCH + Duration::from_secs(10 * 86_400 + 3600);
        assert_eq!(until_next_day(t), Duration::from_secs(23 * 3600));
        assert!(random_up_to(Duration::ZERO).is_zero());
        assert!(random_up_to(Duration::from_secs(2)) <= Duration::from_secs(2));
    }
}
