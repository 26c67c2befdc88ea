#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for SECONDS (default 30); exits non-zero if
# any target crashed (its input is kept under fuzz/artifacts/TARGET/). Usage:
#   scripts/fuzz.sh [SECONDS]                              (CI: an unoptimised build, short runs)
#   MXPIPE_FUZZ_RELEASE=1 scripts/fuzz.sh 600 [TARGET...]  (long runs of an optimised build)
# Each target's corpus grows in fuzz/corpus/TARGET/ (not committed) from the small seeds
# committed in fuzz/seeds/TARGET/.
#
# The tools: cargo-fuzz (installed here if missing, at a pinned version, --locked) drives
# libFuzzer with the instrumentation it needs (sanitizer coverage, AddressSanitizer). Those
# are unstable rustc flags; RUSTC_BOOTSTRAP=1 lets the machine's stable toolchain take them,
# so no nightly toolchain is needed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-30}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac

CARGO_FUZZ_VERSION=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
export RUSTC_BOOTSTRAP=1
# The build: CI's short runs use an unoptimised (--dev) build, which compiles in a third of
# the time of an optimised one (measured on two cores: 2.6 min cold vs 8-13 min) and has the
# coverage instrumentation, AddressSanitizer and debug assertions; a short run does not feel
# its slower executions. Long runs (MXPIPE_FUZZ_RELEASE=1) build optimised, with 16 codegen
# units (cargo-fuzz's default is 1: several times slower to build on two cores).
if [ "${MXPIPE_FUZZ_RELEASE:-0}" = 1 ]; then
  build=(--codegen-units 16)
else
  build=(--dev)
fi

echo "== cargo fuzz build (all targets)"
cargo fuzz build "${build[@]}"

targets=("${@:2}")
((${#targets[@]})) || mapfile -t targets < <(cargo fuzz list)
failed=()
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p "corpus/$t"
  seeds=(); [ -d "seeds/$t" ] && seeds=("seeds/$t")
  # New inputs go to the first directory (the corpus); the seeds are only read.
  if ! cargo fuzz run "${build[@]}" "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" -timeout=10; then
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "!! fuzz targets failed: ${failed[*]} (crashing inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "== fuzz: every target ran ${secs}s without a crash"
