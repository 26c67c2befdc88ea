//! Operating-system helpers shared by the binaries and the library: raising the open-file
//! limit (a sink or load generator holding 10k sockets needs more than the usual 1024) and
//! reading this process's CPU time (so a benchmark can show whether the client was the
//! bottleneck).

use std::time::Duration;

/// Raise the soft RLIMIT_NOFILE to the hard limit. Returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// Turn transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), unless
/// `MIMALLOC_ALLOW_THP` is set (mimalloc's own switch; `MIMALLOC_ALLOW_THP=1` keeps them).
///
/// Why: mimalloc asks for huge pages (`madvise(MADV_HUGEPAGE)`) on the segments it maps, and
/// while a burst's backlog grows the heap the kernel zeroes each 2 MB page whole on first
/// touch (`clear_page_erms` under `do_huge_pmd_anonymous_page`, 8–11 % of the daemon's
/// profile). With them off the daemon's CPU per message was lower and far steadier in
/// `perf/daemon.sh` (perf/RESULTS.md, "transparent huge pages"). Redis turns THP off for the
/// same reason (latency of first touch and copy-on-write). mimalloc reads its option before
/// `main`, so the switch is the kernel's per-process flag, which also covers pages mapped later.
/// Returns whether THP is now off; a kernel without the flag (before 3.15) leaves it as it was.
pub fn disable_transparent_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a flag of this
    // process's memory map; it touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) == 0 }
}

/// CPU time used by this process so far (user, system).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// Time spent running this process's own code.
    pub user: Duration,
    /// Time the kernel spent on this process's behalf (syscalls: sockets, fsync).
    pub system: Duration,
}

impl CpuTime {
    /// This process's CPU time, all threads.
    pub fn now() -> CpuTime {
        // SAFETY: getrusage fills the zeroed struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0;
        if !ok {
            return CpuTime::default();
        }
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
        CpuTime { user: tv(ru.ru_utime), system: tv(ru.ru_stime) }
    }

    /// User plus system time, in seconds.
    pub fn total_secs(&self) -> f64 {
        (self.user + self.system).as_secs_f64()
    }

    /// The CPU time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime { user: self.user.saturating_sub(earlier.user), system: self.system.saturating_sub(earlier.system) }
    }
}

/// Replace the file at `path` with `bytes` so that a crash leaves the old file or the new one,
/// never half of one: a temporary file beside it (`<name>.tmp`, mode 0600: these files hold
/// what only the daemon should read), synced, renamed over `path`, and the directory synced.
pub fn write_private_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
