//! The durable spool: every accepted message is on disk, fsynced, before it is acknowledged,
//! and a restart gives back every unfinished message with its attempt history.
//!
//! **Store.** An append-only log of segment files (`seg-NNNNNNNNNNNNNNNN.log`) written by one
//! thread. Callers encode their records (CRC-32C checked) on their own thread and hand them
//! over a bounded channel; the writer gathers what is waiting (up to `max_batch` messages, at
//! most `max_delay` extra wait) into one frame, appends it with one `write` and makes it
//! durable with one `fdatasync` (group commit), then answers every caller in the frame. The
//! format is described in `spool/format.rs`, the damage policy in `spool/recover.rs`.
//!
//! **Why not redb.** Measured with `SPOOL_BENCH_SCALE=3 cargo bench -p mxpipe --bench spool`
//! (`benches/spool.rs`) on this repository's build machine (virtio disk, ext4, 2 cores
//! shared), fsync on, both behind the same group commit (one writer thread, batches of up to
//! 512, the benchmark's setting; for redb one write transaction per batch with `Durability::Immediate`):
//!
//! | store                  | 1 KiB, 64 threads | 16 KiB, 64 threads | 1 KiB, 1 thread | syncs/message (64 thr.) |
//! |------------------------|------------------:|-------------------:|----------------:|------------------------:|
//! | segment log (this)     |      52,300 msg/s |       42,700 msg/s |     1,970 msg/s | 0.026 fdatasync         |
//! | redb 4                 |      24,300 msg/s |       16,100 msg/s |     1,920 msg/s | 0.027 commits           |
//!
//! Both amortise the sync equally (about 38 messages per sync at 64 submitters; a lone
//! submitter pays one sync per message with either); the log is 2.2–2.7× redb's rate because
//! its batch costs one sequential append, where redb's rewrites B-tree pages and copies each
//! value into them. `max_delay` defaults to zero, not 2 ms: concurrent submitters fill a batch
//! while the previous sync runs, and a lone submitter would only wait longer.
//!
//! The log is also simpler to make crash-safe in the way a spool needs: a torn write can only
//! be the last frame, and recovery is a sequential scan. What redb would give for free,
//! reclaiming space, is done here by segment deletion and relocation (below).
//!
//! **Space.** A segment is deleted once no unfinished message has a record in it and every
//! older segment is gone (deleting only from the oldest end means a "finished" record is
//! never lost while the message's accept record survives). A message deferred for days
//! would pin everything after it, so when the segments hold more than twice the live data
//! (and at least four segments), the writer copies the oldest segment's unfinished messages
//! — body and attempt history — to the head of the log, a bounded amount per batch, and the
//! old segment goes. Disk use stays within about 2× the live data plus four segments.
//!
//! **Errors.** A failed write or fsync (disk full included) answers every caller in that
//! frame with [`SpoolError::Io`] and cuts the partial frame off; the writer keeps running and
//! the next frame is tried afresh, so accepting resumes by itself when space returns. Attempt
//! records in a failed frame are kept and written with the next one. When a frame carrying
//! compaction copies fails, what the callers sent is tried again at once without them; the
//! copied messages stay where they are, still due to be copied, and compaction tries again
//! after a short pause (a failed copy must never leave a message pinning the oldest segment).
//!
//! This module owns the spool directory and nothing else: it does not schedule, deliver or
//! decide what a status means.

mod format;
mod index;
mod recover;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, Sender};
use serde::{Deserialize, Serialize};

use crate::engine::MessageTls;

/// The record codec, for the `spool_record` fuzz target only (not an API).
#[doc(hidden)]
pub use format::{fuzz_reencode, fuzz_seal};
pub use recover::RecoveryReport;

/// A message's id in the spool: unique for the life of the spool directory, never reused.
pub type MsgId = u64;

