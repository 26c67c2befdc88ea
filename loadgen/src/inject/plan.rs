//! What the injection load sends: for message number `seq`, its recipients (spread over the
//! recipient domains) and its content (a size taken from the size distribution). Pure code,
//! no I/O, unit-tested here.
//!
//! Everything is a function of `seq`, so a run is reproducible and the spread is exact: with
//! one recipient per message, message `seq` goes to domain `seq % domains` (as the jobs of
//! `perf/daemon.sh` spread a burst), and the sizes follow the distribution's weights in a
//! smooth interleaved order rather than at random. Each size's body is built and dot-stuffed
//! once; a message only adds its own fixed-width Message-ID, so its size does not depend on
//! `seq`.

use std::time::SystemTime;

use crate::message::{body_of, dot_stuff, rfc5322_date};

/// Sum of the weights of a size distribution at most (the interleaved schedule has this many
/// slots).
pub const MAX_TOTAL_WEIGHT: u64 = 10_000;
/// Largest message size accepted (the daemon's own limit is 50 MB).
pub const MAX_SIZE: usize = 50 * 1024 * 1024;
/// Recipients per message at most (the daemon's and Postfix's default limits are higher; a
/// load with more per message measures something else).
pub const MAX_RCPTS: usize = 1000;

/// Message sizes and how often each is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeDist {
    /// (size in bytes, weight), weights above 0.
    pub entries: Vec<(usize, u64)>,
}

impl SizeDist {
    /// Every message of `size` bytes.
    pub fn fixed(size: usize) -> SizeDist {
        SizeDist { entries: vec![(size, 1)] }
    }

    /// Parse `SIZE:WEIGHT,...`, sizes with an optional `k` (1,000) or `m` (1,000,000) suffix,
    /// as in `1k:50,10k:40,100k:10`. A weight is a whole number; a size alone weighs 1.
    pub fn parse(s: &str) -> Result<SizeDist, String> {
        let mut entries = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("{s:?}: an empty entry (give SIZE:WEIGHT,SIZE:WEIGHT...)"));
            }
            let (size, weight) = part.split_once(':').unwrap_or((part, "1"));
            let size = parse_size(size.trim()).map_err(|e| format!("{s:?}: {e}"))?;
            let weight: u64 = match weight.trim().parse() {
                Ok(w) if w > 0 => w,
                _ => return Err(format!("{s:?}: weight {weight:?} is not a whole number above 0")),
            };
            entries.push((size, weight));
        }
        let total: u64 = entries.iter().map(|e| e.1).sum();
        if total > MAX_TOTAL_WEIGHT {
            return Err(format!("{s:?}: the weights add up to {total}, more than {MAX_TOTAL_WEIGHT}"));
        }
        Ok(SizeDist { entries })
    }

    /// The entry index of each slot of one round: every entry `weight` times, spread evenly
    /// (smooth weighted round robin), so any stretch of messages has about the right mix.
    fn schedule(&self) -> Vec<usize> {
        let total: i64 = self.entries.iter().map(|e| e.1 as i64).sum();
        let mut current = vec![0i64; self.entries.len()];
        let mut out = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, e) in current.iter_mut().zip(&self.entries) {
                *c += e.1 as i64;
            }
            let best = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).unwrap_or(0);
            current[best] -= total;
            out.push(best);
        }
        out
    }
}

/// `2048`, `1k`, `100K`, `1m`.
fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1000),
        Some((i, 'm' | 'M')) => (&s[..i], 1_000_000),
        _ => (s, 1),
    };
    let n: usize = digits.parse().map_err(|_| format!("size {s:?} is not a number of bytes (2048, 10k, 1m)"))?;
    match n.checked_mul(mult) {
        Some(v) if v <= MAX_SIZE => Ok(v),
        _ => Err(format!("size {s:?} is above {MAX_SIZE} bytes")),
    }
}

/// Where recipients go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domains {
    /// Every recipient is exactly the given address.
    Single,
    /// `d0.DOMAIN` .. `d(N-1).DOMAIN`, DOMAIN being the given recipient's domain.
    Numbered(usize),
    /// These domains, in this order.
    List(Vec<String>),
}

/// Read a domains file: one domain a line; blank lines and `#` comments skipped.
pub fn parse_domains(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let d = line.trim();
        if d.is_empty() || d.starts_with('#') {
            continue;
        }
        check_domain(d).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(d.to_string());
    }
    if out.is_empty() {
        return Err("no domain in it".into());
    }
    Ok(out)
}

fn check_domain(d: &str) -> Result<(), String> {
    if d.len() > 253 || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') || d.starts_with('.') {
        return Err(format!("{d:?} is not a domain name (letters, digits, '-' and '.', at most 253)"));
    }
    Ok(())
}

