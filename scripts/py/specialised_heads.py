#!/usr/bin/env python3
"""Could a cache trained only on the working set answer early? For a few two-class working sets,
trains a conv-pool head (the cache variant gati uses) at early blocks of ResNet-56 by distillation
on the working set's training images alone, fits per-class thresholds on half of its test images
at --target disagreement among hits, and reports hit rate and fidelity loss on the other half.

Inputs are the normalised images `gati eval --save-inputs` writes (image folders load class by
class in turn, so image i has label i % 10):

  target/release/gati eval --split train --limit 20000 --latency-samples 20000 --save-inputs train.safetensors
  target/release/gati eval --split test --limit 10000 --latency-samples 10000 --save-inputs test.safetensors
  .venv/bin/python scripts/py/specialised_heads.py train.safetensors test.safetensors [--json]
"""
import argparse
import glob
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar_resnet import load  # noqa: E402
from thresholds import thresholds  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ConvPool(nn.Module):
    """gati's conv-pool cache: 1x1 conv to 32 channels, BN, ReLU, 4x4 average pool, linear."""

    def __init__(self, channels, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(channels, 32, 1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.l = nn.Linear(512, classes)

    def forward(self, x):
        return self.l(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 4).flatten(1))


def activations(model, x, keep):
    """Activations after the residual blocks in `keep` (1-based) and the base model's logits."""
    blocks = list(model.layer1) + list(model.layer2) + list(model.layer3)
    acts, logits = {b: [] for b in keep}, []
    with torch.inference_mode():
        for i in range(0, len(x), 500):
            h = F.relu(model.bn1(model.conv1(x[i : i + 500])))
            for b, block in enumerate(blocks, 1):
                h = block(h)
                if b in keep:
                    acts[b].append(h.clone())
            logits.append(model.linear(F.avg_pool2d(h, h.size(3)).flatten(1)))
    return {b: torch.cat(v) for b, v in acts.items()}, torch.cat(logits)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train")
    ap.add_argument("test")
    ap.add_argument("--blocks", default="3,5,9,12,18")
    ap.add_argument("--pairs", default="0-1,3-5,6-8,2-4")
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    shared = os.environ.get("GATI_SHARED", os.path.join(ROOT, "../shared"))
    model = load(glob.glob(f"{shared}/weights/resnet-cifar10/resnet56-*.th")[0])
    keep = [int(b) for b in a.blocks.split(",")]
    pairs = [tuple(int(c) for c in p.split("-")) for p in a.pairs.split(",")]
    tr, te = load_file(a.train)["x"], load_file(a.test)["x"]
    ytr, yte = torch.arange(len(tr)) % 10, torch.arange(len(te)) % 10
    rows = []
    for x, y in pairs:
        A, Z = activations(model, tr[(ytr == x) | (ytr == y)], keep)
        At, Zt = activations(model, te[(yte == x) | (yte == y)], keep)
        base = Zt.argmax(1)
        fit = torch.arange(len(base)) % 2 == 0
        for b in keep:
            head = ConvPool(A[b].shape[1])
            opt = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
            t = 4.0
            for _ in range(a.epochs):
                for idx in torch.randperm(len(A[b])).split(128):
                    z, zt = head(A[b][idx]), Z[idx]
                    kd = F.kl_div(F.log_softmax(z / t, 1), F.softmax(zt / t, 1), reduction="batchmean") * t * t
                    loss = 0.5 * kd + 0.5 * F.cross_entropy(z, zt.argmax(1))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            head.eval()
            with torch.no_grad():
                p = F.softmax(head(At[b]), 1)
            conf, pred = p.max(1)
            th = thresholds(p[fit], base[fit], [a.target], 10)[0]
            hit = (conf >= th[pred]) & ~fit
            n = (~fit).sum().item()
            row = {"classes": [x, y], "block": b, "fidelity": (pred[~fit] == base[~fit]).float().mean().item(),
                   "hit_rate": hit.sum().item() / n, "fidelity_loss": (hit & (pred != base)).sum().item() / n,
                   "base_in_working_set": ((base == x) | (base == y)).float().mean().item()}
            rows.append(row)
            print(f"classes {x},{y} block {b}: fidelity {row['fidelity']:.3f}, hit rate {row['hit_rate']:.3f}, "
                  f"loss {row['fidelity_loss']:.4f}", file=sys.stderr)
    mean = {b: {k: sum(r[k] for r in rows if r["block"] == b) / len(pairs) for k in ("fidelity", "hit_rate", "fidelity_loss")}
            for b in keep}
    if a.json:
        print(json.dumps({"target": a.target, "pairs": pairs, "rows": rows, "mean": mean}))
        return
    print(f"| block | fidelity | hit rate at {a.target:.0%} among hits | fidelity loss |\n|---|---|---|---|")
    for b, v in mean.items():
        print(f"| {b} | {v['fidelity']:.1%} | {v['hit_rate']:.1%} | {v['fidelity_loss']:.2%} |")


if __name__ == "__main__":
    main()
