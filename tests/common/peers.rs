//! Real peers started outside the test (by `scripts/test-all.sh`): where they are, or a loud
//! notice that the tests needing them were skipped.
// Each test file includes this module and uses only some of it.
#![allow(dead_code)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The Postfix peer: STARTTLS and implicit-TLS ports and the CA its certificate chains to.
pub struct Postfix {
    pub addr: IpAddr,
    pub starttls_port: u16,
    pub implicit_port: u16,
    pub ca: PathBuf,
}

/// The Postfix peer as a relay into a daemon under test (`tests/peers/postfix-peer.sh`):
/// mail for [`RELAY_DOMAIN`] submitted on `submit` is queued by Postfix and relayed, over
/// mandatory STARTTLS, to `to` (a fixed address, so the daemon must listen there).
pub struct Relay {
    pub submit: SocketAddr,
    pub to: SocketAddr,
    /// Postfix's log file (its relay logs the TLS connections it makes).
    pub log: PathBuf,
}

/// The domain the peer relays to the daemon under test.
pub const RELAY_DOMAIN: &str = "relay.mxpipe.test";

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// `None` after a SKIPPED banner straight to stderr (past the test harness's capture, so it
/// shows even when the test passes); a failure instead with `MXPIPE_REQUIRE_PEERS` set.
fn missing<T>(test: &str, what: &str) -> Option<T> {
    if var("MXPIPE_REQUIRE_PEERS").is_some() {
        panic!("{test}: MXPIPE_REQUIRE_PEERS is set but {what} not");
    }
    let banner = format!(
        "\n{line}\n  SKIPPED {test}: no Postfix peer ({what} unset).\n  \
         Run `bash scripts/test-all.sh` to install and start it and run this test.\n{line}\n",
        line = "#".repeat(78)
    );
    let _ = std::io::stderr().write_all(banner.as_bytes());
    None
}

/// The Postfix peer from the environment, or `None` after printing a SKIPPED banner.
/// With `MXPIPE_REQUIRE_PEERS` set (as `scripts/test-all.sh` and CI do), a missing peer fails.
pub fn postfix(test: &str) -> Option<Postfix> {
    let found = (|| {
        Some(Postfix {
            addr: var("MXPIPE_POSTFIX_ADDR")?.parse().ok()?,
            starttls_port: var("MXPIPE_POSTFIX_STARTTLS_PORT")?.parse().ok()?,
            implicit_port: var("MXPIPE_POSTFIX_IMPLICIT_PORT")?.parse().ok()?,
            ca: var("MXPIPE_POSTFIX_CA")?.into(),
        })
    })();
    found.or_else(|| missing(test, "the MXPIPE_POSTFIX_* variables are"))
}

/// The Postfix peer and its relay into a daemon under test, or `None` (as [`postfix`]).
pub fn postfix_relay(test: &str) -> Option<(Postfix, Relay)> {
    let pf = postfix(test)?;
    let relay = (|| {
        Some(Relay {
            submit: SocketAddr::new(pf.addr, var("MXPIPE_POSTFIX_RELAY_PORT")?.parse().ok()?),
            to: var("MXPIPE_POSTFIX_RELAY_TO")?.parse().ok()?,
            log: var("MXPIPE_POSTFIX_LOG")?.into(),
        })
    })();
    match relay {
        Some(r) => Some((pf, r)),
        None => missing(test, "MXPIPE_POSTFIX_RELAY_PORT, MXPIPE_POSTFIX_RELAY_TO or MXPIPE_POSTFIX_LOG is"),
    }
}

/// Postfix's `smtp-source` (installed with the peer): `MXPIPE_SMTP_SOURCE`, else on `PATH`
/// or in /usr/sbin. Call it only once the peer is known to be there: then it must exist.
pub fn smtp_source() -> PathBuf {
    if let Some(p) = var("MXPIPE_SMTP_SOURCE") {
        return p.into();
    }
    let path = var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("smtp-source"))
        .find(|p| p.is_file())
        .expect("the Postfix peer is set up but smtp-source (package postfix) is not found; set MXPIPE_SMTP_SOURCE")
}

/// The `unbound` binary (`$MXPIPE_UNBOUND` if set, else Debian's `/usr/sbin/unbound` or one
/// on `PATH`), or `None` after a SKIPPED banner. The tests start their own instance on a
/// loopback port; with `MXPIPE_REQUIRE_PEERS` set a missing binary fails, as for Postfix.
pub fn unbound(test: &str) -> Option<PathBuf> {
    let found = match var("MXPIPE_UNBOUND") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => ["/usr/sbin/unbound", "/usr/local/sbin/unbound"]
            .iter()
            .map(PathBuf::from)
            .chain(std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join("unbound")))
            .find(|p| p.is_file()),
    };
    if found.is_none() {
        if var("MXPIPE_REQUIRE_PEERS").is_some() {
            panic!("{test}: MXPIPE_REQUIRE_PEERS is set but unbound is not installed");
        }
        let banner =
            format!("\n{line}\n  SKIPPED {test}: unbound not installed (bash .ci/run installs it).\n{line}\n", line = "#".repeat(78));
        let _ = std::io::stderr().write_all(banner.as_bytes());
    }
    found
}
