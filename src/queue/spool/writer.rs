//! The writer thread: group commit, segment rotation, deletion and relocation.
//!
//! The only code that writes segment files. One frame per cycle: gather what is waiting,
//! put relocated messages first (so a finishing attempt in the same frame comes after the
//! copy it finishes), append, fdatasync, then update the index and answer the callers.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::format::{self, check_record, FrameHeader, SegHeader, FRAME_HDR, SEG_HDR};
use super::index::{Index, Loc, Seg};
use super::recover::seg_path;
use super::{Counters, FinalStatus, MsgId, NewMsg, Req, SpoolConfig, SpoolError, FRAME_CAP};

/// How often attempt records held back by a failed write are tried again when idle.
const RETRY_EVERY: Duration = Duration::from_millis(100);

struct Active {
    num: u64,
    file: File,
    len: u64,
    salt: u32,
}

struct PendingAttempt {
    id: MsgId,
    rcpt: String,
    final_status: Option<FinalStatus>,
    rec: Vec<u8>,
}

use super::Reply;

#[derive(Default)]
struct Batch {
    accepts: Vec<(Vec<NewMsg>, Reply)>,
    attempts: Vec<PendingAttempt>,
    flushes: Vec<Reply>,
    msgs: usize,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, r: Req) {
        match r {
            Req::Accept { msgs, reply } => {
                self.msgs += msgs.len();
                self.bytes += msgs.iter().map(|m| m.rec.len()).sum::<usize>();
                self.accepts.push((msgs, reply));
            }
            Req::Attempt { id, rcpt, final_status, rec } => {
                self.bytes += rec.len();
                self.attempts.push(PendingAttempt { id, rcpt, final_status, rec });
            }
            Req::Flush { reply } => self.flushes.push(reply),
        }
    }
}

pub(crate) struct Writer {
    cfg: SpoolConfig,
    dir: File,
    index: Index,
    active: Active,
    next_id: Arc<AtomicU64>,
    seq: u64,
    /// Attempt records from a frame that failed to write.
    retry: Vec<PendingAttempt>,
    /// A failed write could not be cut off: start a new segment before the next frame.
    broken: bool,
    reader: Option<(u64, File)>,
    counters: Arc<Counters>,
}

impl Writer {
    pub fn new(
        cfg: SpoolConfig,
        mut index: Index,
        last_seg: u64,
        next_id: Arc<AtomicU64>,
        seq: u64,
        counters: Arc<Counters>,
    ) -> Result<Writer, SpoolError> {
        let dir = File::open(&cfg.dir)?;
        let active = create_segment(&cfg.dir, &dir, last_seg + 1, next_id.load(Ordering::Relaxed), cfg.fsync)?;
        index.segs.insert(active.num, Seg::new(seg_path(&cfg.dir, active.num), active.len));
        let mut w = Writer { cfg, dir, index, active, next_id, seq, retry: Vec::new(), broken: false, reader: None, counters };
        w.maintain();
        Ok(w)
    }

    pub fn run(mut self, rx: Receiver<Req>) {
        loop {
            let first = if self.retry.is_empty() {
                match rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(RETRY_EVERY) {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch = Batch { attempts: std::mem::take(&mut self.retry), ..Batch::default() };
            if let Some(r) = first {
                batch.push(r);
            }
            let closing = self.gather(&rx, &mut batch);
            self.commit(batch);
            self.maintain();
            if closing {
                break;
            }
        }
        if !self.retry.is_empty() {
            let batch = Batch { attempts: std::mem::take(&mut self.retry), ..Batch::default() };
            self.commit(batch);
        }
    }

    /// Takes what is waiting; waits up to `max_delay` for more once there are messages.
    /// Returns true when every sender is gone.
    fn gather(&self, rx: &Receiver<Req>, batch: &mut Batch) -> bool {
        let deadline = Instant::now() + self.cfg.max_delay;
        while batch.msgs < self.cfg.max_batch && batch.bytes < FRAME_CAP {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if batch.msgs == 0 || now >= deadline {
                        return false;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(r) => batch.push(r),
                        Err(RecvTimeoutError::Timeout) => return false,
                        Err(RecvTimeoutError::Disconnected) => return true,
                    }
                }
            }
        }
        false
    }

