#!/usr/bin/env bash
# Memory caches on traffic with locality: ResNet-56 fine-tuned on the JPEG training split, 1%
# fidelity budget. Plans a memory cache beside the learned caches on calibration streams
# (gati plan-memory), measures it in-process (gati evaluate --stream, evaluation half, another
# seed) and through Thrift inline against the base model alone in the same run (gati bench).
# About an hour on 2 cores (plus 8 minutes to train the learned caches once). Results in
# reports/locality/ (override: OUT=...); docs/results.md quotes them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
G=target/release/gati
R=${OUT:-reports/locality}
LEARNED=$R/learned-r56j-1pct
REPEAT=${REPEAT:-9}
# Pinned (base worker on CPU 0), its CPU kept awake in every cluster, base model alone and gati
# alike (docs/results.md, "Keeping the base worker's core awake"); BENCH_FLAGS= for neither.
BENCH_FLAGS=${BENCH_FLAGS---pin --keep-awake}
mkdir -p "$R"
cargo build --release -p gati-cli

# Learned caches (the plan the memory cache joins): 15,000 training images, 3 epochs.
[ -f "$LEARNED/plan.json" ] || $G plan --model resnet56-jpeg --budget 0.01 --mode inline \
  --train-limit 15000 --epochs 3 --variants gap,conv-pool --out "$LEARNED" --threads 1 --json > "$R/learned-plan.json"

for s in bursty-repeat frames; do
  $G plan-memory --plan "$LEARNED" --stream $s --requests 3000 --seed 1 --out "$R/mem-$s" --json > "$R/plan-memory-$s.json"
  for p in "$LEARNED" "$R/mem-$s"; do
    $G evaluate --plan "$p" --stream $s --requests 2000 --seed 2 --json > "$R/evaluate-$(basename "$p")-$s.json"
  done
done
$G evaluate --plan "$R/mem-bursty-repeat" --json > "$R/evaluate-mem-bursty-repeat-iid.json"

# Through Thrift: base-only and inline in one interleaved run per plan.
B="--configs thrift-base,thrift-inline --requests 1000 --repeat $REPEAT $BENCH_FLAGS --json"
$G bench --plan "$R/mem-bursty-repeat" --streams bursty-repeat,working-set,zipf,iid $B --out "$R/bench-mem-bursty-repeat" > "$R/bench-mem-bursty-repeat.json"
$G bench --plan "$R/mem-frames" --streams frames $B --out "$R/bench-mem-frames" > "$R/bench-mem-frames.json"
# The memory at a cache worker (distributed mode), beside the base model alone.
$G bench --plan "$R/mem-bursty-repeat" --streams bursty-repeat --configs thrift-base,thrift-distributed --requests 1000 \
  --repeat "$REPEAT" $BENCH_FLAGS --json --out "$R/bench-mem-distributed" > "$R/bench-mem-distributed.json"
$G bench --plan "$LEARNED" --streams bursty-repeat,frames,working-set,zipf,iid $B --out "$R/bench-learned" > "$R/bench-learned.json"
echo "bench-locality: done; see $R" >&2
