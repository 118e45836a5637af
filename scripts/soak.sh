#!/usr/bin/env bash
# Soak (not CI): a distributed cluster under steady open-loop load for DURATION seconds, sampling
# every process's resident memory and open file descriptors. Passes when neither grows over the
# second half of the run (memory within 10% and 20 MB, descriptors within 8) and no request failed.
#
#   scripts/soak.sh [PLAN_DIR] [DURATION_S] [RATE]      writes reports/soak.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PLAN="${1:-reports/demo-plan}"
DURATION="${2:-600}"
RATE="${3:-60}"
G=target/release/gati
OUT=reports/soak.json
[ -x "$G" ] || cargo build --release -p gati-cli
WORK=$(mktemp -d)
export GATI_QUIET=1
$G up --plan "$PLAN" --mode distributed --cache-workers 2 --port 0 --metrics --json > "$WORK/up.json" &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 600); do [ -s "$WORK/up.json" ] && break; sleep 0.2; done
EP=$(python3 -c "import json; print(json.load(open('$WORK/up.json'))['endpoint'])")
PIDS=$(python3 -c "import json; print(' '.join(map(str, json.load(open('$WORK/up.json'))['pids'])))")
$G loadgen --endpoint "$EP" --duration "$DURATION" --rate "$RATE" --concurrency 8 --limit 2000 --json > "$WORK/load.json" &
LOAD=$!
: > "$WORK/samples"
START=$(date +%s)
while kill -0 $LOAD 2>/dev/null; do
  T=$(( $(date +%s) - START ))
  for p in $PIDS; do
    RSS=$(awk '/VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || echo 0)
    FDS=$(ls /proc/$p/fd 2>/dev/null | wc -l)
    echo "$T $p $RSS $FDS" >> "$WORK/samples"
  done
  sleep 15
done
wait $LOAD
python3 - "$WORK" "$OUT" "$DURATION" "$RATE" <<'PY'
import json, sys, collections
work, out, duration, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
load = json.load(open(work + "/load.json"))
series = collections.defaultdict(list)
for line in open(work + "/samples"):
    t, pid, rss, fds = line.split()
    series[pid].append((int(t), int(rss) / 1024, int(fds)))
procs = {}
ok = sum(load["errors"].values()) == 0
for pid, s in series.items():
    half = [x for x in s if x[0] >= duration / 2] or s
    rss0, rss1 = half[0][1], half[-1][1]
    fd0, fd1 = half[0][2], half[-1][2]
    grew = rss1 - rss0 > max(20, 0.1 * rss0) or fd1 - fd0 > 8
    ok &= not grew
    procs[pid] = {"rss_mb_start": s[0][1], "rss_mb_mid": rss0, "rss_mb_end": rss1, "fds_start": s[0][2],
                  "fds_mid": fd0, "fds_end": fd1, "max_rss_mb": max(x[1] for x in s)}
summary = {"duration_s": duration, "rate": rate, "requests": load["requests"], "errors": load["errors"],
           "latency_ms": load["latency_ms"], "hit_rate": load["hit_rate"], "processes": procs, "pass": ok}
json.dump(summary, open(out, "w"), indent=1)
print(json.dumps(summary, indent=1))
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
