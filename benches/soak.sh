#!/usr/bin/env bash
# Soak (SPEC §6 "nothing held per finished call"; not run in CI): the whole
# dialer path of a real `powerdial serve` (release build) driven by
# powerdial-load at a fixed trunk pace for a long trial, with the server's
# RSS and open file descriptors sampled every 10 s, then once more after
# every call's last transaction timed out. Flat means the RSS stops growing
# once warm (its caches and pools filled) and the fds stay put.
#
#   benches/soak.sh                       # 10 minutes at 100 calls/s
#   RATE=50 MINUTES=2 benches/soak.sh     # shorter
#   benches/soak.sh --keep                # extra powerdial-load flags
#
# It uses both cores for the whole run: do not run it beside builds.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-100}
MINUTES=${MINUTES:-10}
EVERY=${EVERY:-10}
SECS=$((MINUTES * 60))
# Every call takes a fresh lead (R4 blocks a lead called within `block`):
# enough leads for the whole trial and then some.
LEADS=${LEADS:-$((RATE * SECS * 11 / 10 + 10000))}
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --bin powerdial --bin powerdial-load
fi
exec "$TARGET/release/powerdial-load" --only calls --rates "$RATE" --trial "$SECS" \
    --leads "$LEADS" --memory-hold 0 --sample-every "$EVERY" "$@"
