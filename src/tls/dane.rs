//! DANE authentication of an SMTP server's certificate chain (RFC 7672 §3, RFC 7671, RFC 6698).
//!
//! This module owns the certificate side of DANE: which TLSA records are usable, how a
//! presented chain matches them, and a rustls verifier and client config built on that. It
//! must not do DNS: whether the MX, A/AAAA and TLSA RRsets were DNSSEC-secure, CNAME handling,
//! and what to do when no record is usable are the caller's decisions (RFC 7672 §2). It also
//! does not choose the SNI name: the caller connects with the TLSA base domain as the server
//! name, which this verifier ignores in favour of the names held by [`DaneAuth`].
//!
//! Matching rules, in brief:
//! - Any one usable record that matches authenticates the server; DANE-EE(3) and DANE-TA(2)
//!   records are alternatives, never both required.
//! - DANE-EE(3) matches the end-entity certificate alone. Names, validity dates, key usage
//!   and issuer are ignored (RFC 7672 §3.1.1).
//! - DANE-TA(2) matches a certificate presented *after* the end entity; that certificate
//!   becomes the only trust anchor (no WebPKI root is involved, it need not be self-signed),
//!   the chain from the end entity up to it must verify with dates checked, and the end
//!   entity must be valid for the TLSA base domain or the nexthop domain (RFC 7672 §3.1.2,
//!   §3.2.2). A full-key `2 1 0` record whose key is not in the chain is still usable: the
//!   published key is made the anchor under the issuer name of a presented certificate, so
//!   only a chain actually signed by that key verifies (RFC 7671 §5.2.3 allows such records).
//! - Digest agility (RFC 7671 §9): for each usage and selector, when SHA2-512 records exist
//!   the SHA2-256 ones are dropped. Full(0) records are not digests and are always kept.
//!
//! Every input is bounded: at most [`MAX_RECORDS`] usable records are kept, at most
//! [`MAX_CHAIN`] presented certificates are looked at, and a Full(0) record longer than
//! [`MAX_FULL_LEN`] is unusable. Path building itself is bounded by rustls-webpki's budget.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, Tls12Resumption};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, Der, ServerName, TrustAnchor, UnixTime};

use super::{Kx, TicketStore, TlsError};

/// Usable records kept from one RRset; the rest are ignored. Real RRsets hold a handful.
pub const MAX_RECORDS: usize = 32;
/// Presented certificates looked at, end entity included; a longer chain is truncated.
pub const MAX_CHAIN: usize = 8;
/// The longest Full(0) record data accepted (a whole certificate or key, not a digest).
pub const MAX_FULL_LEN: usize = 16 * 1024;

/// Certificate usage DANE-TA(2): the record names a trust anchor.
pub const USAGE_DANE_TA: u8 = 2;
/// Certificate usage DANE-EE(3): the record names the end-entity certificate or key.
pub const USAGE_DANE_EE: u8 = 3;

/// One TLSA record as published (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// Selector: 0 the whole certificate, 1 its SubjectPublicKeyInfo.
    pub selector: u8,
    /// Matching type: 0 the selected data itself, 1 its SHA2-256, 2 its SHA2-512.
    pub matching: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// RFC 7672 §3.1: usable for SMTP = usage DANE-TA(2) or DANE-EE(3); selector Cert(0) or SPKI(1);
    /// matching Full(0), SHA2-256(1) or SHA2-512(2); digest length 32/64 for 1/2; non-empty data for 0
    /// (and at most [`MAX_FULL_LEN`] bytes). PKIX-TA(0)/PKIX-EE(1) are unusable for SMTP.
    pub fn is_usable(&self) -> bool {
        params_usable(self.usage, self.selector, self.matching)
            && match self.matching {
                0 => !self.data.is_empty() && self.data.len() <= MAX_FULL_LEN,
                1 => self.data.len() == 32,
                _ => self.data.len() == 64,
            }
    }

    /// The record that matches `cert` with these parameters (for tests, the demo and operators).
    pub fn for_cert(cert: &CertificateDer<'_>, usage: u8, selector: u8, matching: u8) -> Result<Tlsa, DaneError> {
        if !params_usable(usage, selector, matching) {
            return Err(DaneError::Unusable { usage, selector, matching });
        }
        let selected = Selected::of(cert);
        let data = selected.get(selector).ok_or_else(|| DaneError::BadCertificate(selected.spki_err()))?;
        let data = match matching {
            0 => data.to_vec(),
            1 => digest::digest(&digest::SHA256, data).as_ref().to_vec(),
            _ => digest::digest(&digest::SHA512, data).as_ref().to_vec(),
        };
        Ok(Tlsa { usage, selector, matching, data })
    }
}

