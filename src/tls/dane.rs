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
//!   §3.2.2). Names are matched against the subjectAltName DNS names as rustls-webpki does
//!   (wildcards included, the subject CN not consulted); the anchor's own dates are not
//!   checked, as for any trust anchor. A full-key `2 1 0` record whose key is not in the chain is still usable: the
//!   published key is made the anchor under the issuer name of a presented certificate, so
//!   only a chain actually signed by that key verifies (RFC 7671 §5.2.3 allows such records).
//! - Digest agility (RFC 7671 §9): for each usage and selector, when SHA2-512 records exist
//!   the SHA2-256 ones are dropped. Full(0) records are not digests and are always kept.
//!
//! Every input is bounded: at most [`MAX_RECORDS`] usable records are kept, at most
//! [`MAX_CHAIN`] presented certificates are looked at, a Full(0) record longer than
//! [`MAX_FULL_LEN`] is unusable, and at most [`MAX_BARE_KEY_ANCHORS`] anchors are made from
//! bare keys. So one verification computes at most `MAX_RECORDS × MAX_CHAIN` digests and
//! builds at most `MAX_CHAIN - 1 + MAX_BARE_KEY_ANCHORS` paths, each bounded by rustls-webpki's
//! own budget (signature checks and path-building calls).

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, Tls12Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, Der, ServerName, TrustAnchor, UnixTime};

use super::{Kx, TicketStore, TlsError};

/// Usable records kept from one RRset; the rest are ignored. Real RRsets hold a handful.
pub const MAX_RECORDS: usize = 32;
/// Presented certificates looked at, end entity included; a longer chain is truncated.
pub const MAX_CHAIN: usize = 8;
/// Anchors made from bare `2 1 0` keys absent from the chain (one per key and issuer name
/// presented) tried per verification; each costs a path build with a signature check.
pub const MAX_BARE_KEY_ANCHORS: usize = 16;
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
    /// The signature algorithms DANE-TA chains are verified with: aws-lc-rs's, as rustls uses
    /// them (static tables, copied here so `verify` does not build a provider per call).
    algs: WebPkiSupportedAlgorithms,
}

impl DaneAuth {
    /// `None` when no record is usable (the caller then requires TLS without authentication, RFC 7672 §2.2).
    /// `tlsa_base` is the TLSA base domain (the MX host name), also the SNI name; `nexthop` the recipient domain,
    /// also accepted as a name for DANE-TA chains (RFC 7672 §3.2.2).
    ///
    /// Names are DNS names in A-label form (IDNA); a trailing dot is ignored and a name that
    /// is not a valid DNS name is not used for DANE-TA matching (DANE-EE needs no name).
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
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        Some(DaneAuth { records: usable, tlsa_base: tlsa_base.trim_end_matches('.').to_string(), names, algs })
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
        let bare_keys: Vec<(&Tlsa, &[u8])> = ta_records
            .iter()
            .filter(|r| r.selector == 1 && r.matching == 0 && !found_keys.contains(r))
            .filter_map(|r| der_sequence_contents(&r.data).map(|contents| (*r, contents)))
            .collect();
        // A bare key gets the subject of whichever presented certificate's issuer it may be:
        // (issuer name, depth of such an anchor), each distinct name once, the lowest depth kept.
        let mut issuer_names: Vec<(Vec<u8>, usize)> = Vec::new();
        if !bare_keys.is_empty() {
            issuer_names.push((ee.issuer().to_vec(), 1));
            for (i, c) in intermediates.iter().enumerate() {
                if let Ok(c) = webpki::EndEntityCert::try_from(c) {
                    if !issuer_names.iter().any(|(n, _)| n.as_slice() == c.issuer()) {
                        issuer_names.push((c.issuer().to_vec(), i + 2));
                    }
                }
            }
        }
        let synthesized = bare_keys.iter().flat_map(|(rec, spki)| {
            issuer_names.iter().map(move |(subject, depth)| {
                let anchor = TrustAnchor {
                    subject: Der::from_slice(subject),
                    subject_public_key_info: Der::from_slice(spki),
                    name_constraints: None,
                };
                (anchor, *rec, *depth)
            })
        });
        candidates.extend(synthesized.take(MAX_BARE_KEY_ANCHORS));

