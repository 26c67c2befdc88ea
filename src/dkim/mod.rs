//! DKIM signing at intake (RFC 6376 RSA-SHA256, RFC 8463 Ed25519-SHA256).
//!
//! A message is signed once, when it is injected and before it is acknowledged, so the spool
//! holds exactly what was signed and a retry never signs again. Which keys sign it:
//! - an explicit choice (the HTTP API's `"dkim": ["name", …]`, or an `X-Mxpipe-Dkim:` header
//!   field on SMTP injection, removed before signing), each a key's `name` or signing domain;
//! - else every key of the most specific signing domain that aligns with the domain of the
//!   `From:` header field (the same domain, or a parent of it: an ESP's customer signs
//!   `news.shop.example` mail with a `shop.example` key, which DMARC's relaxed alignment
//!   accepts);
//! - and in both cases the keys marked `always` (the ESP's own signature beside the customer's).
//!
//! A message no key matches is sent unsigned and counted. The signing itself is mail-auth's
//! (relaxed/relaxed canonicalization); the keys ([`keys`]) are checked when they are loaded, so
//! a bad key file stops `serve` (or a SIGHUP reload keeps the old keys) naming the file, never
//! an unsigned send. Signing is CPU work (RSA-2048 about 340 µs a signature on the reference
//! machine): [`workers`] runs it on threads of its own, off the listeners' runtime.

pub mod keys;
pub mod workers;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mail_auth::common::crypto::DkimKey;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

pub use keys::Algorithm;

/// Header fields signed when an entry gives no `headers`: those RFC 6376 §5.4.1 recommends
/// plus the one-click unsubscribe pair (RFC 8058) that Gmail and Yahoo require of bulk mail
/// to be signed. A listed field the message lacks is signed as absent, so it cannot be added
/// later without breaking the signature.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// At most this many `[[dkim]]` entries.
pub const MAX_KEYS: usize = 1000;
/// At most this many names in an explicit choice.
pub const MAX_CHOICE: usize = 8;
/// Bytes of the header section searched for `From:` (a header section larger than this is
/// unusual; the message is then signed by its explicit choice or `always` keys only).
const MAX_HEADER_SCAN: usize = 256 * 1024;

/// One `[[dkim]]` entry: a signing key.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// What an explicit choice calls the key (`"dkim": ["esp-2026"]`). Default: the signing
    /// domain; two entries for one domain (an RSA and an Ed25519 key) then share the name and
    /// are chosen together.
    #[serde(default)]
    pub name: Option<String>,
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key record is the TXT record at
    /// `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// PEM private key file: PKCS#8 (Ed25519 or RSA) or PKCS#1 (RSA), as written by
    /// `mxpipe dkim keygen`. RSA keys need 2048 bits or more.
    pub key: PathBuf,
    /// `ed25519` or `rsa`; checked against the key file when given.
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// Header fields to sign. Default [`DEFAULT_HEADERS`].
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    /// Header fields signed once more than they occur, so that none can be added after
    /// signing (a second `From:` is the classic forgery). Default `["From"]`.
    #[serde(default = "default_oversign")]
    pub oversign: Vec<String>,
    /// Signatures expire this long after signing (`x=`). Default: no expiry.
    #[serde(default, deserialize_with = "crate::value::duration::deserialize_opt")]
    pub expiry: Option<Duration>,
    /// Sign every message with this key, besides the aligned or chosen ones (an ESP's own
    /// signature). Default false.
    #[serde(default)]
    pub always: bool,
}

fn default_oversign() -> Vec<String> {
    vec!["From".into()]
}

/// A loaded key and its signer.
struct Key {
    name: String,
    domain: String,
    selector: String,
    always: bool,
    signer: DkimSigner<DkimKey, Done>,
    signatures: AtomicU64,
}

/// The keys of one configuration (replaced whole on reload).
struct KeySet {
    keys: Vec<Key>,
}

/// Counters of the signer, for metrics and summaries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DkimStats {
    /// Messages that got at least one signature.
    pub signed: u64,
    /// Messages no key matched: sent unsigned.
    pub unsigned: u64,
    /// Signatures that failed (the message was refused, not sent unsigned).
    pub failures: u64,
    /// Successful reloads of the keys.
    pub reloads: u64,
    /// Signatures made per key, as (domain, selector, count).
    pub per_key: Vec<(String, String, u64)>,
}

