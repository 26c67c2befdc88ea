//! DKIM private keys: loading a key file (checked, so a bad one stops `serve` naming the file),
//! and `mxpipe dkim keygen` (a new key and the DNS TXT record to publish for it).
//!
//! The signing itself is mail-auth's; these are the parts around it that mail-auth does not
//! do: telling the two algorithms apart from one PEM file, refusing RSA keys under 2048 bits
//! (RFC 8301 §3.2 says verifiers may ignore them, and Gmail does), and writing the `p=` value
//! in the form each algorithm publishes (RFC 6376 §3.6.1: SubjectPublicKeyInfo for RSA; RFC
//! 8463 §4.2: the raw 32-byte key for Ed25519).

use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair;
use base64::Engine as _;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// Largest key file read (an RSA-4096 PEM is about 3.3 KB).
pub const MAX_KEY_FILE: u64 = 64 * 1024;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (a DNS TXT record of a 8192-bit key is still
/// publishable; beyond that signing costs more than it protects).
pub const MAX_RSA_BITS: usize = 8192;

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// `ed25519-sha256` (RFC 8463): small keys and signatures, fast; not yet verified by
    /// every receiver, so it is usually sent beside an RSA signature.
    #[serde(alias = "ed25519-sha256")]
    Ed25519,
    /// `rsa-sha256` (RFC 6376), 2048 bits and up: verified everywhere.
    #[serde(alias = "rsa-sha256")]
    Rsa,
}

impl Algorithm {
    /// The `k=` tag of the key record.
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa => "rsa",
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Algorithm, String> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" | "ed25519-sha256" => Ok(Algorithm::Ed25519),
            "rsa" | "rsa-sha256" => Ok(Algorithm::Rsa),
            _ => Err(format!("unknown DKIM algorithm {s:?}: give ed25519 or rsa")),
        }
    }
}

/// A private key read from its file, with what the DNS record of it publishes.
pub struct LoadedKey {
    /// Which algorithm the key is for.
    pub algorithm: Algorithm,
    /// The key, ready for mail-auth's signer.
    pub key: DkimKey,
    /// The `p=` value of the key record (base64).
    pub public_b64: String,
    /// RSA modulus size in bits; `None` for Ed25519.
    pub bits: Option<usize>,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey").field("algorithm", &self.algorithm).field("bits", &self.bits).finish_non_exhaustive()
    }
}

impl LoadedKey {
    /// The TXT record to publish at `SELECTOR._domainkey.DOMAIN`.
    pub fn txt_record(&self) -> String {
        txt_record(self.algorithm, &self.public_b64)
    }
}

/// The TXT record value for a public key (`v=DKIM1; k=…; p=…`).
pub fn txt_record(algorithm: Algorithm, public_b64: &str) -> String {
    format!("v=DKIM1; k={}; p={public_b64}", algorithm.key_type())
}

/// Reads a PEM private key file: PKCS#8 (`BEGIN PRIVATE KEY`, Ed25519 or RSA) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`). The error says what is wrong, not which file (the caller adds it).
pub fn load(path: &Path) -> Result<LoadedKey, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(format!("{} bytes: not a key file (at most {MAX_KEY_FILE})", meta.len()));
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_pem(&pem)
}

/// A PEM private key, as [`load`] reads it.
pub fn parse_pem(pem: &[u8]) -> Result<LoadedKey, String> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no PEM private key in it ({e})"))?;
    match der {
        PrivateKeyDer::Pkcs8(p8) => {
            let bytes = p8.secret_pkcs8_der();
            if let Ok(pair) = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes) {
                let public_b64 = b64(pair.public_key().as_ref());
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(bytes).map_err(|e| format!("Ed25519 key: {e}"))?;
                return Ok(LoadedKey { algorithm: Algorithm::Ed25519, key: DkimKey::Ed25519(key), public_b64, bits: None });
            }
            let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(bytes).map_err(|e| match e.to_string().as_str() {
                "TooSmall" | "TooLarge" => rsa_error(e),
                _ => "a PKCS#8 key that is neither Ed25519 nor RSA (EC keys are not used by DKIM)".to_string(),
            })?;
            rsa(pair, PrivateKeyDer::Pkcs8(bytes.to_vec().into()))
        }
        PrivateKeyDer::Pkcs1(p1) => {
            let pair = aws_lc_rs::rsa::KeyPair::from_der(p1.secret_pkcs1_der()).map_err(rsa_error)?;
            rsa(pair, PrivateKeyDer::Pkcs1(p1.secret_pkcs1_der().to_vec().into()))
        }
        _ => Err("an EC (SEC1) key: DKIM signs with RSA or Ed25519".into()),
    }
}

