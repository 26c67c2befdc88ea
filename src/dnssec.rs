//! DNSSEC trust anchors from files (`--trust-anchors FILE`, `[dns] trust_anchors`).
//!
//! A private zone (an internal domain, a test zone) is not reachable from the root's chain of
//! trust, so a validating resolver needs its key as an anchor. The file holds DNSKEY and/or
//! DS records in zone-file syntax, one per line, the format unbound's `trust-anchor-file`
//! and `dig DNSKEY` output use:
//!
//! ```text
//! ; comments start with a semicolon; blank lines are skipped; TTL and class are optional
//! example.test. 3600 IN DNSKEY 257 3 13 <base64 public key>
//! example.test. IN DS 12345 13 2 <hex SHA-256 digest>
//! ```
//!
//! A DNSKEY is trusted as it is. A DS is a digest of a key, so at load time the owner's
//! DNSKEY RRset is fetched (unvalidated: that is what the digest is for) through the
//! configured nameserver, and the keys whose digest matches become anchors. A DS that
//! matches no key, or whose DNSKEY cannot be fetched, is an error at start naming the file,
//! line and owner: a daemon that silently ran without the anchor would defer every message
//! of that zone as bogus, or worse, not validate it.
//!
//! The anchors are **added to** hickory's built-in root keys, not substituted for them:
//! hickory's `with_trust_anchor` *replaces* the whole set, so [`load`] starts from
//! `TrustAnchors::default()` (the root KSKs 20326 and 38696). Public domains keep validating
//! from the root, and the private zones validate from their own anchors.
//!
//! This module reads files and asks for DNSKEY records; it does not validate answers (hickory
//! does, in [`crate::resolve`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_resolver::config::ResolveHosts;
use hickory_resolver::proto::dnssec::rdata::{DNSSECRData, DNSKEY, DS};
use hickory_resolver::proto::dnssec::{Algorithm, PublicKey, PublicKeyBuf, Verifier};
use hickory_resolver::proto::rr::{LowerName, Name, RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::resolve::{ResolverConfig, TrustAnchors};

/// Largest anchor file read: the root's anchor file is under 1 KB, so 1 MiB leaves room for
/// many private zones and still refuses a wrong path (a log, a device).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Most lines in one anchor file (comments and blank lines included).
pub const MAX_LINES: usize = 10_000;

/// Most anchor files read ([`load`]).
pub const MAX_FILES: usize = 64;

/// How long the DNSKEY lookup for one DS anchor may take, all attempts together.
pub const DS_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// One record of an anchor file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorRecord {
    /// Line number, from 1.
    pub line: usize,
    /// Owner name: the zone the anchor is for.
    pub owner: Name,
    /// The record.
    pub data: AnchorData,
}

/// The two kinds of anchor record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorData {
    /// A zone key, trusted as it is.
    Dnskey(DNSKEY),
    /// The digest of a zone key; the key itself is fetched at load time.
    Ds(DS),
}

/// Why the anchors could not be loaded. Each says which file (and line, and owner).
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The file cannot be read.
    #[error("trust anchor file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`] or has more than [`MAX_LINES`] lines.
    #[error("trust anchor file {}: {what}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Which bound it exceeds.
        what: String,
    },
    /// A line is not a DNSKEY or DS record this loader understands.
    #[error("trust anchor file {}, line {line}: {msg}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong with it.
        msg: String,
    },
    /// The file holds no anchor at all (only comments): a wrong file, most likely.
    #[error("trust anchor file {}: no DNSKEY or DS record in it", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The DNSKEY RRset a DS anchor refers to cannot be fetched, or no key in it matches.
    #[error("trust anchor file {}, line {line}: DS anchor for {owner}: {why}", path.display())]
    Ds {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// The zone the DS is for (absolute, lowercase).
        owner: String,
        /// What went wrong.
        why: String,
    },
    /// More than [`MAX_FILES`] files were given.
    #[error("at most {MAX_FILES} trust anchor files")]
    TooManyFiles,
}

