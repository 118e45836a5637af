#!/usr/bin/env bash
# Set up, build, and run the main job on the bundled data (../shared/ or datasets/):
#   1. ResNet-56's accuracy and per-stage latency profile on the CIFAR-10 test split (gati eval), as
#      fine-tuned on the JPEG training split it serves (resnet56-jpeg, committed in models/);
#   2. train cache models on 5,000 training images (small heads, and a student: a ResNet-20 distilled
#      from ResNet-56, run on a second thread beside it), calibrate them on 5,000 training images the
#      base model never saw and 2,000 test images, and plan for a 1% fidelity budget (gati plan);
#   3. measure the plan in-process against the base model (gati evaluate);
#   4. serve it as Thrift microservices (gati up, the base worker inside the frontend's process),
#      classify a few images and run 10 s of load.
# About 5 minutes on 2 cores. Extra arguments go to `gati eval`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --release -p gati-cli
G=target/release/gati
PLAN=reports/demo-plan-resnet56-jpeg

echo "== 1. gati eval (ResNet-56 fine-tuned on the JPEG training split, CIFAR-10 test split)"
$G eval --model resnet56-jpeg --split test --threads 1 "$@"

echo "== 2. gati plan (ResNet-56, 1% budget, quick training)"
$G plan --model resnet56-jpeg --budget 0.01 --mode inline --train-split 'train[:5000]+train[45000:]' \
  --holdout 5000 --epochs 2 --test-limit 4000 --variants gap,conv-pool,student --student-init resnet20-jpeg-kd56 \
  --students-beside --out "$PLAN" --threads 1

echo "== 3. gati evaluate"
$G evaluate --plan "$PLAN"

echo "== 4. gati up + client + loadgen"
$G up --plan "$PLAN" --base-in-frontend --port 0 --json > reports/demo-up.json &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do [ -s reports/demo-up.json ] && break; sleep 0.2; done
EP=$(python3 -c 'import json; print(json.load(open("reports/demo-up.json"))["endpoint"])')
DATA="${GATI_DATA:-../shared/datasets/cifar10-jpeg}"
$G client infer --endpoint "$EP" "$DATA"/test/{cat,ship,frog}/0000.jpg
$G loadgen --endpoint "$EP" --duration 10 --concurrency 1 --limit 4000 --plan "$PLAN"
