//! SMTP AUTH for the daemon's injection listener: the users file, password verification and
//! the SASL PLAIN message (RFC 4616).
//!
//! The users file never holds a password, only a salted PBKDF2-HMAC-SHA256 of it, one user a
//! line: `name:pbkdf2-sha256:<iterations>:<salt base64>:<hash base64>` (`mxpipe passwd NAME`
//! prints such a line). Blank lines and lines starting with `#` are ignored. The crypto is
//! aws-lc-rs, the library rustls already uses; the comparison is constant-time.
//!
//! This module knows nothing of SMTP replies or sockets: the sink's session (`sink::session`)
//! runs the AUTH dialogue and asks [`Users::check`] and [`decode_plain`].

use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::pbkdf2;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// The one hashing scheme of the users file, named in each line so another can be added.
pub const SCHEME: &str = "pbkdf2-sha256";
/// Iterations `mxpipe passwd` uses unless told otherwise (OWASP's 2023 advice for
/// PBKDF2-HMAC-SHA256). Each AUTH costs this much CPU, on a blocking thread.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Fewer iterations than this make a stolen file cheap to attack: refused.
pub const MIN_ITERATIONS: u32 = 10_000;
/// More than this would make one AUTH take many seconds of CPU: refused.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Longest user name, authorization identity or password (RFC 4616 §2: 255 octets).
pub const MAX_FIELD: usize = 255;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// Accepted salt and hash sizes in a users file (bytes).
const MIN_BYTES: usize = 16;
const MAX_BYTES: usize = 64;

/// Why a users file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error("cannot read the users file {}: {source}", path.display())]
    Io {
        /// The users file, as configured.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// A line is not a valid user entry, or names a user already given.
    #[error("users file {}, line {line}: {message}", path.display())]
    Line {
        /// The users file, as configured.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
}

/// One user's stored hash.
struct Entry {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// The users allowed to AUTH, loaded once at start.
pub struct Users {
    users: HashMap<String, Entry>,
    /// Checked for an unknown name, so that it costs as much as a known one: the time of a
    /// failure does not tell whether the name exists.
    dummy: Entry,
    /// Verifications at once: each is a burst of CPU, and a flood of AUTH attempts must not
    /// take every core from delivery.
    slots: tokio::sync::Semaphore,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hashes.
        write!(f, "Users({} users)", self.users.len())
    }
}

impl Users {
    /// Read and parse a users file.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io { path: path.to_path_buf(), source })?;
        Users::parse(&text, path)
    }

    /// Parse the text of a users file; `path` is only for error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Users, UsersError> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| UsersError::Line { path: path.to_path_buf(), line: i + 1, message };
            let (name, entry) = parse_line(line).map_err(err)?;
            if let Some(first) = first_line.insert(name.clone(), i + 1) {
                return Err(err(format!("user {name:?} again (first on line {first})")));
            }
            users.insert(name, entry);
        }
        let iterations =
            users.values().map(|e| e.iterations).max().unwrap_or(NonZeroU32::new(DEFAULT_ITERATIONS).unwrap_or(NonZeroU32::MIN));
        let mut salt = vec![0u8; SALT_LEN];
        // A fixed salt would do as well: the dummy only has to cost the same.
        let _ = aws_lc_rs::rand::fill(&mut salt);
        let dummy = Entry { iterations, salt, hash: vec![0u8; HASH_LEN] };
        // Half the cores at most: a flood of AUTH attempts must not take delivery's CPU.
        let slots = std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1);
        Ok(Users { users, dummy, slots: tokio::sync::Semaphore::new(slots) })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users (only blank lines and comments): no AUTH can succeed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Blocks for the PBKDF2 (tens to hundreds of ms): from
    /// async code use [`Users::check`].
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let (entry, known) = match self.users.get(user) {
            Some(e) => (e, true),
            None => (&self.dummy, false),
        };
        let ok = pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, entry.iterations, &entry.salt, password, &entry.hash).is_ok();
        ok && known
    }

    /// [`Users::verify`] on a blocking thread, a few at a time (half the cores), so sessions
    /// on the runtime's threads and delivery keep running. `None` when no check could start
    /// within [`CHECK_WAIT`] (a flood of attempts): the client should try again later.
    pub async fn check(self: &Arc<Self>, user: String, password: Vec<u8>) -> Option<bool> {
        let slot = tokio::time::timeout(CHECK_WAIT, self.slots.acquire()).await.ok()?.ok()?;
        let users = self.clone();
        let ok = tokio::task::spawn_blocking(move || users.verify(&user, &password)).await.unwrap_or(false);
        drop(slot);
        Some(ok)
    }
}

