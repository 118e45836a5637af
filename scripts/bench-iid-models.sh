#!/usr/bin/env bash
# Issue 14's per-model table (not CI): for each MODEL, candidate caches (gap and conv-pool at every
# block, trained on 10,000 images with random crops and flips for 3 epochs: --train-limit 15000
# less the last 5,000, held out of training for calibration), a 1% fidelity plan inline, and `gati evaluate` of it on the
# evaluation half. Extra `gati plan` flags go in PLAN_FLAGS (e.g. "--augment false" for the
# augmentation ablation) and results in reports/iid-models/MODEL$TAG/; CANDIDATES_TAG=T plans with
# the candidates trained under TAG=T instead of training again (e.g. CANDIDATES_TAG= for a margin).
#
#   scripts/bench-iid-models.sh resnet20 resnet20-jpeg resnet32 resnet32-jpeg resnet44 resnet44-jpeg
#   scripts/bench-iid-models.sh resnet20-jpeg-exits resnet56-jpeg-exits   (bases trained with early exits)
#   PLAN_FLAGS="--augment false" TAG=-no-augment scripts/bench-iid-models.sh resnet56-jpeg
#   PLAN_FLAGS="--margin-sigmas 1" TAG=-z1 CANDIDATES_TAG= scripts/bench-iid-models.sh resnet56-jpeg
#   STUDENT=resnet20-jpeg TAG=-student scripts/bench-iid-models.sh resnet56-jpeg   (a student cache:
#     a ResNet-20 started from STUDENT, offered inline and beside the base model; not for ResNet-20s)
#   STUDENT=resnet20-jpeg-kd56 TAG=-kd56 scripts/bench-iid-models.sh resnet56-jpeg   (the student
#     distilled from resnet56-jpeg offline, with its committed adapter: models/resnet20-jpeg-kd56)
#   python3 scripts/iid_table.py --models reports/iid-models   # one line per model
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ $# -gt 0 ] || { echo "usage: $0 MODEL..." >&2; exit 2; }
bash scripts/setup.sh
cargo build --release -q -p gati-cli
G=target/release/gati
for model in "$@"; do
  variants=(--variants gap,conv-pool)
  # A student is a ResNet-20: beside a ResNet-20 it would save nothing.
  [ -n "${STUDENT:-}" ] && [[ $model != resnet20* ]] &&
    variants=(--variants gap,conv-pool,student --student-init "$STUDENT" --students-beside)
  out="reports/iid-models/$model${TAG:-}"
  candidates="reports/iid-models/$model${CANDIDATES_TAG-${TAG:-}}/plan-inline-0.01/candidates"
  mkdir -p "$out"
  weights=()
  [ -f "models/$model/weights.safetensors" ] && weights=(--weights "models/$model/weights.safetensors")
  # shellcheck disable=SC2086
  $G plan --model "$model" "${weights[@]}" --budget 0.01 --mode inline --train-limit 15000 --epochs 3 \
    "${variants[@]}" --holdout 5000 --threads 1 ${PLAN_FLAGS:-} --candidates "$candidates" --out "$out/plan-inline-0.01" --json \
    > "$out/plan-inline-0.01.plan.json" 2> "$out/plan.log"
  $G evaluate --plan "$out/plan-inline-0.01" --threads 1 --json > "$out/plan-inline-0.01.evaluate.json" 2> "$out/evaluate.log"
  echo "$model${TAG:-}: $(python3 scripts/iid_table.py --line "$out/plan-inline-0.01")" >&2
done