/// Why a message could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// An explicit choice names no configured key.
    #[error("no DKIM key is named {0:?}")]
    UnknownKey(String),
    /// An explicit choice is malformed (too many names, an empty one).
    #[error("bad DKIM key choice: {0}")]
    BadChoice(String),
    /// The signature could not be made.
    #[error("DKIM signing with {domain}/{selector} failed: {reason}")]
    Failed {
        /// The key's domain.
        domain: String,
        /// The key's selector.
        selector: String,
        /// mail-auth's reason.
        reason: String,
    },
}

/// What signing did to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// The message with its `DKIM-Signature:` fields first, and the `d=` domains.
    Yes(Vec<u8>, Vec<String>),
    /// No key matched: the message as it was.
    No,
}

/// The signer: the loaded keys (replaceable while running) and counters.
pub struct Dkim {
    set: RwLock<Arc<KeySet>>,
    signed: AtomicU64,
    unsigned: AtomicU64,
    failures: AtomicU64,
    reloads: AtomicU64,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dkim").field("keys", &self.current().keys.len()).finish_non_exhaustive()
    }
}

impl Dkim {
    /// Loads every key; the first bad entry is the error, naming its file.
    pub fn load(entries: &[KeyConfig]) -> Result<Dkim, String> {
        Ok(Dkim::from_set(load_set(entries)?))
    }

    fn from_set(set: KeySet) -> Dkim {
        Dkim {
            set: RwLock::new(Arc::new(set)),
            signed: AtomicU64::new(0),
            unsigned: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        }
    }

    /// One key given as PEM bytes instead of a file (`entry.key` is then only its name in
    /// errors): for `mxpipe demo`, which makes its key in memory.
    pub fn with_pem(entry: &KeyConfig, pem: &[u8]) -> Result<Dkim, String> {
        Ok(Dkim::from_set(build_set(std::slice::from_ref(entry), |_| keys::parse_pem(pem))?))
    }

    /// A `[[dkim]]` entry with the defaults, for a key of `domain` and `selector` in `key`.
    pub fn entry(domain: &str, selector: &str, key: impl Into<PathBuf>) -> KeyConfig {
        KeyConfig {
            name: None,
            domain: domain.into(),
            selector: selector.into(),
            key: key.into(),
            algorithm: None,
            headers: None,
            oversign: default_oversign(),
            expiry: None,
            always: false,
        }
    }