    fn commit(&mut self, mut batch: Batch) {
        batch.attempts.retain(|a| self.index.is_live(a.id));
        let relocs = self.plan_relocation();
        if relocs.is_empty() && batch.accepts.is_empty() && batch.attempts.is_empty() {
            for f in batch.flushes {
                let _ = f.send(Ok(()));
            }
            return;
        }

        // The frame, header first; offsets below are relative to its start.
        let mut buf = vec![0u8; FRAME_HDR];
        let mut nrec = 0u32;
        let mut reloc_at = Vec::with_capacity(relocs.len());
        for (id, rec) in &relocs {
            reloc_at.push((*id, buf.len(), rec.len()));
            buf.extend_from_slice(rec);
            nrec += 1;
            if let Some(live) = self.index.live.get(id) {
                buf.extend_from_slice(&live.attempts);
                nrec += count_records(&live.attempts);
            }
        }
        let mut accept_at = Vec::new();
        for (msgs, _) in &batch.accepts {
            for m in msgs {
                accept_at.push((buf.len(), m.rec.len()));
                buf.extend_from_slice(&m.rec);
                nrec += 1;
            }
        }
        for a in &batch.attempts {
            buf.extend_from_slice(&a.rec);
            nrec += 1;
        }

        let result = self.append(&mut buf, nrec);
        let start = match result {
            Ok(start) => start,
            Err(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                for (_, reply) in batch.accepts {
                    let _ = reply.send(Err(e.duplicate()));
                }
                for f in batch.flushes {
                    let _ = f.send(Err(e.duplicate()));
                }
                self.retry = batch.attempts;
                return;
            }
        };

        let seg = self.active.num;
        let loc = |rel: usize, len: usize| Loc { seg, off: start + rel as u64, len: len as u32 };
        for &(id, rel, len) in &reloc_at {
            self.index.relocate(id, loc(rel, len));
        }
        let mut at = accept_at.into_iter();
        let mut accepted = 0u64;
        let mut replies = Vec::with_capacity(batch.accepts.len());
        for (msgs, reply) in batch.accepts {
            for m in msgs {
                let (rel, len) = at.next().unwrap_or_default();
                self.index.accept(m.id, loc(rel, len), m.rcpts);
                accepted += 1;
            }
            replies.push(reply);
        }
        for a in &batch.attempts {
            self.index.attempt(a.id, seg, &a.rec, &a.rcpt, a.final_status);
        }
        // Counters first, so a caller that was just answered sees itself counted.
        let c = &self.counters;
        c.accepted.fetch_add(accepted, Ordering::Relaxed);
        c.attempts.fetch_add(batch.attempts.len() as u64, Ordering::Relaxed);
        c.relocated.fetch_add(relocs.len() as u64, Ordering::Relaxed);
        c.live_messages.store(self.index.live.len() as u64, Ordering::Relaxed);
        for r in replies.into_iter().chain(batch.flushes) {
            let _ = r.send(Ok(()));
        }
    }

