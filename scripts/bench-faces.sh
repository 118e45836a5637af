#!/usr/bin/env bash
# The face workload's long run (not CI): face-lfw62 cache candidates trained once on LFW's training
# faces plus every face of the other 5,687 people (distillation, no labels), plans at 0.5/1/2% for
# inline and distributed serving, `gati evaluate` of each, and `gati bench` of each plan on the iid
# and door-camera streams (inline plans: in-process and Thrift inline; distributed plans: Thrift
# distributed), always against the base model alone in the same run; then a 1% plan whose thresholds
# are fitted on camera frames. Results: reports/faces/.
#
#   scripts/bench-faces.sh [REQUESTS] [REPEAT]       (about 90 min here, 40 of them training)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REQUESTS="${1:-300}"
REPEAT="${2:-3}"
OUT=reports/faces
mkdir -p "$OUT"
bash scripts/setup.sh
cargo build --release -p gati-cli
G=target/release/gati
TRAIN=(--model face-lfw62 --train-split train+others --variants conv-pool,gap,pool,conv --epochs 4
  --batch-size 64 --candidates "${CANDIDATES:-$OUT/candidates}" --threads 1)
for mode in inline distributed; do
  for budget in 0.005 0.01 0.02; do
    dir="$OUT/plan-$mode-$budget"
    $G plan "${TRAIN[@]}" --budget "$budget" --mode "$mode" --out "$dir" --json > "$dir.plan.json"
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
    case $mode in
      inline) configs=base-1,gati-in-process,thrift-base,thrift-inline ;;
      distributed) configs=thrift-base,thrift-distributed ;;
    esac
    $G bench --plan "$dir" --streams iid,door-camera --configs "$configs" --requests "$REQUESTS" \
      --repeat "$REPEAT" --out "$OUT/bench-$mode-$budget" --json > "$OUT/bench-$mode-$budget.json"
  done
done
# The same candidates, thresholds fitted on one camera frame of each calibration face: the plan
# for door-camera traffic (outcomes re-recorded, no retraining).
dir="$OUT/plan-camera-0.01"
$G plan "${TRAIN[@]}" --budget 0.01 --mode inline --calibrate-on-camera-frames --out "$dir" --json > "$dir.plan.json"
$G bench --plan "$dir" --streams iid,door-camera --configs base-1,gati-in-process,thrift-base,thrift-inline \
  --requests "$REQUESTS" --repeat "$REPEAT" --out "$OUT/bench-camera-0.01" --json > "$OUT/bench-camera-0.01.json"
python3 scripts/faces_table.py "$OUT"
