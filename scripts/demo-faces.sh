#!/usr/bin/env bash
# The face workload on the bundled LFW and face ResNet (../shared/):
#   1. LFW verification with the face ResNet's embeddings (10 folds of pairs.txt; a subset of pairs);
#   2. a face-lfw62 plan (identification of 62 people): cache heads distilled on training faces and
#      faces of other people, a 1% fidelity budget (gati plan);
#   3. the plan in-process against the base model (gati evaluate);
#   4. served (gati up) under door-camera traffic: a few people at a time, bursts of perturbed frames.
# About 6 minutes on 2 cores. Full-size runs and their numbers: docs/results.md, "Faces".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --release -p gati-cli
G=target/release/gati
PLAN=reports/demo-faces-plan

echo "== 1. gati eval (face ResNet, LFW verification, 60 pairs per fold)"
$G eval --model face-resnet --limit 30 --latency-samples 100 --threads 1

echo "== 2. gati plan (face-lfw62, 1% budget, quick training)"
$G plan --model face-lfw62 --budget 0.01 --mode inline --train-split train+others --train-limit 1500 \
  --epochs 3 --batch-size 32 --variants conv-pool --layers conv64_3,conv128_1,conv128_2,conv256_1,conv256_2 \
  --out "$PLAN" --threads 1

echo "== 3. gati evaluate"
$G evaluate --plan "$PLAN"

echo "== 4. gati up + loadgen (door-camera stream)"
$G up --plan "$PLAN" --port 0 --json > reports/demo-faces-up.json &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do [ -s reports/demo-faces-up.json ] && break; sleep 0.2; done
EP=$(python3 -c 'import json; print(json.load(open("reports/demo-faces-up.json"))["endpoint"])')
$G client info --endpoint "$EP"
$G loadgen --endpoint "$EP" --duration 10 --concurrency 1 --stream door-camera --plan "$PLAN"
