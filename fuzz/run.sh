#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30; `bash fuzz/run.sh 600`
# for a longer campaign), after replaying the regression inputs of earlier
# findings. Fails when a target crashes, hangs (-timeout), or grows past the
# memory limit (-rss_limit_mb). Works on the stable toolchain: cargo-fuzz's
# `-s none` needs no sanitizer and so no nightly; installs cargo-fuzz when
# missing. Seeds come from fuzz/seeds/ and fixtures/; what a run discovers
# stays in a temporary corpus, outside the clone.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if [ -d /work ] && [ -w /work ]; then
    export CARGO_TARGET_DIR=/work/.cache/powerdial-fuzz-target
  else
    export CARGO_TARGET_DIR="$PWD/target"
  fi
fi
cargo fuzz build -s none -O

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seeds_for() {
  case "$1" in
    sip_endpoint) echo ../fixtures/torture/rfc4475 ;;
    csv_import) echo seeds/csv_import ../fixtures ;;
    *) echo "seeds/$1" ;;
  esac
}
summary=()
for t in $(cargo fuzz list); do
  corpus="$work/corpus-$t"
  mkdir -p "$corpus" "$work/artifacts-$t"
  for s in $(seeds_for "$t"); do
    find "$s" -maxdepth 1 -type f \( -name '*.csv' -o -name '*.dat' -o ! -name '*.*' \) \
      -exec cp {} "$corpus/" \; 2>/dev/null || true
  done
  if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
    echo "fuzz: $t: replaying regressions/$t"
    cargo fuzz run -s none -O "$t" regressions/"$t"/* -- -rss_limit_mb=1024 -timeout=10
  fi
  echo "fuzz: $t for ${secs}s"
  log="$work/$t.log"
  if ! cargo fuzz run -s none -O "$t" "$corpus" -- \
      -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -max_len=65536 \
      -artifact_prefix="$work/artifacts-$t/" -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz: $t FOUND A PROBLEM; the input is in:" "$work/artifacts-$t/"*
    cp -r "$work/artifacts-$t" "./artifacts-$t-$(date +%s)" 2>/dev/null || true
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  summary+=("$t: $runs executions in ${secs}s, coverage $cov, no finding")
done
printf 'fuzz: %s\n' "${summary[@]}"