/// Parse the text of an anchor file (`path` is only for the errors).
pub fn parse(text: &str, path: &Path) -> Result<Vec<AnchorRecord>, AnchorError> {
    let syntax = |line: usize, msg: String| AnchorError::Syntax { path: path.to_owned(), line, msg };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if line > MAX_LINES {
            return Err(AnchorError::TooLarge { path: path.to_owned(), what: format!("more than {MAX_LINES} lines") });
        }
        let content = raw.split(';').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if content.contains('(') || content.contains(')') {
            return Err(syntax(line, "write each record on one line (parentheses are not supported)".into()));
        }
        let mut tokens = content.split_whitespace().peekable();
        let owner_str = tokens.next().unwrap_or("");
        if owner_str.starts_with('$') || owner_str == "@" {
            return Err(syntax(line, format!("{owner_str:?}: directives and relative names are not supported; give the zone's full name")));
        }
        let mut owner = Name::from_ascii(owner_str).map_err(|e| syntax(line, format!("owner {owner_str:?}: {e}")))?;
        owner.set_fqdn(true);
        let owner = owner.to_lowercase();
        // [TTL] [class] or [class] [TTL], both optional, as in a zone file.
        let mut rtype = None;
        for _ in 0..3 {
            let Some(tok) = tokens.next() else { break };
            if tok.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if tok.eq_ignore_ascii_case("IN") {
                continue;
            }
            rtype = Some(tok);
            break;
        }
        let Some(rtype) = rtype else { return Err(syntax(line, "expected DNSKEY or DS after the owner".into())) };
        let rtype = if rtype.eq_ignore_ascii_case("DNSKEY") {
            RecordType::DNSKEY
        } else if rtype.eq_ignore_ascii_case("DS") {
            RecordType::DS
        } else {
            return Err(syntax(line, format!("{rtype}: only DNSKEY and DS records (class IN) are trust anchors")));
        };
        let rdata_text = tokens.collect::<Vec<_>>().join(" ");
        let rdata = if rtype == RecordType::DNSKEY {
            // hickory parses DS text but not DNSKEY text (its zone parser refuses it).
            RData::DNSSEC(DNSSECRData::DNSKEY(parse_dnskey(&rdata_text).map_err(|e| syntax(line, format!("DNSKEY: {e}")))?))
        } else {
            RData::try_from_str(rtype, &rdata_text).map_err(|e| syntax(line, format!("{rtype} {rdata_text:?}: {e}")))?
        };
        let data = match rdata {
            RData::DNSSEC(DNSSECRData::DNSKEY(key)) => {
                if !key.zone_key() {
                    return Err(syntax(line, "DNSKEY without the zone-key flag (256 or 257) cannot sign a zone".into()));
                }
                if key.revoke() {
                    return Err(syntax(line, "DNSKEY has the revoked flag".into()));
                }
                if !key.public_key().algorithm().is_supported() {
                    return Err(syntax(line, format!("DNSKEY algorithm {} is not supported", u8::from(key.public_key().algorithm()))));
                }
                AnchorData::Dnskey(key)
            }
            RData::DNSSEC(DNSSECRData::DS(ds)) => {
                if !ds.digest_type().is_supported() {
                    return Err(syntax(line, format!("DS digest type {} is not supported", u8::from(ds.digest_type()))));
                }
                AnchorData::Ds(ds)
            }
            other => return Err(syntax(line, format!("unexpected {} record", other.record_type()))),
        };
        out.push(AnchorRecord { line, owner, data });
    }
    Ok(out)
}