/// How the spool is set up: the `[spool]` table of the configuration file, deserialized
/// straight into this type so that the file and the spool have one set of defaults (the
/// config checks the ranges given below when the file is read).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool; created if missing. One process at a time: it is locked.
    /// Default `"/var/spool/mxpipe"`.
    pub dir: PathBuf,
    /// Most messages made durable by one group commit (one frame, one fsync). Default 256.
    pub max_batch: usize,
    /// Longest a message waits for its group commit once the writer has one (adds to
    /// injection latency), at most 1s. Zero is best for a single submitter; concurrent
    /// submitters batch anyway, because they queue up while the previous fsync runs.
    /// Default `"0s"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub max_delay: Duration,
    /// Sync each commit to disk before acknowledging. Off loses acknowledged mail on a power
    /// failure or kernel crash: only for tests and benchmarks. Default true.
    pub fsync: bool,
    /// A new segment file is started once the current one reaches this size. Not a setting
    /// of the file (tests make it small). Default 64 MiB.
    #[serde(skip)]
    pub segment_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("/var/spool/mxpipe"),
            max_batch: 256,
            max_delay: Duration::ZERO,
            fsync: true,
            segment_bytes: 64 << 20,
        }
    }
}

impl SpoolConfig {
    /// The defaults for a spool in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig { dir: dir.into(), ..SpoolConfig::default() }
    }
}

/// How a recipient finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalStatus {
    /// The recipient's server accepted the message.
    Delivered,
    /// The recipient failed permanently (by a server, expiry or the operator); a DSN is due.
    Bounced,
}

/// One recipient of a stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RcptState {
    /// The recipient address as accepted.
    pub rcpt: String,
    /// `None` while delivery is still to be tried.
    pub done: Option<FinalStatus>,
}

/// One delivery attempt for one recipient, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// When the attempt ended (wall clock, so it survives restarts).
    pub at: SystemTime,
    /// The recipient the attempt was for.
    pub rcpt: String,
    /// `delivered`, `deferred` or `bounced`.
    pub status: String,
    /// The server's reply on one line, or the local reason.
    pub reply: String,
}

/// An unfinished message as recovered from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The message's spool id.
    pub id: MsgId,
    /// Envelope sender; empty for the null sender.
    pub from: String,
    /// Every envelope recipient and whether it is finished.
    pub rcpts: Vec<RcptState>,
    /// The message as received (RFC 5322 bytes).
    pub data: Arc<[u8]>,
    /// What the sender asked of TLS (RFC 8689); [`MessageTls::Default`] for a record written
    /// before the spool kept it.
    pub tls: MessageTls,
    /// The egress pool the sender named, if any (kept across restarts).
    pub pool: Option<String>,
    /// When the spool first acknowledged the message (wall clock).
    pub received_at: SystemTime,
    /// Every attempt recorded, oldest first.
    pub attempts: Vec<Attempt>,
}

/// A message to store: the envelope, the content and its TLS requirement. A
/// `(from, rcpts, data)` tuple converts to one without a requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Envelope sender; empty for the null sender.
    pub from: String,
    /// Envelope recipients, at least one.
    pub rcpts: Vec<String>,
    /// The message (RFC 5322 bytes).
    pub data: Arc<[u8]>,
    /// What the sender asked of TLS (RFC 8689), kept with the message across restarts.
    pub tls: MessageTls,
    /// The egress pool the sender chose (HTTP `"pool"`, SMTP `X-Mxpipe-Pool:`); `None`: the
    /// rules by sender domain, then the default pool, decide at delivery.
    pub pool: Option<String>,
}

impl From<(String, Vec<String>, Arc<[u8]>)> for Incoming {
    fn from((from, rcpts, data): (String, Vec<String>, Arc<[u8]>)) -> Incoming {
        Incoming { from, rcpts, data, tls: MessageTls::Default, pool: None }
    }
}

impl From<(String, Vec<String>, Arc<[u8]>, MessageTls)> for Incoming {
    fn from((from, rcpts, data, tls): (String, Vec<String>, Arc<[u8]>, MessageTls)) -> Incoming {
        Incoming { from, rcpts, data, tls, pool: None }
    }
}

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Reading or writing the spool failed; nothing was acknowledged. Includes a full disk
    /// (see [`SpoolError::is_disk_full`]).
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The spool's files cannot be read as the format defines (the text says where and what).
    #[error("spool is corrupt: {0}")]
    Corrupt(String),
    /// The spool is shut down (or its writer thread is gone).
    #[error("the spool is closed")]
    Closed,
    /// Another process has this spool directory open.
    #[error("spool directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The message cannot be stored as given (no recipients, or larger than the format allows).
    #[error("cannot spool this message: {0}")]
    Invalid(String),
}

