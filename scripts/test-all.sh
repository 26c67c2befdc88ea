#!/usr/bin/env bash
# The whole test suite, with its real peers: installs and starts Postfix on loopback
# (STARTTLS 127.0.0.1:2525, implicit TLS 127.0.0.1:2526, a generated CA; a relay port
# 127.0.0.1:2527 whose mail for relay.mxpipe.test goes to an `mxpipe serve` under test on
# $MXPIPE_POSTFIX_RELAY_TO, default 127.0.0.1:2590), then runs every test of the workspace, the
# Postfix interop tests included. `.ci/run` calls this script.
# Needs root (or sudo) for apt-get and Postfix; plain `cargo test` runs without them and
# says loudly which interop tests it skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v postfix >/dev/null || need+=(postfix)
command -v openssl >/dev/null || need+=(openssl)
command -v ss >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  echo "== installing ${need[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
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
