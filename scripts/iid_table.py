#!/usr/bin/env python3
"""Tables from scripts/bench-iid.sh's reports (issue 14): each plan as planned and as measured
in-process on the evaluation half (fidelity and accuracy loss), the ablations, and the Thrift
benchmark of the 1% plans against the base model alone in the same run.

  python3 scripts/iid_table.py reports/iid/resnet56-jpeg
  python3 scripts/iid_table.py --line reports/iid/resnet56-jpeg/plan-inline-0.01   (one plan, one line)
  python3 scripts/iid_table.py --models reports/iid-models   (scripts/bench-iid-models.sh: a line per model)
"""
import glob
import json
import os
import sys

from faces_table import bench_rows


def load(plan_dir):
    p = json.load(open(plan_dir + ".plan.json"))["plan"]
    e = json.load(open(plan_dir + ".evaluate.json"))
    return p, e


def caches(p):
    return ", ".join(f"{c['layer']} {c['variant']}" for c in p["caches"]) or "none"


def line(plan_dir):
    p, e = load(plan_dir)
    x = p["expected"]
    return (f"caches [{caches(p)}]; planned {x['speedup']:.2f}x loss {100 * x['fidelity_loss']:.2f}%; measured "
            f"{e['speedup']:.2f}x fidelity loss {100 * e['fidelity_loss']:.2f}% accuracy loss "
            f"{100 * e['accuracy_loss']:.2f}%; top-1 {e['base_top1']:.2f} -> {e['gati_top1']:.2f}; oracle "
            f"{e['oracle_speedup'] or float('nan'):.2f}x")


def oracle_share(e):
    """The oracle's speed-up and the share of its gain the plan reached."""
    o = e["oracle_speedup"]
    return f"{o:.2f}x ({100 * (e['speedup'] - 1) / (o - 1):.0f}%)" if o and o > 1 else "–"


def models(root):
    print("| model | base top-1 (evaluation half) | caches | hit rate | planned | measured speed-up | fidelity loss "
          "| accuracy loss | oracle (share reached) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in sorted(glob.glob(os.path.join(root, "*", "plan-inline-0.01.evaluate.json"))):
        p, e = load(d[: -len(".evaluate.json")])
        print(f"| {os.path.basename(os.path.dirname(d))} | {e['base_top1']:.2f}% | {caches(p)} | "
              f"{100 * e['hit_rate']:.1f}% | {p['expected']['speedup']:.2f}x | **{e['speedup']:.2f}x** | "
              f"{100 * e['fidelity_loss']:.2f}% | {100 * e['accuracy_loss']:.2f}% | {oracle_share(e)} |")


def main():
    if sys.argv[1] == "--line":
        print(line(sys.argv[2]))
        return
    if sys.argv[1] == "--models":
        models(sys.argv[2])
        return
    out = sys.argv[1]
    print("| plan | budget | caches | planned speed-up / loss | measured speed-up | fidelity loss | accuracy loss "
          "| top-1 base → gati | oracle (share reached) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in sorted(glob.glob(os.path.join(out, "*.plan.json"))):
        d = d[: -len(".plan.json")]
        if not os.path.exists(d + ".evaluate.json"):
            continue
        p, e = load(d)
        x = p["expected"]
        print(f"| {os.path.basename(d)} | {100 * p['budget']:.1f}% {p.get('budget_kind', 'fidelity')} | {caches(p)} | "
              f"{x['speedup']:.2f}x / {100 * x['fidelity_loss']:.2f}% | **{e['speedup']:.2f}x** | "
              f"{100 * e['fidelity_loss']:.2f}% | {100 * e['accuracy_loss']:.2f}% | "
              f"{e['base_top1']:.2f} → {e['gati_top1']:.2f} | {oracle_share(e)} |")
    print()
    print("| bench | configuration | mean ms | speed-up (min–max) | fidelity loss % | top-1 % | hit rate % |")
    print("|---|---|---|---|---|---|---|")
    for path, _, s, c, cells in bench_rows(out):
        print(f"| {os.path.basename(os.path.dirname(path))} {s['stream']} | {c['name']} | {cells}")


if __name__ == "__main__":
    main()