impl fmt::Display for Tlsa {
    /// Presentation format, as in a zone file: `3 1 1 <hex>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        self.data.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn params_usable(usage: u8, selector: u8, matching: u8) -> bool {
    matches!(usage, USAGE_DANE_TA | USAGE_DANE_EE) && selector <= 1 && matching <= 2
}

/// The selector data of one certificate: the DER itself, and its SPKI when it parses.
struct Selected<'a> {
    cert: &'a [u8],
    spki: Result<Vec<u8>, webpki::Error>,
}

impl<'a> Selected<'a> {
    fn of(cert: &'a CertificateDer<'_>) -> Selected<'a> {
        // Any certificate (CA or not) parses as an EndEntityCert; its SPKI accessor puts back
        // the outer SEQUENCE that webpki's internal representation (and a TrustAnchor) lacks.
        let spki = webpki::EndEntityCert::try_from(cert).map(|c| c.subject_public_key_info().as_ref().to_vec());
        Selected { cert: cert.as_ref(), spki }
    }

    fn get(&self, selector: u8) -> Option<&[u8]> {
        match selector {
            0 => Some(self.cert),
            _ => self.spki.as_deref().ok(),
        }
    }

    fn spki_err(&self) -> String {
        match &self.spki {
            Err(e) => format!("cannot read the SubjectPublicKeyInfo: {e}"),
            Ok(_) => "no data for this selector".into(),
        }
    }

    fn matches(&self, rec: &Tlsa) -> bool {
        let Some(data) = self.get(rec.selector) else { return false };
        match rec.matching {
            0 => data == rec.data.as_slice(),
            1 => digest::digest(&digest::SHA256, data).as_ref() == rec.data.as_slice(),
            _ => digest::digest(&digest::SHA512, data).as_ref() == rec.data.as_slice(),
        }
    }
}

/// The usable records of one TLSA RRset and the reference identifiers DANE-TA chains must match.
#[derive(Debug)]
pub struct DaneAuth {
    records: Vec<Tlsa>,
    tlsa_base: String,
    /// The DNS names a DANE-TA chain's end entity may be valid for: the TLSA base domain and
    /// the nexthop domain, those that are syntactically valid.
    names: Vec<ServerName<'static>>,
}

