#!/usr/bin/env python3
"""Markdown table of per-layer cache fidelity (evaluation half) from `gati plan --json` output."""
import json
import sys

d = json.load(open(sys.argv[1]))
rows = d["candidates"]
variants = []
for r in rows:
    if r["variant"] not in variants:
        variants.append(r["variant"])
layers = []
for r in rows:
    if r["layer"] not in layers:
        layers.append(r["layer"])
by = {(r["layer"], r["variant"]): r for r in rows}
print("| layer | " + " | ".join(variants) + " |")
print("|---|" + "---|" * len(variants))
for l in layers:
    cells = []
    for v in variants:
        r = by.get((l, v))
        cells.append(f"{100 * r['evaluation_fidelity']:.1f}%" if r else "")
    print(f"| {l} | " + " | ".join(cells) + " |")
print()
print("| variant | params (first layer … last layer) | batch-1 cost ms (min–max) |")
print("|---|---|---|")
for v in variants:
    rs = [r for r in rows if r["variant"] == v]
    costs = [r["cost_ms"] for r in rs]
    print(f"| {v} | {rs[0]['params']:,} … {rs[-1]['params']:,} | {min(costs):.3f}–{max(costs):.3f} |")
print()
print(f"train: {d['plan']['model']}, {d['train_seconds']:.0f} s")
