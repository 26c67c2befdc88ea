//! TLS configuration for every part of mxpipe: the sink's server config, the load generator's
//! and (later) the engine's client configs, certificates, and the client session store.
//!
//! Everything goes through rustls with the aws-lc-rs provider. This module owns the choices
//! that change handshake cost (key exchange group, verification, resumption mode) so that
//! each caller states them explicitly and a report can name them.

pub mod certs;
pub mod dane;
pub mod resume;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

pub use certs::{GeneratedChain, GeneratedPki, Identity};
pub use resume::{StoreStats, TicketStore};

/// Errors building TLS configuration. Handshake errors are not here: they belong to the
/// connection that failed and are classified by its owner.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read or holds nothing usable.
    #[error("cannot read PEM from {path}: {reason}")]
    Pem {
        /// The file, as given.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// rcgen could not generate the CA or server certificate (or no names were given).
    #[error("cannot generate certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration (a key that does not match its certificate, say).
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
}

/// The key exchange group a client offers. The default (hybrid post-quantum X25519MLKEM768)
/// costs measurably more than X25519, especially on resumed handshakes, so benchmarks state
/// which one they used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kx {
    /// rustls' default preference list (X25519MLKEM768 first, then X25519, P-256, P-384).
    #[default]
    Default,
    /// X25519 alone: the cheapest classical group.
    X25519,
    /// The hybrid post-quantum group alone, to measure its cost.
    X25519MlKem768,
    /// NIST P-256 (secp256r1) alone.
    P256,
}

impl Kx {
    fn groups(self) -> Vec<&'static dyn SupportedKxGroup> {
        use aws_lc_rs::kx_group as g;
        match self {
            Kx::Default => aws_lc_rs::DEFAULT_KX_GROUPS.to_vec(),
            Kx::X25519 => vec![g::X25519],
            Kx::X25519MlKem768 => vec![g::X25519MLKEM768],
            Kx::P256 => vec![g::SECP256R1],
        }
    }
}

impl FromStr for Kx {
    type Err = String;
    fn from_str(s: &str) -> Result<Kx, String> {
        match s.to_ascii_lowercase().as_str() {
            "default" => Ok(Kx::Default),
            "x25519" => Ok(Kx::X25519),
            "x25519mlkem768" | "mlkem" | "pq" => Ok(Kx::X25519MlKem768),
            "p256" | "secp256r1" => Ok(Kx::P256),
            _ => Err(format!("unknown key exchange {s:?}: use default, x25519, x25519mlkem768 or p256")),
        }
    }
}

impl fmt::Display for Kx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kx::Default => "default",
            Kx::X25519 => "x25519",
            Kx::X25519MlKem768 => "x25519mlkem768",
            Kx::P256 => "p256",
        })
    }
}

/// A crypto provider (aws-lc-rs) restricted to the given key exchange, with the suites that
/// hash with SHA-256 ahead of those with SHA-384 (same set, only the order changes).
///
/// Why: every TLS 1.3 handshake runs its key schedule (HKDF, the transcript, the ticket) with
/// the suite's hash, and aws-lc has no accelerated SHA-512 on AMD CPUs (its AVX path is
/// enabled for Intel only; SHA-NI covers SHA-256, not SHA-512). On this project's AMD EPYC
/// machines SHA-384 was 22 % of the sink's CPU per handshake, twice its X25519. AES-128-GCM
/// with SHA-256 is the suite every TLS 1.3 peer must implement (RFC 8446 §9.1) and the one Go's
/// crypto/tls puts first; AES-256 and ChaCha20 stay on offer.
pub fn provider(kx: Kx) -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = kx.groups();
    p.cipher_suites.sort_by_key(|s| {
        let common = match s {
            rustls::SupportedCipherSuite::Tls13(t) => &t.common,
            rustls::SupportedCipherSuite::Tls12(t) => &t.common,
        };
        // Stable sort: TLS 1.3 before 1.2 as before, and within each the SHA-256 suites first.
        (s.tls13().is_none(), common.hash_provider.algorithm() != rustls::crypto::hash::HashAlgorithm::SHA256)
    });
    Arc::new(p)
}

/// How the server lets clients resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerResumption {
    /// Stateless tickets (TLS 1.3 tickets and TLS 1.2 RFC 5077 tickets) from one ticketer.
    pub tickets: bool,
    /// Server-side session cache with this many entries (TLS 1.2 session IDs, and TLS 1.3
    /// stateful tickets when `tickets` is off); 0 disables it.
    pub session_cache: usize,
}

