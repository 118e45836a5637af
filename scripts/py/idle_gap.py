"""Does a core that idled run the next forward pass slower? (docs/results.md, issue 16)

A ResNet-56-shaped CIFAR network (random weights: only the time matters) runs batch-1 passes on
one thread; before each pass the thread either goes straight on, sleeps for GAP ms, or spins for
GAP ms. The three kinds are interleaved, so drift on a shared machine hits them alike.

    taskset -c 0 .venv/bin/python scripts/py/idle_gap.py [GAP_MS] [PASSES]
"""

import sys
import time

import torch
import torch.nn as nn


def resnet56_shaped() -> nn.Module:
    def block(c_in: int, c: int, stride: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        )

    layers, c = [nn.Conv2d(3, 16, 3, 1, 1)], 16
    for width, stride in [(16, 1), (32, 2), (64, 2)]:
        for b in range(9):
            layers.append(block(c, width, stride if b == 0 else 1))
            c = width
    return nn.Sequential(*layers).eval()


def main() -> None:
    gap = float(sys.argv[1]) / 1e3 if len(sys.argv) > 1 else 0.003
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    torch.set_num_threads(1)
    net, x = resnet56_shaped(), torch.randn(1, 3, 32, 32)
    kinds = ["none", "sleep", "spin"]
    took = {k: [] for k in kinds}
    with torch.no_grad():
        for _ in range(50):
            net(x)
        for i in range(passes):
            kind = kinds[i % 3]
            if kind == "sleep":
                time.sleep(gap)
            elif kind == "spin":
                end = time.perf_counter() + gap
                while time.perf_counter() < end:
                    pass
            t = time.perf_counter()
            net(x)
            took[kind].append(time.perf_counter() - t)
    for k, v in took.items():
        v.sort()
        print(f"{k:5s} before each pass ({gap * 1e3:.1f} ms): mean {sum(v) / len(v) * 1e3:.2f} ms, "
              f"p50 {v[len(v) // 2] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
