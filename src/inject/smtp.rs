//! The SMTP injection listener: the SMTP server core ([`crate::smtp_server`]) with the spool
//! as its acceptor and the `[inject.smtp]` settings: STARTTLS with the configured (or a
//! generated) certificate, allowed networks, AUTH PLAIN for everyone else, and the limits that
//! keep one client from holding the door (connections per client, a session deadline, a
//! deadline to authenticate, commands that carry no mail).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Intake, IntakeError};
use crate::config::Config;
use crate::queue::spool::Incoming;
use crate::smtp_server::{self, Acceptor, AcceptorRef, Refused, Server};
use crate::tls;

/// A message is acknowledged only after the spool has it on disk ([`Intake::accept`]).
struct SpoolAcceptor(Intake);

impl Acceptor for SpoolAcceptor {
    fn accept(
        &self,
        from: Vec<u8>,
        rcpts: Vec<Vec<u8>>,
        data: Vec<u8>,
        requiretls: bool,
    ) -> Pin<Box<dyn Future<Output = Result<String, Refused>> + Send + '_>> {
        Box::pin(async move {
            let refused = |text: String| Refused { code: "452 4.3.1", text: format!("Message not accepted: {text}") };
            let from = String::from_utf8(from).map_err(|_| refused("sender is not UTF-8".into()))?;
            let rcpts: Vec<String> =
                rcpts.into_iter().map(String::from_utf8).collect::<Result<_, _>>().map_err(|_| refused("recipient is not UTF-8".into()))?;
            // REQUIRETLS on MAIL, else a `TLS-Required: No` header field (RFC 8689).
            let tls = crate::requiretls::message_tls(requiretls, &data);
            let ids = self.0.accept(vec![Incoming { from, rcpts, data: data.into(), tls, pool: None }]).await.map_err(|e| match e {
                IntakeError::Refused(text) => Refused { code: "550 5.7.0", text: format!("Message refused: {text}") },
                IntakeError::Unavailable(text) => Refused { code: "451 4.3.0", text: format!("Message not accepted: {text}") },
                e if e.is_disk_full() => refused("spool disk full".to_string()),
                e => refused(format!("spool error: {e}")),
            })?;
            // One message in, one id out.
            ids.first().map(|id| format!("{id:X}")).ok_or_else(|| refused("spool returned no id".into()))
        })
    }
}

/// The acceptor that hands the listener's messages to the intake.
pub fn spool_acceptor(intake: Intake) -> AcceptorRef {
    AcceptorRef(Arc::new(SpoolAcceptor(intake)))
}

/// The server settings of the injection listener, without its acceptor (set it with
/// [`spool_acceptor`]). Fails, naming the setting, on a users file or certificate that cannot
/// be read: call it before opening the spool, so a bad file stops the daemon at once.
pub fn server_config(cfg: &Config) -> Result<smtp_server::Config, String> {
    let inject = &cfg.inject.smtp;
    let auth = match &inject.auth.users_file {
        Some(path) => {
            let users = crate::auth::Users::load(path).map_err(|e| format!("inject.smtp.auth.users_file: {e}"))?;
            let mut a = smtp_server::Auth::new(Arc::new(users));
            a.require_tls = inject.auth.require_starttls;
            Some(a)
        }
        None => None,
    };
    let identity = match (&inject.tls.cert, &inject.tls.key) {
        (Some(c), Some(k)) => tls::certs::load_identity(c, k).map_err(|e| format!("inject.smtp.tls: {e}"))?,
        _ => tls::certs::generate(std::slice::from_ref(&cfg.engine.ehlo_name)).map_err(|e| e.to_string())?.identity,
    };
    let server_tls = tls::server_config(identity, tls::ServerResumption::default()).map_err(|e| e.to_string())?;
    let mut sc = smtp_server::Config::new(server_tls);
    sc.listen = vec![inject.listen.ip()];
    sc.starttls_port = Some(inject.listen.port());
    sc.implicit_port = None;
    sc.hostname = cfg.engine.ehlo_name.clone();
    sc.allowed_clients = Some(inject.allowed_networks.clone());
    sc.auth = auth;
    sc.idle_timeout = inject.idle_timeout;
    sc.max_conns = inject.max_conns;
    sc.max_conns_per_ip = inject.max_conns_per_ip;
    sc.session_timeout = inject.session_timeout;
    sc.auth_timeout = inject.auth_timeout;
    sc.max_idle_commands = inject.max_idle_commands;
    sc.requiretls = inject.requiretls;
    sc.smtputf8 = inject.smtputf8;
    Ok(sc)
}

/// Start the injection listener with `sc` from [`server_config`], handing messages to
/// `intake`.
pub async fn start(mut sc: smtp_server::Config, intake: Intake) -> Result<Server, String> {
    sc.acceptor = Some(spool_acceptor(intake));
    Server::start(sc).await.map_err(|e| format!("cannot start the injection listener: {e}"))
}
