#!/usr/bin/env bash
# Fine-tunes the four pretrained CIFAR ResNets on the JPEG training split they serve and writes
# models/resnetNN-jpeg/{weights.safetensors,finetune.json} (the committed fine-tuned bases).
# Long (about 10 min an epoch for ResNet-56 on 2 cores); never run in CI.
#   scripts/finetune-bases.sh [MODEL ...]     (default: resnet56 resnet20 resnet32 resnet44)
#   EPOCHS=3 SEED=0 scripts/finetune-bases.sh resnet20
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
mkdir -p "$WORK"
for split in train test; do
  [ -f "$WORK/cifar10-$split.safetensors" ] || "$GATI" export-data --model resnet20 --split "$split" --out "$WORK/cifar10-$split.safetensors"
done
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(resnet56 resnet20 resnet32 resnet44)
for m in "${MODELS[@]}"; do
  ckpt="$(ls "$SHARED"/weights/resnet-cifar10/"$m"-*.th | head -1)"
  out="$ROOT/models/$m-jpeg"
  mkdir -p "$out"
  echo "fine-tuning $m ($EPOCHS epochs, seed $SEED) -> $out" >&2
  (cd scripts/py && "$PY" finetune_base.py --checkpoint "$ckpt" \
     --train "$WORK/cifar10-train.safetensors" --test "$WORK/cifar10-test.safetensors" \
     --out "$out/weights.safetensors" --epochs "$EPOCHS" --seed "$SEED") > "$WORK/$m.json" 2> "$WORK/$m.log"
  "$PY" - "$WORK/$m.json" "$out/finetune.json" "$(git rev-parse HEAD)" "EPOCHS=$EPOCHS SEED=$SEED scripts/finetune-bases.sh $m" <<'PYEOF'
import json, os, sys
r = json.load(open(sys.argv[1]))
r["commit"], r["command"] = sys.argv[3], sys.argv[4]
r["checkpoint"] = os.path.basename(r["checkpoint"])
r["out"] = os.path.basename(r["out"])
json.dump(r, open(sys.argv[2], "w"), indent=1)
PYEOF
  echo "$m: top-1 $(jq -r '"\(.top1_before) -> \(.top1_after)"' "$out/finetune.json")" >&2
done