impl SpoolError {
    /// Out of space (or quota, or file-size limit): temporary, answer 452 4.3.1 / HTTP 507.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::Io(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)))
    }

    /// A copy to hand to each caller waiting on the same failed frame.
    fn duplicate(&self) -> SpoolError {
        match self {
            SpoolError::Io(e) => SpoolError::Io(match e.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(e.kind(), e.to_string()),
            }),
            SpoolError::Corrupt(s) => SpoolError::Corrupt(s.clone()),
            SpoolError::Closed => SpoolError::Closed,
            SpoolError::Locked(p) => SpoolError::Locked(p.clone()),
            SpoolError::Invalid(s) => SpoolError::Invalid(s.clone()),
        }
    }
}

/// Counters since [`Spool::open`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    /// Messages acknowledged (durable).
    pub accepted: u64,
    /// Attempt records written.
    pub attempts: u64,
    /// Frames written.
    pub frames: u64,
    /// Data syncs of frames written (one per group commit; none with `fsync` off).
    pub fsyncs: u64,
    /// Bytes of frames appended to segment files, frame headers included.
    pub bytes_written: u64,
    /// Frames that failed to write or sync (disk full and others).
    pub write_errors: u64,
    /// Messages copied forward by compaction.
    pub relocated: u64,
    /// Segment files removed by compaction once nothing live was left in them.
    pub segments_deleted: u64,
    /// Unfinished messages now.
    pub live_messages: u64,
    /// Segment files now.
    pub segments: u64,
    /// Bytes in segment files now.
    pub disk_bytes: u64,
    /// From recovery at open.
    pub corrupt_records: u64,
    /// Bytes cut from the end of the last segment at open: an interrupted, never acknowledged write.
    pub torn_tail_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    attempts: AtomicU64,
    frames: AtomicU64,
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
    write_errors: AtomicU64,
    relocated: AtomicU64,
    segments_deleted: AtomicU64,
    live_messages: AtomicU64,
    segments: AtomicU64,
    disk_bytes: AtomicU64,
}

/// One encoded accept record and what the writer's index needs from it.
pub(crate) struct NewMsg {
    id: MsgId,
    rcpts: Vec<String>,
    rec: Vec<u8>,
}

/// Where the writer answers a request once it is durable (or failed): a oneshot, which a
/// thread waits on by parking and a task by awaiting, so a session waiting for its group
/// commit holds no thread.
pub(crate) type Reply = tokio::sync::oneshot::Sender<Result<(), SpoolError>>;

/// What callers send the writer.
pub(crate) enum Req {
    Accept { msgs: Vec<NewMsg>, reply: Reply },
    Attempt { id: MsgId, rcpt: String, final_status: Option<FinalStatus>, rec: Vec<u8> },
    Flush { reply: Reply },
}

/// Messages larger than this are encoded on a blocking thread by the async calls (copying and
/// checksumming megabytes would hold up the runtime thread).
const ASYNC_ENCODE_MAX: usize = 256 * 1024;

/// The spool. `Send + Sync`: share it in an `Arc` and call it from any thread. Dropping it
/// writes what is queued and stops the writer.
pub struct Spool {
    tx: Option<Sender<Req>>,
    next_id: Arc<AtomicU64>,
    counters: Arc<Counters>,
    writer: Mutex<Option<JoinHandle<()>>>,
    report: RecoveryReport,
    _lock: DirLock,
}

/// Frames larger than this are split (a single larger message gets a frame of its own).
const FRAME_CAP: usize = 32 << 20;
/// Requests queued for the writer before submitters block: back-pressure.
const QUEUE: usize = 8192;

