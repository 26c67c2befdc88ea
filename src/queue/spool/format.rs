//! The on-disk format: pure encoding and decoding, no I/O.
//!
//! ```text
//! segment  = seg-header frame*
//! seg-header (32 B) = "MXSPOOL1" seg:u64 next_id:u64 salt:u32 crc:u32      crc over the first 28 bytes
//! frame    = magic:u32 body_len:u32 seq:u64 nrec:u32 hcrc:u32 record*      one frame per fsync
//!            hcrc = crc32c(salt ++ first 20 header bytes)
//! record   = len:u32 crc:u32 payload[len]                                  crc = crc32c(payload)
//! payload  = 1 id:u64 received_ns:u64 from:str nrcpt:u32 rcpt:str* data:bytes      (accept)
//!          | 3 id:u64 received_ns:u64 from:str nrcpt:u32 rcpt:str* data:bytes tls:u8
//!                                                   (accept with a TLS requirement, RFC 8689)
//!          | 4 id:u64 received_ns:u64 from:str nrcpt:u32 rcpt:str* data:bytes tls4:u8 pool:str
//!                                                   (accept with an egress pool chosen by the sender)
//!          | 2 id:u64 at_ns:u64 final:u8 rcpt:str status:str reply:str              (attempt)
//! tls      = 1 REQUIRETLS | 2 TLS-Required: No
//! tls4     = 0 none | tls
//! str, bytes = len:u32 then the bytes; all integers little-endian
//! ```
//!
//! The record kind is the version: kind 1 is the accept record from before RFC 8689 support,
//! still written for a message without a TLS requirement (nearly all of them) so that an
//! older binary can read a spool of such messages; it reads as [`MessageTls::Default`]. Kind 3
//! adds the requirement. Kind 4 adds the egress pool the sender named (with the requirement,
//! 0 for none); kinds 1 and 3 are still written for messages that name no pool. An older
//! binary drops a kind-3 or kind-4 record as one it cannot parse.
//!
//! A frame is the unit of durability: the writer appends one frame and then fdatasyncs, so
//! after a crash only the last frame of the last segment can be incomplete. The per-segment
//! random salt in the frame-header checksum keeps a frame-shaped byte string inside message
//! data from being taken for a real frame when recovery resynchronises after damage.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Attempt, FinalStatus, MsgId};
use crate::engine::MessageTls;

pub(crate) const SEG_MAGIC: &[u8; 8] = b"MXSPOOL1";
pub(crate) const SEG_HDR: usize = 32;
pub(crate) const FRAME_MAGIC: [u8; 4] = [0xF7, b'M', b'X', b'F'];
pub(crate) const FRAME_HDR: usize = 24;
pub(crate) const REC_HDR: usize = 8;

const KIND_ACCEPT: u8 = 1;
const KIND_ATTEMPT: u8 = 2;
const KIND_ACCEPT_TLS: u8 = 3;
const KIND_ACCEPT_POOL: u8 = 4;

/// The fixed header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegHeader {
    pub seg: u64,
    /// The id allocator's position when the segment was created: ids never go backwards
    /// even after every segment holding a higher id has been deleted.
    pub next_id: u64,
    pub salt: u32,
}

impl SegHeader {
    pub fn encode(&self) -> [u8; SEG_HDR] {
        let mut b = [0u8; SEG_HDR];
        b[..8].copy_from_slice(SEG_MAGIC);
        b[8..16].copy_from_slice(&self.seg.to_le_bytes());
        b[16..24].copy_from_slice(&self.next_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.salt.to_le_bytes());
        let crc = crc32c(0, &b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<SegHeader> {
        if b.len() < SEG_HDR || &b[..8] != SEG_MAGIC || crc32c(0, &b[..28]) != le32(&b[28..]) {
            return None;
        }
        Some(SegHeader { seg: le64(&b[8..]), next_id: le64(&b[16..]), salt: le32(&b[24..]) })
    }
}

/// A frame header, once its checksum has been verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub body_len: u32,
    pub seq: u64,
    pub nrec: u32,
}

impl FrameHeader {
    pub fn encode(&self, salt: u32) -> [u8; FRAME_HDR] {
        let mut b = [0u8; FRAME_HDR];
        b[..4].copy_from_slice(&FRAME_MAGIC);
        b[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.nrec.to_le_bytes());
        let crc = crc32c(crc32c(0, &salt.to_le_bytes()), &b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8], salt: u32) -> Option<FrameHeader> {
        if b.len() < FRAME_HDR || b[..4] != FRAME_MAGIC {
            return None;
        }
        if crc32c(crc32c(0, &salt.to_le_bytes()), &b[..20]) != le32(&b[20..]) {
            return None;
        }
        Some(FrameHeader { body_len: le32(&b[4..]), seq: le64(&b[8..]), nrec: le32(&b[16..]) })
    }
}

/// A decoded record payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Accept { id: MsgId, received_at: SystemTime, from: String, rcpts: Vec<String>, data: Arc<[u8]>, tls: MessageTls, pool: Option<String> },
    Attempt { id: MsgId, attempt: Attempt, final_status: Option<FinalStatus> },
}

