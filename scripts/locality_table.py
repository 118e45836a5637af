#!/usr/bin/env python3
"""Tables of scripts/bench-locality.sh's results (reports/locality by default) for docs/results.md."""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faces_table import bench_rows  # noqa: E402


def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "reports/locality"
    print("Planned on the calibration stream (gati plan-memory, 3,000 requests, seed 1):\n")
    print("| stream | memory layer | sim ≥ | conf ≥ | votes | learned caches | stores their hits | follows | "
          "memory hits % | all hits % | fidelity loss % | accuracy loss % | expected | learned only | locality oracle |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(out, "plan-memory-*.json"))):
        d = load(path)
        if not d:
            continue
        c, lo = d["chosen"], d["learned_only"]
        print(f"| {d['stream']} | {c['layer']} | {c['min_similarity']} | {c['min_confidence']} | {c['min_votes']} | "
              f"{'on' if c['learned'] else 'off'} | {'yes' if c['remember_cache_hits'] else 'no'} | "
              f"{'yes' if c['follow_hits'] else 'no'} | {100 * c['memory_hit_rate']:.1f} | {100 * c['hit_rate']:.1f} | "
              f"{100 * c['fidelity_loss']:.2f} | {100 * c['accuracy_loss']:.2f} | {c['speedup']:.2f}x | "
              f"{lo['speedup']:.2f}x ({100 * lo['fidelity_loss']:.2f}%) | {d['locality_oracle_speedup']:.2f}x |")
    print("\nMeasured in-process (gati evaluate --stream, evaluation half, 2,000 requests, seed 2):\n")
    print("| plan | stream | base ms | gati ms | speed-up | fidelity loss % | accuracy loss % | hit rate % | memory hits % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(out, "evaluate-*.json"))):
        d = load(path)
        if not d:
            continue
        mem = sum(l["hit_rate"] for l in d["hit_rate_per_layer"] if l["variant"] == "memory")
        name = os.path.basename(path)[len("evaluate-"):-len(".json")]
        print(f"| {name} | {d.get('stream', 'iid (evaluation half once)')} | {d['base_latency_ms']['mean']:.2f} | "
              f"{d['gati_latency_ms']['mean']:.2f} | {d['speedup']:.2f}x | {100 * d['fidelity_loss']:.2f} | "
              f"{100 * d['accuracy_loss']:.2f} | {100 * d['hit_rate']:.1f} | {100 * mem:.1f} |")
    print("\nThrough Thrift (gati bench, medians of repeats with min–max):\n")
    print("| plan | stream | configuration | mean ms | speed-up | fidelity loss % | top-1 % | hit rate % |")
    print("|---|---|---|---|---|---|---|---|")
    for path, m, s, c, cells in bench_rows(out):
        plan = os.path.basename(os.path.dirname(path))[len("bench-"):]
        print(f"| {plan} | {s['stream']} | {c['name']} | {cells}")


if __name__ == "__main__":
    main()