/// `flags protocol algorithm base64-key` (the key may be split by spaces, as `dig` prints it).
fn parse_dnskey(text: &str) -> Result<DNSKEY, String> {
    use base64::Engine as _;
    let mut t = text.split_whitespace();
    let mut field = |what: &str| t.next().ok_or_else(|| format!("{what} missing (expected: flags 3 algorithm key)"));
    let flags: u16 = field("flags")?.parse().map_err(|_| "flags: not a number 0-65535".to_string())?;
    let protocol = field("protocol")?;
    if protocol != "3" {
        return Err(format!("protocol {protocol}: must be 3"));
    }
    let algorithm: u8 = field("algorithm")?.parse().map_err(|_| "algorithm: not a number 0-255".to_string())?;
    let b64: String = t.collect();
    if b64.is_empty() {
        return Err("public key missing".into());
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()).map_err(|e| format!("public key: not base64: {e}"))?;
    let key = DNSKEY::with_flags(flags, PublicKeyBuf::new(bytes, Algorithm::from_u8(algorithm)));
    if key.public_key().algorithm().is_supported() {
        // Decode the key as the validator will, so that a truncated key fails here.
        key.key().map_err(|e| format!("public key: {e}"))?;
    }
    Ok(key)
}

/// Read and parse one anchor file, bounded by [`MAX_FILE_BYTES`].
pub fn read(path: &Path) -> Result<Vec<AnchorRecord>, AnchorError> {
    use std::io::Read;
    let read_err = |source| AnchorError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(AnchorError::TooLarge { path: path.to_owned(), what: format!("larger than {MAX_FILE_BYTES} bytes") });
    }
    let text =
        String::from_utf8(bytes).map_err(|_| AnchorError::Syntax { path: path.to_owned(), line: 0, msg: "not UTF-8 text".into() })?;
    let records = parse(&text, path)?;
    if records.is_empty() {
        return Err(AnchorError::Empty { path: path.to_owned() });
    }
    Ok(records)
}

/// The anchors of `files` added to hickory's root keys. DS anchors are resolved to keys by
/// asking `nameserver` (the system resolver when `None`) for the owner's DNSKEY RRset.
pub async fn load(files: &[PathBuf], nameserver: Option<SocketAddr>) -> Result<TrustAnchors, AnchorError> {
    let mut anchors = TrustAnchors::default();
    add_from_files(&mut anchors, files, nameserver).await?;
    Ok(anchors)
}