impl Default for ServerResumption {
    fn default() -> Self {
        ServerResumption { tickets: true, session_cache: 65_536 }
    }
}

/// Build the server config shared by the STARTTLS and implicit-TLS listeners. One config means
/// one ticketer and one session cache, so a session begun on one port resumes on the other.
pub fn server_config(identity: Identity, resumption: ServerResumption) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider(Kx::Default))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    // The server's order (SHA-256 suites first, see `provider`) rather than the client's:
    // OpenSSL-based clients (Postfix, Exim, swaks) put AES-256-GCM-SHA384 first.
    cfg.ignore_client_order = true;
    cfg.session_storage = if resumption.session_cache > 0 {
        ServerSessionMemoryCache::new(resumption.session_cache)
    } else {
        Arc::new(NoServerSessionStorage {})
    };
    if resumption.tickets {
        cfg.ticketer = aws_lc_rs::Ticketer::new()?;
    }
    // rustls sends tickets after every handshake, resumed ones included, so a client that
    // resumes keeps a fresh ticket for its next connection. Two per handshake, so a client
    // opening connections in parallel has spares.
    cfg.send_tls13_tickets = if resumption.tickets || resumption.session_cache > 0 { 2 } else { 0 };
    Ok(Arc::new(cfg))
}

/// How the client verifies the server.
#[derive(Debug, Clone)]
pub enum Verify {
    /// Verify the chain against these roots and the name against the certificate.
    Roots(Arc<RootCertStore>),
    /// Encrypt without authenticating (opportunistic TLS, or `--insecure`).
    None,
}

impl Verify {
    /// The Mozilla roots shipped with webpki-roots, plus extra trust anchors.
    pub fn webpki_plus(extra: &[CertificateDer<'static>]) -> Result<Verify, TlsError> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for c in extra {
            roots.add(c.clone())?;
        }
        Ok(Verify::Roots(Arc::new(roots)))
    }
}

/// Which TLS versions and resumption mechanism the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientResumption {
    /// No resumption: every handshake is full.
    Off,
    /// TLS 1.3 tickets (TLS 1.2 servers: RFC 5077 tickets or session IDs).
    #[default]
    Tickets,
    /// TLS 1.2 only, resuming by session ID (the server's session cache).
    SessionId,
}

impl FromStr for ClientResumption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(ClientResumption::Off),
            "tickets" | "ticket" => Ok(ClientResumption::Tickets),
            "session-id" | "session-ids" | "sessionid" => Ok(ClientResumption::SessionId),
            _ => Err(format!("unknown resumption mode {s:?}: use off, tickets or session-id")),
        }
    }
}

impl fmt::Display for ClientResumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientResumption::Off => "off",
            ClientResumption::Tickets => "tickets",
            ClientResumption::SessionId => "session-id",
        })
    }
}

/// Everything that shapes a client config.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Whether and against which roots server certificates are checked.
    pub verify: Verify,
    /// The key-exchange groups offered.
    pub kx: Kx,
    /// How sessions are resumed: TLS 1.3 tickets, TLS 1.2 session ids, or not at all.
    pub resumption: ClientResumption,
    /// Restrict to TLS 1.2 even without session-ID resumption.
    pub tls12_only: bool,
}

/// Build a client config. With resumption on, `store` keeps the sessions; pass the same store
/// to every config that should share them.
pub fn client_config(opts: &ClientOptions, store: Option<Arc<TicketStore>>) -> Result<Arc<ClientConfig>, TlsError> {
    use rustls::client::Tls12Resumption;
    let versions: &[&'static rustls::SupportedProtocolVersion] = if opts.tls12_only || opts.resumption == ClientResumption::SessionId {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let prov = provider(opts.kx);
    let builder = ClientConfig::builder_with_provider(prov.clone()).with_protocol_versions(versions)?;
    let mut cfg = match &opts.verify {
        Verify::Roots(roots) => builder.with_root_certificates(roots.clone()).with_no_client_auth(),
        Verify::None => builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(prov))).with_no_client_auth(),
    };
    cfg.resumption = match (opts.resumption, store) {
        (ClientResumption::Off, _) => Resumption::disabled(),
        (mode, store) => {
            let store = store.unwrap_or_else(|| Arc::new(TicketStore::new(1024, 64, 8)));
            let tls12 =
                if mode == ClientResumption::SessionId { Tls12Resumption::SessionIdOnly } else { Tls12Resumption::SessionIdOrTickets };
            Resumption::store(store).tls12_resumption(tls12)
        }
    };
    Ok(Arc::new(cfg))
}

