//! `--verify-once`: a certificate verifier for measuring a server's own capacity without
//! paying the client's chain verification on every handshake, and without skipping what
//! proves the server holds the key.
//!
//! The first time an end-entity certificate is seen for a server name, the whole chain is
//! verified by rustls' webpki verifier (trust anchors, name, validity); the certificate's
//! exact DER bytes and the name are then kept in a set (handshakes in flight together before
//! the first one finished may each verify it: at most one chain check per connection slot). A later handshake presenting the same
//! certificate for the same name skips the chain walk, but its handshake signature (TLS 1.2
//! `ServerKeyExchange`, TLS 1.3 `CertificateVerify`) is still checked, by the crypto
//! provider's own `verify_tls12_signature` / `verify_tls13_signature`, on every full
//! handshake. Compare `--insecure`, which checks neither.
//!
//! Not for production: a certificate revoked or expired during the run stays trusted until
//! the run ends (a run is at most [`crate::config::MAX_DURATION`] per port).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;

/// How many certificates were trusted and how: each check is counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VerifyOnceStats {
    /// Chains verified in full (the first sight of each certificate and name).
    pub chain_checks: u64,
    /// Certificates trusted because they were verified before.
    pub reused: u64,
    /// Handshake signatures checked (one per full handshake).
    pub signature_checks: u64,
}

/// The verifier; install it with [`VerifyOnce::install`].
#[derive(Debug)]
pub struct VerifyOnce {
    chain: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    /// (end-entity certificate, server name) pairs whose chain verified.
    trusted: Mutex<HashSet<(CertificateDer<'static>, String)>>,
    chain_checks: AtomicU64,
    reused: AtomicU64,
    signature_checks: AtomicU64,
}

impl VerifyOnce {
    /// A verifier trusting `roots`, with `provider`'s signature algorithms.
    pub fn new(roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>) -> Result<VerifyOnce, rustls::Error> {
        let chain = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("certificate verifier: {e}")))?;
        Ok(VerifyOnce {
            chain,
            provider,
            trusted: Mutex::new(HashSet::new()),
            chain_checks: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// `config` with its certificate verifier replaced by a new [`VerifyOnce`] over `roots`
    /// (and `config`'s own crypto provider); returns both.
    pub fn install(
        config: &rustls::ClientConfig,
        roots: Arc<RootCertStore>,
    ) -> Result<(Arc<rustls::ClientConfig>, Arc<VerifyOnce>), rustls::Error> {
        let verifier = Arc::new(VerifyOnce::new(roots, config.crypto_provider().clone())?);
        let mut c = config.clone();
        c.dangerous().set_certificate_verifier(verifier.clone());
        Ok((Arc::new(c), verifier))
    }

    /// The counters so far.
    pub fn stats(&self) -> VerifyOnceStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VerifyOnceStats { chain_checks: l(&self.chain_checks), reused: l(&self.reused), signature_checks: l(&self.signature_checks) }
    }
}

impl ServerCertVerifier for VerifyOnce {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = (end_entity.clone().into_owned(), server_name.to_str().into_owned());
        // A poisoned lock only means another handshake panicked; the set is still valid.
        if self.trusted.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(ServerCertVerified::assertion());
        }
        let ok = self.chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        self.chain_checks.fetch_add(1, Ordering::Relaxed);
        self.trusted.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