fn rsa_error(e: aws_lc_rs::error::KeyRejected) -> String {
    match e.to_string().as_str() {
        "TooSmall" => format!("an RSA key of fewer than {MIN_RSA_BITS} bits: give {MIN_RSA_BITS} to {MAX_RSA_BITS} (RFC 8301)"),
        "TooLarge" => format!("an RSA key of more than {MAX_RSA_BITS} bits"),
        other => format!("RSA key: {other}"),
    }
}

fn rsa(pair: aws_lc_rs::rsa::KeyPair, der: PrivateKeyDer<'_>) -> Result<LoadedKey, String> {
    let bits = pair.public_modulus_len() * 8;
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(format!("an RSA key of {bits} bits: give {MIN_RSA_BITS} to {MAX_RSA_BITS} (RFC 8301)"));
    }
    let spki = pair.public_key().as_der().map_err(|_| "cannot encode the RSA public key".to_string())?;
    let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| format!("RSA key: {e}"))?;
    Ok(LoadedKey { algorithm: Algorithm::Rsa, key: DkimKey::Rsa(key), public_b64: b64(spki.as_ref()), bits: Some(bits) })
}

/// A new key: its PKCS#8 PEM and the `p=` value of its DNS record. `bits` is for RSA only.
pub fn generate(algorithm: Algorithm, bits: usize) -> Result<(String, String), String> {
    match algorithm {
        Algorithm::Ed25519 => {
            let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
                .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
            let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| "cannot read back the new key")?;
            Ok((pem("PRIVATE KEY", doc.as_ref()), b64(pair.public_key().as_ref())))
        }
        Algorithm::Rsa => {
            let size = match bits {
                2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                8192 => aws_lc_rs::rsa::KeySize::Rsa8192,
                _ => return Err(format!("RSA keys are generated with 2048, 3072, 4096 or 8192 bits, not {bits}")),
            };
            let pair = aws_lc_rs::rsa::KeyPair::generate(size).map_err(|_| "cannot generate an RSA key".to_string())?;
            let p8: aws_lc_rs::encoding::Pkcs8V1Der<'_> = pair.as_der().map_err(|_| "cannot encode the new key".to_string())?;
            let spki = pair.public_key().as_der().map_err(|_| "cannot encode the public key".to_string())?;
            Ok((pem("PRIVATE KEY", p8.as_ref()), b64(spki.as_ref())))
        }
    }
}

/// `mxpipe dkim keygen`: writes a new key to `out` (readable by its owner only; an existing
/// file is never overwritten) and returns what to publish and configure: the DNS TXT record in
/// zone-file form (split into strings of at most 255 bytes, as RFC 1035 requires, which an
/// RSA key needs) and the `[[dkim]]` entry.
pub fn keygen(domain: &str, selector: &str, algorithm: Algorithm, bits: usize, out: &Path) -> Result<String, String> {
    let domain = signing_domain(domain)?;
    check_selector(selector)?;
    if out.exists() {
        return Err(format!("{} exists: not overwritten (remove it, or give another --out)", out.display()));
    }
    let (pem, public) = generate(algorithm, bits)?;
    crate::sys::write_private_atomic(out, pem.as_bytes()).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let record = txt_record(algorithm, &public);
    let strings: Vec<String> = record.as_bytes().chunks(255).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
    Ok(format!(
        "; the private key is in {key} (keep it there: readable by its owner only)\n\
         ; publish this TXT record in the zone of {domain}:\n\
         {selector}._domainkey.{domain}. 3600 IN TXT ( {txt} )\n\
         \n\
         # and add to the serve configuration:\n\
         [[dkim]]\n\
         domain = \"{domain}\"\n\
         selector = \"{selector}\"\n\
         key = \"{key}\"\n\
         algorithm = \"{alg}\"\n",
        key = out.display(),
        txt = strings.join(" "),
        alg = algorithm.key_type(),
    ))
}

