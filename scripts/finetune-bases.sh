#!/usr/bin/env bash
# Fine-tunes the four pretrained CIFAR ResNets on the JPEG training split they serve and writes
# models/resnetNN-jpeg/{weights.safetensors,finetune.json} (the committed fine-tuned bases).
# Long (about 10 min an epoch for ResNet-56 on 2 cores); never run in CI.
#   scripts/finetune-bases.sh [MODEL ...]     (default: resnet56 resnet20 resnet32 resnet44)
#   EPOCHS=3 SEED=0 scripts/finetune-bases.sh resnet20
#   EXIT_WEIGHT=8 scripts/finetune-bases.sh resnet20   (trained with early exits, as committed: models/resnet20-jpeg-exits)
#   EXIT_WEIGHT=8 EXIT_TARGET=final scripts/finetune-bases.sh resnet20   (exits distilled from the final layer: -jpeg-exits-distilled)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cargo build --release -q -p gati-cli
GATI="$ROOT/target/release/gati"
PY="$ROOT/.venv/bin/python"
SHARED="${GATI_SHARED:-$ROOT/../shared}"
WORK="${WORK:-$ROOT/reports/finetune}"
EPOCHS="${EPOCHS:-3}"
SEED="${SEED:-0}"
EXIT_WEIGHT="${EXIT_WEIGHT:-0}"
EXIT_TARGET="${EXIT_TARGET:-labels}"
SUFFIX=""; [ "$EXIT_WEIGHT" = 0 ] || SUFFIX="-exits"
[ "$EXIT_TARGET" = labels ] || SUFFIX="$SUFFIX-distilled"
mkdir -p "$WORK"
for split in train test; do
  [ -f "$WORK/cifar10-$split.safetensors" ] || "$GATI" export-data --model resnet20 --split "$split" --out "$WORK/cifar10-$split.safetensors"
done
# The sample the tests check a committed checkpoint on: the first 2,000 test images (class-balanced).
[ -f "$WORK/cifar10-test-2000.safetensors" ] || "$GATI" export-data --model resnet20 --split test --limit 2000 \
  --out "$WORK/cifar10-test-2000.safetensors"
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(resnet56 resnet20 resnet32 resnet44)
for m in "${MODELS[@]}"; do
  ckpt="$(ls "$SHARED"/weights/resnet-cifar10/"$m"-*.th | head -1)"
  out="$ROOT/models/$m-jpeg$SUFFIX"
  mkdir -p "$out"
  echo "fine-tuning $m ($EPOCHS epochs, seed $SEED) -> $out" >&2
  (cd scripts/py && "$PY" finetune_base.py --checkpoint "$ckpt" \
     --train "$WORK/cifar10-train.safetensors" --test "$WORK/cifar10-test.safetensors" \
     --out "$out/weights.safetensors" --epochs "$EPOCHS" --seed "$SEED" --exit-weight "$EXIT_WEIGHT" --exit-target "$EXIT_TARGET") \
     > "$WORK/$m$SUFFIX.json" 2> "$WORK/$m$SUFFIX.log"
  (cd scripts/py && "$PY" cifar_resnet.py top1 "$out/weights.safetensors" "$WORK/cifar10-test-2000.safetensors") > "$WORK/$m$SUFFIX-2000.json"
  "$PY" - "$WORK/$m$SUFFIX.json" "$out/finetune.json" "$(git rev-parse HEAD)" \
    "EPOCHS=$EPOCHS SEED=$SEED EXIT_WEIGHT=$EXIT_WEIGHT EXIT_TARGET=$EXIT_TARGET scripts/finetune-bases.sh $m" "$WORK/$m$SUFFIX-2000.json" <<'PYEOF'
import json, os, sys
r = json.load(open(sys.argv[1]))
r["commit"], r["command"] = sys.argv[3], sys.argv[4]
r["top1_test_first_2000"] = json.load(open(sys.argv[5]))["top1"]
r["checkpoint"] = os.path.basename(r["checkpoint"])
r["out"] = os.path.basename(r["out"])
json.dump(r, open(sys.argv[2], "w"), indent=1)
PYEOF
  echo "$m: top-1 $(jq -r '"\(.top1_before) -> \(.top1_after)"' "$out/finetune.json")" >&2
done
