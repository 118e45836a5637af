#!/usr/bin/env bash
# The full offline run for one model (not CI): train candidate caches on all 50,000 CIFAR-10
# training images, plan at several budgets (one training, many plans), and measure every plan with
# `gati evaluate` on the evaluation half. Results (JSON) land in reports/<model>-full/.
#
#   scripts/plan-full.sh resnet56 [EPOCHS] [VARIANTS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL="${1:-resnet56}"
EPOCHS="${2:-3}"
VARIANTS="${3:-gap,conv-pool,conv}"
OUT="reports/$MODEL-full"
mkdir -p "$OUT"
bash scripts/setup.sh
cargo build --release -p gati-cli
G=target/release/gati
for budget in 0.01 0.005 0.02; do
  for mode in inline distributed; do
    dir="$OUT/plan-$mode-$budget"
    $G plan --model "$MODEL" --budget "$budget" --mode "$mode" --epochs "$EPOCHS" --variants "$VARIANTS" \
      --candidates "$OUT/candidates" --out "$dir" --threads 1 --json > "$dir.plan.json"
    $G evaluate --plan "$dir" --threads 1 --json > "$dir.evaluate.json"
    python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
p = json.load(open(d + ".plan.json"))["plan"]
e = json.load(open(d + ".evaluate.json"))
print(f"{d}: caches {[c['layer'] + ':' + c['variant'] for c in p['caches']]}; expected {p['expected']['speedup']:.2f}x "
      f"loss {100*p['expected']['fidelity_loss']:.2f}%; measured {e['speedup']:.2f}x loss {100*e['fidelity_loss']:.2f}% "
      f"top1 base {e['base_top1']:.2f} gati {e['gati_top1']:.2f}; oracle {e['oracle_speedup']}", flush=True)
PY
  done
done
