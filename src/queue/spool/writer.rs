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
/// How long compaction waits after a frame with copies failed to write (a full disk)
/// before copying again; frames in between carry only what callers sent.
const RELOC_RETRY: Duration = Duration::from_millis(100);

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

/// The copies compaction planned for one frame, from the oldest segment `seg`; `cursor` is
/// where that segment's walk resumes once they are durable.
#[derive(Default)]
struct Relocation {
    seg: u64,
    cursor: usize,
    msgs: Vec<(MsgId, Vec<u8>)>,
}

/// One frame, encoded, with where its relocated and accepted records lie in it.
struct Frame {
    /// Starts with room for the frame header.
    buf: Vec<u8>,
    nrec: u32,
    /// (id, offset, length) of each copied accept record.
    reloc_at: Vec<(MsgId, usize, usize)>,
    /// (offset, length) of each accept record, in the batch's order.
    accept_at: Vec<(usize, usize)>,
}

impl Frame {
    /// Copies first (each with its attempt history), then the accepts, then the attempts.
    fn encode(index: &Index, relocs: &[(MsgId, Vec<u8>)], batch: &Batch) -> Frame {
        let mut buf = vec![0u8; FRAME_HDR];
        let mut nrec = 0u32;
        let mut reloc_at = Vec::with_capacity(relocs.len());
        for (id, rec) in relocs {
            reloc_at.push((*id, buf.len(), rec.len()));
            buf.extend_from_slice(rec);
            nrec += 1;
            if let Some(live) = index.live.get(id) {
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
        Frame { buf, nrec, reloc_at, accept_at }
    }
}

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
    /// A frame with copies failed to write: no copying before this.
    reloc_after: Option<Instant>,
    reader: Option<(u64, File)>,
    counters: Arc<Counters>,
    /// Tests: this many appends fail with ENOSPC before anything is written.
    #[cfg(test)]
    fail_writes: u32,
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
        let mut w = Writer {
            cfg,
            dir,
            index,
            active,
            next_id,
            seq,
            retry: Vec::new(),
            broken: false,
            reloc_after: None,
            reader: None,
            counters,
            #[cfg(test)]
            fail_writes: 0,
        };
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
        let mut relocs = self.plan_relocation();
        loop {
            if relocs.msgs.is_empty() && batch.accepts.is_empty() && batch.attempts.is_empty() {
                for f in batch.flushes {
                    let _ = f.send(Ok(()));
                }
                return;
            }
            let mut frame = Frame::encode(&self.index, &relocs.msgs, &batch);
            match self.append(&mut frame.buf, frame.nrec) {
                Ok(start) => return self.committed(start, frame, relocs, batch),
                Err(_) if !relocs.msgs.is_empty() => {
                    // The copies are not on disk. Their messages stay where they are and stay
                    // planned (the cursor moves only once a copy is durable), to be copied
                    // again after a pause; what the callers sent is tried now on its own, so a
                    // copy that does not fit does not refuse what does.
                    self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.reloc_after = Some(Instant::now() + RELOC_RETRY);
                    relocs = Relocation::default();
                }
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
            }
        }
    }

    /// The frame is durable: the index learns where everything in it is, and callers are answered.
    fn committed(&mut self, start: u64, frame: Frame, relocs: Relocation, batch: Batch) {
        let seg = self.active.num;
        let loc = |rel: usize, len: usize| Loc { seg, off: start + rel as u64, len: len as u32 };
        for &(id, rel, len) in &frame.reloc_at {
            self.index.relocate(id, loc(rel, len));
        }
        if let Some(s) = self.index.segs.get_mut(&relocs.seg) {
            s.cursor = s.cursor.max(relocs.cursor);
        }
        let mut at = frame.accept_at.into_iter();
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
        c.relocated.fetch_add(relocs.msgs.len() as u64, Ordering::Relaxed);
        c.live_messages.store(self.index.live.len() as u64, Ordering::Relaxed);
        for r in replies.into_iter().chain(batch.flushes) {
            let _ = r.send(Ok(()));
        }
    }

