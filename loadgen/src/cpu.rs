//! CPU time of a group of threads, so a report can tell the client's CPU from that of a
//! server running in the same process (`--embedded-sink`): the sink gets a runtime of its
//! own whose threads register here, and the client's figure is the process's CPU minus the
//! group's. `getrusage(RUSAGE_SELF)` alone counts both.
//!
//! Each thread's clock is read with `pthread_getcpuclockid` + `clock_gettime` while the thread
//! is alive; a thread that stops adds its final figure on the way out. Linux only; elsewhere
//! the group reads zero and the client's figure includes the sink's, as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The threads of one runtime and the CPU time of those that have stopped.
#[derive(Debug, Default)]
pub struct ThreadCpu {
    live: Mutex<Vec<libc::pthread_t>>,
    stopped_ns: AtomicU64,
}

impl ThreadCpu {
    /// An empty group.
    pub fn new() -> ThreadCpu {
        ThreadCpu::default()
    }

    /// Add the calling thread (a runtime's `on_thread_start`).
    pub fn register(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().push(me);
    }

    /// Remove the calling thread, keeping its CPU time (a runtime's `on_thread_stop`).
    pub fn unregister(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut live = self.lock();
        if let Some(i) = live.iter().position(|&t| t == me) {
            live.swap_remove(i);
            let ns = thread_cpu(me).map_or(0, |d| d.as_nanos() as u64);
            self.stopped_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// CPU time (user + system) of every thread of the group, living or stopped.
    pub fn total(&self) -> Duration {
        // Holding the lock keeps every listed thread alive while its clock is read: a thread
        // leaves the list (under this lock) before it exits.
        let live = self.lock();
        let running: Duration = live.iter().filter_map(|&t| thread_cpu(t)).sum();
        running + Duration::from_nanos(self.stopped_ns.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<libc::pthread_t>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(target_os = "linux")]
fn thread_cpu(t: libc::pthread_t) -> Option<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `t` is a live thread of this process (see `total`); both calls only write the
    // out-parameters we pass.
    unsafe {
        if libc::pthread_getcpuclockid(t, &mut clock) != 0 {
            return None;
        }
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(clock, &mut ts) != 0 {
            return None;
        }
        Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu(_t: libc::pthread_t) -> Option<Duration> {
    None
}

/// The process's CPU and a group's, read together, to tell them apart later.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    process: mxpipe::sys::CpuTime,
    group: Duration,
}

impl Split {
    /// Read the process's CPU time and `group`'s (zero without one).
    pub fn now(group: Option<&ThreadCpu>) -> Split {
        Split { process: mxpipe::sys::CpuTime::now(), group: group.map_or(Duration::ZERO, ThreadCpu::total) }
    }

    /// Seconds of CPU since `self`: (the process without the group, the group).
    pub fn since(&self, group: Option<&ThreadCpu>) -> (f64, f64) {
        let later = Split::now(group);
        let process = later.process.since(&self.process).total_secs();
        let group = later.group.saturating_sub(self.group).as_secs_f64();
        ((process - group).max(0.0), group)
    }
}

/// True when `cpu_s` of CPU over `wall_s` seconds is within 10% of `cores` cores: the client
/// itself may then have been the bottleneck, and the figures are the client's limit rather
/// than the server's.
pub fn saturated(cpu_s: f64, wall_s: f64, cores: usize) -> bool {
    wall_s > 0.0 && cores > 0 && cpu_s / wall_s >= 0.9 * cores as f64
}

/// The cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_busy_thread_is_counted_and_kept_after_it_stops() {
        let g = Arc::new(ThreadCpu::new());
        let g2 = g.clone();
        std::thread::spawn(move || {
            g2.register();
            // Spin until this thread has used 50 ms of CPU by its own clock (a loaded machine
            // gives it less per wall-clock second), at most 10 s.
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            let t0 = std::time::Instant::now();
            let mut x = 0u64;
            while thread_cpu(me).unwrap_or_default() < Duration::from_millis(50) && t0.elapsed() < Duration::from_secs(10) {
                for _ in 0..10_000 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
            }
            std::hint::black_box(x);
            g2.unregister();
        })
        .join()
        .unwrap();
        let t = g.total();
        assert!(t >= Duration::from_millis(50), "{t:?}");
        assert!(g.lock().is_empty());
        // The figure stays what the stopped thread used: this thread is not in the group.
        assert!(g.total() < Duration::from_millis(500), "{:?}", g.total());
    }

    #[test]
    fn saturation() {
        assert!(saturated(1.9, 1.0, 2));
        assert!(!saturated(1.0, 1.0, 2));
        assert!(!saturated(1.0, 0.0, 2));
    }
}
