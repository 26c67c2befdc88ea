#!/usr/bin/env bash
# The whole test suite, with its real peers: installs and starts Postfix on loopback
# (STARTTLS 127.0.0.1:2525, implicit TLS 127.0.0.1:2526, a generated CA; a relay port
# 127.0.0.1:2527 whose mail for relay.mxpipe.test goes to an `mxpipe serve` under test on
# $MXPIPE_POSTFIX_RELAY_TO, default 127.0.0.1:2590), then runs every test of the workspace, the
# Postfix interop tests included, and installs unbound for tests/dnssec_unbound.rs (which starts
# its own instance on a loopback port). `.ci/run` calls this script.
# Before the tests, the checks CI enforces (each fails the run): rustfmt, clippy with
# warnings as errors, rustdoc with warnings as errors, the benchmarks compile, and every fuzz
# target runs 10 s without a crash (scripts/fuzz.sh; MXPIPE_FUZZ_SECONDS changes the time).
# Needs root (or sudo) for apt-get and Postfix; plain `cargo test` runs without them and
# says loudly which interop tests it skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# `step NAME CMD...`: a header, the command (its failure ends the run), and its time.
step() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@"
  echo "== $name: ok ($((SECONDS - start)) s)"
}
step "cargo fmt --check" cargo fmt --all --check
step "cargo fmt --check (fuzz/)" cargo fmt --manifest-path fuzz/Cargo.toml --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --locked
# The dev profile: it shares the test build, instead of a second, optimised build of every
# dependency only to see that the benchmarks compile (perf/ runs them optimised).
step "cargo bench --no-run" cargo bench --no-run --locked --profile dev
step "fuzz" bash scripts/fuzz.sh "${MXPIPE_FUZZ_SECONDS:-10}"

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v postfix >/dev/null || need+=(postfix)
command -v openssl >/dev/null || need+=(openssl)
command -v ss >/dev/null || need+=(iproute2)
# unbound: the independent DNSSEC validator tests/dnssec_unbound.rs starts on a loopback port.
[ -x /usr/sbin/unbound ] || need+=(unbound)
# redis-server: the shared limits of cluster mode; tests/cluster_*.rs start their own on a free
# loopback port (no persistence) and stop it.
[ -x /usr/bin/redis-server ] || need+=(redis-server)
# dkimpy: the independent DKIM verifier tests/dkim_serve.rs checks signatures with.
/usr/bin/python3 -c "import dkim, dns.resolver" 2>/dev/null || need+=(python3-dkim python3-dnspython)
if ((${#need[@]})); then
  echo "== installing ${need[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -q
  # No package may start its service system-wide (unbound would take port 53, redis 6379): policy-rc.d
  # exiting 101 tells invoke-rc.d not to. The tests start their own instances.
  made_policy_rc=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    made_policy_rc=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" || rc=$?
  if [ -n "$made_policy_rc" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
  [ "$rc" = 0 ] || exit "$rc"
fi

echo "== starting the Postfix peer"
export MXPIPE_POSTFIX_RELAY_TO=${MXPIPE_POSTFIX_RELAY_TO:-127.0.0.1:2590}
$SUDO env RELAY_SUBMIT_PORT=2527 RELAY_TO="$MXPIPE_POSTFIX_RELAY_TO" bash tests/peers/postfix-peer.sh start
export MXPIPE_POSTFIX_ADDR=127.0.0.1
export MXPIPE_POSTFIX_STARTTLS_PORT=2525
export MXPIPE_POSTFIX_IMPLICIT_PORT=2526
export MXPIPE_POSTFIX_CA=/etc/postfix/mxpipe-peer-tls/ca.pem
export MXPIPE_POSTFIX_RELAY_PORT=2527
export MXPIPE_POSTFIX_LOG=/var/log/postfix-peer.log
# The interop tests must run here, not skip: they fail if the peer is missing.
export MXPIPE_REQUIRE_PEERS=1

echo "== cargo test --workspace"
status=0
cargo test --workspace --locked "$@" || status=$?
$SUDO bash tests/peers/postfix-peer.sh stop >/dev/null || true
exit $status