impl Spool {
    /// Opens (or creates) the spool and recovers it: every message with at least one
    /// recipient not finished, with its attempt history, oldest id first.
    pub fn open(cfg: SpoolConfig) -> Result<(Spool, Vec<Stored>), SpoolError> {
        fs::create_dir_all(&cfg.dir)?;
        let lock = DirLock::take(&cfg.dir)?;
        let rec = recover::recover(&cfg.dir, cfg.fsync)?;
        let counters = Arc::new(Counters::default());
        let next_id = Arc::new(AtomicU64::new(rec.next_id));
        let report = rec.report.clone();
        let stored = rec.stored;
        let (tx, rx) = bounded(QUEUE);
        let w = writer::Writer::new(cfg, rec.index, rec.last_seg, next_id.clone(), rec.next_seq, counters.clone())?;
        let handle = std::thread::Builder::new().name("mxpipe-spool".into()).spawn(move || w.run(rx))?;
        let spool = Spool { tx: Some(tx), next_id, counters, writer: Mutex::new(Some(handle)), report, _lock: lock };
        Ok((spool, stored))
    }

    /// Stores one message; returns once it is durable (its frame is fsynced).
    pub fn accept(&self, from: &str, rcpts: &[String], data: Arc<[u8]>) -> Result<MsgId, SpoolError> {
        self.accept_tls(from, rcpts, data, MessageTls::Default)
    }

    /// [`Spool::accept`] for a message with a TLS requirement (RFC 8689).
    pub fn accept_tls(&self, from: &str, rcpts: &[String], data: Arc<[u8]>, tls: MessageTls) -> Result<MsgId, SpoolError> {
        let now = SystemTime::now();
        let msg = self.encode(from, rcpts, &data, tls, None, now)?;
        let id = msg.id;
        self.send_and_wait(vec![msg])?;
        Ok(id)
    }

    /// [`Spool::accept_many`] for async callers: the wait for the group commit holds no
    /// thread. Must be called within a tokio runtime.
    pub async fn accept_many_async<M: Into<Incoming>>(self: &Arc<Self>, msgs: Vec<M>) -> Result<Vec<MsgId>, SpoolError> {
        let msgs: Vec<Incoming> = msgs.into_iter().map(Into::into).collect();
        if msgs.iter().map(|m| m.data.len()).sum::<usize>() > ASYNC_ENCODE_MAX {
            let spool = self.clone();
            return tokio::task::spawn_blocking(move || spool.accept_many(msgs)).await.map_err(|_| SpoolError::Closed)?;
        }
        let now = SystemTime::now();
        let enc =
            msgs.iter().map(|m| self.encode(&m.from, &m.rcpts, &m.data, m.tls, m.pool.as_deref(), now)).collect::<Result<Vec<_>, _>>()?;
        let ids = enc.iter().map(|m| m.id).collect();
        if !enc.is_empty() {
            self.send_and_await(enc).await?;
        }
        Ok(ids)
    }

    /// Stores several messages, all in one frame when they fit; returns once all are durable.
    /// All or nothing: on error none of the ids is acknowledged.
    pub fn accept_many<M: Into<Incoming>>(&self, msgs: Vec<M>) -> Result<Vec<MsgId>, SpoolError> {
        let now = SystemTime::now();
        let enc = msgs
            .into_iter()
            .map(|m| {
                let m = m.into();
                self.encode(&m.from, &m.rcpts, &m.data, m.tls, m.pool.as_deref(), now)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ids = enc.iter().map(|m| m.id).collect();
        if !enc.is_empty() {
            self.send_and_wait(enc)?;
        }
        Ok(ids)
    }

    /// Records an attempt, and with `final_status` that the recipient is finished. Does not
    /// wait: the record goes into the next frame (durable within one fsync; call
    /// [`Spool::flush`] to wait). Losing it in a crash means the attempt is made again, never
    /// that a message is lost. A message with every recipient finished leaves the spool.
    pub fn record_attempt(&self, id: MsgId, attempt: Attempt, final_status: Option<FinalStatus>) -> Result<(), SpoolError> {
        let rec = format::encode_attempt(id, &attempt, final_status);
        self.tx()?.send(Req::Attempt { id, rcpt: attempt.rcpt, final_status, rec }).map_err(|_| SpoolError::Closed)
    }

    /// Waits until everything submitted before this call is durable.
    pub fn flush(&self) -> Result<(), SpoolError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx()?.send(Req::Flush { reply }).map_err(|_| SpoolError::Closed)?;
        rx.blocking_recv().map_err(|_| SpoolError::Closed)?
    }

    /// The counters now.
    pub fn stats(&self) -> SpoolStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SpoolStats {
            accepted: g(&c.accepted),
            attempts: g(&c.attempts),
            frames: g(&c.frames),
            fsyncs: g(&c.fsyncs),
            bytes_written: g(&c.bytes_written),
            write_errors: g(&c.write_errors),
            relocated: g(&c.relocated),
            segments_deleted: g(&c.segments_deleted),
            live_messages: g(&c.live_messages),
            segments: g(&c.segments),
            disk_bytes: g(&c.disk_bytes),
            corrupt_records: self.report.corrupt_records,
            torn_tail_bytes: self.report.torn_tail_bytes,
        }
    }

