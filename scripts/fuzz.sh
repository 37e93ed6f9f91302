#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each).
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain (which ships the sanitizer runtimes) accept them.
#
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]
# A crash leaves its input in fuzz/artifacts/<target>/; turn it into a
# regression test (tests/fuzz_regressions.rs) before fixing the code.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}; shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo fuzz list)
for t in "${targets[@]}"; do
  echo "=== fuzzing $t for ${secs}s"
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"
