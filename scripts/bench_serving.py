#!/usr/bin/env python3
"""Latency through the Thrift frontend for base-only, inline and distributed deployments of one plan,
against the base model in-process, in one run on the same cores (runs interleaved, median of
--repeat). Closed loop, one client: per-request latency, as a user sees it.

  python3 scripts/bench_serving.py --plan reports/resnet56-full/plan-distributed-0.01 --duration 20 --repeat 3
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATI = os.path.join(ROOT, "target/release/gati")


def up(plan, mode, pin):
    args = [GATI, "up", "--plan", plan, "--mode", mode, "--port", "0", "--json", "--cache-workers", "1"]
    if pin:
        args.append("--pin")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, env=dict(os.environ, GATI_QUIET="1"))
    info = json.loads(p.stdout.readline())
    return p, info


def loadgen(endpoint, plan, duration, limit):
    out = subprocess.check_output([GATI, "loadgen", "--endpoint", endpoint, "--duration", str(duration),
                                   "--concurrency", "1", "--plan", plan, "--json"] +
                                  (["--limit", str(limit)] if limit else []),
                                  env=dict(os.environ, GATI_QUIET="1"))
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="test images before halving (default: the plan's)")
    ap.add_argument("--pin", action="store_true", help="base worker on CPU 0, cache workers on CPU 1")
    args = ap.parse_args()
    plan = json.load(open(os.path.join(args.plan, "plan.json")))
    limit = args.limit or plan.get("test_limit")
    runs = {}
    for r in range(args.repeat):
        ev = json.loads(subprocess.check_output([GATI, "evaluate", "--plan", args.plan, "--json"] +
                                                (["--test-limit", str(limit)] if limit else []),
                                                env=dict(os.environ, GATI_QUIET="1")))
        runs.setdefault("in-process base", []).append({"latency_ms": ev["base_latency_ms"], "hit_rate": 0.0,
                                                       "agreement": 1.0, "throughput_rps": None})
        runs.setdefault("in-process gati (inline)", []).append({"latency_ms": ev["gati_latency_ms"],
                                                                "hit_rate": ev["hit_rate"],
                                                                "agreement": 1 - ev["fidelity_loss"],
                                                                "throughput_rps": None})
        for mode in ("base-only", "inline", "distributed"):
            p, info = up(args.plan, mode, args.pin)
            try:
                res = loadgen(info["endpoint"], args.plan, args.duration, limit)
            finally:
                p.send_signal(signal.SIGTERM)
                p.wait()
            runs.setdefault(f"thrift {mode}", []).append(res)
            print(f"run {r + 1}: {mode}: mean {res['latency_ms']['mean']:.3f} ms, hit {res['hit_rate']:.3f}",
                  file=sys.stderr, flush=True)
    med = lambda xs: statistics.median(xs)
    rows = {}
    for name, rs in runs.items():
        rows[name] = {k: med([x["latency_ms"][k] for x in rs]) for k in ("mean", "p50", "p99")}
        rows[name]["hit_rate"] = med([x["hit_rate"] for x in rs])
        rows[name]["agreement"] = med([x["agreement"] for x in rs if x.get("agreement") is not None] or [float("nan")])
        rows[name]["spread_mean"] = (min(x["latency_ms"]["mean"] for x in rs), max(x["latency_ms"]["mean"] for x in rs))
    base_thrift = rows["thrift base-only"]["mean"]
    print("| configuration | mean ms (min–max) | p50 ms | p99 ms | hit rate | agreement with base | speed-up vs Thrift base-only |")
    print("|---|---|---|---|---|---|---|")
    for name, x in rows.items():
        lo, hi = x["spread_mean"]
        print(f"| {name} | {x['mean']:.3f} ({lo:.3f}–{hi:.3f}) | {x['p50']:.3f} | {x['p99']:.3f} | "
              f"{100 * x['hit_rate']:.1f}% | {100 * x['agreement']:.2f}% | {base_thrift / x['mean']:.2f}x |")
    rpc = rows["thrift base-only"]["p50"] - rows["in-process base"]["p50"]
    print(f"\nRPC overhead on the miss path (Thrift base-only p50 - in-process base p50): {rpc:.3f} ms")
    print(json.dumps({"plan": args.plan, "duration": args.duration, "repeat": args.repeat, "rows": rows,
                      "rpc_overhead_p50_ms": rpc}))


if __name__ == "__main__":
    main()