    /// What recovery found when the spool was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }

    /// Writes what is queued, stops the writer and releases the directory.
    pub fn close(mut self) -> Result<(), SpoolError> {
        let r = self.flush();
        self.stop();
        r
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }

    fn tx(&self) -> Result<&Sender<Req>, SpoolError> {
        self.tx.as_ref().ok_or(SpoolError::Closed)
    }

    fn encode(
        &self,
        from: &str,
        rcpts: &[String],
        data: &[u8],
        tls: MessageTls,
        pool: Option<&str>,
        now: SystemTime,
    ) -> Result<NewMsg, SpoolError> {
        if rcpts.is_empty() {
            return Err(SpoolError::Invalid("no recipients".into()));
        }
        if let Some(p) = pool {
            if p.is_empty() || p.len() > crate::egress::MAX_NAME {
                return Err(SpoolError::Invalid(format!(
                    "egress pool name {p:?} is empty or longer than {} bytes",
                    crate::egress::MAX_NAME
                )));
            }
        }
        let size = data.len() + from.len() + rcpts.iter().map(|r| r.len() + 4).sum::<usize>();
        if size > (u32::MAX as usize) - 1024 {
            return Err(SpoolError::Invalid(format!("{size} bytes is larger than a spool record can hold")));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let rec = format::encode_accept(id, now, from, rcpts, data, tls, pool);
        Ok(NewMsg { id, rcpts: rcpts.to_vec(), rec })
    }

    fn send_and_wait(&self, msgs: Vec<NewMsg>) -> Result<(), SpoolError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx()?.send(Req::Accept { msgs, reply }).map_err(|_| SpoolError::Closed)?;
        rx.blocking_recv().map_err(|_| SpoolError::Closed)?
    }

    async fn send_and_await(self: &Arc<Self>, msgs: Vec<NewMsg>) -> Result<(), SpoolError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        match self.tx()?.try_send(Req::Accept { msgs, reply }) {
            Ok(()) => {}
            // The writer's queue is full (back-pressure): wait for room on a blocking thread.
            Err(crossbeam_channel::TrySendError::Full(req)) => {
                let spool = self.clone();
                tokio::task::spawn_blocking(move || spool.tx().and_then(|tx| tx.send(req).map_err(|_| SpoolError::Closed)))
                    .await
                    .map_err(|_| SpoolError::Closed)??;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(SpoolError::Closed),
        }
        rx.await.map_err(|_| SpoolError::Closed)?
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One process per spool directory, and one `Spool` in it. A POSIX record lock (`F_SETLK`)
/// rather than `flock`: a child forked in the instant before it execs would share an flock
/// and keep the directory locked after the spool is closed; record locks are not inherited.
/// They do not conflict within a process, hence the list of directories open here.
struct DirLock {
    dir: PathBuf,
    _file: File,
}

static OPEN_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl DirLock {
    fn take(dir: &std::path::Path) -> Result<DirLock, SpoolError> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK"))?;
        let dir = fs::canonicalize(dir)?;
        let mut open = OPEN_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        if open.contains(&dir) {
            return Err(SpoolError::Locked(dir));
        }
        // SAFETY: a zeroed flock struct is valid; fcntl only reads it.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EACCES) => SpoolError::Locked(dir),
                _ => e.into(),
            });
        }
        open.push(dir.clone());
        Ok(DirLock { dir, _file: file })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        OPEN_DIRS.lock().unwrap_or_else(|e| e.into_inner()).retain(|d| d != &self.dir);
    }
}