    /// Loads `entries` and puts them in place of the current keys, all or nothing: on an error
    /// (which names the file) the current keys stay.
    pub fn reload(&self, entries: &[KeyConfig]) -> Result<usize, String> {
        let set = load_set(entries)?;
        let n = set.keys.len();
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    fn current(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Number of keys loaded.
    pub fn len(&self) -> usize {
        self.current().keys.len()
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every name of an explicit choice is a configured key (for the intake to refuse
    /// a message before it is queued for signing).
    pub fn check_choice(&self, choice: &[String]) -> Result<(), SignError> {
        check_choice_shape(choice)?;
        let set = self.current();
        for c in choice {
            if !set.keys.iter().any(|k| k.name.eq_ignore_ascii_case(c) || k.domain.eq_ignore_ascii_case(c)) {
                return Err(SignError::UnknownKey(c.clone()));
            }
        }
        Ok(())
    }

    /// Signs `data` (CRLF line endings; [`normalise`] first) with the keys chosen for it:
    /// `choice` when given and non-empty, else those aligned with its `From:` domain, plus the
    /// `always` keys. CPU-bound: call it from [`workers::Workers`], not a runtime thread.
    pub fn sign(&self, data: &[u8], choice: Option<&[String]>) -> Result<Signed, SignError> {
        let set = self.current();
        let chosen = match choice.filter(|c| !c.is_empty()) {
            Some(c) => {
                check_choice_shape(c)?;
                let mut v = Vec::new();
                for name in c {
                    let before = v.len();
                    v.extend(set.keys.iter().filter(|k| k.name.eq_ignore_ascii_case(name)));
                    if v.len() == before {
                        // A domain: its keys (the first entries for it, RSA and Ed25519 alike).
                        v.extend(set.keys.iter().filter(|k| k.domain.eq_ignore_ascii_case(name)));
                    }
                    if v.len() == before {
                        return Err(SignError::UnknownKey(name.clone()));
                    }
                }
                v
            }
            None => aligned(&set, data),
        };
        let mut keys: Vec<&Key> = chosen;
        for k in set.keys.iter().filter(|k| k.always) {
            keys.push(k);
        }
        // The same key twice (chosen and `always`) signs once.
        let mut seen = std::collections::HashSet::new();
        keys.retain(|k| seen.insert((k.domain.as_str(), k.selector.as_str())));
        if keys.is_empty() {
            self.unsigned.fetch_add(1, Ordering::Relaxed);
            return Ok(Signed::No);
        }
        let mut headers = Vec::with_capacity(keys.len() * 600);
        let mut domains = Vec::with_capacity(keys.len());
        for k in keys {
            match k.signer.sign(data) {
                Ok(sig) => {
                    headers.extend_from_slice(sig.to_header().as_bytes());
                    k.signatures.fetch_add(1, Ordering::Relaxed);
                    if !domains.contains(&k.domain) {
                        domains.push(k.domain.clone());
                    }
                }
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(SignError::Failed { domain: k.domain.clone(), selector: k.selector.clone(), reason: e.to_string() });
                }
            }
        }
        self.signed.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(headers.len() + data.len());
        out.extend_from_slice(&headers);
        out.extend_from_slice(data);
        Ok(Signed::Yes(out, domains))
    }

    /// The counters.
    pub fn stats(&self) -> DkimStats {
        let set = self.current();
        DkimStats {
            signed: self.signed.load(Ordering::Relaxed),
            unsigned: self.unsigned.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            reloads: self.reloads.load(Ordering::Relaxed),
            per_key: set.keys.iter().map(|k| (k.domain.clone(), k.selector.clone(), k.signatures.load(Ordering::Relaxed))).collect(),
        }
    }
}

/// The signer's counters in the Prometheus text format, for `GET /metrics`.
pub fn metrics(s: &DkimStats) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, help, v) in [
        ("mxpipe_dkim_signed_total", "Messages signed at intake (at least one DKIM signature).", s.signed),
        ("mxpipe_dkim_unsigned_total", "Messages no DKIM key matched: sent unsigned.", s.unsigned),
        ("mxpipe_dkim_failures_total", "DKIM signatures that failed (the message was not accepted).", s.failures),
        ("mxpipe_dkim_reloads_total", "Successful reloads of the DKIM keys (SIGHUP).", s.reloads),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let _ =
        writeln!(out, "# HELP mxpipe_dkim_signatures_total DKIM signatures made, per key.\n# TYPE mxpipe_dkim_signatures_total counter");
    for (d, sel, n) in &s.per_key {
        let _ = writeln!(out, "mxpipe_dkim_signatures_total{{domain=\"{d}\",selector=\"{sel}\"}} {n}");
    }
    out
}

fn check_choice_shape(choice: &[String]) -> Result<(), SignError> {
    if choice.len() > MAX_CHOICE {
        return Err(SignError::BadChoice(format!("{} keys named, at most {MAX_CHOICE}", choice.len())));
    }
    if let Some(bad) = choice.iter().find(|c| c.is_empty() || c.len() > 253 || c.chars().any(|ch| ch.is_control() || ch.is_whitespace())) {
        return Err(SignError::BadChoice(format!("{bad:?} is not a key name")));
    }
    Ok(())
}

/// The keys of the most specific signing domain that is the From domain or a parent of it.
fn aligned<'a>(set: &'a KeySet, data: &[u8]) -> Vec<&'a Key> {
    let Some(from) = from_domain(data) else { return Vec::new() };
    let aligns = |d: &str| from == d || (from.len() > d.len() && from.ends_with(d) && from.as_bytes()[from.len() - d.len() - 1] == b'.');
    let best = set.keys.iter().filter(|k| aligns(&k.domain)).map(|k| k.domain.len()).max();
    match best {
        Some(len) => set.keys.iter().filter(|k| k.domain.len() == len && aligns(&k.domain)).collect(),
        None => Vec::new(),
    }
}

/// The domain of the (first) address in the message's `From:` header field, lowercased, as an
/// A-label. `None` when there is no From field or no address in it.
pub fn from_domain(data: &[u8]) -> Option<String> {
    let value = header_value(data, "from")?;
    // The address is in angle brackets when there is a display name; otherwise the whole value.
    // Comments and quoted display names may hold '@': take the bracketed part if there is one.
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(',').next().unwrap_or(""),
    };
    let domain = addr.rsplit_once('@')?.1.trim().trim_end_matches(|c: char| c == ')' || c.is_whitespace());
    let domain = domain.split(|c: char| c.is_whitespace() || c == '(').next()?.trim_end_matches('.');
    if domain.is_empty() {
        return None;
    }
    let ascii = idna::domain_to_ascii(domain).ok()?;
    Some(ascii.to_ascii_lowercase())
}

