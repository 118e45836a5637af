"""Why a student cache learns for the fine-tuned ResNet-56 and not for the as-shipped one: for each
(big, small) pair, the least-squares 3x3 adapter from the big base's stem output to the small
base's (what gati's `student` cache starts from, fitted on 128 training images with the same ridge),
its relative error on 2,000 test images, and the agreement with the big base of (a) the small base on
the image and (b) the small base's blocks behind the adapter. Behind docs/results.md, "The
as-shipped ResNet-56 with a student".

  python student_adapter_check.py TEST.safetensors TRAIN.safetensors AS_SHIPPED_56 AS_SHIPPED_20

TEST/TRAIN: `gati export-data` pixel files (reports/finetune/cifar10-{test,train}.safetensors);
AS_SHIPPED_*: the converted checkpoints (~/.cache/gati/weights/resnet56-*.safetensors, resnet20-*).
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cifar_resnet import load
from finetune_base import normalise

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models")
RIDGE = 1e-4  # crates/gati-cache/src/student.rs


def stem(m, x):
    return F.relu(m.bn1(m.conv1(x)))


def blocks_and_head(m, h):
    h = m.layer3(m.layer2(m.layer1(h)))
    return m.linear(F.avg_pool2d(h, h.size()[3]).flatten(1))


def fit(a, t):
    cols = F.unfold(a, 3, padding=1).transpose(1, 2).reshape(-1, a.shape[1] * 9).double()
    x = torch.cat([cols, torch.ones(cols.shape[0], 1, dtype=torch.double)], 1)
    y = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).double()
    xtx = x.T @ x
    return torch.linalg.solve(xtx + RIDGE * xtx.diagonal().mean() * torch.eye(x.shape[1], dtype=torch.double), x.T @ y)


def adapt(sol, a):
    w = sol[:-1].T.reshape(-1, a.shape[1], 3, 3).float()
    return F.relu(F.conv2d(a, w, sol[-1].float(), padding=1))


@torch.no_grad()
def main():
    test, train, shipped56, shipped20 = sys.argv[1:5]
    xt = normalise(load_file(train)["pixels"][:128])
    xe = normalise(load_file(test)["pixels"][:2000])
    pairs = {
        "as shipped": (shipped56, shipped20),
        "fit to the data": tuple(os.path.join(MODELS, n, "weights.safetensors") for n in ("resnet56-jpeg", "resnet20-jpeg")),
    }
    for name, (big_path, small_path) in pairs.items():
        big, small = load(big_path), load(small_path)
        sol = fit(stem(big, xt), stem(small, xt))
        a, t = stem(big, xe), stem(small, xe)
        err = ((adapt(sol, a) - t).norm() / t.norm()).item()
        ref = big(xe).argmax(1)
        alone = (small(xe).argmax(1) == ref).float().mean().item()
        behind = (blocks_and_head(small, adapt(sol, a)).argmax(1) == ref).float().mean().item()
        print(f"{name}: adapter relative error {err:.3f}; agreement with ResNet-56: "
              f"ResNet-20 on the image {alone:.1%}, behind the adapter {behind:.1%}")


if __name__ == "__main__":
    main()