/// Why a record could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecError {
    /// The length runs past the end of the frame: framing is lost for the rest of it.
    Truncated,
    /// The checksum does not match, or the payload does not parse; the next record can still
    /// be found from the length.
    Bad,
}

/// Encodes an accept record (header included).
pub(crate) fn encode_accept(
    id: MsgId,
    received_at: SystemTime,
    from: &str,
    rcpts: &[String],
    data: &[u8],
    tls: MessageTls,
    pool: Option<&str>,
) -> Vec<u8> {
    let strs: usize = from.len() + rcpts.iter().map(|r| r.len() + 4).sum::<usize>() + pool.map_or(0, |p| p.len() + 4);
    let mut p = Vec::with_capacity(REC_HDR + 1 + 8 + 8 + 4 + strs + 4 + 4 + data.len() + 1);
    p.extend_from_slice(&[0u8; REC_HDR]);
    let tls_byte = match tls {
        MessageTls::Default => None,
        MessageTls::RequireTls => Some(1),
        MessageTls::Optional => Some(2),
    };
    p.push(match (pool, tls_byte) {
        (Some(_), _) => KIND_ACCEPT_POOL,
        (None, Some(_)) => KIND_ACCEPT_TLS,
        (None, None) => KIND_ACCEPT,
    });
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&nanos(received_at).to_le_bytes());
    put_bytes(&mut p, from.as_bytes());
    p.extend_from_slice(&(rcpts.len() as u32).to_le_bytes());
    for r in rcpts {
        put_bytes(&mut p, r.as_bytes());
    }
    put_bytes(&mut p, data);
    match pool {
        Some(name) => {
            p.push(tls_byte.unwrap_or(0));
            put_bytes(&mut p, name.as_bytes());
        }
        None => p.extend(tls_byte),
    }
    seal(p)
}

/// Encodes an attempt record (header included).
pub(crate) fn encode_attempt(id: MsgId, a: &Attempt, final_status: Option<FinalStatus>) -> Vec<u8> {
    let mut p = Vec::with_capacity(REC_HDR + 1 + 8 + 8 + 1 + 12 + a.rcpt.len() + a.status.len() + a.reply.len());
    p.extend_from_slice(&[0u8; REC_HDR]);
    p.push(KIND_ATTEMPT);
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&nanos(a.at).to_le_bytes());
    p.push(match final_status {
        None => 0,
        Some(FinalStatus::Delivered) => 1,
        Some(FinalStatus::Bounced) => 2,
    });
    put_bytes(&mut p, a.rcpt.as_bytes());
    put_bytes(&mut p, a.status.as_bytes());
    put_bytes(&mut p, a.reply.as_bytes());
    seal(p)
}

/// Fills in length and checksum of a record whose payload follows an 8-byte placeholder.
fn seal(mut p: Vec<u8>) -> Vec<u8> {
    let len = (p.len() - REC_HDR) as u32;
    let crc = crc32c(0, &p[REC_HDR..]);
    p[..4].copy_from_slice(&len.to_le_bytes());
    p[4..8].copy_from_slice(&crc.to_le_bytes());
    p
}

/// Checks the record at the start of `b`; returns its total length (header included).
pub(crate) fn check_record(b: &[u8]) -> Result<usize, RecError> {
    if b.len() < REC_HDR {
        return Err(RecError::Truncated);
    }
    let len = le32(b) as usize;
    let total = REC_HDR.checked_add(len).ok_or(RecError::Truncated)?;
    if total > b.len() {
        return Err(RecError::Truncated);
    }
    if crc32c(0, &b[REC_HDR..total]) != le32(&b[4..]) {
        return Err(RecError::Bad);
    }
    Ok(total)
}