    /// Appends one frame (`buf` starts with room for its header) and syncs it. Returns the
    /// frame's offset. On failure the partial frame is cut off, or the segment abandoned.
    fn append(&mut self, buf: &mut [u8], nrec: u32) -> Result<u64, SpoolError> {
        let body_len = u32::try_from(buf.len() - FRAME_HDR).map_err(|_| SpoolError::Invalid("frame larger than 4 GiB".into()))?;
        if self.broken {
            if self.active.file.set_len(self.active.len).is_ok() {
                self.broken = false;
            } else {
                self.rotate()?;
            }
        }
        if self.active.len > SEG_HDR as u64 && self.active.len + buf.len() as u64 > self.cfg.segment_bytes {
            self.rotate()?;
        }
        let hdr = FrameHeader { body_len, seq: self.seq, nrec }.encode(self.active.salt);
        buf[..FRAME_HDR].copy_from_slice(&hdr);
        let start = self.active.len;
        let mut r = self.active.file.write_all_at(buf, start);
        if r.is_ok() && self.cfg.fsync {
            r = self.active.file.sync_data();
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = r {
            if self.active.file.set_len(start).is_err() {
                self.broken = true;
            }
            return Err(e.into());
        }
        self.seq += 1;
        self.active.len += buf.len() as u64;
        if let Some(s) = self.index.segs.get_mut(&self.active.num) {
            s.bytes = self.active.len;
        }
        self.counters.frames.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(start)
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        let num = self.active.num + 1;
        let new = create_segment(&self.cfg.dir, &self.dir, num, self.next_id.load(Ordering::Relaxed), self.cfg.fsync)?;
        self.index.segs.insert(num, Seg::new(seg_path(&self.cfg.dir, num), new.len));
        self.active = new;
        self.broken = false;
        Ok(())
    }

    /// Compaction: when the segments hold much more than the live data, copy a bounded
    /// amount of the oldest segment's unfinished messages into this frame.
    fn plan_relocation(&mut self) -> Vec<(MsgId, Vec<u8>)> {
        let disk = self.index.disk_bytes();
        let floor = 4 * self.cfg.segment_bytes;
        if disk <= floor.max(2 * self.index.live_bytes) {
            return Vec::new();
        }
        let Some((&oldest, _)) = self.index.segs.first_key_value() else { return Vec::new() };
        if oldest == self.active.num {
            return Vec::new();
        }
        let budget = (self.cfg.segment_bytes / 4).clamp(64 << 10, 8 << 20);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        while let Some(seg) = self.index.segs.get_mut(&oldest) {
            let Some(&id) = seg.accepted.get(seg.cursor) else { break };
            seg.cursor += 1;
            let path = seg.path.clone();
            let Some(live) = self.index.live.get(&id) else { continue };
            if live.loc.seg != oldest {
                continue;
            }
            let (loc, extra) = (live.loc, live.attempts.len() as u64);
            // An unreadable copy stays where it is (and keeps its segment): never drop it.
            if let Ok(rec) = self.read_record(&path, id, loc) {
                bytes += rec.len() as u64 + extra;
                out.push((id, rec));
            }
            if bytes >= budget {
                break;
            }
        }
        out
    }

    fn read_record(&mut self, path: &Path, id: MsgId, loc: Loc) -> io::Result<Vec<u8>> {
        if self.reader.as_ref().map(|r| r.0) != Some(loc.seg) {
            self.reader = Some((loc.seg, File::open(path)?));
        }
        let mut rec = vec![0u8; loc.len as usize];
        if let Some((_, f)) = &self.reader {
            f.read_exact_at(&mut rec, loc.off)?;
        }
        match check_record(&rec) {
            Ok(n) if n == rec.len() && format::record_id(&rec) == Some(id) => Ok(rec),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, "spool record changed on disk")),
        }
    }

    /// Deletes segments from the oldest end while nothing unfinished refers to them, and
    /// publishes the gauges.
    fn maintain(&mut self) {
        let mut deleted = 0;
        while let Some((&num, seg)) = self.index.segs.first_key_value() {
            if num == self.active.num || seg.refs > 0 {
                break;
            }
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => break,
            }
            if self.reader.as_ref().is_some_and(|r| r.0 == num) {
                self.reader = None;
            }
            self.index.segs.remove(&num);
            deleted += 1;
        }
        if deleted > 0 && self.cfg.fsync {
            let _ = self.dir.sync_all();
        }
        let c = &self.counters;
        c.segments_deleted.fetch_add(deleted, Ordering::Relaxed);
        c.live_messages.store(self.index.live.len() as u64, Ordering::Relaxed);
        c.segments.store(self.index.segs.len() as u64, Ordering::Relaxed);
        c.disk_bytes.store(self.index.disk_bytes(), Ordering::Relaxed);
    }
}

fn count_records(mut b: &[u8]) -> u32 {
    let mut n = 0;
    while b.len() >= format::REC_HDR {
        let total = format::REC_HDR + format::le32(b) as usize;
        b = b.get(total..).unwrap_or_default();
        n += 1;
    }
    n
}

/// Creates a segment file with its header, synced along with the directory entry.
fn create_segment(dir_path: &Path, dir: &File, num: u64, next_id: MsgId, fsync: bool) -> Result<Active, SpoolError> {
    let path = seg_path(dir_path, num);
    let salt = fastrand::u32(..);
    let make = || -> io::Result<File> {
        let file = OpenOptions::new().create_new(true).read(true).write(true).open(&path)?;
        file.write_all_at(&SegHeader { seg: num, next_id, salt }.encode(), 0)?;
        if fsync {
            file.sync_all()?;
            dir.sync_all()?;
        }
        Ok(file)
    };
    match make() {
        Ok(file) => Ok(Active { num, file, len: SEG_HDR as u64, salt }),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e.into())
        }
    }
}
