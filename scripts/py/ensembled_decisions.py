"""What ensembled hit decisions could buy, measured on a plan's recorded outcomes (issue 14).

An ensembled decision at layer k judges a request by a learned weighted geometric mean of the
probabilities of the heads up to k, not by head k alone. This script measures its best case without
changing the runtime:

  python ensembled_decisions.py stack CANDIDATES OUT [--variant conv-pool] [--every 1]
      copies a candidates dir (heads, outcomes, meta.json) to OUT, with every `--variant` head's
      probabilities replaced by the ensemble of that variant's heads at its layer and the layers
      before it (every `--every`-th one), weights fitted on the calibration half. `gati plan
      --candidates OUT` then plans with the ensembles as if each cost one head (optimistic: an
      ensemble needs the earlier heads' outputs).
  python ensembled_decisions.py simulate PLAN CANDIDATES
      replays PLAN/plan.json on the evaluation half of CANDIDATES' outcomes and prints one JSON
      object: speed-up (the plan's stage and head costs), fidelity and accuracy loss, hit rate.

The ensemble of heads j <= k: softmax(sum_j w_j log p_j + b), w_j >= 0 (softplus), b a class bias,
fitted by L-BFGS to the base model's answers (cross-entropy).
"""
import argparse
import glob
import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def outcomes_file(cands):
    files = glob.glob(os.path.join(cands, "outcomes-*.safetensors"))
    if len(files) != 1:
        sys.exit(f"error: {cands}: expected one outcomes-*.safetensors, found {len(files)}")
    return files[0]


def head_index(meta):
    variants = meta["variants"]
    return {(s, v): i * len(variants) + j for i, s in enumerate(meta["stages"]) for j, v in enumerate(variants)}


def fit_ensemble(log_probs, target):
    """log_probs [J, N, K]; returns a function of [J, M, K] log-probabilities -> logits [M, K]."""
    heads, _, classes = log_probs.shape
    w = torch.zeros(heads, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def logits(lp):
        return (F.softplus(w)[:, None, None] * lp).sum(0) + b

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits(log_probs), target)
        loss.backward()
        return loss

    opt.step(closure)
    return lambda lp: logits(lp).detach()


def stack(a):
    meta = json.load(open(os.path.join(a.candidates, "meta.json")))
    if a.variant not in meta["variants"]:
        sys.exit(f"error: --variant {a.variant}: {a.candidates} has {meta['variants']}")
    shutil.copytree(a.candidates, a.out, dirs_exist_ok=True)
    path = outcomes_file(a.out)
    t = load_file(path)
    idx = head_index(meta)
    heads = [idx[(s, a.variant)] for s in meta["stages"]]
    out = dict(t)
    weights = []
    for k, h in enumerate(heads):
        used = heads[k::-a.every]
        lp = {half: torch.stack([t[f"{half}.probs.{j}"] for j in used]).clamp_min(1e-12).log()
              for half in ("calibration", "evaluation")}
        f = fit_ensemble(lp["calibration"], t["calibration.base_pred"].long())
        for half in ("calibration", "evaluation"):
            out[f"{half}.probs.{h}"] = f(lp[half]).softmax(1).contiguous()
        weights.append(len(used))
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    print(json.dumps({"out": a.out, "variant": a.variant, "heads_per_ensemble": weights}))


def simulate(a):
    plan = json.load(open(os.path.join(a.plan, "plan.json")))
    meta = json.load(open(os.path.join(a.candidates, "meta.json")))
    t = load_file(outcomes_file(a.candidates))
    idx = head_index(meta)
    stage_ms = plan["stage_ms"]
    cum = torch.tensor(stage_ms).cumsum(0)
    base_ms = float(cum[-1])
    base = t["evaluation.base_pred"].long()
    labels = t["evaluation.labels"].long()
    n = len(base)
    latency = torch.zeros(n, dtype=torch.float64)
    spent = torch.zeros(n, dtype=torch.float64)
    done = torch.zeros(n, dtype=torch.bool)
    answer = base.clone()
    for c in sorted(plan["caches"], key=lambda c: c["stage"]):
        probs = t[f"evaluation.probs.{idx[(c['stage'], c['variant'])]}"]
        p, cls = probs.max(1)
        hit = ~done & (p >= torch.tensor(c["decision"]["thresholds"])[cls])
        latency[hit] = float(cum[c["stage"]]) + spent[hit] + c["cost_ms"]
        answer[hit] = cls[hit]
        spent[~done] += c["cost_ms"]
        done |= hit
    latency[~done] = base_ms + spent[~done]
    print(json.dumps({
        "plan": a.plan,
        "caches": [f"{c['layer']} {c['variant']}" for c in sorted(plan["caches"], key=lambda c: c["stage"])],
        "planned_speedup": plan["expected"]["speedup"],
        "speedup": base_ms / float(latency.mean()),
        "fidelity_loss": float((answer != base).double().mean()),
        "accuracy_loss": float((base == labels).double().mean() - (answer == labels).double().mean()),
        "hit_rate": float(done.double().mean()),
        "samples": n,
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stack")
    s.add_argument("candidates")
    s.add_argument("out")
    s.add_argument("--variant", default="conv-pool")
    s.add_argument("--every", type=int, default=1)
    m = sub.add_parser("simulate")
    m.add_argument("plan")
    m.add_argument("candidates")
    a = p.parse_args()
    if a.cmd == "stack" and a.every < 1:
        sys.exit("error: --every must be at least 1")
    (stack if a.cmd == "stack" else simulate)(a)


if __name__ == "__main__":
    main()
