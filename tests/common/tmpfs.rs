//! A tmpfs mounted for one test (a small, really full disk), unmounted when dropped.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

/// A mounted tmpfs; the path is its mount point. Declare it before anything that writes to it
/// (a daemon, a spool), so that those are dropped first.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (`"3m"`) on a fresh directory, or say loudly why not (and fail
    /// instead when `MXPIPE_REQUIRE_PEERS` is set, as in CI, where it must run).
    pub fn mount(test: &str, tag: &str, size: &str) -> Option<Tmpfs> {
        let dir = super::daemon::tmpdir(tag);
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&dir).output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir)),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                let _ = std::fs::remove_dir_all(&dir);
                if std::env::var_os("MXPIPE_REQUIRE_PEERS").is_some() {
                    panic!("{test}: MXPIPE_REQUIRE_PEERS is set but a tmpfs cannot be mounted: {why}");
                }
                let banner = format!(
                    "\n{line}\n  SKIPPED {test}: cannot mount a tmpfs ({why}).\n  Run the tests as root to run this one.\n{line}\n",
                    line = "#".repeat(78)
                );
                let _ = std::io::stderr().write_all(banner.as_bytes());
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
