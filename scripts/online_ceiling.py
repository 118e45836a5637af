#!/usr/bin/env python3
"""How far can caches that adapt to a working set go? A hindsight bound, from a candidates run.

For every working set of two classes (all 45 pairs), each candidate head's per-class thresholds
are fitted on the calibration half *restricted to those classes* (as if the learner knew the
working set perfectly), optionally with the working set's class prior folded into the head's
probabilities (label-shift adjustment), and scored on the evaluation half's images of the same
classes. Then:
  - per layer: hit rate and fidelity loss of that cache alone, thresholds at `--budget`
    disagreement among its hits;
  - cascades within the budget over all requests: the plan's caches (its own thresholds, and
    static / adapted ones), and the best cache set found greedily (each cache at one of a few
    targets among its hits) for each kind of thresholds; mean-latency speed-up from the plan's
    measured stage and cache costs (the planner's inline latency model).
It bounds threshold and prior adaptation, not retrained heads (docs/results.md has those).

  .venv/bin/python scripts/online_ceiling.py [--candidates DIR] [--plan DIR] [--budget 0.01] [--json]
"""
import argparse
import itertools
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "py"))
from thresholds import thresholds, with_prior  # noqa: E402

MODES = ("static", "adapted", "adapted+prior")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", default="reports/resnet56-full/candidates")
    ap.add_argument("--plan", default="reports/resnet56-full/plan-inline-0.01")
    ap.add_argument("--budget", type=float, default=0.01, help="fidelity loss allowed over all requests")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    targets = sorted({0.0025, 0.005, 0.01, 0.02, 0.05, a.budget})
    o = load_file(f"{a.candidates}/outcomes.safetensors")
    meta = json.load(open(f"{a.candidates}/meta.json"))
    plan = json.load(open(f"{a.plan}/plan.json"))
    stages, variants = meta["stages"], meta["variants"]
    heads = len(stages) * len(variants)
    name = lambda h: f"{stages[h // len(variants)]}:{variants[h % len(variants)]}"
    classes = o["calibration.probs.0"].shape[1]
    cb, cl = o["calibration.base_pred"].long(), o["calibration.labels"].long()
    eb, el = o["evaluation.base_pred"].long(), o["evaluation.labels"].long()
    stage_ms = torch.tensor(plan["stage_ms"])
    cost_ms = plan["candidate_costs_ms"]
    base_ms = stage_ms.sum().item()
    pairs = list(itertools.combinations(range(classes), 2))
    planned = {}
    for c in plan["caches"]:
        h = stages.index(c["stage"]) * len(variants) + variants.index(c["variant"])
        planned[h] = torch.tensor(c["decision"]["thresholds"])

    # Per head, mode and target (or "plan": the plan's own thresholds): hit and wrong masks over
    # the evaluation images of every working set, one after the other.
    masks = {}
    for h in range(heads):
        P, E = o[f"calibration.probs.{h}"], o[f"evaluation.probs.{h}"]
        acc = {}
        static = thresholds(P, cb, targets, classes)
        for x, y in pairs:
            cm, em = (cl == x) | (cl == y), (el == x) | (el == y)
            prior_p, prior_e = with_prior(P[cm], cb[cm], classes), with_prior(E[em], cb[cm], classes)
            runs = {
                "static": (static, E[em]),
                "adapted": (thresholds(P[cm], cb[cm], targets, classes), E[em]),
                "adapted+prior": (thresholds(prior_p, cb[cm], targets, classes), prior_e),
            }
            if h in planned:
                runs["plan"] = (planned[h][None, :], E[em])
            for mode, (th, q) in runs.items():
                conf, pred = q.max(1)
                for t in range(th.shape[0]):
                    hit = conf >= th[t][pred]
                    acc.setdefault((mode, t), []).append((hit, hit & (pred != eb[em])))
        for key, v in acc.items():
            masks[(h, *key)] = (torch.cat([m[0] for m in v]), torch.cat([m[1] for m in v]))
        print(f"\rheads {h + 1}/{heads}", end="", file=sys.stderr)
    print(file=sys.stderr)
    n = len(masks[0, "static", 0][0])

    def cascade(caches, mode):
        """(speed-up, hit rate, fidelity loss) over all working sets of `caches`: (head, target)."""
        done, wrong = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        ms = torch.full((n,), base_ms)
        for h, t in sorted(caches, key=lambda c: stages[c[0] // len(variants)]):
            hit, bad = masks[h, mode, t]
            ms[~done] += cost_ms[h]
            ms[hit & ~done] -= stage_ms[stages[h // len(variants)] + 1:].sum()
            wrong |= bad & ~done
            done |= hit
        return {"speedup": base_ms / ms.mean().item(), "hit_rate": done.float().mean().item(),
                "fidelity_loss": wrong.float().mean().item()}

    b = targets.index(a.budget)
    layers = [{"cache": name(h), **{m: cascade([(h, b)], m) for m in MODES}} for h in range(heads)]
    cascades = [{"caches": "plan", "thresholds": "plan", **cascade([(h, 0) for h in planned], "plan")}]
    cascades += [{"caches": "plan", "thresholds": m, **cascade([(h, b) for h in planned], m)} for m in MODES]
    # Greedy, for each target among hits shared by all caches: add the head that raises the
    # speed-up most within the budget, while any does; the best over targets.
    for mode in MODES:
        best = None
        for t in range(len(targets)):
            chosen, now = [], cascade([], mode)
            while True:
                used = {h for h, _ in chosen}
                trials = [(cascade(chosen + [(h, t)], mode), (h, t)) for h in range(heads) if h not in used]
                trials = [tr for tr in trials if tr[0]["fidelity_loss"] <= a.budget]
                if not trials:
                    break
                r, c = max(trials, key=lambda tr: tr[0]["speedup"])
                if r["speedup"] <= now["speedup"]:
                    break
                chosen, now = chosen + [c], r
            print(f"greedy {mode} at {targets[t]:.2%}: {len(chosen)} caches, {now['speedup']:.3f}x", file=sys.stderr)
            if best is None or now["speedup"] > best[1]["speedup"]:
                best = (chosen, now)
        cascades.append({"caches": ", ".join(f"{name(h)}@{targets[t]:.2%}" for h, t in best[0]),
                         "thresholds": mode, **best[1]})
    out = {"budget": a.budget, "working_sets": len(pairs), "requests": n, "base_ms": base_ms,
           "layers": layers, "cascades": cascades}
    if a.json:
        print(json.dumps(out))
        return
    print(f"One cache alone, {a.budget:.1%} disagreement among its hits: hit rate / fidelity loss over "
          f"{len(pairs)} two-class working sets ({n} requests)\n")
    print("| cache | " + " | ".join(MODES) + " |\n|---|" + "---|" * len(MODES))
    for r in layers:
        print(f"| {r['cache']} | " + " | ".join(f"{r[m]['hit_rate']:.1%} / {r[m]['fidelity_loss']:.2%}" for m in MODES) + " |")
    print(f"\nCascades within a {a.budget:.1%} fidelity loss (greedy rows: cache@its target among hits)\n")
    print("| caches | thresholds | speed-up | hit rate | fidelity loss |\n|---|---|---|---|---|")
    for c in cascades:
        print(f"| {c['caches']} | {c['thresholds']} | {c['speedup']:.2f}x | {c['hit_rate']:.1%} | {c['fidelity_loss']:.2%} |")


if __name__ == "__main__":
    main()
