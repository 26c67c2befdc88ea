//! Certificates and keys: load them from PEM files, or generate a throw-away CA and a server
//! certificate signed by it (ECDSA P-256, the cheapest key to sign and verify with), so a
//! test or benchmark gets *verifying* TLS without any PKI of its own.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// A server identity: the chain it presents (leaf first) and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The certificates presented, leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf certificate.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

/// A generated CA and a server identity signed by it.
#[derive(Debug, Clone)]
pub struct GeneratedPki {
    /// The CA certificate in PEM, for clients to trust (`--ca`).
    pub ca_pem: String,
    /// The CA certificate in DER, for a root store (see [`GeneratedPki::roots`]).
    pub ca_der: CertificateDer<'static>,
    /// The server certificate (signed by the CA) and its key.
    pub identity: Identity,
}

impl GeneratedPki {
    /// A root store that trusts only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // The CA was generated just now by rcgen; it always parses.
        roots.add(self.ca_der.clone()).expect("generated CA is a valid trust anchor");
        roots
    }
}

/// Generate a CA and a leaf certificate valid for `names` (DNS names or IP addresses).
pub fn generate(names: &[String]) -> Result<GeneratedPki, TlsError> {
    check_names(names)?;
    let ca = ca_issuer("mxpipe test CA", None)?;
    let (leaf, key) = issue_leaf(names, &ca, false)?;
    Ok(GeneratedPki { ca_pem: ca.pem(), ca_der: ca.der().clone(), identity: Identity { chain: vec![leaf, ca.der().clone()], key } })
}

/// A generated private PKI of three levels: a self-signed root, an intermediate CA signed by
/// the root, and a leaf (server) certificate signed by the intermediate. Made by
/// [`generate_chain`]; [`GeneratedChain::issue_leaf`] signs more leaves under the same
/// intermediate.
#[derive(Debug)]
pub struct GeneratedChain {
    /// The self-signed root certificate ("mxpipe test root"), not presented by [`GeneratedChain::chain`].
    pub root: CertificateDer<'static>,
    /// The intermediate CA certificate ("mxpipe test intermediate"), signed by the root.
    pub intermediate: CertificateDer<'static>,
    /// The intermediate's private key (PKCS#8).
    pub intermediate_key: PrivateKeyDer<'static>,
    /// The leaf certificate, signed by the intermediate.
    pub leaf: CertificateDer<'static>,
    /// The leaf's private key (PKCS#8).
    pub leaf_key: PrivateKeyDer<'static>,
    /// The intermediate as an rcgen issuer, to sign further leaves.
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl GeneratedChain {
    /// What a typical server presents: the leaf, then the intermediate.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.clone(), self.intermediate.clone()]
    }

    /// The leaf, the intermediate and the root.
    pub fn full_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.clone(), self.intermediate.clone(), self.root.clone()]
    }

    /// The server identity of [`GeneratedChain::chain`] with the leaf's key.
    pub fn identity(&self) -> Identity {
        Identity { chain: self.chain(), key: self.leaf_key.clone_key() }
    }

    /// Sign another leaf certificate for `names` under the same intermediate, with a fresh
    /// key; `expired` makes it valid only during the year 2000.
    pub fn issue_leaf(&self, names: &[String], expired: bool) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
        check_names(names)?;
        issue_leaf(names, &self.issuer, expired)
    }
}

/// Generate a root → intermediate → leaf chain, the leaf valid for `names` (DNS names or IP
/// addresses) and, if `expired_leaf`, only during the year 2000. Every call makes fresh keys
/// under the same subject names, so two chains are unrelated PKIs that look alike.
pub fn generate_chain(names: &[String], expired_leaf: bool) -> Result<GeneratedChain, TlsError> {
    check_names(names)?;
    let root = ca_issuer("mxpipe test root", None)?;
    let issuer = ca_issuer("mxpipe test intermediate", Some(&root))?;
    let (leaf, leaf_key) = issue_leaf(names, &issuer, expired_leaf)?;
    let intermediate_key = private_key(issuer.key())?;
    Ok(GeneratedChain { root: root.der().clone(), intermediate: issuer.der().clone(), intermediate_key, leaf, leaf_key, issuer })
}

fn gen_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn check_names(names: &[String]) -> Result<(), TlsError> {
    if names.is_empty() {
        return Err(TlsError::Generate("no certificate names given".into()));
    }
    Ok(())
}

fn private_key(key: &rcgen::KeyPair) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::try_from(key.serialize_der()).map_err(gen_err)
}

/// A CA named `cn` with a fresh key: self-signed, or signed by `parent`.
fn ca_issuer(
    cn: &str,
    parent: Option<&rcgen::CertifiedIssuer<'static, rcgen::KeyPair>>,
) -> Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(gen_err)?;
    match parent {
        None => CertifiedIssuer::self_signed(params, key),
        Some(parent) => CertifiedIssuer::signed_by(params, key, parent),
    }
    .map_err(gen_err)
}

/// A server certificate for `names` (the first also its common name) with a fresh key,
/// signed by `issuer`; `expired` makes it valid only during the year 2000.
fn issue_leaf(
    names: &[String],
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    expired: bool,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[0].as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, issuer).map_err(gen_err)?;
    Ok((cert.der().clone(), private_key(&key)?))
}

/// Load a certificate chain and a private key from PEM files.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem { path: key.display().to_string(), reason: e.to_string() })?;
    Ok(Identity { chain, key })
}

/// Load every certificate in a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem { path: path.display().to_string(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Add every certificate of a PEM file to `roots` as a trust anchor.
pub fn add_roots_from_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsError> {
    let mut n = 0;
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Pem { path: path.display().to_string(), reason: format!("not a usable trust anchor: {e}") })?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pki_round_trips_through_pem() {
        let pki = generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(pki.identity.chain.len(), 2);
        let dir = std::env::temp_dir().join(format!("mxpipe-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let mut roots = RootCertStore::empty();
        assert_eq!(add_roots_from_file(&mut roots, &ca).unwrap(), 1);
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        assert!(matches!(load_certs(&dir.join("empty.pem")), Err(TlsError::Pem { .. })));
        assert!(load_certs(&dir.join("missing.pem")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_names_is_an_error() {
        assert!(generate(&[]).is_err());
    }
}