        let mut best: Option<DaneError> = None;
        for (anchor, rec, depth) in &candidates {
            let anchors = std::slice::from_ref(anchor);
            let result = ee.verify_for_usage(self.algs.all, anchors, intermediates, now, webpki::KeyUsage::server_auth(), None, None);
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
            DaneError::NoMatch { .. } | DaneError::NotYetValid { .. } | DaneError::ChainInvalid { .. } | DaneError::BadCertificate(_) => {
                "validation-failure"
            }
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
/// rustls resumes a session only under the config's own verifier (`Arc::ptr_eq`), so a
/// resumed session was authenticated against these same records; a new `DaneAuth` (records
/// changed) never resumes a session verified under the old one. The flip side: to resume at
/// all, keep one config per TLSA RRset and reuse it, rather than building one per connection
/// (a ticket offered to an incompatible config is taken from `store` and wasted).
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
/// record. A resumed session keeps the chain it was verified with, so this works for it too.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::{generate_chain, GeneratedChain};
    use rcgen::{KeyPair, PublicKeyData};
    use rustls_pki_types::PrivateKeyDer;

    const MX: &str = "mx1.example.test";

    /// root → intermediate → leaf for `name`.
    fn pki(name: &str, expired: bool) -> GeneratedChain {
        generate_chain(&[name.to_string()], expired).unwrap()
    }

    /// Another leaf for `name` under `p`'s intermediate.
    fn leaf(name: &str, p: &GeneratedChain, expired: bool) -> CertificateDer<'static> {
        p.issue_leaf(&[name.to_string()], expired).unwrap().0
    }

    /// The SubjectPublicKeyInfo of a generated key, as rcgen encodes it.
    fn spki_of(key: &PrivateKeyDer<'_>) -> Vec<u8> {
        KeyPair::try_from(key).unwrap().subject_public_key_info()
    }

    fn rec(cert: &CertificateDer<'_>, usage: u8, selector: u8, matching: u8) -> Tlsa {
        Tlsa::for_cert(cert, usage, selector, matching).unwrap()
    }

    fn auth(records: &[Tlsa]) -> DaneAuth {
        DaneAuth::new(records, MX, Some("example.test")).expect("usable records")
    }

