#!/usr/bin/env python3
"""Do cascading heads answer more requests early than independent ones? (issue 14, item 2)

At a chain of layers of a CIFAR ResNet, trains gati's `conv-pool` head (Conv1x1(C->32) - BN - ReLU
- AdaptiveAvgPool2d(4x4) - Linear(512, K)) two ways on the same frozen activations:

  independent  each head alone (what gati plans today);
  cascading    head k's linear layer also reads head k-1's logits (the previous cascading head's,
               fixed once trained), so later heads can refine earlier ones.

Targets are the base model's answers (fidelity). Every score gets one threshold fitted on the test
split's even images (the calibration half) and is measured on the odd ones: the share of requests it
answers and the share it answers differently from the base model, for two budgets: at most 1% of its
hits wrong ("prec") and at most 1% of all requests wrong ("all", what one cache of a 1% plan may
spend).

Pixels from `gati export-data` (what scripts/finetune-bases.sh writes):
  .venv/bin/python scripts/py/cascading_heads.py models/resnet56-jpeg/weights.safetensors \
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
from knn_vs_probe import MEAN, STD, coverage  # noqa: E402

LAYERS = [("layer1", 3), ("layer1", 7), ("layer2", 2), ("layer2", 6), ("layer3", 0), ("layer3", 3),
          ("layer3", 6)]
TRAIN_IMAGES = int(os.environ.get("TRAIN_IMAGES", "20000"))
EPOCHS = int(os.environ.get("EPOCHS", "4"))


@torch.inference_mode()
def activations(model, pixels):
    """Every chain layer's activation (float16, to fit in memory) and the base model's answers."""
    acts, answers = [[] for _ in LAYERS], []
    hooks = []
    for i, (stage, block) in enumerate(LAYERS):
        def keep(_m, _i, out, i=i):
            acts[i].append(out.half())
        hooks.append(getattr(model, stage)[block].register_forward_hook(keep))
    for i in range(0, len(pixels), 500):
        answers.append(model((pixels[i : i + 500].float() / 255 - MEAN) / STD).argmax(1))
    for h in hooks:
        h.remove()
    return [torch.cat(a) for a in acts], torch.cat(answers)


class ConvPool(torch.nn.Module):
    def __init__(self, channels, extra):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 32, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(32)
        self.fc = torch.nn.Linear(512 + extra, 10)

    def forward(self, x, prev=None):
        f = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 4).flatten(1)
        return self.fc(f if prev is None else torch.cat([f, prev], 1))


def train(x, y, prev):
    torch.manual_seed(0)
    head = ConvPool(x.shape[1], 0 if prev is None else prev.shape[1])
    opt = torch.optim.Adam(head.parameters(), 2e-3, weight_decay=1e-4)
    steps = EPOCHS * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=steps)
    head.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            b = perm[i : i + 128]
            out = head(x[b].float(), None if prev is None else prev[b])
            loss = F.cross_entropy(out, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def logits(head, x, prev):
    return torch.cat([head(x[i : i + 1000].float(), None if prev is None else prev[i : i + 1000])
                      for i in range(0, len(x), 1000)])


def main():
    weights, train_path, test_path = sys.argv[1:4]
    torch.set_num_threads(os.cpu_count() or 1)
    model = load(weights)
    a_train, y_train = activations(model, load_file(train_path)["pixels"][:TRAIN_IMAGES])
    a_test, y_test = activations(model, load_file(test_path)["pixels"])
    calibration = torch.arange(len(y_test)) % 2 == 0
    prev_train = prev_test = None
    for i, (stage, block) in enumerate(LAYERS):
        row = {"layer": f"{stage}.{block}"}
        for kind in ("independent", "cascading"):
            p_train, p_test = (None, None) if kind == "independent" else (prev_train, prev_test)
            head = train(a_train[i], y_train, p_train)
            out_test = logits(head, a_test[i], p_test)
            conf, arg = out_test.softmax(1).max(1)
            agree = arg == y_test
            row[f"{kind}_fidelity"] = round(agree[~calibration].float().mean().item(), 4)
            for budget in ("prec", "all"):
                row[f"{kind}_{budget}"] = coverage(conf, agree, calibration, budget)
            if kind == "cascading":
                prev_train, prev_test = logits(head, a_train[i], p_train), out_test
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
