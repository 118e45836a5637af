#!/usr/bin/env bash
# Memory cache soak (not CI): an inline cluster serving a plan with a memory cache under closed-loop
# load on a stream for DURATION seconds, sampling the store's bytes, entries and the base worker's
# processes' resident memory every 15 s. Passes when the store never holds more than its limit, the store filled
# (evictions happened) and no request failed.
#
#   scripts/soak-memory.sh PLAN_DIR [DURATION_S] [STREAM] [MEMORY_MB]   writes reports/soak-memory.json
# MEMORY_MB (default: the plan's) re-plans nothing: it only lowers the store's limit, so that a
# short run fills it and evicts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PLAN="$1"
DURATION="${2:-600}"
STREAM="${3:-bursty-repeat}"
MB="${4:-}"
G=target/release/gati
OUT=reports/soak-memory.json
[ -x "$G" ] || cargo build --release -p gati-cli
WORK=$(mktemp -d)
export GATI_QUIET=1
cp -r "$PLAN" "$WORK/plan"
if [ -n "$MB" ]; then
  python3 - "$WORK/plan/plan.json" "$MB" <<'PY'
import json, sys
p = json.load(open(sys.argv[1])); p["memory"]["max_bytes"] = int(float(sys.argv[2]) * 1048576)
json.dump(p, open(sys.argv[1], "w"))
PY
fi
$G up --plan "$WORK/plan" --mode inline --port 0 --metrics --json > "$WORK/up.json" &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 600); do [ -s "$WORK/up.json" ] && break; sleep 0.2; done
EP=$(python3 -c "import json; print(json.load(open('$WORK/up.json'))['endpoint'])")
BM=$(python3 -c "import json; print(json.load(open('$WORK/up.json'))['metrics']['base'])")
PIDS=$(python3 -c "import json; print(' '.join(map(str, json.load(open('$WORK/up.json'))['pids'])))")
$G loadgen --endpoint "$EP" --duration "$DURATION" --concurrency 2 --stream "$STREAM" --stream-length 100000 \
  --plan "$WORK/plan" --json > "$WORK/load.json" &
LOAD=$!
: > "$WORK/samples"
START=$(date +%s)
while kill -0 $LOAD 2>/dev/null; do
  T=$(( $(date +%s) - START ))
  M=$(python3 - "$BM" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics").read().decode()
v = {}
for l in body.splitlines():
    if l.startswith("gati_memory"):
        name, val = l.rsplit(" ", 1)
        v[name] = float(val)
fig = lambda k: next((x for n, x in v.items() if k in n), 0)
print(int(fig('figure="bytes"')), int(fig('figure="entries"')), int(fig('figure="limit_bytes"')),
      int(fig('event="eviction"')), int(fig('event="hit"')), int(fig('event="lookup"')))
PY
)
  RSS=$(for p in $PIDS; do awk '/VmRSS/ {print $2}' /proc/$p/status 2>/dev/null; done | awk '{s += $1} END {print s + 0}')
  echo "$T $M $RSS" >> "$WORK/samples"
  sleep 15
done
wait $LOAD
python3 - "$WORK" "$OUT" "$DURATION" "$STREAM" <<'PY'
import json, sys
work, out, duration, stream = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
load = json.load(open(work + "/load.json"))
rows = [list(map(float, l.split())) for l in open(work + "/samples") if l.strip()]
samples = [dict(zip(["t", "bytes", "entries", "limit_bytes", "evictions", "hits", "lookups", "rss_kb"], r)) for r in rows]
limit = max(s["limit_bytes"] for s in samples)
report = {
    "duration_s": duration, "stream": stream, "requests": load.get("requests"), "errors": sum(load.get("errors", {}).values()),
    "max_bytes": max(s["bytes"] for s in samples), "limit_bytes": limit,
    "max_entries": max(s["entries"] for s in samples), "evictions": samples[-1]["evictions"],
    "memory_hit_rate": samples[-1]["hits"] / max(samples[-1]["lookups"], 1),
    "cluster_rss_mb_first_last": [samples[0]["rss_kb"] / 1024, samples[-1]["rss_kb"] / 1024],
    "samples": samples,
}
report["pass"] = report["max_bytes"] <= limit and report["evictions"] > 0 and not report["errors"]
json.dump(report, open(out, "w"), indent=1)
print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
sys.exit(0 if report["pass"] else 1)
PY
