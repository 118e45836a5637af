"""Would a smaller base make a good cache? PyTorch check behind docs/results.md, "Student caches".

  python student_feasibility.py TEST.safetensors TRAIN.safetensors [SMALL ...]

TEST/TRAIN: `gati export-data` pixel files (reports/finetune/cifar10-{test,train}.safetensors, written
by scripts/finetune-bases.sh). For each SMALL (default resnet20-jpeg resnet32-jpeg resnet44-jpeg):
its agreement with models/resnet56-jpeg and the share of the evaluation half it answers when one
confidence threshold, fitted on the calibration half, keeps the answers that differ from
ResNet-56's at 0.5 / 1 / 2% of all requests. Then ResNet-20's blocks reading ResNet-56's stem through
a least-squares 3x3 adapter (what gati's `student` cache starts from), the same figures, and after
EPOCHS (env, default 1) of distillation from ResNet-56 on the 45,000 fitting images. With SAVE=DIR
the distilled student is written there after every epoch: DIR/weights.safetensors, a ResNet-20
checkpoint (resnet20-jpeg's own stem, the distilled blocks and head), and DIR/adapter.safetensors,
its adapter from ResNet-56-jpeg's stem (`adapter.weight`, `adapter.bias`). As
models/resnet20-jpeg-kd56/ it is what `gati plan --student-init resnet20-jpeg-kd56` starts from.
"""
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cifar_resnet import load
from finetune_base import augment, normalise

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models")


def weights(name):
    return os.path.join(MODELS, name, "weights.safetensors")


def stem(m, x):
    return F.relu(m.bn1(m.conv1(x)))


class Student(nn.Module):
    def __init__(self, small):
        super().__init__()
        self.adapter = nn.Conv2d(16, 16, 3, 1, 1)
        self.small = small

    def forward(self, a):
        out = F.relu(self.adapter(a))
        for layer in (self.small.layer1, self.small.layer2, self.small.layer3):
            out = layer(out)
        return self.small.linear(F.avg_pool2d(out, out.size(3)).flatten(1))


def main():
    torch.set_num_threads(2)
    test, train = load_file(sys.argv[1]), load_file(sys.argv[2])
    px, y, tx = test["pixels"], test["labels"], train["pixels"][:45000]
    smalls = sys.argv[3:] or ["resnet20-jpeg", "resnet32-jpeg", "resnet44-jpeg"]
    big = load(weights("resnet56-jpeg")).eval()

    @torch.inference_mode()
    def probs(f):
        return torch.cat([f(normalise(px[i : i + 500])).softmax(1) for i in range(0, len(y), 500)])

    yb = probs(big).argmax(1)
    # gati's halves: the test images are round-robin over classes; even occurrences calibrate.
    cal = (torch.arange(len(y)) // 10) % 2 == 0

    def report(name, p):
        conf, pred = p.max(1)
        agree = pred == yb
        print(f"{name}: agreement {agree.float().mean():.4f}, top-1 {(pred == y).float().mean():.4f}", flush=True)
        for budget in (0.005, 0.01, 0.02):
            c, a = conf[cal], agree[cal]
            order = c.argsort(descending=True)
            wrong = (~a[order]).cumsum(0).float() / len(c)
            t = c[order][(wrong <= budget).nonzero().max()].item()
            hit = conf[~cal] >= t
            loss = (hit & ~agree[~cal]).float().mean()
            print(f"  {budget:.1%}: threshold {t:.4f}, answers {hit.float().mean():.3f} of the evaluation half, loss {loss:.4f}", flush=True)

    for name in smalls:
        report(name, probs(load(weights(name)).eval()))

    small = load(weights("resnet20-jpeg")).eval()
    student = Student(small)
    with torch.no_grad():
        xs = normalise(tx[:128])
        a, t = stem(big, xs), stem(small, xs)
        cols = F.unfold(a, 3, padding=1).transpose(1, 2).reshape(-1, 144)
        x = torch.cat([cols, torch.ones(len(cols), 1)], 1).double()
        # Ridge on the normal equations, as gati's student.rs: pivoted least squares (gelsy) is
        # unstable here (dead stem channels make the problem rank-deficient).
        xtx = x.T @ x
        xtx += 1e-4 * xtx.diagonal().mean() * torch.eye(145, dtype=torch.float64)
        sol = torch.linalg.solve(xtx, x.T @ t.permute(0, 2, 3, 1).reshape(-1, 16).double()).float()
        student.adapter.weight.copy_(sol[:144].T.reshape(16, 16, 3, 3))
        student.adapter.bias.copy_(sol[144])
        print(f"adapter: relative error {((F.relu(student.adapter(a)) - t).norm() / t.norm()):.3f}")
    student.eval()
    report("resnet20-jpeg through the adapter", probs(lambda x: student(stem(big, x))))

    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    epochs, temp, step = int(os.environ.get("EPOCHS", "1")), 4.0, 0
    steps, started = epochs * (45000 // 128), time.time()
    for e in range(epochs):
        student.train()
        perm = torch.randperm(45000, generator=gen)
        for i in range(0, 45000 - 127, 128):
            for g in opt.param_groups:
                g["lr"] = 0.02 * 0.5 * (1 + math.cos(math.pi * step / steps))
            xb = normalise(augment(tx[perm[i : i + 128]], gen))
            with torch.no_grad():
                a, zt = stem(big, xb), big(xb)
            z = student(a)
            kl = F.kl_div(F.log_softmax(z / temp, 1), F.softmax(zt / temp, 1), reduction="batchmean")
            loss = 0.5 * temp * temp * kl + 0.5 * F.cross_entropy(z, zt.argmax(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step}/{steps}: loss {loss.item():.3f} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        student.eval()
        report(f"student after {e + 1} epoch(s) of distillation", probs(lambda x: student(stem(big, x))))
        if os.environ.get("SAVE"):
            out = os.environ["SAVE"]
            os.makedirs(out, exist_ok=True)
            save_file({k: v.contiguous() for k, v in small.state_dict().items() if "num_batches" not in k},
                      os.path.join(out, "weights.safetensors"))
            save_file({f"adapter.{k}": v.detach().contiguous() for k, v in student.adapter.state_dict().items()},
                      os.path.join(out, "adapter.safetensors"))


if __name__ == "__main__":
    main()