/// Decodes a record whose checksum [`check_record`] has verified.
pub(crate) fn decode_record(rec: &[u8]) -> Option<Record> {
    let mut r = Reader(rec.get(REC_HDR..)?);
    match r.u8()? {
        kind @ (KIND_ACCEPT | KIND_ACCEPT_TLS | KIND_ACCEPT_POOL) => {
            let id = r.u64()?;
            let received_at = time(r.u64()?);
            let from = r.string()?;
            let n = r.u32()? as usize;
            let mut rcpts = Vec::with_capacity(n.min(r.0.len() / 4));
            for _ in 0..n {
                rcpts.push(r.string()?);
            }
            let data: Arc<[u8]> = r.bytes()?.into();
            let tls = match (kind, if kind == KIND_ACCEPT { 0 } else { r.u8()? }) {
                (KIND_ACCEPT, _) | (KIND_ACCEPT_POOL, 0) => MessageTls::Default,
                (_, 1) => MessageTls::RequireTls,
                (_, 2) => MessageTls::Optional,
                _ => return None,
            };
            // A kind-4 record always names a pool (an empty name is not one).
            let pool = if kind == KIND_ACCEPT_POOL { Some(r.string()?).filter(|p| !p.is_empty()) } else { None };
            if kind == KIND_ACCEPT_POOL && pool.is_none() {
                return None;
            }
            r.0.is_empty().then_some(Record::Accept { id, received_at, from, rcpts, data, tls, pool })
        }
        KIND_ATTEMPT => {
            let id = r.u64()?;
            let at = time(r.u64()?);
            let final_status = match r.u8()? {
                0 => None,
                1 => Some(FinalStatus::Delivered),
                2 => Some(FinalStatus::Bounced),
                _ => return None,
            };
            let rcpt = r.string()?;
            let status = r.string()?;
            let reply = r.string()?;
            r.0.is_empty().then_some(Record::Attempt { id, attempt: Attempt { at, rcpt, status, reply }, final_status })
        }
        _ => None,
    }
}

/// For the `spool_record` fuzz target, not an API: the record at the start of `b` as
/// [`check_record`] frames it, decoded by [`decode_record`] and encoded again. `None` when `b`
/// does not start with a whole record with a good checksum; `Some((len, None))` when its
/// payload does not parse. A decoded record must encode to the same bytes.
#[doc(hidden)]
pub fn fuzz_reencode(b: &[u8]) -> Option<(usize, Option<Vec<u8>>)> {
    let len = check_record(b).ok()?;
    let again = decode_record(&b[..len]).map(|r| match r {
        Record::Accept { id, received_at, from, rcpts, data, tls, pool } => {
            encode_accept(id, received_at, &from, &rcpts, &data, tls, pool.as_deref())
        }
        Record::Attempt { id, attempt, final_status } => encode_attempt(id, &attempt, final_status),
    });
    Some((len, again))
}

/// For the `spool_record` fuzz target: `payload` behind a record header (length and
/// checksum), so that the fuzzer reaches the payload decoder.
#[doc(hidden)]
pub fn fuzz_seal(payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; REC_HDR];
    p.extend_from_slice(payload);
    seal(p)
}

/// The id of a record, without decoding the rest (used when relocating).
pub(crate) fn record_id(rec: &[u8]) -> Option<MsgId> {
    rec.get(REC_HDR + 1..REC_HDR + 9).map(le64)
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) {
    p.extend_from_slice(&(b.len() as u32).to_le_bytes());
    p.extend_from_slice(b);
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A bounds-checked cursor: garbage input gives `None`, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(le32)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(le64)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// CRC-32C (Castagnoli): SSE4.2 where the CPU has it, a table elsewhere.
pub(crate) fn crc32c(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the feature was detected at run time.
            return unsafe { crc32c_sse42(crc, data) };
        }
    }
    crc32c_table(crc, data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut c = !crc as u64;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        c = _mm_crc32_u64(c, le64(ch));
    }
    let mut c = c as u32;
    for &b in chunks.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