/// One size's content, built once.
#[derive(Debug)]
struct Content {
    /// From, To, Subject and Date header fields, before the Message-ID.
    head: Vec<u8>,
    /// The header fields after the Message-ID and the blank line.
    tail: Vec<u8>,
    /// The body as is (BDAT, HTTP).
    body: Vec<u8>,
    /// The body dot-stuffed, then the end-of-data line (DATA).
    stuffed: Vec<u8>,
}

/// Everything a run sends, as a function of the message number.
#[derive(Debug)]
pub struct Plan {
    from: String,
    rcpt_to: String,
    local: String,
    domains: Vec<String>,
    rcpts: usize,
    contents: Vec<Content>,
    schedule: Vec<usize>,
    /// Length of every Message-ID line (fixed width for a given sender).
    msgid_len: usize,
}

impl Plan {
    /// A plan sending from `from`, `rcpts` recipients a message spread over `domains` (the
    /// local part of `rcpt_to` numbered per recipient, unless [`Domains::Single`]), sizes by
    /// `sizes`.
    pub fn new(from: &str, rcpt_to: &str, domains: Domains, rcpts: usize, sizes: &SizeDist) -> Result<Plan, String> {
        for (what, a) in [("mail from", from), ("rcpt to", rcpt_to)] {
            if a.is_empty() || a.bytes().any(|b| b <= b' ' || b == b'<' || b == b'>' || b == 0x7f) {
                return Err(format!("{what} {a:?} must be non-empty, without spaces, controls, < or >"));
            }
        }
        if rcpts == 0 || rcpts > MAX_RCPTS {
            return Err(format!("recipients per message: give 1 to {MAX_RCPTS}"));
        }
        if sizes.entries.is_empty() {
            return Err("no message size".into());
        }
        let (local, domain) = rcpt_to.rsplit_once('@').ok_or_else(|| format!("rcpt to {rcpt_to:?} has no @domain"))?;
        let list = match domains {
            Domains::Single => Vec::new(),
            Domains::Numbered(0) => return Err("--domains must be at least 1".into()),
            Domains::Numbered(n) => (0..n).map(|i| format!("d{i}.{domain}")).collect(),
            Domains::List(l) => {
                for d in &l {
                    check_domain(d)?;
                }
                l
            }
        };
        let date = rfc5322_date(SystemTime::now());
        let msgid_len = message_id(0, from).len();
        let contents = sizes.entries.iter().map(|&(size, _)| Content::new(size, from, rcpt_to, &date, msgid_len)).collect();
        Ok(Plan {
            from: from.to_string(),
            rcpt_to: rcpt_to.to_string(),
            local: local.to_string(),
            domains: list,
            rcpts,
            contents,
            schedule: sizes.schedule(),
            msgid_len,
        })
    }

    /// The envelope sender.
    pub fn from(&self) -> &str {
        &self.from
    }

    /// Recipients of each message.
    pub fn rcpts_per_message(&self) -> usize {
        self.rcpts
    }

    /// Recipient `k` of message `seq`.
    pub fn rcpt(&self, seq: u64, k: usize) -> String {
        if self.domains.is_empty() {
            return self.rcpt_to.clone();
        }
        let j = seq.wrapping_mul(self.rcpts as u64).wrapping_add(k as u64);
        let d = &self.domains[(j % self.domains.len() as u64) as usize];
        format!("{}{j}@{d}", self.local)
    }

    fn content(&self, seq: u64) -> &Content {
        &self.contents[self.schedule[(seq % self.schedule.len() as u64) as usize]]
    }

    /// Size of message `seq` as the server stores it (before dot-stuffing), for `SIZE=`.
    pub fn size(&self, seq: u64) -> usize {
        let c = self.content(seq);
        c.head.len() + self.msgid_len + c.tail.len() + c.body.len()
    }

    /// Message `seq` as it goes after `354`: dot-stuffed, ending with the `.` line.
    pub fn data(&self, seq: u64, out: &mut Vec<u8>) {
        let c = self.content(seq);
        self.header(c, seq, out);
        out.extend_from_slice(&c.stuffed);
    }

    /// Message `seq` as it is (BDAT, HTTP).
    pub fn raw(&self, seq: u64, out: &mut Vec<u8>) {
        let c = self.content(seq);
        self.header(c, seq, out);
        out.extend_from_slice(&c.body);
    }

    fn header(&self, c: &Content, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&c.head);
        out.extend_from_slice(message_id(seq, &self.from).as_bytes());
        out.extend_from_slice(&c.tail);
    }
}

/// Fixed width, so every message of one size has the same length.
fn message_id(seq: u64, from: &str) -> String {
    let domain = from.rsplit_once('@').map_or("mxpipe.test", |(_, d)| d);
    format!("Message-ID: <{seq:016x}.{:08x}.inject@{domain}>\r\n", std::process::id())
}

