#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a while (FUZZ_SECONDS each, default 20) from its
# committed seed corpus. Uses cargo fuzz without a sanitizer, so a stable toolchain
# works, and with debug assertions, so integer overflow panics; a crash, a panic or more
# than 512 MB of memory (libFuzzer's RSS limit; its malloc limit needs a sanitizer) fails
# the run, and libFuzzer leaves the input under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version '^0.13' --locked
# Instrumented builds are kept apart from the workspace's.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/fuzz}"
targets=$(cd fuzz && cargo fuzz list)
cd fuzz
cargo fuzz build --sanitizer none --release --debug-assertions
for t in $targets; do
  # Work on a copy so the run does not add its findings to the committed seeds.
  work=$(mktemp -d)
  cp corpus/"$t"/* "$work"/
  echo "fuzz: $t for ${seconds}s"
  log="$work.log"
  status=0
  cargo fuzz run --sanitizer none --release --debug-assertions "$t" "$work" -- \
    -max_total_time="$seconds" -rss_limit_mb=512 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -aE '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$log" || true
  [ "$status" -eq 0 ] || tail -40 "$log"
  rm -f "$log"
  rm -rf "$work"
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $t FAILED (exit $status); the input is under fuzz/artifacts/$t/"
    exit 1
  fi
done
echo "fuzz: every target ran ${seconds}s without a crash"
