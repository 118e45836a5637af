#!/usr/bin/env bash
# Per-layer fidelity of every cache variant (the paper's table, for CIFAR ResNets): trains all five
# variants at every block and prints a markdown table from the evaluation half. Not CI.
#
#   scripts/paper-table.sh resnet20 [TRAIN_LIMIT] [EPOCHS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL="${1:-resnet20}"
LIMIT="${2:-10000}"
EPOCHS="${3:-2}"
OUT="reports/$MODEL-table"
mkdir -p reports
bash scripts/setup.sh
cargo build --release -p gati-cli
target/release/gati plan --model "$MODEL" --variants all --train-limit "$LIMIT" --epochs "$EPOCHS" \
  --out "$OUT" --threads 1 --json > "$OUT.json"
python3 scripts/fidelity_table.py "$OUT.json"
