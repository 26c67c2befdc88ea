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
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    if names.is_empty() {
        return Err(TlsError::Generate("no certificate names given".into()));
    }

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mxpipe test CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(gen)?).map_err(gen)?;

    let mut leaf_params = CertificateParams::new(names.to_vec()).map_err(gen)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[0].as_str());
    leaf_params.distinguished_name = dn;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().map_err(gen)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(gen)?;

    let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(GeneratedPki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        identity: Identity { chain: vec![leaf.der().clone(), ca.der().clone()], key },
    })
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
