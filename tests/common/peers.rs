//! Real peers started outside the test (by `scripts/test-all.sh`): where they are, or a loud
//! notice that the tests needing them were skipped.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

/// The Postfix peer: STARTTLS and implicit-TLS ports and the CA its certificate chains to.
pub struct Postfix {
    pub addr: IpAddr,
    pub starttls_port: u16,
    pub implicit_port: u16,
    pub ca: PathBuf,
}

/// The Postfix peer from the environment, or `None` after printing a SKIPPED banner straight
/// to stderr (past the test harness's capture, so it shows even when the test passes).
/// With `MXPIPE_REQUIRE_PEERS` set (as `scripts/test-all.sh` and CI do), a missing peer fails.
pub fn postfix(test: &str) -> Option<Postfix> {
    let var = |k: &str| std::env::var(k).ok();
    let found = (|| {
        Some(Postfix {
            addr: var("MXPIPE_POSTFIX_ADDR")?.parse().ok()?,
            starttls_port: var("MXPIPE_POSTFIX_STARTTLS_PORT")?.parse().ok()?,
            implicit_port: var("MXPIPE_POSTFIX_IMPLICIT_PORT")?.parse().ok()?,
            ca: var("MXPIPE_POSTFIX_CA")?.into(),
        })
    })();
    if found.is_none() {
        if var("MXPIPE_REQUIRE_PEERS").is_some() {
            panic!("{test}: MXPIPE_REQUIRE_PEERS is set but the MXPIPE_POSTFIX_* variables are not");
        }
        let banner = format!(
            "\n{line}\n  SKIPPED {test}: no Postfix peer (MXPIPE_POSTFIX_* unset).\n  \
             Run `bash scripts/test-all.sh` to install and start it and run this test.\n{line}\n",
            line = "#".repeat(78)
        );
        let _ = std::io::stderr().write_all(banner.as_bytes());
    }
    found
}
