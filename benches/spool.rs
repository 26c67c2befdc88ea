//! Spool candidates, durable (fsync on), measured on the disk under `$SPOOL_BENCH_DIR`
//! (default: the system temp dir): messages/s and fsyncs per message with 1 and 64
//! submitting threads.
//!
//! - `log`: this crate's segment log ([`mxpipe::queue::spool`]), group commit.
//! - `redb`: redb 4 behind the same group-commit shape — one writer thread, one write
//!   transaction per batch of up to 512 messages, `Durability::Immediate` (redb's commit
//!   does its own syncs; the count shown is commits, not syscalls).
//!
//! `cargo bench -p mxpipe --bench spool` (a timing run, not criterion: the cost is the disk's
//! sync latency, and what matters is how many messages share it).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use mxpipe::queue::spool::{Spool, SpoolConfig};
use redb::{Database, Durability, TableDefinition};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");

trait Store: Send + Sync {
    fn accept(&self, data: Arc<[u8]>);
    fn syncs(&self) -> u64;
}

impl Store for Spool {
    fn accept(&self, data: Arc<[u8]>) {
        Spool::accept(self, "sender@example.org", &["rcpt@example.net".to_string()], data).unwrap();
    }
    fn syncs(&self) -> u64 {
        self.stats().fsyncs
    }
}

struct Redb {
    tx: Sender<(Arc<[u8]>, Sender<()>)>,
    commits: Arc<std::sync::atomic::AtomicU64>,
}

impl Redb {
    fn open(path: &Path) -> Redb {
        let db = Database::create(path).unwrap();
        let (tx, rx) = bounded::<(Arc<[u8]>, Sender<()>)>(8192);
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = commits.clone();
        std::thread::spawn(move || {
            let mut id = 0u64;
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < 512 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let mut txn = db.begin_write().unwrap();
                txn.set_durability(Durability::Immediate).unwrap();
                {
                    let mut t = txn.open_table(TABLE).unwrap();
                    for (data, _) in &batch {
                        id += 1;
                        t.insert(id, &data[..]).unwrap();
                    }
                }
                txn.commit().unwrap();
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for (_, reply) in batch {
                    let _ = reply.send(());
                }
            }
        });
        Redb { tx, commits }
    }
}

impl Store for Redb {
    fn accept(&self, data: Arc<[u8]>) {
        let (reply, rx) = bounded(1);
        self.tx.send((data, reply)).unwrap();
        rx.recv().unwrap();
    }
    fn syncs(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn run(name: &str, store: Arc<dyn Store>, threads: usize, per_thread: usize, size: usize) {
    let data: Arc<[u8]> = vec![b'x'; size].into();
    let before = store.syncs();
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (s, d) = (store.clone(), data.clone());
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    s.accept(d.clone());
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let el = t0.elapsed().as_secs_f64();
    let n = (threads * per_thread) as f64;
    let syncs = (store.syncs() - before) as f64;
    println!("{name:<5} {threads:>3} threads {size:>6} B  {:>9.0} msg/s  {:>6.3} syncs/msg  ({n} msgs in {el:.2}s)", n / el, syncs / n);
}

fn main() {
    let base = std::env::var_os("SPOOL_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("mxpipe-spool-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scale: usize = std::env::var("SPOOL_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    for size in [1024, 16 << 10] {
        for (threads, per) in [(1, 300), (64, 300)] {
            let per = per * scale;
            let sub = dir.join(format!("log-{size}-{threads}"));
            let (spool, _) = Spool::open(SpoolConfig { max_batch: 512, ..SpoolConfig::new(&sub) }).unwrap();
            run("log", Arc::new(spool), threads, per, size);
            let sub = dir.join(format!("redb-{size}-{threads}"));
            std::fs::create_dir_all(&sub).unwrap();
            run("redb", Arc::new(Redb::open(&sub.join("spool.redb"))), threads, per, size);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