/// Failed AUTHs counted per client over a window: past the limit, that client's AUTHs are
/// refused without a password check until the window (from its first failure) has passed. A
/// client that reconnects gets no fresh tries, and a flood from one client costs no PBKDF2.
///
/// A client is an IPv4 address or an IPv6 /64 (an IPv4-mapped IPv6 address is its IPv4
/// address): one host usually has a whole /64, so counting single IPv6 addresses would give it
/// endless fresh tries.
///
/// The log is bounded. When full, a new client evicts, in this order: a blocked client whose
/// window has passed, the unblocked client whose last failure is oldest, and only when every
/// client is blocked, the one whose block ends first. So a flood of fresh addresses (each
/// failing fewer times than the limit) never unblocks anyone, and a flood of blocked ones
/// must exceed the bound to. Each operation is a hash lookup and at most a few B-tree steps.
#[derive(Debug)]
pub struct FailureLog {
    max: u32,
    window: std::time::Duration,
    cap: usize,
    log: std::sync::Mutex<Failures>,
}

use crate::value::client::Client;

#[derive(Debug, Clone, Copy)]
struct Count {
    n: u32,
    /// The first failure of the window.
    since: std::time::Instant,
    /// The latest failure: the eviction order among unblocked clients.
    last: std::time::Instant,
}

/// The counts and two eviction orders over them; every client is in exactly one order.
#[derive(Debug, Default)]
struct Failures {
    counts: HashMap<Client, Count>,
    /// Clients under the limit, by last failure.
    unblocked: std::collections::BTreeSet<(std::time::Instant, Client)>,
    /// Clients at the limit, by the start of their window (so by when their block ends).
    blocked: std::collections::BTreeSet<(std::time::Instant, Client)>,
}

/// Clients remembered at most by [`FailureLog::new`] (a few MB).
pub const FAILURE_LOG_CAP: usize = 100_000;

impl FailureLog {
    /// `max` failures per client within `window` (from the first of them), remembering at
    /// most [`FAILURE_LOG_CAP`] clients.
    pub fn new(max: u32, window: std::time::Duration) -> FailureLog {
        FailureLog::bounded(max, window, FAILURE_LOG_CAP)
    }