impl DaneAuth {
    /// `None` when no record is usable (the caller then requires TLS without authentication, RFC 7672 §2.2).
    /// `tlsa_base` is the TLSA base domain (the MX host name), also the SNI name; `nexthop` the recipient domain,
    /// also accepted as a name for DANE-TA chains (RFC 7672 §3.2.2).
    ///
    /// Unusable records are dropped, duplicates removed, digest agility applied (per usage and
    /// selector only the strongest digest is kept), then at most [`MAX_RECORDS`] are kept.
    pub fn new(records: &[Tlsa], tlsa_base: &str, nexthop: Option<&str>) -> Option<DaneAuth> {
        let mut usable: Vec<Tlsa> = Vec::new();
        for r in records.iter().filter(|r| r.is_usable()) {
            if !usable.contains(r) {
                usable.push(r.clone());
            }
        }
        let strong: Vec<(u8, u8)> = usable.iter().filter(|r| r.matching == 2).map(|r| (r.usage, r.selector)).collect();
        usable.retain(|r| r.matching != 1 || !strong.contains(&(r.usage, r.selector)));
        usable.truncate(MAX_RECORDS);
        if usable.is_empty() {
            return None;
        }
        let mut names = Vec::new();
        for n in std::iter::once(tlsa_base).chain(nexthop) {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            if let Ok(name) = ServerName::try_from(n) {
                if matches!(name, ServerName::DnsName(_)) && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Some(DaneAuth { records: usable, tlsa_base: tlsa_base.trim_end_matches('.').to_string(), names })
    }

    /// The TLSA base domain, without a trailing dot: the name to connect (SNI) with.
    pub fn tlsa_base(&self) -> &str {
        &self.tlsa_base
    }

    /// The records in use, after filtering, digest agility and the cap.
    pub fn records(&self) -> &[Tlsa] {
        &self.records
    }

    /// Check a presented chain (end entity first) against the records.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<DaneMatch, DaneError> {
        let intermediates = &intermediates[..intermediates.len().min(MAX_CHAIN - 1)];
        let ee_records = self.records.iter().filter(|r| r.usage == USAGE_DANE_EE);
        let ta_records: Vec<&Tlsa> = self.records.iter().filter(|r| r.usage == USAGE_DANE_TA).collect();

        let ee_sel = Selected::of(end_entity);
        let mut ee_tried = 0;
        for rec in ee_records {
            ee_tried += 1;
            if ee_sel.matches(rec) {
                return Ok(DaneMatch::Ee { selector: rec.selector, matching: rec.matching });
            }
        }
        let no_match = DaneError::NoMatch { ee: ee_tried, ta: ta_records.len(), certs: 1 + intermediates.len() };
        if ta_records.is_empty() {
            return Err(no_match);
        }
        let Ok(ee) = webpki::EndEntityCert::try_from(end_entity) else {
            return Err(DaneError::BadCertificate("the end-entity certificate does not parse".into()));
        };

        // Candidate anchors: each presented certificate above the end entity that a DANE-TA
        // record matches, then bare keys from `2 1 0` records not found in the chain.
        let mut candidates: Vec<(TrustAnchor<'_>, &Tlsa, usize)> = Vec::new();
        let mut found_keys: Vec<&Tlsa> = Vec::new();
        for (i, cert) in intermediates.iter().enumerate() {
            let sel = Selected::of(cert);
            if let Some(rec) = ta_records.iter().find(|r| sel.matches(r)) {
                // A certificate can match several records; one anchor per certificate suffices.
                for r in ta_records.iter().filter(|r| r.selector == 1 && r.matching == 0 && sel.matches(r)) {
                    found_keys.push(r);
                }
                if let Ok(anchor) = webpki::anchor_from_trusted_cert(cert) {
                    candidates.push((anchor, rec, i + 1));
                }
            }
        }
        let mut issuer_names: Vec<Vec<u8>> = vec![ee.issuer().to_vec()];
        for c in intermediates {
            if let Ok(c) = webpki::EndEntityCert::try_from(c) {
                if !issuer_names.iter().any(|n| n.as_slice() == c.issuer()) {
                    issuer_names.push(c.issuer().to_vec());
                }
            }
        }
        let bare_keys: Vec<(&Tlsa, &[u8])> = ta_records
            .iter()
            .filter(|r| r.selector == 1 && r.matching == 0 && !found_keys.contains(r))
            .filter_map(|r| der_sequence_contents(&r.data).map(|contents| (*r, contents)))
            .collect();
        for (rec, spki) in &bare_keys {
            for (depth, subject) in issuer_names.iter().enumerate() {
                let anchor = TrustAnchor {
                    subject: Der::from_slice(subject),
                    subject_public_key_info: Der::from_slice(spki),
                    name_constraints: None,
                };
                candidates.push((anchor, rec, depth + 1));
            }
        }

        let algs = aws_lc_rs_sig_algs();
        let mut best: Option<DaneError> = None;
        for (anchor, rec, depth) in &candidates {
            let anchors = std::slice::from_ref(anchor);
            let result =
                ee.verify_for_usage(algs.all, anchors, intermediates, now, webpki::KeyUsage::server_auth(), None, None);
            let err = match result {
                Ok(_) if self.names.iter().any(|n| ee.verify_is_valid_for_subject_name(n).is_ok()) => {
                    return Ok(DaneMatch::Ta { selector: rec.selector, matching: rec.matching, depth: *depth });
                }
                Ok(_) => DaneError::HostMismatch { depth: *depth, names: self.names_list() },
                Err(webpki::Error::CertExpired { .. }) => DaneError::Expired { depth: *depth },
                Err(webpki::Error::CertNotValidYet { .. }) => DaneError::NotYetValid { depth: *depth },
                Err(e) => DaneError::ChainInvalid { depth: *depth, reason: format!("{e:?}") },
            };
            if best.as_ref().is_none_or(|b| err.rank() > b.rank()) {
                best = Some(err);
            }
        }
        Err(best.unwrap_or(no_match))
    }

    fn names_list(&self) -> String {
        let names: Vec<String> = self.names.iter().map(|n| n.to_str().into_owned()).collect();
        if names.is_empty() {
            "(no valid name)".into()
        } else {
            names.join(" or ")
        }
    }
}

/// The signature algorithms chains are verified with: those of the aws-lc-rs provider.
fn aws_lc_rs_sig_algs() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// The contents of a DER SEQUENCE that spans all of `der` (a SubjectPublicKeyInfo without its
/// outer tag and length, which is how a TrustAnchor holds it), or `None`.
fn der_sequence_contents(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        // DER: the shortest length form, so a long form must be needed.
        if len < 0x80 || rest[0] == 0 {
            return None;
        }
        (len, &rest[n..])
    };
    (rest.len() == len).then_some(rest)
}

/// What authenticated the server, for outcome records: e.g. "dane-ee 3 1 1" / "dane-ta 2 0 1 depth 1".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaneMatch {
    /// A DANE-EE(3) record matched the end-entity certificate.
    Ee {
        /// The matching record's selector.
        selector: u8,
        /// The matching record's matching type.
        matching: u8,
    },
    /// A DANE-TA(2) record matched a trust anchor the chain verified up to, and the end entity
    /// is valid for the TLSA base or nexthop domain.
    Ta {
        /// The matching record's selector.
        selector: u8,
        /// The matching record's matching type.
        matching: u8,
        /// Where the anchor sits: 1 is the certificate just above the end entity. For a bare
        /// `2 1 0` key absent from the chain, one above the certificate it signed.
        depth: usize,
    },
}