    /// Appends one frame (`buf` starts with room for its header) and syncs it. Returns the
    /// frame's offset. On failure the partial frame is cut off, or the segment abandoned.
    fn append(&mut self, buf: &mut [u8], nrec: u32) -> Result<u64, SpoolError> {
        let body_len = u32::try_from(buf.len() - FRAME_HDR).map_err(|_| SpoolError::Invalid("frame larger than 4 GiB".into()))?;
        #[cfg(test)]
        if self.fail_writes > 0 {
            self.fail_writes -= 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC).into());
        }
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
    /// amount of the oldest segment's unfinished messages into this frame. Moves nothing:
    /// the segment's cursor passes the copies only once they are durable.
    fn plan_relocation(&mut self) -> Relocation {
        if self.reloc_after.is_some_and(|t| Instant::now() < t) {
            return Relocation::default();
        }
        self.reloc_after = None;
        let disk = self.index.disk_bytes();
        let floor = 4 * self.cfg.segment_bytes;
        if disk <= floor.max(2 * self.index.live_bytes) {
            return Relocation::default();
        }
        let Some((&oldest, seg)) = self.index.segs.first_key_value() else { return Relocation::default() };
        if oldest == self.active.num {
            return Relocation::default();
        }
        let (path, mut cursor) = (seg.path.clone(), seg.cursor);
        let budget = (self.cfg.segment_bytes / 4).clamp(64 << 10, 8 << 20);
        let mut msgs = Vec::new();
        let mut bytes = 0u64;
        while let Some(id) = self.index.segs.get(&oldest).and_then(|s| s.accepted.get(cursor).copied()) {
            cursor += 1;
            let Some(live) = self.index.live.get(&id) else { continue };
            if live.loc.seg != oldest {
                continue;
            }
            let (loc, extra) = (live.loc, live.attempts.len() as u64);
            // An unreadable copy stays where it is (and keeps its segment): never drop it.
            if let Ok(rec) = self.read_record(&path, id, loc) {
                bytes += rec.len() as u64 + extra;
                msgs.push((id, rec));
            }
            if bytes >= budget {
                break;
            }
        }
        if msgs.is_empty() {
            // Only finished, moved or unreadable messages were passed: nothing to wait for.
            if let Some(s) = self.index.segs.get_mut(&oldest) {
                s.cursor = cursor;
            }
        }
        Relocation { seg: oldest, cursor, msgs }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::SystemTime;

    use super::super::recover;
    use super::*;

    const SEG: u64 = 64 << 10;
    /// The long-deferred message, accepted first.
    const SLOW: MsgId = 1;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mxpipe-writer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn open(dir: &Path) -> Writer {
        let cfg = SpoolConfig { segment_bytes: SEG, fsync: false, ..SpoolConfig::new(dir) };
        let rec = recover::recover(dir, false).unwrap();
        Writer::new(cfg, rec.index, rec.last_seg, Arc::new(AtomicU64::new(rec.next_id)), rec.next_seq, Arc::default()).unwrap()
    }

    fn body(id: MsgId) -> Vec<u8> {
        let mut v = format!("Message-Id: <{id}@test>\r\n\r\n").into_bytes();
        v.extend((0..2000 + id % 1000).map(|i| b'a' + ((i + id) % 26) as u8));
        v
    }

    fn attempt_req(id: MsgId, final_status: Option<FinalStatus>) -> Req {
        let a = super::super::Attempt { at: SystemTime::now(), rcpt: "r@y".into(), status: "deferred".into(), reply: "later".into() };
        Req::Attempt { id, rcpt: a.rcpt.clone(), final_status, rec: format::encode_attempt(id, &a, final_status) }
    }

    /// One writer cycle: accepts `new` (one frame, one reply) and records an attempt for
    /// each of `attempts`. Returns the accept's answer.
    fn cycle(w: &mut Writer, new: &[MsgId], attempts: &[(MsgId, Option<FinalStatus>)]) -> Result<(), SpoolError> {
        // As the writer's loop does: attempt records held back by a failed frame go first.
        let mut batch = Batch { attempts: std::mem::take(&mut w.retry), ..Batch::default() };
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let msgs = new
            .iter()
            .map(|&id| NewMsg {
                id,
                rcpts: vec!["r@y".into()],
                rec: format::encode_accept(id, SystemTime::now(), "s@x", &["r@y".into()], &body(id), Default::default(), None),
            })
            .collect();
        batch.push(Req::Accept { msgs, reply });
        for &(id, f) in attempts {
            batch.push(attempt_req(id, f));
        }
        w.commit(batch);
        w.maintain();
        rx.try_recv().expect("answered in the cycle")
    }

    /// SLOW in the first segment, then finished traffic until the next cycle compacts.
    /// Returns the writer, the first segment and the next free id.
    fn until_compaction_is_due(dir: &Path) -> (Writer, u64, MsgId) {
        let mut w = open(dir);
        let first = w.active.num;
        cycle(&mut w, &[SLOW], &[]).unwrap();
        cycle(&mut w, &[], &[(SLOW, None)]).unwrap();
        let mut next = 100;
        let mut prev: Vec<MsgId> = Vec::new();
        while w.index.disk_bytes() <= 4 * SEG {
            let new: Vec<MsgId> = (next..next + 10).collect();
            next += 10;
            let done: Vec<_> = prev.iter().map(|&id| (id, Some(FinalStatus::Delivered))).collect();
            cycle(&mut w, &new, &done).unwrap();
            prev = new;
            assert!(next < 10_000, "the segments never grew");
        }
        assert_eq!(w.index.live[&SLOW].loc.seg, first);
        assert_eq!(w.counters.relocated.load(Ordering::Relaxed), 0, "compaction already ran");
        // Everything but SLOW finished: the last ones' records go with the next cycle.
        let done: Vec<_> = prev.iter().map(|&id| (id, Some(FinalStatus::Delivered))).collect();
        w.retry = done.iter().map(|&(id, f)| pending(id, f)).collect();
        (w, first, next)
    }

    fn pending(id: MsgId, f: Option<FinalStatus>) -> PendingAttempt {
        let Req::Attempt { id, rcpt, final_status, rec } = attempt_req(id, f) else { unreachable!() };
        PendingAttempt { id, rcpt, final_status, rec }
    }

    /// What recovery finds: SLOW alone, intact, with its one attempt, and exactly one copy
    /// of its accept record on disk.
    fn check_recovered(dir: &Path) {
        let rec = recover::recover(dir, false).unwrap();
        assert_eq!(rec.stored.iter().map(|s| s.id).collect::<Vec<_>>(), [SLOW]);
        assert_eq!(&rec.stored[0].data[..], &body(SLOW)[..]);
        assert_eq!(rec.stored[0].attempts.len(), 1, "attempt history lost or doubled");
        let marker = format!("Message-Id: <{SLOW}@test>");
        let copies: usize =
            rec.index.segs.values().map(|s| memchr::memmem::find_iter(&fs::read(&s.path).unwrap(), marker.as_bytes()).count()).sum();
        assert_eq!(copies, 1);
    }

    /// The disk is full when compaction first copies SLOW: that frame and the retry without
    /// the copy both fail. Once writes work again SLOW is copied, and the first segment and
    /// everything after it go.
    #[test]
    fn failed_relocation_write_is_tried_again() {
        let dir = tmpdir("reloc-retry");
        let (mut w, first, next) = until_compaction_is_due(&dir);
        w.fail_writes = 10;
        let err = cycle(&mut w, &[next], &[]).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(w.counters.write_errors.load(Ordering::Relaxed) >= 1);
        assert_eq!(w.index.live[&SLOW].loc.seg, first, "not copied, so not moved");
        assert!(w.index.segs.contains_key(&first));
        w.fail_writes = 0;

        // Space is back (after the pause between relocation attempts).
        std::thread::sleep(RELOC_RETRY);
        cycle(&mut w, &[], &[]).unwrap();
        let c = &w.counters;
        assert_eq!(c.relocated.load(Ordering::Relaxed), 1, "SLOW was never copied again");
        assert_ne!(w.index.live[&SLOW].loc.seg, first);
        assert!(!w.index.segs.contains_key(&first), "the first segment is still pinned");
        assert_eq!(w.index.segs.len(), 1, "{:?}", w.index.segs.keys());
        assert!(c.segments_deleted.load(Ordering::Relaxed) >= 4);
        assert_eq!(w.index.live.len(), 1);
        drop(w);
        check_recovered(&dir);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Only the frame with the copy fails (a relocation that does not fit): what callers sent
    /// is written on its own at once, and the copy is made later.
    #[test]
    fn failed_relocation_write_does_not_fail_the_batch() {
        let dir = tmpdir("reloc-alone");
        let (mut w, first, next) = until_compaction_is_due(&dir);
        w.fail_writes = 1;
        cycle(&mut w, &[next], &[]).unwrap();
        assert_eq!(w.counters.write_errors.load(Ordering::Relaxed), 1);
        assert_eq!(w.index.live[&SLOW].loc.seg, first);
        assert!(w.index.is_live(next));
        std::thread::sleep(RELOC_RETRY);
        cycle(&mut w, &[], &[(next, Some(FinalStatus::Delivered))]).unwrap();
        assert_eq!(w.counters.relocated.load(Ordering::Relaxed), 1);
        assert!(!w.index.segs.contains_key(&first));
        drop(w);
        check_recovered(&dir);
        fs::remove_dir_all(&dir).unwrap();
    }
}