    fn verify(a: &DaneAuth, ee: &CertificateDer<'_>, rest: &[CertificateDer<'_>]) -> Result<DaneMatch, DaneError> {
        a.verify(ee, rest, UnixTime::now())
    }

    fn other_record(usage: u8, selector: u8, matching: u8) -> Tlsa {
        let len = [1, 32, 64][matching as usize];
        Tlsa { usage, selector, matching, data: vec![0xab; len] }
    }

    #[test]
    fn usability_follows_rfc7672() {
        assert!(other_record(3, 1, 1).is_usable());
        assert!(other_record(2, 0, 2).is_usable());
        assert!(other_record(3, 0, 0).is_usable());
        for (u, s, m) in [(0, 0, 1), (1, 1, 1), (3, 2, 1), (2, 0, 3), (4, 1, 1), (255, 1, 1)] {
            let r = Tlsa { usage: u, selector: s, matching: m, data: vec![0; 32] };
            assert!(!r.is_usable(), "{u} {s} {m}");
        }
        // Digest lengths must fit the matching type; Full(0) must hold something, not too much.
        assert!(!Tlsa { usage: 3, selector: 1, matching: 1, data: vec![0; 31] }.is_usable());
        assert!(!Tlsa { usage: 3, selector: 1, matching: 1, data: vec![0; 64] }.is_usable());
        assert!(!Tlsa { usage: 3, selector: 1, matching: 2, data: vec![0; 32] }.is_usable());
        assert!(!Tlsa { usage: 3, selector: 1, matching: 0, data: vec![] }.is_usable());
        assert!(!Tlsa { usage: 3, selector: 1, matching: 0, data: vec![1; MAX_FULL_LEN + 1] }.is_usable());
        let unusable = [
            Tlsa { usage: 0, selector: 0, matching: 1, data: vec![0; 32] },
            Tlsa { usage: 1, selector: 1, matching: 1, data: vec![0; 32] },
            Tlsa { usage: 3, selector: 2, matching: 1, data: vec![0; 32] },
            Tlsa { usage: 3, selector: 1, matching: 9, data: vec![0; 32] },
            Tlsa { usage: 3, selector: 1, matching: 2, data: vec![0; 32] },
        ];
        assert!(DaneAuth::new(&unusable, MX, None).is_none());
        let mut with_one = unusable.to_vec();
        with_one.push(other_record(3, 1, 1));
        assert_eq!(DaneAuth::new(&with_one, MX, None).unwrap().records(), &[other_record(3, 1, 1)]);
        assert_eq!(Tlsa::for_cert(&pki(MX, false).leaf, 1, 1, 1), Err(DaneError::Unusable { usage: 1, selector: 1, matching: 1 }));
    }

    #[test]
    fn spki_digests_match_an_independent_computation() {
        let p = pki(MX, false);
        // rcgen's own encoding of the keys' SubjectPublicKeyInfo, not webpki's.
        let leaf_spki = spki_of(&p.leaf_key);
        let inter_spki = spki_of(&p.intermediate_key);
        assert_eq!(rec(&p.leaf, 3, 1, 0).data, leaf_spki);
        assert_eq!(rec(&p.leaf, 3, 1, 1).data, digest::digest(&digest::SHA256, &leaf_spki).as_ref());
        assert_eq!(rec(&p.intermediate, 2, 1, 1).data, digest::digest(&digest::SHA256, &inter_spki).as_ref());
        assert_eq!(rec(&p.intermediate, 2, 1, 2).data, digest::digest(&digest::SHA512, &inter_spki).as_ref());
        assert_eq!(rec(&p.intermediate, 2, 0, 0).data, p.intermediate.as_ref());
        // The anchor form lacks the outer SEQUENCE; webpki's re-wrapping gives the same bytes.
        let anchor = webpki::anchor_from_trusted_cert(&p.intermediate).unwrap();
        assert_eq!(webpki::spki_for_anchor(&anchor).as_ref(), inter_spki.as_slice());
        assert_eq!(der_sequence_contents(&inter_spki), Some(anchor.subject_public_key_info.as_ref()));
    }

    #[test]
    fn spki_digest_matches_openssl_when_installed() {
        let p = pki(MX, false);
        let dir = std::env::temp_dir().join(format!("mxpipe-dane-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("inter.der");
        std::fs::write(&cert, &p.intermediate).unwrap();
        let x509 =
            std::process::Command::new("openssl").args(["x509", "-inform", "DER", "-in"]).arg(&cert).args(["-noout", "-pubkey"]).output();
        let Ok(out) = x509 else {
            eprintln!("openssl not installed; skipped (the rcgen comparison still runs)");
            return;
        };
        assert!(out.status.success());
        std::fs::write(dir.join("pub.pem"), &out.stdout).unwrap();
        let der = std::process::Command::new("openssl")
            .args(["pkey", "-pubin", "-outform", "DER", "-in"])
            .arg(dir.join("pub.pem"))
            .output()
            .unwrap();
        assert!(der.status.success());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rec(&p.intermediate, 2, 1, 1).data, digest::digest(&digest::SHA256, &der.stdout).as_ref());
    }

    #[test]
    fn der_sequence_header() {
        assert_eq!(der_sequence_contents(&[0x30, 0x02, 1, 2]), Some(&[1u8, 2][..]));
        assert_eq!(der_sequence_contents(&[0x30, 0x02, 1]), None);
        assert_eq!(der_sequence_contents(&[0x30, 0x01, 1, 2]), None);
        assert_eq!(der_sequence_contents(&[0x31, 0x01, 1]), None);
        assert_eq!(der_sequence_contents(&[0x30, 0x81, 0x01, 1]), None, "non-minimal length");
        assert_eq!(der_sequence_contents(&[0x30, 0x80]), None, "indefinite length");
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        assert_eq!(der_sequence_contents(&long).map(<[u8]>::len), Some(0x80));
        assert_eq!(der_sequence_contents(&[]), None);
    }

    #[test]
    fn dane_ee_matches_by_each_selector_and_matching_type() {
        let p = pki(MX, false);
        for (s, m) in [(1, 1), (0, 1), (1, 2), (0, 0), (1, 0), (0, 2)] {
            let a = auth(&[rec(&p.leaf, 3, s, m)]);
            assert_eq!(verify(&a, &p.leaf, &[]), Ok(DaneMatch::Ee { selector: s, matching: m }), "3 {s} {m}");
        }
        let other = pki(MX, false);
        let a = auth(&[rec(&other.leaf, 3, 1, 1), rec(&other.leaf, 3, 0, 1)]);
        let err = verify(&a, &p.leaf, std::slice::from_ref(&p.intermediate)).unwrap_err();
        assert_eq!(err, DaneError::NoMatch { ee: 2, ta: 0, certs: 2 });
        assert_eq!(err.result_type(), "validation-failure");
    }

    #[test]
    fn dane_ee_ignores_names_dates_and_issuer() {
        let p = pki("wrong.example.org", true);
        let a = auth(&[rec(&p.leaf, 3, 1, 1)]);
        // No intermediates, an expired leaf for another name: still authenticated.
        assert_eq!(verify(&a, &p.leaf, &[]), Ok(DaneMatch::Ee { selector: 1, matching: 1 }));
    }

    #[test]
    fn dane_ta_on_the_intermediate() {
        let p = pki(MX, false);
        let chain = [p.intermediate.clone()];
        let ta = [rec(&p.intermediate, 2, 0, 1)];
        let ok = Ok(DaneMatch::Ta { selector: 0, matching: 1, depth: 1 });
        assert_eq!(verify(&auth(&ta), &p.leaf, &chain), ok);
        // With the (unneeded) root presented too.
        assert_eq!(verify(&auth(&ta), &p.leaf, &[p.intermediate.clone(), p.root.clone()]), ok);
        // SPKI selector, SHA2-512.
        let ta512 = rec(&p.intermediate, 2, 1, 2);
        assert_eq!(verify(&auth(&[ta512]), &p.leaf, &chain), Ok(DaneMatch::Ta { selector: 1, matching: 2, depth: 1 }));

        // Wrong name: the chain verifies, the name does not.
        let wrong = leaf("other.example.org", &p, false);
        let err = verify(&auth(&ta), &wrong, &chain).unwrap_err();
        assert!(matches!(err, DaneError::HostMismatch { depth: 1, .. }), "{err:?}");
        assert_eq!(err.result_type(), "certificate-host-mismatch");

        // The nexthop domain is a reference identifier too.
        let nexthop = leaf("example.test", &p, false);
        assert_eq!(verify(&auth(&ta), &nexthop, &chain), ok);
        assert!(DaneAuth::new(&ta, MX, None).unwrap().verify(&nexthop, &chain, UnixTime::now()).is_err());

        // A chain without the TA.
        let other = pki(MX, false);
        let err = verify(&auth(&ta), &other.leaf, &[other.intermediate.clone(), other.root.clone()]).unwrap_err();
        assert_eq!(err, DaneError::NoMatch { ee: 0, ta: 1, certs: 3 });

        // The TA presented, but the leaf was not issued by it: the chain does not verify.
        let err = verify(&auth(&ta), &other.leaf, &[p.intermediate.clone(), other.intermediate.clone()]).unwrap_err();
        assert!(matches!(err, DaneError::ChainInvalid { depth: 1, .. }), "{err:?}");

        // An expired leaf under the TA.
        let expired = leaf(MX, &p, true);
        let err = verify(&auth(&ta), &expired, &chain).unwrap_err();
        assert_eq!(err, DaneError::Expired { depth: 1 });
        assert_eq!(err.result_type(), "certificate-expired");
    }

    #[test]
    fn dane_ta_on_a_private_root_and_not_on_the_leaf() {
        let p = pki(MX, false);
        let chain = [p.intermediate.clone(), p.root.clone()];
        let a = auth(&[rec(&p.root, 2, 1, 1)]);
        assert_eq!(verify(&a, &p.leaf, &chain), Ok(DaneMatch::Ta { selector: 1, matching: 1, depth: 2 }));
        // A DANE-TA record matching the end entity itself is not a trust anchor.
        let a = auth(&[rec(&p.leaf, 2, 0, 1)]);
        assert!(matches!(verify(&a, &p.leaf, &chain), Err(DaneError::NoMatch { .. })));
    }

    #[test]
    fn dane_ta_bare_key_absent_from_the_chain() {
        let p = pki(MX, false);
        // 2 1 0 with the root's key; the root is not presented.
        let a = auth(&[rec(&p.root, 2, 1, 0)]);
        assert_eq!(verify(&a, &p.leaf, std::slice::from_ref(&p.intermediate)), Ok(DaneMatch::Ta { selector: 1, matching: 0, depth: 2 }));
        // The intermediate's key, with only the leaf presented.
        let a = auth(&[rec(&p.intermediate, 2, 1, 0)]);
        assert_eq!(verify(&a, &p.leaf, &[]), Ok(DaneMatch::Ta { selector: 1, matching: 0, depth: 1 }));
        // An unrelated key under the same names: the signatures do not verify.
        let impostor = pki(MX, false);
        let a = auth(&[rec(&impostor.root, 2, 1, 0)]);
        assert!(matches!(verify(&a, &p.leaf, std::slice::from_ref(&p.intermediate)), Err(DaneError::ChainInvalid { .. })));
    }

    #[test]
    fn either_kind_of_record_suffices() {
        let p = pki(MX, false);
        let other = pki(MX, false);
        let chain = [p.intermediate.clone()];
        let ee_bad_ta_good = auth(&[rec(&other.leaf, 3, 1, 1), rec(&p.intermediate, 2, 0, 1)]);
        assert_eq!(verify(&ee_bad_ta_good, &p.leaf, &chain), Ok(DaneMatch::Ta { selector: 0, matching: 1, depth: 1 }));
        let ee_good_ta_bad = auth(&[rec(&p.leaf, 3, 1, 1), rec(&other.intermediate, 2, 0, 1)]);
        assert_eq!(verify(&ee_good_ta_bad, &p.leaf, &chain), Ok(DaneMatch::Ee { selector: 1, matching: 1 }));
        // A matching DANE-EE record wins even when the DANE-TA chain would fail on the name.
        let wrong = leaf("other.example.org", &p, false);
        let both = auth(&[rec(&p.intermediate, 2, 0, 1), rec(&wrong, 3, 0, 1)]);
        assert_eq!(verify(&both, &wrong, &chain), Ok(DaneMatch::Ee { selector: 0, matching: 1 }));
    }

    #[test]
    fn digest_agility_uses_only_the_strongest() {
        let p = pki(MX, false);
        let good256 = rec(&p.leaf, 3, 1, 1);
        let bad512 = other_record(3, 1, 2);
        let a = auth(&[good256.clone(), bad512.clone()]);
        assert_eq!(a.records(), std::slice::from_ref(&bad512));
        assert!(matches!(verify(&a, &p.leaf, &[]), Err(DaneError::NoMatch { .. })));
        // Per usage and selector: a 512 record for selector 0 leaves selector 1's 256 alone,
        // and Full(0) records are kept beside digests.
        let other_sel = other_record(3, 0, 2);
        let full = rec(&p.leaf, 3, 0, 0);
        let a = auth(&[good256.clone(), other_sel.clone(), full.clone()]);
        assert_eq!(a.records(), &[good256.clone(), other_sel, full]);
        assert_eq!(verify(&a, &p.leaf, &[]), Ok(DaneMatch::Ee { selector: 1, matching: 1 }));
        // The same for DANE-TA.
        let a = auth(&[rec(&p.intermediate, 2, 0, 1), other_record(2, 0, 2)]);
        assert!(verify(&a, &p.leaf, std::slice::from_ref(&p.intermediate)).is_err());
    }

    #[test]
    fn inputs_are_capped_and_deduplicated() {
        let p = pki(MX, false);
        let many: Vec<Tlsa> = (0..100u8).map(|i| Tlsa { usage: 3, selector: 1, matching: 1, data: vec![i; 32] }).collect();
        assert_eq!(DaneAuth::new(&many, MX, None).unwrap().records().len(), MAX_RECORDS);
        let dup = rec(&p.leaf, 3, 1, 1);
        assert_eq!(auth(&[dup.clone(), dup.clone(), dup]).records().len(), 1);

        // The TA beyond the first MAX_CHAIN certificates is not looked at.
        let ta = auth(&[rec(&p.intermediate, 2, 0, 1)]);
        let mut chain: Vec<CertificateDer<'static>> = (0..MAX_CHAIN).map(|_| p.root.clone()).collect();
        chain.push(p.intermediate.clone());
        assert_eq!(verify(&ta, &p.leaf, &chain), Err(DaneError::NoMatch { ee: 0, ta: 1, certs: MAX_CHAIN }));
        chain.drain(..2);
        assert!(verify(&ta, &p.leaf, &chain).is_ok(), "within the cap it is found");

        // Bare keys absent from the chain: anchors beyond MAX_BARE_KEY_ANCHORS are not tried.
        let decoys: Vec<Tlsa> =
            (0..MAX_BARE_KEY_ANCHORS).map(|i| rec(&pki(&format!("decoy{i}.example.test"), false).root, 2, 1, 0)).collect();
        let mut keys = decoys.clone();
        keys.push(rec(&p.root, 2, 1, 0));
        assert!(verify(&auth(&keys), &p.leaf, std::slice::from_ref(&p.intermediate)).is_err(), "the real key is past the cap");
        keys.drain(..MAX_BARE_KEY_ANCHORS / 2 + 1);
        assert!(verify(&auth(&keys), &p.leaf, std::slice::from_ref(&p.intermediate)).is_ok(), "within the cap it is found");
    }

    #[test]
    fn names_are_normalised() {
        let p = pki(MX, false);
        let ta = [rec(&p.intermediate, 2, 0, 1)];
        let a = DaneAuth::new(&ta, "MX1.Example.Test.", Some("not a name!")).unwrap();
        assert_eq!(a.tlsa_base(), "MX1.Example.Test");
        assert!(a.verify(&p.leaf, std::slice::from_ref(&p.intermediate), UnixTime::now()).is_ok());
    }

    #[test]
    fn display_and_error_transport() {
        assert_eq!(DaneMatch::Ee { selector: 1, matching: 1 }.to_string(), "dane-ee 3 1 1");
        assert_eq!(DaneMatch::Ta { selector: 0, matching: 1, depth: 1 }.to_string(), "dane-ta 2 0 1 depth 1");
        assert_eq!(Tlsa { usage: 3, selector: 1, matching: 1, data: vec![0xab, 0x01] }.to_string(), "3 1 1 ab01");
        let e = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(DaneError::Expired { depth: 2 }))));
        assert_eq!(dane_error_of(&e), Some(&DaneError::Expired { depth: 2 }));
        assert_eq!(dane_error_of(&rustls::Error::InvalidCertificate(CertificateError::Expired)), None);
    }

    #[test]
    fn client_config_builds() {
        let p = pki(MX, false);
        let a = Arc::new(auth(&[rec(&p.leaf, 3, 1, 1)]));
        client_config(a.clone(), Kx::X25519, None).unwrap();
        client_config(a, Kx::Default, Some(Arc::new(TicketStore::new(10, 2, 1)))).unwrap();
    }
}