/// A signing domain (`d=`) as an A-label, lowercase; a name of at least two labels.
pub fn signing_domain(domain: &str) -> Result<String, String> {
    idna::domain_to_ascii(domain.trim_end_matches('.'))
        .ok()
        .filter(|d| !d.is_empty() && d.contains('.'))
        .map(|d| d.to_ascii_lowercase())
        .ok_or_else(|| format!("{domain:?} is not a domain name"))
}

/// A selector (`s=`): one or more DNS labels of letters, digits, '-' and '_'.
pub fn check_selector(selector: &str) -> Result<(), String> {
    let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if selector.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("selector {selector:?} is not a DNS label: letters, digits, '-' and '_', labels joined by '.'"))
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// PEM armour, 64 columns (RFC 7468). By hand: four lines, and rustls-pki-types only decodes.
fn pem(label: &str, der: &[u8]) -> String {
    let body = b64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_with_the_same_public_key() {
        for (alg, bits) in [(Algorithm::Ed25519, 0), (Algorithm::Rsa, 2048)] {
            let (pem, public) = generate(alg, bits).unwrap();
            let k = parse_pem(pem.as_bytes()).unwrap();
            assert_eq!(k.algorithm, alg);
            assert_eq!(k.public_b64, public);
            assert!(k.txt_record().starts_with(&format!("v=DKIM1; k={}; p=", alg.key_type())));
        }
    }

    #[test]
    fn small_rsa_keys_ec_keys_and_garbage_are_refused() {
        // A 1024-bit RSA key (PKCS#1, from RFC 6376-era examples): refused by size.
        let k1024 = "-----BEGIN RSA PRIVATE KEY-----\nMIICXwIBAAKBgQDwIRP/UC3SBsEmGqZ9ZJW3/DkMoGeLnQg1fWn7/zYtIxN2SnFC\njxOCKG9v3b4jYfcTNh5ijSsq631uBItLa7od+v/RtdC2UzJ1lWT947qR+Rcac2gb\nto/NMqJ0fzfVjH4OuKhitdY9tf6mcwGjaNBcWToIMmPSPDdQPNUYckcQ2QIDAQAB\nAoGBALmn+XwWk7akvkUlqb+dOxyLB9i5VBVfje89Teolwc9YJT36BGN/l4e0l6QX\n/1//6DWUTB3KI6wFcm7TWJcxbS0tcKZX7FsJvUz1SbQnkS54DJck1EZO/BLa5ckJ\ngAYIaqlA9C0ZwM6i58lLlPadX/rtHb7pWzeNcZHjKrjM461ZAkEA+itss2nRlmyO\nn1/5yDyCluST4dQfO8kAB3toSEVc7DeFeDhnC1mZdjASZNvdHS4gbLIA1hUGEF9m\n3hKsGUMMPwJBAPW5v/U+AWTADFCS22t72NUurgzeAbzb1HWMqO4y4+9Hpjk5wvL/\neVYizyuce3/fGke7aRYw/ADKygMJdW8H/OcCQQDz5OQb4j2QDpPZc0Nc4QlbvMsj\n7p7otWRO5xRa6SzXqqV3+F0VpqvDmshEBkoCydaYwc2o6WQ5EBmExeV8124XAkEA\nqZzGsIxVP+sEVRWZmW6KNFSdVUpk3qzK0Tz/WjQMe5z0UunY9Ax9/4PVhp/j61bf\neAYXunajbBSOLlx4D+TunwJBANkPI5S9iylsbLs6NkaMHV6k5ioHBBmgCak95JGX\nGMot/L2x0IYyMLAz6oLWh2hm7zwtb0CgOrPo1ke44hFYnfc=\n-----END RSA PRIVATE KEY-----\n";
        let e = parse_pem(k1024.as_bytes()).unwrap_err();
        assert!(e.contains("fewer than 2048 bits"), "{e}");
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
        let e = parse_pem(ec.as_bytes()).unwrap_err();
        assert!(e.contains("neither Ed25519 nor RSA") || e.contains("EC"), "{e}");
        assert!(parse_pem(b"not a key").unwrap_err().contains("no PEM private key"));
        assert!(generate(Algorithm::Rsa, 1024).is_err());
    }
}
