//! Bearer tokens for the HTTP API: the tokens file, token generation (`mxpipe token`) and the
//! check of one `Authorization: Bearer` value.
//!
//! A token is `mxp_<id>_<secret>`: `id` is 16 hex digits, in clear in the file, so a request
//! costs one lookup and one hash however many tokens there are; `secret` is 32 random bytes in
//! base64url. The file holds, one token a line, `name:scope:sha256:ID:SALT:HASH` (salt and hash
//! base64), where HASH = SHA-256(SALT || token). `#` comments and blank lines are ignored.
//!
//! Why one SHA-256 and not PBKDF2 as for SMTP passwords ([`crate::auth`]): a password is
//! guessable, so its hash must be slow to make a stolen file expensive to attack. A token has
//! 256 random bits: no amount of hashing speed helps an attacker search that space, so a slow
//! hash would add nothing but cost, paid on *every* request, and would make each
//! unauthenticated request a lever to burn the daemon's CPU. The salt keeps equal tokens from
//! having equal lines; the comparison is constant-time.
//!
//! This module knows nothing of HTTP: the API ([`super::http`]) asks [`Tokens::check`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::{constant_time, digest};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;

/// The hashing scheme named in each line, so another can be added.
pub const SCHEME: &str = "sha256";
/// What every token starts with, so a leaked one is recognisable (and greppable).
pub const PREFIX: &str = "mxp_";
/// Longest `Authorization` value looked at; a real token is 64 characters.
pub const MAX_TOKEN: usize = 256;
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;
/// Longest token name.
const MAX_NAME: usize = 64;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `POST /v1/messages` and `GET /v1/messages/{id}`: what an application needs.
    Inject,
    /// `GET /metrics` only: a read-only token for Prometheus, that can neither inject nor
    /// bounce.
    Metrics,
    /// Everything: also the queues and the operator's commands.
    Admin,
}

impl Scope {
    /// Whether a token of this scope may do what needs `need`.
    pub fn allows(self, need: Scope) -> bool {
        self == Scope::Admin || self == need
    }

    /// The scope's name, as written in the tokens file and given to `mxpipe token --scope`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inject => "inject",
            Scope::Metrics => "metrics",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "inject" => Ok(Scope::Inject),
            "metrics" => Ok(Scope::Metrics),
            "admin" => Ok(Scope::Admin),
            _ => Err(format!("unknown scope {s:?} (inject, metrics or admin)")),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a tokens file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("cannot read the tokens file {}: {source}", path.display())]
    Io {
        /// The tokens file.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// A line that is not a token line, or repeats a name or an id.
    #[error("tokens file {}, line {line}: {message}", path.display())]
    Line {
        /// The tokens file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
}

struct Entry {
    name: String,
    scope: Scope,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// The tokens the API accepts, loaded once at start.
pub struct Tokens {
    by_id: HashMap<String, Entry>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hashes.
        write!(f, "Tokens({} tokens)", self.by_id.len())
    }
}

/// A token that passed: who it is and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    /// The token's name (the first field of its line), for errors and logs.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

impl Tokens {
    /// Read and parse a tokens file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Io { path: path.to_path_buf(), source })?;
        Tokens::parse(&text, path)
    }

    /// Parse the text of a tokens file; `path` is only for error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, TokensError> {
        let mut by_id = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| TokensError::Line { path: path.to_path_buf(), line: i + 1, message };
            let (id, entry) = parse_line(line).map_err(err)?;
            if let Some(first) = names.insert(entry.name.clone(), i + 1) {
                return Err(err(format!("token {:?} again (first on line {first})", entry.name)));
            }
            if by_id.contains_key(&id) {
                return Err(err(format!("token id {id} again")));
            }
            by_id.insert(id, entry);
        }
        Ok(Tokens { by_id })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none (a file of only comments and blank lines).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether `name` has a token here.
    pub fn has_name(&self, name: &str) -> bool {
        self.by_id.values().any(|e| e.name == name)
    }

    /// The token's owner and scope, if `token` is one of ours. One hash at most; an unknown id
    /// costs none (the id is no secret: it is in clear in the file and tells nothing of the
    /// secret).
    pub fn check(&self, token: &str) -> Option<Bearer> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let (id, _) = split(token)?;
        let e = self.by_id.get(id)?;
        let h = hash(&e.salt, token);
        constant_time::verify_slices_are_equal(h.as_ref(), &e.hash).ok()?;
        Some(Bearer { name: e.name.clone(), scope: e.scope })
    }
}

/// `(id, secret)` of `mxp_<id>_<secret>`: the id is hex, so the first `_` after it ends it
/// (base64url secrets may contain `_`).
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 2 * ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some((id, secret))
}

fn hash(salt: &[u8], token: &str) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(salt);
    ctx.update(token.as_bytes());
    ctx.finish()
}