impl Content {
    /// `msgid_len`: the length of every message's Message-ID line (one per run).
    fn new(size: usize, from: &str, to: &str, date: &str, msgid_len: usize) -> Content {
        let head = format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: mxpipe-loadgen injection\r\nDate: {date}\r\n").into_bytes();
        let tail = b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n".to_vec();
        let body = body_of(size.saturating_sub(head.len() + msgid_len + tail.len()));
        let mut stuffed = dot_stuff(&body);
        stuffed.extend_from_slice(b".\r\n");
        Content { head, tail, body, stuffed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_lists() {
        let d = SizeDist::parse("1k:50,10k:40,100K:10").unwrap();
        assert_eq!(d.entries, vec![(1000, 50), (10_000, 40), (100_000, 10)]);
        assert_eq!(SizeDist::parse("2048").unwrap(), SizeDist::fixed(2048));
        assert_eq!(SizeDist::parse("1m:1, 5:2").unwrap().entries, vec![(1_000_000, 1), (5, 2)]);
        for bad in ["", "1k:0", "1k:-1", "x:1", "1k,,2k", "1k:1.5", "100m", "1k:20000"] {
            assert!(SizeDist::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schedule_is_exact_and_interleaved() {
        let d = SizeDist::parse("1k:5,2k:3,3k:2").unwrap();
        let s = d.schedule();
        assert_eq!(s.len(), 10);
        for (i, w) in [(0, 5), (1, 3), (2, 2)] {
            assert_eq!(s.iter().filter(|&&x| x == i).count(), w);
        }
        // Interleaved: the heaviest never runs three in a row.
        assert!(!s.windows(3).any(|w| w.iter().all(|&x| x == 0)), "{s:?}");
    }

    #[test]
    fn recipients_spread_over_domains() {
        let p = Plan::new("a@src.test", "u@bench.test", Domains::Numbered(3), 1, &SizeDist::fixed(500)).unwrap();
        let domains: Vec<String> = (0..6).map(|s| p.rcpt(s, 0).rsplit_once('@').unwrap().1.to_string()).collect();
        assert_eq!(domains, ["d0.bench.test", "d1.bench.test", "d2.bench.test", "d0.bench.test", "d1.bench.test", "d2.bench.test"]);
        assert_eq!(p.rcpt(4, 0), "u4@d1.bench.test");
        let two =
            Plan::new("a@src.test", "u@x.test", Domains::List(vec!["a.test".into(), "b.test".into()]), 2, &SizeDist::fixed(500)).unwrap();
        assert_eq!((two.rcpt(0, 0), two.rcpt(0, 1), two.rcpt(1, 0)), ("u0@a.test".into(), "u1@b.test".into(), "u2@a.test".into()));
        let single = Plan::new("a@src.test", "sink@x.test", Domains::Single, 1, &SizeDist::fixed(500)).unwrap();
        assert_eq!(single.rcpt(99, 0), "sink@x.test");
        assert!(Plan::new("a@src.test", "nodomain", Domains::Numbered(2), 1, &SizeDist::fixed(1)).is_err());
        assert!(Plan::new("a b@src.test", "u@x.test", Domains::Single, 1, &SizeDist::fixed(1)).is_err());
        assert!(Plan::new("a@src.test", "u@x.test", Domains::Single, 0, &SizeDist::fixed(1)).is_err());
        assert!(Plan::new("a@src.test", "u@x.test", Domains::List(vec!["bad domain".into()]), 1, &SizeDist::fixed(1)).is_err());
    }

    #[test]
    fn sizes_are_exact_and_data_is_stuffed() {
        let p = Plan::new("a@src.test", "u@x.test", Domains::Single, 1, &SizeDist::parse("2000:1,30000:1").unwrap()).unwrap();
        for seq in [0u64, 1, 2, 3, u64::MAX] {
            let mut raw = Vec::new();
            p.raw(seq, &mut raw);
            assert_eq!(raw.len(), p.size(seq), "seq {seq}");
            let mut data = Vec::new();
            p.data(seq, &mut data);
            assert!(data.ends_with(b"\r\n.\r\n") && data.len() > raw.len() + 3);
            assert!(raw.windows(4).any(|w| w == b"\r\n\r\n"));
        }
        assert_eq!((p.size(0), p.size(1), p.size(2)), (2000, 30_000, 2000));
    }

    #[test]
    fn domains_files() {
        assert_eq!(parse_domains("# list\na.test\n\n  b.test  \n").unwrap(), vec!["a.test", "b.test"]);
        assert!(parse_domains("# nothing\n").is_err());
        let e = parse_domains("a.test\nno<pe>.test\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }
}