    /// As [`FailureLog::new`], remembering at most `cap` clients (at least one).
    pub fn bounded(max: u32, window: std::time::Duration, cap: usize) -> FailureLog {
        FailureLog { max: max.max(1), window, cap: cap.max(1), log: std::sync::Mutex::new(Failures::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, c: &Count, now: std::time::Instant) -> bool {
        now.saturating_duration_since(c.since) >= self.window
    }

    /// Whether `ip`'s client has used up its failures.
    pub fn blocked(&self, ip: std::net::IpAddr, now: std::time::Instant) -> bool {
        self.lock().counts.get(&Client::of(ip)).is_some_and(|c| c.n >= self.max && !self.expired(c, now))
    }

    /// One more failure from `ip`'s client.
    pub fn record(&self, ip: std::net::IpAddr, now: std::time::Instant) {
        let client = Client::of(ip);
        let mut log = self.lock();
        let log = &mut *log;
        let count = match log.counts.get(&client).copied() {
            Some(old) => {
                log.unordered(client, &old, self.max);
                let mut c = if self.expired(&old, now) { Count { n: 0, since: now, last: now } } else { old };
                c.n = c.n.saturating_add(1);
                c.last = c.last.max(now);
                c
            }
            None => {
                while log.counts.len() >= self.cap && log.evict(|c| self.expired(c, now)) {}
                Count { n: 1, since: now, last: now }
            }
        };
        log.counts.insert(client, count);
        if count.n >= self.max {
            log.blocked.insert((count.since, client));
        } else {
            log.unblocked.insert((count.last, client));
        }
    }

    /// Failures counted against `ip`'s client, whether or not its window has passed.
    #[cfg(test)]
    fn count(&self, ip: std::net::IpAddr) -> Option<u32> {
        self.lock().counts.get(&Client::of(ip)).map(|c| c.n)
    }
}

impl Failures {
    /// Takes `client` (counted as `c`) out of its eviction order.
    fn unordered(&mut self, client: Client, c: &Count, max: u32) {
        if c.n >= max {
            self.blocked.remove(&(c.since, client));
        } else {
            self.unblocked.remove(&(c.last, client));
        }
    }

    /// Forgets one client, in the order [`FailureLog`] describes; false if there is none.
    fn evict(&mut self, expired: impl Fn(&Count) -> bool) -> bool {
        let stale = self.blocked.first().is_some_and(|(_, k)| self.counts.get(k).is_some_and(&expired));
        let victim = if stale { self.blocked.pop_first() } else { self.unblocked.pop_first().or_else(|| self.blocked.pop_first()) };
        let Some((_, client)) = victim else { return false };
        self.counts.remove(&client);
        true
    }
}

/// Longest wait for a password check to start before the client is told to try later.
pub const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn parse_line(line: &str) -> Result<(String, Entry), String> {
    let fields: Vec<&str> = line.split(':').collect();
    let [name, scheme, iterations, salt, hash] = fields[..] else {
        return Err(format!("expected name:{SCHEME}:ITERATIONS:SALT:HASH (5 fields separated by ':'), found {} fields", fields.len()));
    };
    check_name(name)?;
    if scheme != SCHEME {
        return Err(format!("unknown scheme {scheme:?} for user {name:?} (only {SCHEME:?})"));
    }
    let iterations =
        iterations.parse::<u32>().ok().filter(|n| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(n)).and_then(NonZeroU32::new).ok_or_else(
            || format!("iterations {iterations:?} for user {name:?}: must be a number from {MIN_ITERATIONS} to {MAX_ITERATIONS}"),
        )?;
    let bytes = |what: &str, b64: &str| {
        let v = B64.decode(b64).map_err(|e| format!("{what} of user {name:?} is not base64: {e}"))?;
        if !(MIN_BYTES..=MAX_BYTES).contains(&v.len()) {
            return Err(format!("{what} of user {name:?} is {} bytes; it must be {MIN_BYTES} to {MAX_BYTES}", v.len()));
        }
        Ok(v)
    };
    let salt = bytes("salt", salt)?;
    let hash = bytes("hash", hash)?;
    Ok((name.to_string(), Entry { iterations, salt, hash }))
}

/// A user name: what a client sends as its authentication identity, so printable and short.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty user name".into());
    }
    if name.len() > MAX_FIELD {
        return Err(format!("user name longer than {MAX_FIELD} bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':') {
        return Err(format!("user name {name:?} contains a space, a control character or ':'"));
    }
    Ok(())
}

/// The users-file line for `user` with `password`: a fresh random salt, PBKDF2-HMAC-SHA256.
pub fn hash_line(user: &str, password: &str, iterations: u32) -> Result<String, String> {
    check_name(user)?;
    if password.is_empty() {
        return Err("empty password".into());
    }
    if password.len() > MAX_FIELD {
        return Err(format!("password longer than {MAX_FIELD} bytes (RFC 4616 allows no more)"));
    }
    let iters = NonZeroU32::new(iterations)
        .filter(|n| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&n.get()))
        .ok_or_else(|| format!("iterations must be from {MIN_ITERATIONS} to {MAX_ITERATIONS}, not {iterations}"))?;
    let mut salt = [0u8; SALT_LEN];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no random numbers from the system".to_string())?;
    let mut hash = [0u8; HASH_LEN];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iters, &salt, password.as_bytes(), &mut hash);
    Ok(format!("{user}:{SCHEME}:{iterations}:{}:{}", B64.encode(salt), B64.encode(hash)))
}

/// `mxpipe passwd`: read one line (the password) from `input` and return the users-file
/// line. On a terminal the password is not echoed.
pub fn passwd(user: &str, iterations: u32, input: impl BufRead) -> Result<String, String> {
    check_name(user)?;
    let password = read_password(input).map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let password = password.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&password);
    if password.is_empty() {
        return Err("no password on standard input (give it as one line)".into());
    }
    hash_line(user, password, iterations)
}

fn read_password(mut input: impl BufRead) -> std::io::Result<String> {
    let _echo = EchoOff::on_stdin_terminal();
    let mut line = String::new();
    input.read_line(&mut line)?;
    Ok(line)
}

/// Terminal echo off while it lives, when standard input is a terminal; restored on drop.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn on_stdin_terminal() -> EchoOff {
        // SAFETY: isatty/tcgetattr/tcsetattr only read or write the termios struct we own.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) != 1 {
                return EchoOff(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return EchoOff(None);
            }
            eprint!("Password: ");
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the attributes read in `on_stdin_terminal`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
            eprintln!();
        }
    }
}