fn parse_line(line: &str) -> Result<(String, Entry), String> {
    let fields: Vec<&str> = line.split(':').collect();
    let [name, scope, scheme, id, salt, hash] = fields[..] else {
        return Err(format!("expected name:scope:{SCHEME}:ID:SALT:HASH (6 fields separated by ':'), found {} fields", fields.len()));
    };
    check_name(name)?;
    let scope: Scope = scope.parse().map_err(|e| format!("token {name:?}: {e}"))?;
    if scheme != SCHEME {
        return Err(format!("unknown scheme {scheme:?} for token {name:?} (only {SCHEME:?})"));
    }
    if id.len() != 2 * ID_BYTES || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("id {id:?} of token {name:?} is not {} hex digits", 2 * ID_BYTES));
    }
    let bytes = |what: &str, b64: &str, len: usize| {
        let v = B64.decode(b64).map_err(|e| format!("{what} of token {name:?} is not base64: {e}"))?;
        if v.len() != len {
            return Err(format!("{what} of token {name:?} is {} bytes; it must be {len}", v.len()));
        }
        Ok(v)
    };
    let salt = bytes("salt", salt, SALT_BYTES)?;
    let hash = bytes("hash", hash, HASH_BYTES)?;
    Ok((id.to_ascii_lowercase(), Entry { name: name.to_string(), scope, salt, hash }))
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("a token name must be 1 to {MAX_NAME} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)) {
        return Err(format!("token name {name:?}: only letters, digits, '-', '_', '.' and '@'"));
    }
    Ok(())
}

/// A new token for `name`: `(token, line)`, the secret for the client and the line for the
/// tokens file. The token is shown only here; the file keeps only its hash.
pub fn generate(name: &str, scope: Scope) -> Result<(String, String), String> {
    check_name(name)?;
    let rand = |n: usize| {
        let mut v = vec![0u8; n];
        aws_lc_rs::rand::fill(&mut v).map_err(|_| "no random numbers from the system".to_string())?;
        Ok::<_, String>(v)
    };
    let id: String = rand(ID_BYTES)?.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("{PREFIX}{id}_{}", B64URL.encode(rand(SECRET_BYTES)?));
    let salt = rand(SALT_BYTES)?;
    let h = hash(&salt, &token);
    let line = format!("{name}:{scope}:{SCHEME}:{id}:{}:{}", B64.encode(&salt), B64.encode(h.as_ref()));
    Ok((token, line))
}

/// Append `line` (from [`generate`], for `name`) to the tokens file at `path`, creating it
/// readable by its owner only. A name already in the file is refused: the daemon would refuse
/// the file.
pub fn append_line(path: &Path, name: &str, line: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read the tokens file {}: {e}", path.display())),
    };
    let tokens = Tokens::parse(&existing, path).map_err(|e| e.to_string())?;
    if tokens.has_name(name) {
        return Err(format!("{} already has a token named {name:?}: remove its line first, or choose another name", path.display()));
    }
    let sep = if existing.is_empty() || existing.ends_with('\n') { "" } else { "\n" };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open the tokens file {}: {e}", path.display()))?;
    f.write_all(format!("{sep}{line}\n").as_bytes()).map_err(|e| format!("cannot write the tokens file {}: {e}", path.display()))
}

/// Read a token from a file written for a client: its first line, trimmed.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let mut text = String::new();
    // A token file is one short line; a large file is the wrong file.
    f.take(4096).read_to_string(&mut text).map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if !token.starts_with(PREFIX) {
        return Err(format!("{}: not an mxpipe API token (it starts with {PREFIX:?}; made by `mxpipe token`)", path.display()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_checks_and_others_do_not() {
        let (token, line) = generate("app-1", Scope::Inject).unwrap();
        let (admin, admin_line) = generate("ops", Scope::Admin).unwrap();
        assert!(token.starts_with("mxp_") && token.len() == 4 + 16 + 1 + 43, "{token}");
        let t = Tokens::parse(&format!("# comment\n\n{line}\n{admin_line}\n"), Path::new("t")).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(&token), Some(Bearer { name: "app-1".into(), scope: Scope::Inject }));
        assert_eq!(t.check(&admin).map(|b| b.scope), Some(Scope::Admin));
        // One character of the secret changed, the id of one with the secret of the other,
        // garbage, and an over-long value.
        let mut bad = token.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(t.check(std::str::from_utf8(&bad).unwrap()), None);
        let (id, _) = split(&token).unwrap();
        let (_, secret) = split(&admin).unwrap();
        assert_eq!(t.check(&format!("mxp_{id}_{secret}")), None);
        assert_eq!(t.check("mxp_"), None);
        assert_eq!(t.check("Bearer x"), None);
        assert_eq!(t.check(&format!("{token}{}", "x".repeat(300))), None);
    }

    #[test]
    fn scopes() {
        assert!(Scope::Admin.allows(Scope::Inject) && Scope::Admin.allows(Scope::Metrics));
        assert!(Scope::Inject.allows(Scope::Inject) && !Scope::Inject.allows(Scope::Admin) && !Scope::Inject.allows(Scope::Metrics));
        assert!(!Scope::Metrics.allows(Scope::Inject));
        assert!("root".parse::<Scope>().is_err());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let (_, line) = generate("a", Scope::Inject).unwrap();
        let e = |text: &str| Tokens::parse(text, Path::new("/etc/t")).unwrap_err().to_string();
        assert!(e("\nx:y\n").contains("/etc/t, line 2: expected name:scope:sha256"), "{}", e("x"));
        assert!(e(&line.replace(":inject:", ":root:")).contains("unknown scope"));
        assert!(e(&line.replace(":sha256:", ":md5:")).contains("unknown scheme"));
        assert!(e(&format!("{line}\n{line}")).contains("line 2: token \"a\" again"));
        assert!(e(&line.replacen("a:", "a b:", 1)).contains("token name"));
        let mut f: Vec<&str> = line.split(':').collect();
        f[4] = "AAAA";
        assert!(e(&f.join(":")).contains("salt of token \"a\" is 3 bytes"));
    }
}
