#!/usr/bin/env python3
"""Tables from scripts/bench-iid.sh's reports (issue 14): each plan as planned and as measured
in-process on the evaluation half (fidelity and accuracy loss), the ablations, and the Thrift
benchmark of the 1% plans against the base model alone in the same run.

  python3 scripts/iid_table.py reports/iid/resnet56-jpeg
  python3 scripts/iid_table.py --line reports/iid/resnet56-jpeg/plan-inline-0.01   (one plan, one line)
"""
import glob
import json
import os
import sys


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


def fig(f, scale=1.0):
    return f"{f['median'] * scale:.2f} ({f['min'] * scale:.2f}–{f['max'] * scale:.2f})"


def main():
    if sys.argv[1] == "--line":
        print(line(sys.argv[2]))
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
        x, o = p["expected"], e["oracle_speedup"]
        share = f"{o:.2f}x ({100 * (e['speedup'] - 1) / (o - 1):.0f}%)" if o and o > 1 else "–"
        print(f"| {os.path.basename(d)} | {100 * p['budget']:.1f}% {p.get('budget_kind', 'fidelity')} | {caches(p)} | "
              f"{x['speedup']:.2f}x / {100 * x['fidelity_loss']:.2f}% | **{e['speedup']:.2f}x** | "
              f"{100 * e['fidelity_loss']:.2f}% | {100 * e['accuracy_loss']:.2f}% | "
              f"{e['base_top1']:.2f} → {e['gati_top1']:.2f} | {share} |")
    print()
    print("| bench | configuration | mean ms | speed-up (min–max) | fidelity loss % | top-1 % | hit rate % |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(out, "bench-*", "report.json"))):
        r = json.load(open(path))
        for m in r["models"]:
            for s in m["streams"]:
                for c in s["configs"]:
                    gati = c["config"] in ("gati-in-process", "thrift-inline", "thrift-distributed")
                    print(f"| {os.path.basename(os.path.dirname(path))} {s['stream']} | {c['name']} | "
                          f"{c['mean_ms']['median']:.2f} | {fig(c['speedup']) if gati else '1'} | "
                          f"{fig(c['fidelity_loss'], 100) if gati else '0'} | {c['top1']['median']:.1f} | "
                          f"{100 * c['hit_rate']['median']:.1f} |")


if __name__ == "__main__":
    main()