/// A decoded SASL PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
pub struct Plain {
    /// The identity to act as; empty means the same as `authcid`.
    pub authzid: String,
    /// The user name whose password this is.
    pub authcid: String,
    /// The password as sent (not necessarily UTF-8); never printed by `Debug`.
    pub password: Vec<u8>,
}

impl fmt::Debug for Plain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plain").field("authzid", &self.authzid).field("authcid", &self.authcid).finish_non_exhaustive()
    }
}

impl Plain {
    /// The user to check the password of, or `None` if the client asks to act as someone else
    /// (we let no user act for another).
    pub fn user(&self) -> Option<&str> {
        (self.authzid.is_empty() || self.authzid == self.authcid).then_some(self.authcid.as_str())
    }
}

/// Why a PLAIN response was refused before any password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    /// The response is not valid base64.
    #[error("not base64")]
    Base64,
    /// Not three NUL-separated fields, an empty user name or password, a field over
    /// [`MAX_FIELD`] octets, or a name that is not UTF-8.
    #[error("not a PLAIN message (authzid NUL authcid NUL password)")]
    Malformed,
}

/// Decode a client's base64 PLAIN response (`=` is the empty response, RFC 4954 §4).
pub fn decode_plain(response: &[u8]) -> Result<Plain, PlainError> {
    let bytes = if response == b"=" { Vec::new() } else { B64.decode(response).map_err(|_| PlainError::Base64)? };
    let mut parts = bytes.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(PlainError::Malformed);
    };
    if authcid.is_empty() || password.is_empty() || [authzid, authcid, password].iter().any(|f| f.len() > MAX_FIELD) {
        return Err(PlainError::Malformed);
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| PlainError::Malformed);
    Ok(Plain { authzid: text(authzid)?, authcid: text(authcid)?, password: password.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/mxpipe/users";

    fn parse(text: &str) -> Result<Users, String> {
        Users::parse(text, Path::new(FILE)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_hashed_line_verifies_its_password_only() {
        let line = hash_line("alice", "correct horse", MIN_ITERATIONS).unwrap();
        assert!(line.starts_with("alice:pbkdf2-sha256:10000:"), "{line}");
        assert!(!line.contains("correct horse"));
        let users = parse(&format!("# users\n\n  {line}  \n{}\n", hash_line("bob", "other", MIN_ITERATIONS).unwrap())).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", b"correct horse"));
        assert!(!users.verify("alice", b"correct hors"));
        assert!(!users.verify("alice", b"other"), "bob's password is not alice's");
        assert!(users.verify("bob", b"other"));
        assert!(!users.verify("Alice", b"correct horse"), "names are case-sensitive");
        assert!(!users.verify("carol", b"correct horse"));
    }

    #[test]
    fn the_same_password_gets_a_different_salt_each_time() {
        let a = hash_line("u", "pw", MIN_ITERATIONS).unwrap();
        let b = hash_line("u", "pw", MIN_ITERATIONS).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn failures_are_limited_per_address_within_a_window() {
        let log = FailureLog::new(3, std::time::Duration::from_secs(600));
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = std::time::Instant::now();
        for _ in 0..2 {
            log.record(a, t);
        }
        assert!(!log.blocked(a, t));
        log.record(a, t);
        assert!(log.blocked(a, t) && !log.blocked(b, t), "only the address that failed");
        assert!(log.blocked(a, t + std::time::Duration::from_secs(599)));
        let later = t + std::time::Duration::from_secs(600);
        assert!(!log.blocked(a, later), "the window passed");
        log.record(a, later);
        assert!(!log.blocked(a, later), "a failure after the window starts a new count");
    }

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_count_per_ipv4_address_and_per_ipv6_64() {
        let log = FailureLog::new(3, std::time::Duration::from_secs(600));
        let t = std::time::Instant::now();
        log.record(ip("2001:db8:1:2::1"), t);
        log.record(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), t);
        log.record(ip("2001:db8:1:2:abcd::7"), t);
        assert!(log.blocked(ip("2001:db8:1:2::99"), t), "one /64 is one client");
        assert!(!log.blocked(ip("2001:db8:1:3::1"), t), "the next /64 is another");
        log.record(ip("192.0.2.1"), t);
        log.record(ip("::ffff:192.0.2.1"), t);
        log.record(ip("192.0.2.1"), t);
        assert!(log.blocked(ip("::ffff:192.0.2.1"), t) && log.blocked(ip("192.0.2.1"), t), "IPv4-mapped is IPv4");
        assert!(!log.blocked(ip("192.0.2.2"), t), "IPv4 is per address, not per prefix");
        assert!(!log.blocked(ip("::192.0.2.1"), t), "only the mapped form is IPv4");
    }

    #[test]
    fn a_blocked_client_survives_a_flood_of_fresh_addresses() {
        let log = FailureLog::new(3, std::time::Duration::from_secs(600));
        let t = std::time::Instant::now();
        for _ in 0..3 {
            log.record(ip("2001:db8:bad::1"), t);
        }
        for i in 0..200_000u32 {
            let t = t + std::time::Duration::from_millis(u64::from(i));
            log.record(std::net::IpAddr::V4(i.into()), t);
            if i % 2 == 0 {
                log.record(std::net::IpAddr::V6((u128::from(i) << 64 | 1).into()), t);
            }
        }
        let later = t + std::time::Duration::from_secs(300);
        assert!(log.blocked(ip("2001:db8:bad::2"), later), "the /64 is still blocked");
        assert_eq!(log.lock().counts.len(), FAILURE_LOG_CAP, "the log stays at its bound");
        assert!(log.count(ip("0.3.13.63")).is_some(), "the newest of the flood is remembered (199,999)");
        assert!(log.count(ip("0.0.0.0")).is_none(), "the oldest of the flood is not");
    }

    #[test]
    fn eviction_takes_expired_blocks_then_the_oldest_unblocked_then_the_block_ending_first() {
        let secs = std::time::Duration::from_secs;
        let log = FailureLog::bounded(2, secs(100), 3);
        let t = std::time::Instant::now();
        let (a, b, c, d, e, f) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.5"), ip("10.0.0.6"));
        // a is blocked from t, b from t + 2 s; c is not.
        log.record(a, t);
        log.record(a, t + secs(1));
        log.record(b, t + secs(2));
        log.record(c, t + secs(3));
        log.record(b, t + secs(4));
        // Full: d evicts c, the only unblocked client.
        log.record(d, t + secs(5));
        assert_eq!((log.count(c), log.count(d)), (None, Some(1)));
        // All three blocked: e evicts a, whose block ends first; b and d stay.
        log.record(d, t + secs(6));
        log.record(e, t + secs(7));
        assert_eq!(log.count(a), None);
        assert!(log.blocked(b, t + secs(7)) && log.blocked(d, t + secs(7)));
        // At t + 102 s b's window has passed: b goes before e (unblocked, older failure).
        log.record(f, t + secs(102));
        assert_eq!((log.count(b), log.count(e), log.count(f)), (None, Some(1), Some(1)));
        assert!(log.blocked(d, t + secs(102)));
        // e's second failure blocks it (window from 7 s); g evicts f, the only unblocked.
        let g = ip("10.0.0.7");
        log.record(e, t + secs(103));
        log.record(g, t + secs(104));
        assert_eq!((log.count(f), log.count(g)), (None, Some(1)));
        // g blocked too; d's window (from 5 s) passed at 105 s, so h evicts d, not e or g.
        let h = ip("10.0.0.8");
        log.record(g, t + secs(105));
        log.record(h, t + secs(106));
        assert_eq!(log.count(d), None);
        assert!(log.blocked(e, t + secs(106)) && log.blocked(g, t + secs(106)));
    }

    #[tokio::test]
    async fn check_runs_off_the_runtime_thread() {
        let users = Arc::new(parse(&hash_line("alice", "pw", MIN_ITERATIONS).unwrap()).unwrap());
        assert!(users.check("alice".into(), b"pw".to_vec()).await == Some(true));
        assert_eq!(users.check("alice".into(), b"pX".to_vec()).await, Some(false));
        assert_eq!(users.check("nobody".into(), b"pw".to_vec()).await, Some(false));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let good = hash_line("alice", "pw", MIN_ITERATIONS).unwrap();
        let salt = B64.encode([1u8; 16]);
        let hash = B64.encode([2u8; 32]);
        let cases = [
            (format!("{good}\nbob:pbkdf2-sha256:10000:{salt}\n"), 2, "5 fields"),
            (format!("#c\nbob:sha1:10000:{salt}:{hash}\n"), 2, "unknown scheme \"sha1\""),
            (format!("bob:pbkdf2-sha256:999:{salt}:{hash}\n"), 1, "iterations \"999\""),
            (format!("bob:pbkdf2-sha256:many:{salt}:{hash}\n"), 1, "iterations \"many\""),
            (format!("bob:pbkdf2-sha256:10000:not*b64:{hash}\n"), 1, "salt of user \"bob\" is not base64"),
            (format!("bob:pbkdf2-sha256:10000:{salt}:{}\n", B64.encode([2u8; 8])), 1, "hash of user \"bob\" is 8 bytes"),
            (format!(":pbkdf2-sha256:10000:{salt}:{hash}\n"), 1, "empty user name"),
            (format!("b b:pbkdf2-sha256:10000:{salt}:{hash}\n"), 1, "contains a space"),
            (format!("\n{good}\n\n{good}\n"), 4, "user \"alice\" again (first on line 2)"),
            ("alice:correct horse\n".to_string(), 1, "found 2 fields"),
        ];
        for (text, line, want) in cases {
            let e = parse(&text).map(|_| ()).unwrap_err();
            assert!(e.starts_with(&format!("users file {FILE}, line {line}: ")), "{e}");
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let e = Users::load(Path::new("/nonexistent/mxpipe-users")).unwrap_err().to_string();
        assert!(e.contains("cannot read the users file /nonexistent/mxpipe-users"), "{e}");
    }

    #[test]
    fn an_empty_file_has_no_users() {
        let users = parse("# nobody yet\n").unwrap();
        assert!(users.is_empty());
        assert!(!users.verify("", b""));
        assert!(!users.verify("x", b"y"));
    }

    #[test]
    fn passwd_reads_one_line_and_refuses_bad_input() {
        let line = passwd("alice", MIN_ITERATIONS, &b"s3cret\r\nignored\n"[..]).unwrap();
        let users = parse(&line).unwrap();
        assert!(users.verify("alice", b"s3cret"));
        assert!(!users.verify("alice", b"s3cret\r"));
        assert!(passwd("alice", MIN_ITERATIONS, &b"no newline"[..]).is_ok());
        assert!(passwd("alice", MIN_ITERATIONS, &b"\n"[..]).unwrap_err().contains("no password"));
        assert!(passwd("alice", MIN_ITERATIONS, &b""[..]).unwrap_err().contains("no password"));
        assert!(passwd("a:b", MIN_ITERATIONS, &b"pw\n"[..]).unwrap_err().contains("':'"));
        assert!(passwd("alice", 5, &b"pw\n"[..]).unwrap_err().contains("iterations"));
        assert!(hash_line("alice", &"x".repeat(256), MIN_ITERATIONS).unwrap_err().contains("255"));
    }

    #[test]
    fn plain_messages() {
        let enc = |s: &[u8]| B64.encode(s).into_bytes();
        let p = decode_plain(&enc(b"\0alice\0pw")).unwrap();
        assert_eq!((p.authzid.as_str(), p.authcid.as_str(), &p.password[..]), ("", "alice", &b"pw"[..]));
        assert_eq!(p.user(), Some("alice"));
        assert_eq!(decode_plain(&enc(b"alice\0alice\0pw")).unwrap().user(), Some("alice"));
        assert_eq!(decode_plain(&enc(b"bob\0alice\0pw")).unwrap().user(), None, "alice may not act as bob");
        assert_eq!(decode_plain(&enc(b"\0alice\0p\xffw")).unwrap().password, b"p\xffw");
        assert!(!format!("{p:?}").contains("pw"), "Debug hides the password");
        for bad in [&b"alice\0pw"[..], b"\0\0pw", b"\0alice\0", b"\0alice\0pw\0x", b"", b"\0\xffalice\0pw"] {
            assert_eq!(decode_plain(&enc(bad)).unwrap_err(), PlainError::Malformed, "{bad:?}");
        }
        let long = [&b"\0"[..], &[b'a'; 256], b"\0pw"].concat();
        assert_eq!(decode_plain(&enc(&long)).unwrap_err(), PlainError::Malformed);
        assert_eq!(decode_plain(b"=").unwrap_err(), PlainError::Malformed);
        for bad in [&b"*"[..], b"AGFsaWNlAHB3=", b"AGFsaWNl AHB3", b"not base64!"] {
            assert_eq!(decode_plain(bad).unwrap_err(), PlainError::Base64, "{bad:?}");
        }
    }
}
