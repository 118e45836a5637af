#!/usr/bin/env bash
# Fine-tunes the four pretrained CIFAR ResNets on the JPEG training split they serve and writes
# models/resnetNN-jpeg/{weights.safetensors,finetune.json} (the committed fine-tuned bases).
# Long (about 10 min an epoch for ResNet-56 on 2 cores); never run in CI.
#   scripts/finetune-bases.sh [MODEL ...]     (default: resnet56 resnet20 resnet32 resnet44)
#   EPOCHS=3 SEED=0 scripts/finetune-bases.sh resnet20
#   EXIT_WEIGHT=8 scripts/finetune-bases.sh resnet20   (trained with early exits, as committed: models/resnet20-jpeg-exits)
#   EXIT_WEIGHT=8 EXIT_TARGET=final scripts/finetune-bases.sh resnet20   (exits distilled from the final layer: -jpeg-exits-distilled)
#   FRAME_SHARE=0.5 EPOCHS=1 LR=0.01 scripts/finetune-bases.sh resnet56   (fit to camera traffic, from
#     models/resnet56-jpeg: half of the samples are one video frame of the image, as the `frames` stream
#     makes them; as committed: models/resnet56-jpeg-frames)
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
FRAME_SHARE="${FRAME_SHARE:-0}"
LR="${LR:-0.02}"
SUFFIX=""; [ "$EXIT_WEIGHT" = 0 ] || SUFFIX="-exits"
[ "$EXIT_TARGET" = labels ] || SUFFIX="$SUFFIX-distilled"
FRAME_ARGS=()
if [ "$FRAME_SHARE" != 0 ]; then
  SUFFIX="$SUFFIX-frames"
  # One video frame of every training image (seed 1) to train on, and of every test image (seed 2)
  # to measure how often a frame changes the model's answer.
  for split in train:1 test:2; do
    f="$WORK/cifar10-${split%%:*}-frames-${split##*:}.safetensors"
    [ -f "$f" ] || "$GATI" export-data --model resnet20 --split "${split%%:*}" --video-frames "${split##*:}" --out "$f"
  done
  FRAME_ARGS=(--train-frames "$WORK/cifar10-train-frames-1.safetensors" --frame-share "$FRAME_SHARE"
              --test-frames "$WORK/cifar10-test-frames-2.safetensors")
fi
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
  # Fit to frames: start from the committed fine-tuned base.
  [ "$FRAME_SHARE" = 0 ] || ckpt="$ROOT/models/$m-jpeg/weights.safetensors"
  out="$ROOT/models/$m-jpeg$SUFFIX"
  mkdir -p "$out"
  echo "fine-tuning $m ($EPOCHS epochs, seed $SEED) -> $out" >&2
  (cd scripts/py && "$PY" finetune_base.py --checkpoint "$ckpt" \
     --train "$WORK/cifar10-train.safetensors" --test "$WORK/cifar10-test.safetensors" \
     --out "$out/weights.safetensors" --epochs "$EPOCHS" --lr "$LR" --seed "$SEED" --exit-weight "$EXIT_WEIGHT" --exit-target "$EXIT_TARGET" "${FRAME_ARGS[@]}") \
     > "$WORK/$m$SUFFIX.json" 2> "$WORK/$m$SUFFIX.log"
  (cd scripts/py && "$PY" cifar_resnet.py top1 "$out/weights.safetensors" "$WORK/cifar10-test-2000.safetensors") > "$WORK/$m$SUFFIX-2000.json"
  "$PY" - "$WORK/$m$SUFFIX.json" "$out/finetune.json" "$(git rev-parse HEAD)" \
    "EPOCHS=$EPOCHS SEED=$SEED LR=$LR EXIT_WEIGHT=$EXIT_WEIGHT EXIT_TARGET=$EXIT_TARGET FRAME_SHARE=$FRAME_SHARE scripts/finetune-bases.sh $m" "$WORK/$m$SUFFIX-2000.json" <<'PYEOF'
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
