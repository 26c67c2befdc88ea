//! The threads DKIM signing runs on.
//!
//! Signing is pure CPU (an RSA-2048 signature is a few hundred microseconds), and an intake
//! signs while a client waits for its 250. On the listeners' tokio threads it would stall every
//! other session of that thread; `spawn_blocking` would move it off them but grows to hundreds
//! of threads under load, more runnable threads than cores. So a fixed set of threads, one per
//! core, with a bounded queue: when it is full the caller waits (back-pressure to the client),
//! nothing is dropped.

use std::sync::Arc;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed pool of signing threads.
#[derive(Clone)]
pub struct Workers {
    tx: crossbeam_channel::Sender<Job>,
    room: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").finish_non_exhaustive()
    }
}

/// Jobs queued or running at most, per thread.
const QUEUE_PER_THREAD: usize = 64;

impl Workers {
    /// `threads` threads (at least one), named `mxpipe-dkim-N`. They end when the last handle
    /// is dropped.
    pub fn new(threads: usize) -> Result<Workers, String> {
        let threads = threads.max(1);
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("mxpipe-dkim-{i}"))
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .map_err(|e| format!("cannot start a DKIM signing thread: {e}"))?;
        }
        Ok(Workers { tx, room: Arc::new(tokio::sync::Semaphore::new(threads * QUEUE_PER_THREAD)) })
    }

    /// Runs `f` on a signing thread and waits for its result. A panic in `f` is an `Err`.
    pub async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, String> {
        let _permit = self.room.acquire().await.map_err(|_| "the DKIM signing threads are gone".to_string())?;
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = done.send(r);
        });
        self.tx.send(job).map_err(|_| "the DKIM signing threads are gone".to_string())?;
        match result.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err("DKIM signing panicked".into()),
            Err(_) => Err("the DKIM signing thread stopped".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_off_the_runtime_thread_and_reports_panics() {
        let w = super::Workers::new(2).unwrap();
        let here = std::thread::current().id();
        let there = w.run(|| std::thread::current().id()).await.unwrap();
        assert_ne!(here, there);
        let name = w.run(|| std::thread::current().name().map(str::to_string)).await.unwrap();
        assert!(name.unwrap().starts_with("mxpipe-dkim-"));
        let e = w.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(e.contains("panicked"), "{e}");
        assert_eq!(w.run(|| 7).await.unwrap(), 7);
    }
}
