#!/usr/bin/env bash
# What the memory cache costs where it cannot hit, and what its gate keeps of it where it can:
# in-process (`gati evaluate`, evaluation half, batch 1, each run against the base model alone
# interleaved), ResNet-56 fit to the data, 1% budget. The learned caches alone, the memory plan
# made before the gate (every request looked up) and the same plan re-made with it
# (`min_hit_rate`), on i.i.d. traffic and on the locality streams. About 12 minutes on 2 cores,
# after scripts/bench-locality.sh has made reports/locality/. docs/results.md quotes the output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
G=target/release/gati
R=${OUT:-reports/locality}
cargo build --release -p gati-cli
$G plan-memory --plan "$R/learned-r56j-1pct" --stream bursty-repeat --requests 3000 --seed 1 \
  --out "$R/mem-bursty-repeat-gate" --json > "$R/plan-memory-bursty-repeat-gate.json"
$G plan-memory --plan "$R/learned-r56j-1pct" --stream frames --requests 3000 --seed 1 --margin-sigmas 2 \
  --out "$R/mem-frames-gate" --json > "$R/plan-memory-frames-gate.json"
run() { # PLAN STREAM
  local extra=() name=iid
  [ "$2" = iid ] || { extra=(--stream "$2" --requests 2000); name=$2; }
  $G evaluate --plan "$R/$1" "${extra[@]}" --json > "$R/evaluate-gate-$name-$1.json"
}
for s in iid bursty-repeat working-set zipf; do
  for p in learned-r56j-1pct mem-bursty-repeat mem-bursty-repeat-gate; do run $p $s; done
done
for p in learned-r56j-1pct mem-frames-z2 mem-frames-gate; do run $p frames; done
.venv/bin/python - "$R" <<'PY'
import json, sys, glob, os
for f in sorted(glob.glob(os.path.join(sys.argv[1], "evaluate-gate-*.json"))):
    d = json.load(open(f)); m = d.get("memory") or {}
    print(os.path.basename(f)[len("evaluate-gate-"):-5],
          f"speed-up {d['speedup']:.3f}x, fidelity loss {100 * d['fidelity_loss']:.2f}%, hits {100 * d['hit_rate']:.1f}%",
          f"memory: {m['lookups']} lookups, {m['skipped']} skipped, {m['hits']} hits, {m['ms_per_request']:.3f} ms/request"
          f" = {100 * m['share_of_base_latency']:.2f}% of base" if m else "")
PY
