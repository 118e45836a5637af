#!/usr/bin/env python3
"""Markdown tables from scripts/bench-faces.sh's reports: per serving path, budget and stream, the
base model alone vs gati in the same run (mean latency, speed-up with min–max over repeats, fidelity
loss against the base model, top-1 against the labels, hit rate).

  python3 scripts/faces_table.py reports/faces
"""
import glob
import json
import os
import sys


def fig(f, scale=1.0, fmt="{:.2f}"):
    return f"{fmt.format(f['median'] * scale)} ({fmt.format(f['min'] * scale)}–{fmt.format(f['max'] * scale)})"


def bench_rows(out):
    """(report path, model, stream, config, the row's figures as table cells) of every bench-*/report.json."""
    for path in sorted(glob.glob(os.path.join(out, "bench-*", "report.json"))):
        r = json.load(open(path))
        for m in r["models"]:
            for s in m["streams"]:
                for c in s["configs"]:
                    gati = c["config"] in ("gati-in-process", "thrift-inline", "thrift-distributed")
                    cells = (f"{c['mean_ms']['median']:.2f} | {fig(c['speedup']) if gati else '1'} | "
                             f"{fig(c['fidelity_loss'], 100) if gati else '0'} | {c['top1']['median']:.1f} | "
                             f"{100 * c['hit_rate']['median']:.1f} |")
                    yield path, m, s, c, cells


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "reports/faces"
    print("| plan | budget | stream | configuration | mean ms | speed-up | fidelity loss % | top-1 % | hit rate % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, m, s, c, cells in bench_rows(out):
        plan = m["plan_mode"] + (" (camera-calibrated)" if "camera" in path else "")
        print(f"| {plan} | {100 * m['budget']:.1f}% | {s['stream']} | {c['name']} | {cells}")


if __name__ == "__main__":
    main()
