//! Recovery: read every segment in order, replay its records, and rebuild the unfinished
//! messages (with their attempt history) and the writer's index.
//!
//! Damage policy. After a crash only the last frame of the last segment can be incomplete
//! (one frame per fsync, and nothing is written after a frame until it is synced), so damage
//! there with nothing valid after it is a *torn tail*: never acknowledged, cut off and
//! counted. Damage anywhere else is *corruption*: the frame's intact records are kept, the
//! damaged ones skipped and counted, a copy of the segment is kept under `corrupt/` for the
//! operator, and recovery goes on. Refusing to start would stop all mail for one bad sector;
//! the counts are in [`RecoveryReport`] and [`super::SpoolStats`] so the damage is never silent.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use super::format::{self, check_record, decode_record, FrameHeader, RecError, Record, SegHeader, FRAME_HDR, FRAME_MAGIC, SEG_HDR};
use super::index::{Index, Loc, Seg};
use super::{MsgId, RcptState, SpoolError, Stored};

/// What recovery found, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments: u64,
    /// Unfinished messages recovered.
    pub messages: u64,
    /// Bytes cut from the end of the last segment: a write the crash interrupted, never
    /// acknowledged.
    pub torn_tail_bytes: u64,
    /// Records whose checksum failed, or unparseable stretches, outside the torn tail.
    pub corrupt_records: u64,
    /// Bytes skipped because of corruption.
    pub corrupt_bytes: u64,
    /// Copies of damaged segments, kept for inspection.
    pub quarantined: Vec<PathBuf>,
}

pub(crate) struct Recovered {
    pub stored: Vec<Stored>,
    pub index: Index,
    pub next_id: MsgId,
    pub next_seq: u64,
    pub last_seg: u64,
    pub report: RecoveryReport,
}

pub(crate) fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("seg-{seg:016}.log"))
}

fn seg_number(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok()
}

/// Reads the spool directory. Cuts a torn tail off the last segment (and syncs that) so it
/// is not mistaken for corruption once later segments follow it.
pub(crate) fn recover(dir: &Path, fsync: bool) -> Result<Recovered, SpoolError> {
    let mut nums = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(n) = e.file_name().to_str().and_then(seg_number) {
            nums.push(n);
        }
    }
    nums.sort_unstable();

    let mut st = Replay::default();
    let mut report = RecoveryReport::default();
    let mut next_id = 1;
    let mut last_seg = 0;
    for (i, &num) in nums.iter().enumerate() {
        let path = seg_path(dir, num);
        let is_last = i + 1 == nums.len();
        let buf = fs::read(&path)?;
        last_seg = num;
        let header = SegHeader::decode(&buf).filter(|h| h.seg == num);
        let Some(header) = header else {
            if is_last && buf.len() <= SEG_HDR {
                // Created but its header never synced: nothing in it was acknowledged.
                report.torn_tail_bytes += buf.len() as u64;
                fs::remove_file(&path)?;
                continue;
            }
            // Without the header there is no salt, so no frame can be trusted.
            report.corrupt_records += 1;
            report.corrupt_bytes += buf.len() as u64;
            let q = quarantine(dir, &path, true)?;
            report.quarantined.push(q);
            continue;
        };
        next_id = next_id.max(header.next_id);
        report.segments += 1;
        st.index.segs.insert(num, Seg::new(path.clone(), buf.len() as u64));
        let scan = scan_segment(&buf, header.salt, is_last, &mut |off, rec| st.apply(num, off, rec));
        st.next_seq = st.next_seq.max(scan.max_seq + 1);
        if scan.corrupt_records > 0 || scan.corrupt_bytes > 0 {
            report.corrupt_records += scan.corrupt_records;
            report.corrupt_bytes += scan.corrupt_bytes;
            report.quarantined.push(quarantine(dir, &path, false)?);
        }
        if scan.valid_end < buf.len() && is_last {
            report.torn_tail_bytes += (buf.len() - scan.valid_end) as u64;
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(scan.valid_end as u64)?;
            if fsync {
                f.sync_all()?;
            }
            if let Some(s) = st.index.segs.get_mut(&num) {
                s.bytes = scan.valid_end as u64;
            }
        }
    }
    next_id = next_id.max(st.max_id + 1);

    let mut stored: Vec<Stored> = st.stored.into_values().collect();
    stored.sort_unstable_by_key(|s| s.id);
    report.messages = stored.len() as u64;
    Ok(Recovered { stored, index: st.index, next_id, next_seq: st.next_seq.max(1), last_seg, report })
}

/// Copies (or, for an unreadable segment, moves) a damaged segment to `corrupt/`.
fn quarantine(dir: &Path, path: &Path, move_it: bool) -> Result<PathBuf, SpoolError> {
    let qdir = dir.join("corrupt");
    fs::create_dir_all(&qdir)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("segment");
    let to = qdir.join(format!("{name}.{stamp}"));
    if move_it {
        fs::rename(path, &to)?;
    } else {
        fs::copy(path, &to)?;
    }
    File::open(&qdir)?.sync_all()?;
    Ok(to)
}