/// The unfolded value of the first header field called `name` (lowercase), within the first
/// [`MAX_HEADER_SCAN`] bytes of the header section.
pub(crate) fn header_value(data: &[u8], name: &str) -> Option<String> {
    let head = &data[..data.len().min(MAX_HEADER_SCAN)];
    crate::header::fields(head).find(|f| f.name.is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))).map(|f| f.unfolded())
}

/// `data` with every line ending as CRLF (what is signed must be what goes on the wire; the
/// engine sends CRLF). Borrowed when it already is.
pub fn normalise(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if crate::session::normalised_len(data) == data.len() {
        std::borrow::Cow::Borrowed(data)
    } else {
        let mut out = Vec::with_capacity(data.len() + data.len() / 32);
        crate::session::normalise_into(data, false, &mut out);
        std::borrow::Cow::Owned(out)
    }
}

fn load_set(entries: &[KeyConfig]) -> Result<KeySet, String> {
    build_set(entries, |e| keys::load(&e.key))
}

fn build_set(entries: &[KeyConfig], load: impl Fn(&KeyConfig) -> Result<keys::LoadedKey, String>) -> Result<KeySet, String> {
    if entries.len() > MAX_KEYS {
        return Err(format!("dkim: {} keys configured, at most {MAX_KEYS}", entries.len()));
    }
    let mut keys = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let at = || format!("dkim[{i}] ({}/{})", e.domain, e.selector);
        let domain = keys::signing_domain(&e.domain).map_err(|err| format!("{}: {err}", at()))?;
        keys::check_selector(&e.selector).map_err(|err| format!("{}: {err}", at()))?;
        let loaded = load(e).map_err(|err| format!("{}: key file {}: {err}", at(), e.key.display()))?;
        if let Some(want) = e.algorithm {
            if want != loaded.algorithm {
                return Err(format!(
                    "{}: key file {} holds an {} key, the entry says {}",
                    at(),
                    e.key.display(),
                    loaded.algorithm.key_type(),
                    want.key_type()
                ));
            }
        }
        let mut headers: Vec<String> = match &e.headers {
            Some(h) => h.clone(),
            None => DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
        };
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            return Err(format!("{}: headers must include From (RFC 6376 §5.4)", at()));
        }
        if let Some(bad) = headers.iter().chain(&e.oversign).find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            return Err(format!("{}: {bad:?} is not a header field name", at()));
        }
        // Listing a name twice makes mail-auth sign one more instance than the message has:
        // the over-signing of RFC 6376 §8.15.
        headers.extend(e.oversign.iter().cloned());
        let mut signer = DkimSigner::from_key(loaded.key)
            .domain(domain.clone())
            .selector(e.selector.clone())
            .headers(headers)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        if let Some(x) = e.expiry {
            signer = signer.expiration(x.as_secs().max(1));
        }
        let name = e.name.clone().unwrap_or_else(|| domain.clone());
        keys.push(Key { name, domain, selector: e.selector.clone(), always: e.always, signer, signatures: AtomicU64::new(0) });
    }
    Ok(KeySet { keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domain_reads_the_address_not_the_display_name() {
        let m = |h: &str| format!("Subject: x\r\n{h}\r\nTo: a@b.example\r\n\r\nbody\r\n").into_bytes();
        assert_eq!(from_domain(&m("From: Shop <news@News.Shop.Example>")).as_deref(), Some("news.shop.example"));
        assert_eq!(from_domain(&m("From: news@shop.example")).as_deref(), Some("shop.example"));
        assert_eq!(from_domain(&m("FROM:\r\n  \"a@evil.example\" <x@good.example>")).as_deref(), Some("good.example"));
        assert_eq!(from_domain(&m("From: x@bücher.example")).as_deref(), Some("xn--bcher-kva.example"));
        assert_eq!(from_domain(&m("From: nobody")), None);
        // A From in the body is not a header field.
        assert_eq!(from_domain(b"Subject: x\r\n\r\nFrom: a@b.example\r\n"), None);
    }

    #[test]
    fn normalise_makes_crlf_and_borrows_when_it_already_is() {
        assert!(matches!(normalise(b"a: b\r\n\r\nx\r\n"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(&*normalise(b"a: b\n\nx\n"), b"a: b\r\n\r\nx\r\n");
    }
}