impl fmt::Display for DaneMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaneMatch::Ee { selector, matching } => write!(f, "dane-ee 3 {selector} {matching}"),
            DaneMatch::Ta { selector, matching, depth } => write!(f, "dane-ta 2 {selector} {matching} depth {depth}"),
        }
    }
}

/// Why verification failed. `result_type()` returns the TLS-RPT (RFC 8460 §4.3) result type string:
/// "validation-failure" (nothing matched), "certificate-host-mismatch" (DANE-TA chain matched but name did not),
/// "certificate-expired" (DANE-TA chain expired), "tlsa-invalid" (records malformed), etc.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaneError {
    /// No usable record matched the end entity, and no DANE-TA record matched a presented
    /// certificate above it.
    #[error("no TLSA record matches the server's certificates ({ee} DANE-EE and {ta} DANE-TA records, {certs} certificates looked at)")]
    NoMatch {
        /// DANE-EE records tried against the end entity.
        ee: usize,
        /// DANE-TA records in use.
        ta: usize,
        /// Presented certificates looked at (at most [`MAX_CHAIN`]).
        certs: usize,
    },
    /// The chain verifies up to a DANE-TA anchor, but the end entity is valid for neither
    /// the TLSA base domain nor the nexthop domain.
    #[error("the chain verifies up to the DANE-TA anchor at depth {depth}, but the certificate is not valid for {names}")]
    HostMismatch {
        /// The anchor's depth.
        depth: usize,
        /// The names it was checked against.
        names: String,
    },
    /// A certificate on the path to a DANE-TA anchor has expired.
    #[error("a certificate on the path to the DANE-TA anchor at depth {depth} has expired")]
    Expired {
        /// The anchor's depth.
        depth: usize,
    },
    /// A certificate on the path to a DANE-TA anchor is not valid yet.
    #[error("a certificate on the path to the DANE-TA anchor at depth {depth} is not valid yet")]
    NotYetValid {
        /// The anchor's depth.
        depth: usize,
    },
    /// A DANE-TA record matched, but the chain does not verify up to that anchor.
    #[error("the chain does not verify up to the DANE-TA anchor at depth {depth}: {reason}")]
    ChainInvalid {
        /// The anchor's depth.
        depth: usize,
        /// rustls-webpki's reason.
        reason: String,
    },
    /// A certificate could not be parsed where parsing was needed.
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// Record parameters that are not usable for SMTP (RFC 7672 §3.1).
    #[error("TLSA parameters {usage} {selector} {matching} are not usable for SMTP")]
    Unusable {
        /// The certificate usage asked for.
        usage: u8,
        /// The selector asked for.
        selector: u8,
        /// The matching type asked for.
        matching: u8,
    },
}

