#!/usr/bin/env bash
# The frontend memory's guard (docs/architecture.md, "The guard"): the memory plans of
# scripts/bench-locality.sh served through Thrift inline on the frames stream, without audits and
# with a share of memory hits audited by the whole base model (gati bench --complete-fraction).
# The bursty-repeat plan on frames is traffic its thresholds were not calibrated for. Needs
# reports/locality/{mem-bursty-repeat,mem-frames} (scripts/bench-locality.sh). About 15 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
G=target/release/gati
R=${OUT:-reports/locality}
REPEAT=${REPEAT:-3}
FRACTIONS=${FRACTIONS:-0 0.2}
cargo build --release -p gati-cli
for plan in mem-bursty-repeat mem-frames; do
  for f in $FRACTIONS; do
    $G bench --plan "$R/$plan" --streams frames --configs thrift-base,thrift-inline --requests 1000 \
      --repeat "$REPEAT" --complete-fraction "$f" --json --out "$R/bench-guard-$plan-$f" > "$R/bench-guard-$plan-$f.json"
  done
done
echo "bench-guard: done; see $R/bench-guard-*" >&2