/// Add the anchors of `files` to `anchors` (which [`load`] starts with the root keys); DS
/// anchors are resolved as [`load`] does.
pub async fn add_from_files(anchors: &mut TrustAnchors, files: &[PathBuf], nameserver: Option<SocketAddr>) -> Result<(), AnchorError> {
    if files.len() > MAX_FILES {
        return Err(AnchorError::TooManyFiles);
    }
    let mut resolver = None;
    for path in files {
        for rec in read(path)? {
            match &rec.data {
                AnchorData::Dnskey(key) => {
                    anchors.insert_with_name(key.public_key(), LowerName::new(&rec.owner));
                }
                AnchorData::Ds(ds) => {
                    let ds_err = |why: String| AnchorError::Ds { path: path.clone(), line: rec.line, owner: rec.owner.to_string(), why };
                    if resolver.is_none() {
                        resolver = Some(plain_resolver(nameserver).map_err(ds_err)?);
                    }
                    let keys = fetch_dnskeys(resolver.as_ref().expect("set above"), &rec.owner).await.map_err(ds_err)?;
                    let mut matched = 0;
                    for key in &keys {
                        if key.public_key().algorithm() == ds.algorithm() && ds.covers(&rec.owner, key).unwrap_or(false) {
                            anchors.insert_with_name(key.public_key(), LowerName::new(&rec.owner));
                            matched += 1;
                        }
                    }
                    if matched == 0 {
                        return Err(ds_err(format!(
                            "none of the {} DNSKEY records served for it matches the digest (key tag {})",
                            keys.len(),
                            ds.key_tag()
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Load `files` into `cfg`: the anchors replace `cfg.trust_anchor` and switch DNSSEC
/// validation on (an anchor is only given to be validated against). Nothing changes when
/// `files` is empty.
pub async fn configure(cfg: &mut ResolverConfig, files: &[PathBuf]) -> Result<(), AnchorError> {
    if files.is_empty() {
        return Ok(());
    }
    let anchors = load(files, cfg.nameserver).await?;
    cfg.trust_anchor = Some(std::sync::Arc::new(anchors));
    cfg.validate_dnssec = true;
    Ok(())
}

/// A resolver that does not validate, with no cache, for the DNSKEY lookups.
fn plain_resolver(nameserver: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut builder = crate::resolve::hickory_builder(nameserver)?;
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.validate = false;
    builder.build().map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

async fn fetch_dnskeys(resolver: &TokioResolver, owner: &Name) -> Result<Vec<DNSKEY>, String> {
    let lookup = tokio::time::timeout(DS_LOOKUP_TIMEOUT, resolver.lookup(owner.clone(), RecordType::DNSKEY))
        .await
        .map_err(|_| format!("DNSKEY lookup timed out after {DS_LOOKUP_TIMEOUT:?}"))?
        .map_err(|e| format!("DNSKEY lookup failed: {e}"))?;
    let keys: Vec<DNSKEY> = lookup
        .answers()
        .iter()
        .filter(|r| r.name == *owner)
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k.clone()),
            _ => None,
        })
        .collect();
    if keys.is_empty() {
        return Err("no DNSKEY records served for it".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==";

    fn p(text: &str) -> Result<Vec<AnchorRecord>, AnchorError> {
        parse(text, Path::new("anchors.txt"))
    }

    #[test]
    fn parses_dnskey_and_ds_with_or_without_ttl_and_class() {
        let text = format!(
            "; a comment\n\nexample.test. 3600 IN DNSKEY 257 3 13 {KEY}\nexample.test IN 3600 DNSKEY 256 3 13 {KEY} ; trailing\n\
             Other.Test. DS 12345 13 2 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF\n"
        );
        let r = p(&text).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].line, r[0].owner.to_string()), (3, "example.test.".into()));
        assert!(matches!(&r[0].data, AnchorData::Dnskey(k) if k.flags() == 257));
        assert!(matches!(&r[1].data, AnchorData::Dnskey(k) if k.flags() == 256));
        assert_eq!((r[2].line, r[2].owner.to_string()), (5, "other.test.".into()));
        assert!(matches!(&r[2].data, AnchorData::Ds(d) if d.key_tag() == 12345 && d.digest().len() == 32));
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        for (text, needle) in [
            ("example.test. IN A 127.0.0.1\n", "only DNSKEY and DS"),
            ("\n\nexample.test. DNSKEY 257 3 13 !!notbase64\n", "not base64"),
            ("example.test. DNSKEY 257 3 13 AAAA\n", "public key"),
            ("example.test. DNSKEY 257 2 13 AAAA\n", "protocol"),
            ("example.test. DNSKEY 257 3 13 (\n", "one line"),
            ("example.test. DS 1 13 9 00\n", "digest type"),
            ("$ORIGIN example.test.\n", "directives"),
            ("example.test.\n", "expected DNSKEY or DS"),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.starts_with("trust anchor file anchors.txt, line "), "{e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let e = p(&format!("example.test. DNSKEY 1 3 13 {KEY}\n")).unwrap_err().to_string();
        assert!(e.contains("zone-key"), "{e}");
        let e = p(&format!("example.test. DNSKEY 385 3 13 {KEY}\n")).unwrap_err().to_string();
        assert!(e.contains("revoked"), "{e}");
        let e = p("\n\nexample.test. DNSKEY 257 3 13 !!\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn bounded_by_lines_and_size() {
        let text = "; x\n".repeat(MAX_LINES + 1);
        assert!(matches!(p(&text), Err(AnchorError::TooLarge { .. })));
        let dir = std::env::temp_dir().join(format!("mxpipe-anchors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b';'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(read(&big), Err(AnchorError::TooLarge { .. })));
        let empty = dir.join("empty");
        std::fs::write(&empty, "; nothing\n").unwrap();
        assert!(matches!(read(&empty), Err(AnchorError::Empty { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