/// The replayed state: public messages and the writer's index side by side.
#[derive(Default)]
struct Replay {
    stored: HashMap<MsgId, Stored>,
    index: Index,
    max_id: MsgId,
    next_seq: u64,
}

impl Replay {
    fn apply(&mut self, seg: u64, off: usize, rec: &[u8]) -> bool {
        let Some(r) = decode_record(rec) else { return false };
        match r {
            Record::Accept { id, received_at, from, rcpts, data, tls, pool } => {
                self.max_id = self.max_id.max(id);
                let loc = Loc { seg, off: off as u64, len: rec.len() as u32 };
                self.index.accept(id, loc, rcpts.clone());
                if self.index.is_live(id) {
                    let rcpts = rcpts.into_iter().map(|rcpt| RcptState { rcpt, done: None }).collect();
                    self.stored.insert(id, Stored { id, from, rcpts, data, tls, pool, received_at, attempts: Vec::new() });
                }
            }
            Record::Attempt { id, attempt, final_status } => {
                let Some(s) = self.stored.get_mut(&id) else { return true };
                if let Some(f) = final_status {
                    for r in s.rcpts.iter_mut().filter(|r| r.rcpt == attempt.rcpt) {
                        r.done = Some(f);
                    }
                }
                let finished = self.index.attempt(id, seg, rec, &attempt.rcpt, final_status);
                s.attempts.push(attempt);
                if finished {
                    self.stored.remove(&id);
                }
            }
        }
        true
    }
}

/// The outcome of reading one segment's frames.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// End of the last good frame.
    pub valid_end: usize,
    pub max_seq: u64,
    pub corrupt_records: u64,
    pub corrupt_bytes: u64,
}

/// A frame whose header verified and whose body lies within the buffer.
struct Frame {
    hdr: FrameHeader,
    end: usize,
    /// (offset, length) of each record that verified.
    good: Vec<(usize, usize)>,
    bad: u64,
}

fn read_frame(buf: &[u8], pos: usize, salt: u32) -> Option<Frame> {
    let hdr = FrameHeader::decode(buf.get(pos..)?, salt)?;
    let start = pos + FRAME_HDR;
    let end = start.checked_add(hdr.body_len as usize)?;
    if end > buf.len() {
        return None;
    }
    let mut good = Vec::with_capacity(hdr.nrec as usize);
    let mut bad = 0u64;
    let mut p = start;
    while p < end {
        match check_record(&buf[p..end]) {
            Ok(n) => {
                good.push((p, n));
                p += n;
            }
            Err(RecError::Bad) => {
                bad += 1;
                p += format::REC_HDR + format::le32(&buf[p..]) as usize;
            }
            Err(RecError::Truncated) => {
                bad += 1;
                break;
            }
        }
    }
    let seen = good.len() as u64 + bad;
    bad += (hdr.nrec as u64).saturating_sub(seen);
    Some(Frame { hdr, end, good, bad })
}

fn next_good_frame(buf: &[u8], from: usize, salt: u32) -> Option<usize> {
    memchr::memmem::find_iter(buf.get(from..)?, &FRAME_MAGIC)
        .map(|i| from + i)
        .find(|&q| read_frame(buf, q, salt).is_some_and(|f| f.bad == 0))
}

/// Walks a segment's frames, calling `apply(offset, record)` for each intact record in
/// order (`apply` returns false for a record that verified but did not parse).
pub(crate) fn scan_segment(buf: &[u8], salt: u32, is_last: bool, apply: &mut dyn FnMut(usize, &[u8]) -> bool) -> Scan {
    let mut scan = Scan { valid_end: SEG_HDR.min(buf.len()), ..Scan::default() };
    let mut pos = SEG_HDR;
    let mut emit = |scan: &mut Scan, f: &Frame| {
        for &(off, n) in &f.good {
            if !apply(off, &buf[off..off + n]) {
                scan.corrupt_records += 1;
            }
        }
        scan.max_seq = scan.max_seq.max(f.hdr.seq);
    };
    while pos < buf.len() {
        let frame = read_frame(buf, pos, salt);
        if let Some(f) = frame.as_ref().filter(|f| f.bad == 0) {
            emit(&mut scan, f);
            pos = f.end;
            scan.valid_end = pos;
            continue;
        }
        let next = next_good_frame(buf, pos + 1, salt);
        if next.is_none() && is_last {
            // The torn tail: the crash cut the last write short. Leave it out entirely.
            break;
        }
        let resume = next.unwrap_or(buf.len());
        match frame.filter(|f| f.end <= resume) {
            Some(f) => {
                emit(&mut scan, &f);
                scan.corrupt_records += f.bad;
                let good: usize = f.good.iter().map(|&(_, n)| n).sum();
                scan.corrupt_bytes += (resume - pos - FRAME_HDR - good) as u64;
            }
            None => {
                scan.corrupt_records += 1;
                scan.corrupt_bytes += (resume - pos) as u64;
            }
        }
        pos = resume;
        scan.valid_end = pos;
    }
    scan
}
