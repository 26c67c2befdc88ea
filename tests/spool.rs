//! The spool on real disk: recovery with history, group commit, compaction, damage, a full
//! disk (a 2 MiB tmpfs), and SIGKILL at several points in a child process.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

mod common;

use common::tmpfs::Tmpfs;
use mxpipe::queue::spool::{Attempt, FinalStatus, Spool, SpoolConfig, SpoolError, Stored};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxpipe-spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn attempt(rcpt: &str, status: &str) -> Attempt {
    Attempt { at: SystemTime::now(), rcpt: rcpt.into(), status: status.into(), reply: format!("{status} reply") }
}

/// A body that says which message it is, of varying size.
fn payload(n: u64) -> Arc<[u8]> {
    let mut v = format!("Message-Id: <{n}@test>\r\n\r\n").into_bytes();
    v.resize(v.len() + 200 + (n as usize * 37) % 2800, b'a' + (n % 26) as u8);
    v.into()
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    v.sort();
    v
}

#[test]
fn recovers_unfinished_messages_with_history() {
    let dir = tmpdir("history");
    let (spool, old) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    assert!(old.is_empty());
    let a = spool.accept("s@x.example", &rcpts(&["a@y.example", "b@y.example"]), payload(1)).unwrap();
    let b = spool.accept("", &rcpts(&["c@y.example"]), payload(2)).unwrap();
    let c = spool.accept("s@x.example", &rcpts(&["d@y.example"]), payload(3)).unwrap();
    assert!(a < b && b < c);
    spool.record_attempt(a, attempt("a@y.example", "deferred"), None).unwrap();
    spool.record_attempt(a, attempt("a@y.example", "delivered"), Some(FinalStatus::Delivered)).unwrap();
    spool.record_attempt(b, attempt("c@y.example", "bounced"), Some(FinalStatus::Bounced)).unwrap();
    spool.record_attempt(c, attempt("d@y.example", "deferred"), None).unwrap();
    spool.close().unwrap();

    let (spool, got) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    assert_eq!(got.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a, c]);
    let ma = &got[0];
    assert_eq!((ma.from.as_str(), &ma.data[..]), ("s@x.example", &payload(1)[..]));
    assert_eq!(ma.rcpts[0].done, Some(FinalStatus::Delivered));
    assert_eq!(ma.rcpts[1].done, None);
    assert_eq!(ma.attempts.iter().map(|a| a.status.as_str()).collect::<Vec<_>>(), ["deferred", "delivered"]);
    assert_eq!(got[1].attempts.len(), 1);
    assert_eq!(spool.stats().live_messages, 2);
    // Ids go on from where they were, even after the highest one finished.
    spool.record_attempt(c, attempt("d@y.example", "delivered"), Some(FinalStatus::Delivered)).unwrap();
    spool.close().unwrap();
    let (spool, got) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    assert_eq!(got.len(), 1);
    let d = spool.accept("s@x.example", &rcpts(&["e@y.example"]), payload(4)).unwrap();
    assert!(d > c, "id {d} reused");
    drop(spool);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_bad_input_and_a_second_opener() {
    let dir = tmpdir("lock");
    let (spool, _) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    assert!(matches!(spool.accept("s@x", &[], payload(1)), Err(SpoolError::Invalid(_))));
    assert!(matches!(Spool::open(SpoolConfig::new(&dir)), Err(SpoolError::Locked(_))));
    drop(spool);
    assert!(Spool::open(SpoolConfig::new(&dir)).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn group_commit_shares_fsyncs() {
    let dir = tmpdir("group");
    let (spool, _) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    let spool = Arc::new(spool);
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    spool.accept("s@x.example", &rcpts(&["r@y.example"]), payload(t * 100 + i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = spool.stats();
    assert_eq!(s.accepted, 1600);
    assert!(s.fsyncs * 2 < s.accepted, "{} fsyncs for {} messages", s.fsyncs, s.accepted);
    // accept_many is one frame.
    let before = spool.stats().fsyncs;
    let ids = spool.accept_many((0..100).map(|i| ("s@x".to_string(), rcpts(&["r@y"]), payload(i))).collect()).unwrap();
    assert_eq!(ids.len(), 100);
    assert_eq!(spool.stats().fsyncs - before, 1);
    drop(spool);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn finished_messages_do_not_accumulate() {
    let dir = tmpdir("compact");
    let cfg = SpoolConfig { segment_bytes: 64 << 10, fsync: false, ..SpoolConfig::new(&dir) };
    let (spool, _) = Spool::open(cfg.clone()).unwrap();
    // A few long-deferred messages from the start would pin every later segment if only
    // whole segments were deleted.
    let mut keep = Vec::new();
    for n in 0..5 {
        let id = spool.accept("s@x", &rcpts(&["slow@y"]), payload(n)).unwrap();
        spool.record_attempt(id, attempt("slow@y", "deferred"), None).unwrap();
        keep.push((id, n));
    }
    let mut max_disk = 0;
    for round in 0..40u64 {
        let batch: Vec<_> = (0..50).map(|i| ("s@x".to_string(), rcpts(&["r@y"]), payload(1000 + round * 50 + i))).collect();
        for id in spool.accept_many(batch).unwrap() {
            spool.record_attempt(id, attempt("r@y", "delivered"), Some(FinalStatus::Delivered)).unwrap();
        }
        spool.flush().unwrap();
        max_disk = max_disk.max(spool.stats().disk_bytes);
    }
    let s = spool.stats();
    assert_eq!(s.live_messages, 5);
    assert!(s.bytes_written > 3_000_000, "{s:?}");
    assert!(max_disk < 7 * (64 << 10), "disk grew to {max_disk}: {s:?}");
    assert!(s.relocated >= 5 && s.segments_deleted > 10, "{s:?}");
    spool.close().unwrap();
    let (_spool, got) = Spool::open(cfg).unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), keep.iter().map(|k| k.0).collect::<Vec<_>>());
    for (m, (_, n)) in got.iter().zip(&keep) {
        assert_eq!(&m.data[..], &payload(*n)[..]);
        assert_eq!(m.attempts.len(), 1, "history survives relocation");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn torn_tail_is_cut_and_garbage_ignored() {
    let dir = tmpdir("torn");
    let (spool, _) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    let ids: Vec<_> = (0..10).map(|n| spool.accept("s@x", &rcpts(&["r@y"]), payload(n)).unwrap()).collect();
    spool.close().unwrap();
    // A write the crash cut short: half of a copy of the last frame, then garbage.
    let seg = segments(&dir).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&bytes[bytes.len() - 700..bytes.len() - 300]).unwrap();
    f.write_all(&[0x5a; 333]).unwrap();
    drop(f);
    let (spool, got) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    assert_eq!(got.iter().map(|s| s.id).collect::<Vec<_>>(), ids);
    assert_eq!(spool.recovery().torn_tail_bytes, 733);
    assert_eq!(spool.recovery().corrupt_records, 0);
    spool.close().unwrap();
    // The tail was cut, so it is not taken for corruption once newer segments follow.
    let (spool, got) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    assert_eq!(got.len(), 10);
    assert_eq!((spool.recovery().torn_tail_bytes, spool.recovery().corrupt_records), (0, 0));
    drop(spool);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corruption_in_the_middle_is_counted_and_kept() {
    let dir = tmpdir("corrupt");
    let (spool, _) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    let ids: Vec<_> = (0..5).map(|n| spool.accept("s@x", &rcpts(&["r@y"]), payload(n)).unwrap()).collect();
    spool.close().unwrap();
    let seg = segments(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(14).position(|w| w == b"Message-Id: <2").unwrap();
    bytes[at + 40] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let (spool, got) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    let want: Vec<_> = ids.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, id)| *id).collect();
    assert_eq!(got.iter().map(|s| s.id).collect::<Vec<_>>(), want);
    let r = spool.recovery().clone();
    assert_eq!(r.corrupt_records, 1, "{r:?}");
    assert_eq!(r.torn_tail_bytes, 0);
    assert_eq!(r.quarantined.len(), 1);
    assert!(r.quarantined[0].exists());
    assert_eq!(spool.stats().corrupt_records, 1);
    drop(spool);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A full disk: a 2 MiB tmpfs holding a 1 MiB ballast file. Needs root to mount; skipped
/// (with a message) otherwise.
#[test]
fn disk_full_refuses_then_recovers() {
    let mnt = tmpdir("full");
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&mnt).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    }
    let result = std::panic::catch_unwind(|| disk_full_on(&mnt));
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = std::fs::remove_dir_all(&mnt);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn disk_full_on(mnt: &Path) {
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; 1 << 20]).unwrap();
    let dir = mnt.join("spool");
    let (spool, _) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    let body: Arc<[u8]> = vec![b'x'; 100 << 10].into();
    let mut acked = Vec::new();
    let err = loop {
        match spool.accept("s@x", &rcpts(&["r@y"]), body.clone()) {
            Ok(id) => acked.push(id),
            Err(e) => break e,
        }
        assert!(acked.len() < 100, "the disk never filled");
    };
    assert!(err.is_disk_full(), "{err}");
    assert!(!acked.is_empty());
    // Still refusing, not stuck, and not crashed.
    assert!(spool.accept("s@x", &rcpts(&["r@y"]), body.clone()).unwrap_err().is_disk_full());
    assert!(spool.stats().write_errors >= 2);
    // Space comes back: accepting resumes by itself.
    std::fs::remove_file(&ballast).unwrap();
    acked.push(spool.accept("s@x", &rcpts(&["r@y"]), body.clone()).unwrap());
    spool.close().unwrap();
    let (_spool, got) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    assert_eq!(got.iter().map(|s| s.id).collect::<Vec<_>>(), acked, "exactly the acknowledged messages");
    assert!(got.iter().all(|s| s.data.len() == 100 << 10));
}

/// Bytes in the spool's segment files.
fn spool_bytes(dir: &Path) -> u64 {
    segments(dir).iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum()
}

/// Five messages accepted and, once durable, finished. Returns the answer to the accept.
fn churn(spool: &Spool, round: u64) -> Result<(), SpoolError> {
    let batch: Vec<_> = (0..5).map(|i| ("s@x".to_string(), rcpts(&["r@y"]), payload(round * 5 + i))).collect();
    for id in spool.accept_many(batch)? {
        spool.record_attempt(id, attempt("r@y", "delivered"), Some(FinalStatus::Delivered)).unwrap();
    }
    Ok(())
}

/// A full disk while compaction is due: a 2 MiB tmpfs, a long-deferred 128 KiB message in
/// the oldest segment, and a filler leaving room for about 200 KiB more, so traffic fills the
/// disk after compaction became due and its copy of the message (a 128 KiB frame) fails
/// with ENOSPC. Once the filler is gone the message is copied after all, the segments it
/// pinned are deleted, and the spool stays small under traffic that writes more than the
/// whole disk; after reopening the message is there byte for byte.
#[test]
fn compaction_resumes_after_a_full_disk() {
    let test = "compaction_resumes_after_a_full_disk";
    let Some(fs) = Tmpfs::mount(test, "reloc-full", "2m") else { return };
    let dir = fs.0.join("spool");
    let cfg = SpoolConfig { segment_bytes: 64 << 10, ..SpoolConfig::new(&dir) };
    let (spool, _) = Spool::open(cfg.clone()).unwrap();
    let slow_body: Arc<[u8]> = (0..128u32 << 10).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>().into();
    let slow = spool.accept("deferred@x", &rcpts(&["slow@y"]), slow_body.clone()).unwrap();
    spool.record_attempt(slow, attempt("slow@y", "deferred"), None).unwrap();
    spool.flush().unwrap();

    // Fill the disk, then give back 200 KiB.
    let filler = fs.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0x55u8; 4096];
    let err = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let len = f.metadata().unwrap().len();
    f.set_len(len - (200 << 10)).unwrap();
    drop(f);

    // Traffic until the disk is full: refused with ENOSPC ten times in a row.
    let (mut round, mut refused_in_a_row, mut refused) = (0u64, 0, 0);
    while refused_in_a_row < 10 {
        match churn(&spool, round) {
            Ok(()) => refused_in_a_row = 0,
            Err(e) => {
                assert!(e.is_disk_full(), "{e}");
                refused_in_a_row += 1;
                refused += 1;
            }
        }
        let _ = spool.flush();
        round += 1;
        assert!(round < 400, "the disk never filled: {:?}", spool.stats());
    }
    let full = spool.stats();
    eprintln!("disk full after {round} rounds ({refused} refused): {full:?}");
    assert_eq!((full.relocated, full.segments_deleted), (0, 0), "{full:?}");
    // Compaction is due above twice the live data (the message and its attempt, < 129 KiB).
    assert!(full.disk_bytes > 2 * (129 << 10), "compaction was never due: {full:?}");

    // Space comes back. Traffic writes more than the whole tmpfs holds.
    std::fs::remove_file(&filler).unwrap();
    let mut max_disk = 0;
    for r in 0..300 {
        churn(&spool, round + r).unwrap_or_else(|e| panic!("refused after space came back ({r} rounds): {e}; {:?}", spool.stats()));
        spool.flush().unwrap();
        let disk = spool_bytes(&dir);
        max_disk = max_disk.max(disk);
        // The message (128 KiB) plus twice that before compaction, one copy more, a frame.
        assert!(disk < 640 << 10, "spool at {disk} bytes after {r} rounds: {:?}", spool.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = spool.stats();
    eprintln!("after space came back: at most {max_disk} bytes on disk, {s:?}");
    assert!(s.bytes_written - full.bytes_written > 2 << 20, "{s:?}");
    assert!(s.relocated >= 1 && s.segments_deleted > full.segments, "{s:?}");
    assert_eq!(s.live_messages, 1, "{s:?}");
    spool.close().unwrap();

    let (_spool, got) = Spool::open(cfg).unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), [slow], "only the deferred message is left, once");
    let m = &got[0];
    assert_eq!((m.from.as_str(), m.rcpts.len(), m.rcpts[0].rcpt.as_str(), m.rcpts[0].done), ("deferred@x", 1, "slow@y", None));
    assert!(m.data[..] == slow_body[..], "the deferred message changed");
    assert_eq!(m.attempts.iter().map(|a| a.status.as_str()).collect::<Vec<_>>(), ["deferred"]);
}

const CHILD_ENV: &str = "MXPIPE_SPOOL_CRASH_CHILD";

fn crash_cfg(dir: &Path) -> SpoolConfig {
    // Small segments, so kills land during rotation and compaction too.
    SpoolConfig { segment_bytes: 256 << 10, ..SpoolConfig::new(dir) }
}

/// Not a test on its own: the child process of `sigkill_loses_no_acknowledged_message`.
/// Accepts in four threads and prints `A id n` once `accept` returned; every third message
/// is finished at once, every third gets a deferred attempt that is flushed (`H id`).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let base: u64 = std::env::var("MXPIPE_SPOOL_CRASH_BASE").unwrap().parse().unwrap();
    let (spool, _) = Spool::open(crash_cfg(Path::new(&dir))).unwrap();
    let spool = Arc::new(spool);
    let next = Arc::new(AtomicU64::new(base));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (spool, next) = (spool.clone(), next.clone());
            std::thread::spawn(move || loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let id = spool.accept(&format!("s{n}@x.example"), &rcpts(&["r@y.example", "q@z.example"]), payload(n)).unwrap();
                writeln!(std::io::stdout().lock(), "A {id} {n}").unwrap();
                match n % 3 {
                    0 => {
                        spool.record_attempt(id, attempt("r@y.example", "delivered"), Some(FinalStatus::Delivered)).unwrap();
                        spool.record_attempt(id, attempt("q@z.example", "bounced"), Some(FinalStatus::Bounced)).unwrap();
                    }
                    1 => {
                        spool.record_attempt(id, attempt("r@y.example", "deferred"), None).unwrap();
                        spool.flush().unwrap();
                        writeln!(std::io::stdout().lock(), "H {id}").unwrap();
                    }
                    _ => {}
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn sigkill_loses_no_acknowledged_message() {
    let dir = tmpdir("crash");
    let exe = std::env::current_exe().unwrap();
    let mut acked: HashMap<u64, u64> = HashMap::new(); // id -> n
    let mut with_history = HashSet::new();
    let mut unacked_seen = HashSet::new();
    // Kill after this many acknowledgements (the last one: after a fixed time instead).
    let points = [1usize, 40, 700, 3000, 0];
    for (run, &point) in points.iter().enumerate() {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .env("MXPIPE_SPOOL_CRASH_BASE", (run as u64 * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let (out, lines) = (child.stdout.take().unwrap(), lines.clone());
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            })
        };
        let started = Instant::now();
        loop {
            let n = lines.lock().unwrap().iter().filter(|l| l.starts_with("A ")).count();
            let elapsed = started.elapsed();
            if (point > 0 && n >= point) || (point == 0 && elapsed > Duration::from_millis(1500)) {
                break;
            }
            assert!(elapsed < Duration::from_secs(30), "child made no progress ({n} acks)");
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        for l in lines.lock().unwrap().iter() {
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["A", id, n] => {
                    acked.insert(id.parse().unwrap(), n.parse().unwrap());
                }
                ["H", id] => {
                    with_history.insert(id.parse::<u64>().unwrap());
                }
                _ => {}
            }
        }

        let (spool, got) = Spool::open(crash_cfg(&dir)).unwrap();
        check_recovered(&got, &acked, &with_history, &mut unacked_seen);
        assert_eq!(spool.recovery().corrupt_records, 0, "run {run}: {:?}", spool.recovery());
        eprintln!("kill {run} after {point} acks: {} acknowledged so far, {} recovered, {:?}", acked.len(), got.len(), spool.recovery());
        spool.close().unwrap();
    }
    // In flight at a kill: durable, but the child died before printing. At most one per
    // submitting thread per kill.
    assert!(unacked_seen.len() <= 4 * points.len(), "{} recovered messages were never acknowledged", unacked_seen.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn check_recovered(got: &[Stored], acked: &HashMap<u64, u64>, with_history: &HashSet<u64>, unacked_seen: &mut HashSet<u64>) {
    let ids: HashSet<u64> = got.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), got.len(), "duplicate ids");
    for s in got {
        // Nothing that is not a message the child submitted, intact.
        let n: u64 = s.from.strip_prefix('s').and_then(|f| f.strip_suffix("@x.example")).unwrap().parse().unwrap();
        assert_eq!(&s.data[..], &payload(n)[..], "message {} damaged", s.id);
        match acked.get(&s.id) {
            Some(&m) => assert_eq!(m, n),
            None => {
                unacked_seen.insert(s.id);
            }
        }
    }
    for (&id, &n) in acked {
        if n % 3 != 0 {
            assert!(ids.contains(&id), "acknowledged message {id} (n={n}) lost");
        }
    }
    for id in with_history {
        let s = got.iter().find(|s| s.id == *id).unwrap();
        assert!(s.attempts.iter().any(|a| a.status == "deferred"), "message {id} lost its attempt history");
    }
}

/// Async callers (the daemon's sessions) wait for the group commit without holding a thread:
/// 500 concurrent accepts on a single-threaded runtime share a few fsyncs, a large message
/// goes through the blocking path, and everything is there after reopening.
#[test]
fn async_accepts_share_group_commits_on_one_thread() {
    let dir = tmpdir("async");
    let (spool, _) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    let spool = Arc::new(spool);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ids: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.accept_many_async(vec![("s@x".into(), rcpts(&["r@y"]), payload(i))]).await.unwrap()[0] })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let big: Arc<[u8]> = vec![b'b'; 1 << 20].into();
        ids.extend(spool.accept_many_async(vec![("s@x".into(), rcpts(&["big@y"]), big)]).await.unwrap());
        ids.extend(spool.accept_many_async(vec![("s@x".into(), rcpts(&["m@y"]), payload(1))]).await.unwrap());
        ids
    });
    let s = spool.stats();
    assert_eq!(s.accepted, 502);
    assert!(s.fsyncs * 5 < 500, "{} fsyncs for 500 concurrent accepts: no group commit", s.fsyncs);
    drop(spool);
    let (_, back) = Spool::open(SpoolConfig::new(&dir)).unwrap();
    let mut got: Vec<u64> = back.iter().map(|m| m.id).collect();
    got.sort_unstable();
    let mut want = ids;
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(back.iter().find(|m| m.rcpts[0].rcpt == "big@y").unwrap().data.len(), 1 << 20);
    std::fs::remove_dir_all(&dir).unwrap();
}
