#!/usr/bin/env python3
"""Could a memory of the training set answer i.i.d. requests early? At five blocks of a CIFAR
ResNet, compares two read-outs of the same memory key (the activation average-pooled to 4x4 in
stages 1-2 and 2x2 in stage 3, unit length; gati's memory keys are the same up to centring):

  knn    the 10 nearest of the first 45,000 training images' keys (cosine), labelled with the base
         model's answers; answer = their majority, score = votes, then their mean similarity;
  probe  a linear classifier on the keys, trained on the same 45,000 to predict the base model's
         answers (softmax confidence as score);
  both   a hit only where knn and probe agree, score = votes / 10 + probe confidence.

Each score gets one threshold on the test split's even images (the calibration half) and is
measured on the odd ones: the share of requests it answers ("coverage") and the share it answers
differently from the base model, for two budgets: at most 1% of its hits wrong ("prec"), and at
most 1% of all requests wrong ("all", what a single cache of a 1% plan may spend).

Pixels from `gati export-data` (what scripts/finetune-bases.sh writes):
  .venv/bin/python scripts/py/knn_vs_probe.py models/resnet56-jpeg/weights.safetensors \
      reports/finetune/cifar10-train.safetensors reports/finetune/cifar10-test.safetensors
Prints one JSON object per layer.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar_resnet import load  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
LAYERS = {"layer1.7": ("layer1", 7, 4), "layer2.2": ("layer2", 2, 4), "layer2.6": ("layer2", 6, 4),
          "layer3.0": ("layer3", 0, 2), "layer3.3": ("layer3", 3, 2)}
TRAIN_IMAGES = 45000
K = 10


@torch.inference_mode()
def keys_and_answers(model, pixels):
    """Each layer's keys and the base model's softmax for every image."""
    keys, probs = {n: [] for n in LAYERS}, []
    hooks = []
    for name, (stage, block, grid) in LAYERS.items():
        def keep(_m, _i, out, name=name, grid=grid):
            keys[name].append(F.normalize(F.adaptive_avg_pool2d(out, grid).flatten(1), dim=1))
        hooks.append(getattr(model, stage)[block].register_forward_hook(keep))
    for i in range(0, len(pixels), 500):
        probs.append(model((pixels[i : i + 500].float() / 255 - MEAN) / STD).softmax(1))
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in keys.items()}, torch.cat(probs)


def coverage(score, agree, calibration, budget):
    """Threshold fitted on the calibration half, (coverage, loss) on the other half."""
    s, order = score[calibration].sort(descending=True)
    wrong = (~agree[calibration][order]).float().cumsum(0)
    hits = torch.arange(1, len(s) + 1).float()
    ok = wrong <= (0.01 * hits if budget == "prec" else 0.01 * calibration.sum())
    t = s[ok.nonzero().max()].item()
    hit = score[~calibration] >= t
    return round(hit.float().mean().item(), 4), round((hit & ~agree[~calibration]).float().mean().item(), 4)


def probe(x, y, x_test, epochs=30):
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.Adam(lin.parameters(), 1e-2)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 512):
            b = perm[i : i + 512]
            loss = F.cross_entropy(lin(x[b] * 10), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return lin(x_test * 10).softmax(1)


def main():
    weights, train_path, test_path = sys.argv[1:4]
    torch.set_num_threads(os.cpu_count() or 1)
    model = load(weights)
    k_train, p_train = keys_and_answers(model, load_file(train_path)["pixels"][:TRAIN_IMAGES])
    k_test, p_test = keys_and_answers(model, load_file(test_path)["pixels"])
    y_train, y_test = p_train.argmax(1), p_test.argmax(1)
    n = len(y_test)
    calibration = torch.arange(n) % 2 == 0
    for name in LAYERS:
        sims, idx = (k_test[name] @ k_train[name].T).topk(K, dim=1)
        votes = F.one_hot(y_train[idx], 10).float()
        count = votes.sum(1)
        majority, n_votes = count.argmax(1), count.max(1).values
        mean_sim = (sims * votes[torch.arange(n), :, majority]).sum(1) / n_votes
        knn_score, knn_agree = n_votes + mean_sim, majority == y_test
        conf, arg = probe(k_train[name], y_train, k_test[name]).max(1)
        probe_agree = arg == y_test
        both = arg == majority
        both_score = torch.where(both, n_votes / K + conf, torch.zeros_like(conf))
        row = {"layer": name, "knn_fidelity": round(knn_agree[~calibration].float().mean().item(), 4),
               "probe_fidelity": round(probe_agree[~calibration].float().mean().item(), 4)}
        for budget in ("prec", "all"):
            row[f"knn_{budget}"] = coverage(knn_score, knn_agree, calibration, budget)
            row[f"probe_{budget}"] = coverage(conf, probe_agree, calibration, budget)
            row[f"both_{budget}"] = coverage(both_score, probe_agree & both, calibration, budget)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