impl DaneError {
    /// The TLS-RPT (RFC 8460 §4.3) result type for this failure.
    pub fn result_type(&self) -> &'static str {
        match self {
            DaneError::HostMismatch { .. } => "certificate-host-mismatch",
            DaneError::Expired { .. } => "certificate-expired",
            DaneError::Unusable { .. } => "tlsa-invalid",
            DaneError::NoMatch { .. }
            | DaneError::NotYetValid { .. }
            | DaneError::ChainInvalid { .. }
            | DaneError::BadCertificate(_) => "validation-failure",
        }
    }

    /// Which failure of several candidate anchors to report: the one that got furthest.
    fn rank(&self) -> u8 {
        match self {
            DaneError::HostMismatch { .. } => 4,
            DaneError::Expired { .. } => 3,
            DaneError::NotYetValid { .. } => 2,
            DaneError::ChainInvalid { .. } => 1,
            _ => 0,
        }
    }
}

/// A rustls ServerCertVerifier that authenticates by DaneAuth, and STILL checks the handshake signature (TLS 1.2 and 1.3)
/// with the provider's algorithms (rustls::crypto::verify_tls12_signature / verify_tls13_signature).
///
/// The server name rustls passes in is ignored: the names that count are the [`DaneAuth`]'s.
/// A failure reaches rustls as `CertificateError::Other` carrying the [`DaneError`]; see
/// [`dane_error_of`].
#[derive(Debug)]
pub struct DaneVerifier {
    auth: Arc<DaneAuth>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A verifier for `auth` whose handshake signatures are checked with `provider`'s algorithms.
    pub fn new(auth: Arc<DaneAuth>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        DaneVerifier { auth, provider }
    }

    /// The records and names this verifier checks against.
    pub fn auth(&self) -> &Arc<DaneAuth> {
        &self.auth
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.auth.verify(end_entity, intermediates, now) {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config (aws-lc-rs provider restricted to `kx` via crate::tls::provider, TLS 1.3 + 1.2) whose verifier is DaneVerifier;
/// resumption through `store` (crate::tls::TicketStore) when given, else disabled.
///
/// A resumed session is not re-verified by rustls: it was authenticated when its ticket was
/// issued, possibly under other TLSA records. A caller that shares `store` across RRsets
/// should check [`verify_session`] after a resumed handshake.
pub fn client_config(auth: Arc<DaneAuth>, kx: Kx, store: Option<Arc<TicketStore>>) -> Result<Arc<ClientConfig>, TlsError> {
    let prov = super::provider(kx);
    let mut cfg = ClientConfig::builder_with_provider(prov.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DaneVerifier::new(auth, prov)))
        .with_no_client_auth();
    cfg.resumption = match store {
        Some(store) => Resumption::store(store).tls12_resumption(Tls12Resumption::SessionIdOrTickets),
        None => Resumption::disabled(),
    };
    Ok(Arc::new(cfg))
}

/// Check an established session's peer chain against `auth`: what matched, for the outcome
/// record, or why it does not (which for a resumed session means the records changed since).
pub fn verify_session(auth: &DaneAuth, conn: &rustls::CommonState, now: UnixTime) -> Result<DaneMatch, DaneError> {
    match conn.peer_certificates() {
        Some([ee, rest @ ..]) => auth.verify(ee, rest, now),
        _ => Err(DaneError::BadCertificate("the server presented no certificate".into())),
    }
}

/// The DaneError inside a rustls error from a handshake (it travels as CertificateError::Other), to classify failures.
pub fn dane_error_of(e: &rustls::Error) -> Option<&DaneError> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => inner.downcast_ref::<DaneError>(),
        _ => None,
    }
}
