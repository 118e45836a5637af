#!/usr/bin/env bash
# Static vs online caches, served (not CI). For each stream: the base model alone, the plan's caches
# frozen, and the same caches with online learning (a trainer process, fresh state), each a local
# inline cluster pinned like the paper (base on CPU 0; trainer at nice 10 on CPU 1), one client in
# closed loop over the same seeded requests; REPEAT rounds of all three, medians reported (this
# VM's latency drifts by tens of percent between runs). Writes reports/bench-online/*.json, a
# table on stdout, and docs/img/online-hit-rate.svg (hit rate over time, first repeat).
#
#   [OUT=DIR] [SVG=FILE] scripts/bench-online.sh [PLAN_DIR] [REQUESTS] [STREAMS] [REPEAT]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PLAN="${1:-reports/resnet56-full/plan-inline-0.01}"
N="${2:-4000}"
STREAMS="${3:-working-set:2:1000 zipf}"
REPEAT="${4:-3}"
G=target/release/gati
OUT="${OUT:-reports/bench-online}"
[ -x "$G" ] || cargo build --release -p gati-cli
rm -rf "$OUT"; mkdir -p "$OUT"
export GATI_QUIET=1
run() { # stream config mode extra-up-args...
  local stream=$1 config=$2 mode=$3; shift 3
  local file="$OUT/$config-${stream%%:*}-r$R.json"
  local work; work=$(mktemp -d)
  $G up --plan "$PLAN" --mode "$mode" --pin --port 0 --metrics --json "$@" > "$work/up.json" &
  local up=$!
  for _ in $(seq 1 600); do [ -s "$work/up.json" ] && break; sleep 0.2; done
  local ep pids cpu0 cpu1
  ep=$(python3 -c "import json; print(json.load(open('$work/up.json'))['endpoint'])")
  pids=$(python3 -c "import json; print(' '.join(map(str, json.load(open('$work/up.json'))['pids'])))")
  cpu() { for p in $pids; do if grep -q trainer /proc/$p/cmdline 2>/dev/null; then awk '{print ($14+$15)/100}' /proc/$p/stat; fi; done; }
  cpu0=$(cpu); cpu0=${cpu0:-0}
  $G loadgen --endpoint "$ep" --plan "$PLAN" --stream "$stream" --stream-length "$N" --requests "$N" \
    --window 200 --json > "$file"
  cpu1=$(cpu); cpu1=${cpu1:-0}
  python3 - "$file" "$cpu0" "$cpu1" <<'PY'
import json, sys
p = sys.argv[1]; d = json.load(open(p)); d["trainer_cpu_s"] = float(sys.argv[3]) - float(sys.argv[2])
json.dump(d, open(p, "w"))
PY
  kill -TERM $up; wait $up 2>/dev/null || true
  rm -rf "$work"
}
for R in $(seq 1 "$REPEAT"); do
  for s in $STREAMS; do
    run "$s" base base-only
    run "$s" static inline
    STATE=$(mktemp -d)
    run "$s" online inline --online --state-dir "$STATE"
    rm -rf "$STATE"
  done
done
python3 scripts/online_report.py "$OUT" "${SVG:-docs/img/online-hit-rate.svg}"
