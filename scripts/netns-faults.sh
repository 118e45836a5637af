#!/usr/bin/env bash
# Network faults across hosts (root; not CI). The frontend, the base worker and the cache worker
# each run in their own network namespace, joined to a bridge by veth links, as on three hosts,
# with a shared token on the internal services. Optional latency and loss with `tc netem` on
# every link (skipped, and said so, where the kernel lacks netem). Under load, the cache worker's
# link is cut and restored: service must continue from the base path with no failed request, and
# cache hits must come back once the link returns.
#
#   sudo scripts/netns-faults.sh [PLAN_DIR] [NETEM_ARGS]     e.g. reports/demo-plan "delay 1ms 0.2ms loss 0.1%"
# Writes reports/netns-faults.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PLAN="$(realpath "${1:-reports/demo-plan}")"
NETEM="${2:-delay 1ms 0.2ms loss 0.1%}"
G="$(realpath target/release/gati)"
OUT=reports/netns-faults.json
[ "$(id -u)" = 0 ] || { echo "netns-faults: needs root (ip netns, ip link)"; exit 1; }
[ -x "$G" ] || cargo build --release -p gati-cli
[ -f "$PLAN/plan.json" ] || { echo "netns-faults: no plan in $PLAN (run scripts/demo.sh first)"; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for n in fe base cache; do ip netns del "gati-$n" 2>/dev/null || true; done
  ip link del gati-br0 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip link add gati-br0 type bridge
ip addr add 10.77.0.1/24 dev gati-br0
ip link set gati-br0 up
i=2
for n in fe base cache; do
  ip netns add "gati-$n"
  ip link add "v-$n" type veth peer name eth0 netns "gati-$n"
  ip link set "v-$n" master gati-br0 up
  ip netns exec "gati-$n" ip addr add "10.77.0.$i/24" dev eth0
  ip netns exec "gati-$n" ip link set eth0 up
  ip netns exec "gati-$n" ip link set lo up
  i=$((i + 1))
done
NETEM_STATUS="applied: $NETEM"
for n in fe base cache; do
  if ! ip netns exec "gati-$n" tc qdisc add dev eth0 root netem $NETEM 2>/dev/null; then
    NETEM_STATUS="not applied: this kernel has no netem qdisc"
  fi
done
echo "netem: $NETEM_STATUS"

head -c 32 /dev/urandom | base64 > "$WORK/token"
python3 - "$PLAN" "$WORK" <<'PY'
import json, sys
plan, work = sys.argv[1], sys.argv[2]
layers = [c["layer"] for c in json.load(open(plan + "/plan.json"))["caches"]]
json.dump({
    "plan": plan, "mode": "distributed",
    "frontend": {"listen": "10.77.0.2:7000", "metrics": "10.77.0.2:9100"},
    "selector": "10.77.0.2:7001",
    "base": {"listen": "10.77.0.3:7002", "metrics": "10.77.0.3:9100"},
    "caches": [{"listen": "10.77.0.4:7003", "metrics": "10.77.0.4:9100", "layers": layers}],
    "complete_on_hit_fraction": 0.0,
    "auth_token_file": work + "/token",
}, open(work + "/cluster.json", "w"), indent=1)
PY
export GATI_QUIET=1
ip netns exec gati-base "$G" serve base --config "$WORK/cluster.json" 2> "$WORK/base.log" & PIDS+=($!)
ip netns exec gati-cache "$G" serve cache --index 0 --config "$WORK/cluster.json" 2> "$WORK/cache.log" & PIDS+=($!)
ip netns exec gati-fe "$G" serve frontend --config "$WORK/cluster.json" 2> "$WORK/fe.log" & PIDS+=($!)
for _ in $(seq 1 300); do
  ip netns exec gati-fe "$G" client info --endpoint 10.77.0.2:7000 > /dev/null 2>&1 && break
  sleep 0.2
done

# Without the token, an internal service closes the connection.
TOKEN_CHECK=$(python3 - <<'PY'
import socket, struct
s = socket.create_connection(("10.77.0.3", 7002), timeout=5)
s.sendall(struct.pack(">i", 8) + b"\x80\x01\x00\x01" + b"\x00" * 4)
try:
    print("refused" if s.recv(16) == b"" else "answered")
except OSError:
    print("refused")
PY
)
echo "internal service without the token: $TOKEN_CHECK"

phase() {  # NAME SECONDS
  "$G" loadgen --endpoint 10.77.0.2:7000 --duration "$2" --concurrency 2 --limit 2000 --json > "$WORK/$1.json"
  python3 -c "import json; r = json.load(open('$WORK/$1.json')); print(f\"$1: {r['requests']} requests, {sum(r['errors'].values())} failed, hit rate {100 * r['hit_rate']:.1f}%, p99 {r['latency_ms']['p99']:.2f} ms\")"
}
worker_up() { curl -s 10.77.0.2:9100/metrics | awk '/^gati_worker_up\{worker="10.77.0.4/ {print $2}'; }
phase before 8
ip netns exec gati-cache ip link set eth0 down
echo "cache worker's link cut"
phase cut 8
UP_DURING=$(worker_up)
ip netns exec gati-cache ip link set eth0 up
echo "cache worker's link restored"
sleep 3
phase restored 8
UP_AFTER=$(worker_up)
python3 - "$WORK" "$OUT" "$NETEM_STATUS" "$TOKEN_CHECK" "$UP_DURING" "$UP_AFTER" <<'PY'
import json, sys
work, out, netem, token, up_during, up_after = sys.argv[1:7]
phases = {p: json.load(open(f"{work}/{p}.json")) for p in ("before", "cut", "restored")}
summary = {
    "netem": netem,
    "internal_service_without_token": token,
    "gati_worker_up_cache_during_cut": up_during,
    "gati_worker_up_cache_after": up_after,
    "phases": {p: {"requests": r["requests"], "failed": sum(r["errors"].values()), "errors": r["errors"],
                   "hit_rate": r["hit_rate"], "latency_ms": r["latency_ms"]} for p, r in phases.items()},
}
json.dump(summary, open(out, "w"), indent=1)
ok = all(v["failed"] == 0 for v in summary["phases"].values()) and phases["restored"]["hit_rate"] > 0
print(json.dumps(summary["phases"], indent=1))
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