fn crc32c_table(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut c = !crc;
    for &b in data {
        c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer_and_paths_agree() {
        // RFC 3720 B.4 test vector.
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in [0, 1, 7, 8, 9, 63, 1000] {
            assert_eq!(crc32c(0, &data[..n]), crc32c_table(0, &data[..n]));
        }
        // Chaining is the same as one pass.
        assert_eq!(crc32c(crc32c(0, &data[..10]), &data[10..]), crc32c(0, &data));
    }

    #[test]
    fn records_round_trip() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let rcpts = vec!["a@x.example".to_string(), "b@y.example".to_string()];
        let rec = encode_accept(42, t, "s@z.example", &rcpts, b"Subject: x\r\n\r\nbody", MessageTls::Default, None);
        assert_eq!(check_record(&rec), Ok(rec.len()));
        assert_eq!(record_id(&rec), Some(42));
        match decode_record(&rec) {
            Some(Record::Accept { id, received_at, from, rcpts: r, data, tls: MessageTls::Default, pool: None }) => {
                assert_eq!((id, received_at, from.as_str(), r, &data[..]), (42, t, "s@z.example", rcpts, &b"Subject: x\r\n\r\nbody"[..]));
            }
            other => panic!("{other:?}"),
        }
        let a = Attempt { at: t, rcpt: "a@x.example".into(), status: "deferred".into(), reply: "451 4.3.0 later".into() };
        let rec = encode_attempt(42, &a, Some(FinalStatus::Bounced));
        assert_eq!(decode_record(&rec), Some(Record::Attempt { id: 42, attempt: a, final_status: Some(FinalStatus::Bounced) }));
    }

    #[test]
    fn damage_is_detected_never_panics() {
        let rec = encode_accept(1, UNIX_EPOCH, "", &["r@x".into()], b"data", MessageTls::RequireTls, None);
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            assert!(check_record(&bad).is_err(), "flip at {i} went unnoticed");
        }
        for n in 0..rec.len() {
            assert_eq!(check_record(&rec[..n]), Err(RecError::Truncated));
        }
        // A payload with a valid checksum but nonsense inside is rejected, not trusted.
        let junk = seal([vec![0u8; REC_HDR], vec![1, 2, 3, 0xff, 0xff, 0xff, 0xff]].concat());
        assert_eq!(check_record(&junk), Ok(junk.len()));
        assert_eq!(decode_record(&junk), None);
    }

    #[test]
    fn a_tls_requirement_round_trips_and_old_records_read_as_default() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let rcpts = vec!["a@x.example".to_string()];
        for tls in [MessageTls::Default, MessageTls::RequireTls, MessageTls::Optional] {
            let rec = encode_accept(9, t, "s@z.example", &rcpts, b"x", tls, None);
            assert_eq!(rec[REC_HDR], if tls == MessageTls::Default { KIND_ACCEPT } else { KIND_ACCEPT_TLS }, "{tls:?}");
            assert!(matches!(decode_record(&rec), Some(Record::Accept { tls: got, .. }) if got == tls), "{tls:?}");
        }
        // A record as written before RFC 8689 support, byte for byte (kind 1, no tls byte).
        let mut old = vec![0u8; REC_HDR];
        old.push(1);
        old.extend_from_slice(&9u64.to_le_bytes());
        old.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
        let put = |p: &mut Vec<u8>, s: &[u8]| {
            p.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p.extend_from_slice(s);
        };
        put(&mut old, b"s@z.example");
        old.extend_from_slice(&1u32.to_le_bytes());
        put(&mut old, b"a@x.example");
        put(&mut old, b"x");
        let old = seal(old);
        assert_eq!(
            decode_record(&old),
            Some(Record::Accept {
                id: 9,
                received_at: t,
                from: "s@z.example".into(),
                rcpts,
                data: b"x"[..].into(),
                tls: MessageTls::Default,
                pool: None
            })
        );
        // An unknown requirement byte is not guessed at.
        let mut bad = encode_accept(9, t, "", &["a@x".into()], b"x", MessageTls::Optional, None)[REC_HDR..].to_vec();
        *bad.last_mut().unwrap() = 7;
        assert_eq!(decode_record(&fuzz_seal(&bad)), None);
    }

    #[test]
    fn a_pool_round_trips_in_a_kind_4_record_only_when_named() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let rcpts = vec!["a@x.example".to_string()];
        for tls in [MessageTls::Default, MessageTls::RequireTls, MessageTls::Optional] {
            let rec = encode_accept(9, t, "s@z.example", &rcpts, b"x", tls, Some("bulk"));
            assert_eq!(rec[REC_HDR], KIND_ACCEPT_POOL, "{tls:?}");
            match decode_record(&rec) {
                Some(Record::Accept { tls: got, pool, .. }) => assert_eq!((got, pool.as_deref()), (tls, Some("bulk"))),
                other => panic!("{other:?}"),
            }
            assert_eq!(fuzz_reencode(&rec), Some((rec.len(), Some(rec.clone()))), "re-encodes to the same bytes");
            let none = encode_accept(9, t, "s@z.example", &rcpts, b"x", tls, None);
            assert_ne!(none[REC_HDR], KIND_ACCEPT_POOL, "no pool: the kinds older binaries read");
        }
        // An empty pool name or a bad requirement byte in kind 4 is not guessed at.
        let mut empty = encode_accept(9, t, "", &["a@x".into()], b"x", MessageTls::Default, Some("p"))[REC_HDR..].to_vec();
        let n = empty.len();
        empty.truncate(n - 5);
        empty.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_record(&fuzz_seal(&empty)), None);
        let mut bad = encode_accept(9, t, "", &["a@x".into()], b"x", MessageTls::Default, Some("p"))[REC_HDR..].to_vec();
        let n = bad.len();
        bad[n - 6] = 9;
        assert_eq!(decode_record(&fuzz_seal(&bad)), None);
    }

    #[test]
    fn headers_round_trip_and_salt_matters() {
        let h = SegHeader { seg: 7, next_id: 1234, salt: 99 };
        assert_eq!(SegHeader::decode(&h.encode()), Some(h));
        let f = FrameHeader { body_len: 100, seq: 5, nrec: 3 };
        assert_eq!(FrameHeader::decode(&f.encode(99), 99), Some(f));
        assert_eq!(FrameHeader::decode(&f.encode(99), 98), None);
    }
}