/// A verifier that accepts any certificate: opportunistic TLS encrypts against passive
/// observers without authenticating the server. The handshake signature is not checked
/// either: without an authenticated key it proves nothing, and skipping it is most of the
/// client's handshake cost.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if that is what it carries: a
/// handshake failure reaches the caller wrapped in `io::Error`.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Facts about an established TLS session, for reports and outcome records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsFacts {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The negotiated cipher suite, as rustls names it (`TLS13_AES_128_GCM_SHA256`).
    pub cipher: String,
    /// The negotiated key-exchange group (`X25519MLKEM768`), or `unknown`.
    pub kx: String,
    /// The session was resumed rather than fully negotiated.
    pub resumed: bool,
}

impl TlsFacts {
    /// Read the facts from a finished handshake (client or server side).
    pub fn of(conn: &rustls::CommonState) -> TlsFacts {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_string(),
        };
        let cipher = conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_else(|| "unknown".into());
        let kx = conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())).unwrap_or_else(|| "unknown".into());
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        TlsFacts { version, cipher, kx, resumed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_choices() {
        assert_eq!("X25519".parse::<Kx>().unwrap(), Kx::X25519);
        assert_eq!("x25519mlkem768".parse::<Kx>().unwrap(), Kx::X25519MlKem768);
        assert!("rsa".parse::<Kx>().is_err());
        assert_eq!("session-id".parse::<ClientResumption>().unwrap(), ClientResumption::SessionId);
        assert!("maybe".parse::<ClientResumption>().is_err());
    }

    #[test]
    fn configs_build() {
        let pki = certs::generate(&["localhost".into()]).unwrap();
        server_config(pki.identity.clone(), ServerResumption::default()).unwrap();
        server_config(pki.identity.clone(), ServerResumption { tickets: false, session_cache: 0 }).unwrap();
        for resumption in [ClientResumption::Off, ClientResumption::Tickets, ClientResumption::SessionId] {
            let opts = ClientOptions { verify: Verify::None, kx: Kx::X25519, resumption, tls12_only: false };
            client_config(&opts, None).unwrap();
        }
        let opts = ClientOptions {
            verify: Verify::Roots(Arc::new(pki.roots())),
            kx: Kx::Default,
            resumption: ClientResumption::Tickets,
            tls12_only: false,
        };
        client_config(&opts, Some(Arc::new(TicketStore::new(10, 10, 2)))).unwrap();
    }

    /// One TLS handshake over loopback TCP; the suite both sides agreed on.
    async fn negotiated(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(server).accept(tcp).await.map(|_| ())
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.unwrap();
        let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        accept.await.unwrap().unwrap();
        format!("{suite:?}")
    }

    /// Our server picks AES-128-GCM-SHA256 over an OpenSSL-style client order (AES-256-GCM-SHA384
    /// first, as rustls's and OpenSSL's defaults are), and our client offers it first to a server
    /// that follows the client's order: the SHA-384 key schedule costs twice the X25519 on AMD
    /// CPUs (see `provider`).
    #[tokio::test]
    async fn both_sides_prefer_the_sha256_suite() {
        let pki = certs::generate(&["localhost".into()]).unwrap();
        let stock = Arc::new(aws_lc_rs::default_provider());
        assert_eq!(format!("{:?}", stock.cipher_suites[0].suite()), "TLS13_AES_256_GCM_SHA384", "the stock order this test stands against");
        let roots = Arc::new(pki.roots());
        let stock_client = Arc::new(
            ClientConfig::builder_with_provider(stock.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        let ours = server_config(pki.identity.clone(), ServerResumption::default()).unwrap();
        assert_eq!(negotiated(ours, stock_client).await, "TLS13_AES_128_GCM_SHA256");
        let stock_server = Arc::new(
            ServerConfig::builder_with_provider(stock)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(pki.identity.chain.clone(), pki.identity.key.clone_key())
                .unwrap(),
        );
        let opts = ClientOptions { verify: Verify::Roots(roots), kx: Kx::Default, resumption: ClientResumption::Off, tls12_only: false };
        assert_eq!(negotiated(stock_server, client_config(&opts, None).unwrap()).await, "TLS13_AES_128_GCM_SHA256");
    }
}
