#!/usr/bin/env bash
# Ordinary (i.i.d.) traffic, issue 14's long run (not CI): candidate caches trained once for MODEL
# (the last 5,000 training images held out of training and used for calibration, random crops and
# flips), plans at 0.5/1/2% inline and 1% distributed, `gati evaluate` of each on the evaluation
# half, ablations of the 1% inline plan from the same candidates, and `gati bench` of the 1% plans
# through Thrift against the base model alone in the same run. Results: reports/iid/MODEL/ and a
# table on stdout (scripts/iid_table.py).
#
#   scripts/bench-iid.sh [MODEL] [EPOCHS] [VARIANTS] [LAYERS]
#   e.g. scripts/bench-iid.sh resnet56-jpeg 3 gap,conv-pool,conv3-pool \
#          layer1.1,layer1.3,layer1.5,layer1.7,layer2.0,layer2.2,layer2.4,layer2.6,layer2.8,layer3.0,...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL="${1:-resnet56-jpeg}"
EPOCHS="${2:-3}"
VARIANTS="${3:-gap,conv-pool,conv3-pool,conv3-mix}"
LAYERS="${4:-all}"
REQUESTS="${REQUESTS:-1000}"
REPEAT="${REPEAT:-3}"
OUT="reports/iid/$MODEL"
mkdir -p "$OUT"
bash scripts/setup.sh
cargo build --release -q -p gati-cli
G=target/release/gati
TRAIN=(--model "$MODEL" --holdout 5000 --variants "$VARIANTS" --layers "$LAYERS" --epochs "$EPOCHS"
  --candidates "$OUT/candidates" --threads 1)
plan() { # NAME, then extra plan flags
  local name="$1"; shift
  $G plan "${TRAIN[@]}" "$@" --out "$OUT/$name" --json > "$OUT/$name.plan.json"
  $G evaluate --plan "$OUT/$name" --threads 1 --json > "$OUT/$name.evaluate.json"
  echo "$name: $(python3 scripts/iid_table.py --line "$OUT/$name")" >&2
}
plan plan-inline-0.01 --budget 0.01 --mode inline
plan plan-distributed-0.01 --budget 0.01 --mode distributed
plan plan-inline-0.005 --budget 0.005 --mode inline
plan plan-inline-0.02 --budget 0.02 --mode inline
plan plan-inline-0.01-accuracy --budget 0.01 --mode inline --budget-kind accuracy
# Ablations of the 1% inline plan: one element off each (same trained candidates).
plan ablate-no-survivor --budget 0.01 --mode inline --survivor-rounds 0
plan ablate-test-calibration-only --budget 0.01 --mode inline --calibration-limit 5000
plan ablate-old-variants --budget 0.01 --mode inline --plan-variants gap,conv-pool
$G bench --plan "$OUT/plan-inline-0.01" --streams iid --configs base-1,gati-in-process,thrift-base,thrift-inline \
  --requests "$REQUESTS" --repeat "$REPEAT" --pin --out "$OUT/bench-inline-0.01" --json > "$OUT/bench-inline-0.01.json"
$G bench --plan "$OUT/plan-distributed-0.01" --streams iid --configs thrift-base,thrift-distributed \
  --requests "$REQUESTS" --repeat "$REPEAT" --pin --out "$OUT/bench-distributed-0.01" --json > "$OUT/bench-distributed-0.01.json"
python3 scripts/iid_table.py "$OUT"
