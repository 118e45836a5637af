"""PyTorch reference for the CIFAR ResNets (option-A shortcuts), used to check and time the Rust models.

  python cifar_resnet.py logits CHECKPOINT INPUTS.safetensors OUT.safetensors
      logits of the original checkpoint on normalised inputs ('x', [N,3,32,32]) written as 'logits'.
  python cifar_resnet.py bench CHECKPOINT INPUTS.safetensors THREADS N
      batch-1 eager latency (torch.inference_mode) on the first N inputs; prints one JSON object.
  python cifar_resnet.py top1 CHECKPOINT PIXELS.safetensors
      top-1 on the pixels and labels of `gati export-data` (same decoded JPEGs as the Rust model);
      prints one JSON object.

CHECKPOINT: a PyTorch checkpoint (.th) or a gati safetensors file (e.g. models/resnet56-jpeg).
"""
import json
import re
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from latency import bench


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class ResNet(nn.Module):
    def __init__(self, n, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for layer, planes in ((1, 16), (2, 32), (3, 64)):
            blocks = []
            for i in range(n):
                stride = 2 if layer > 1 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{layer}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
        return self.linear(out)


def load(checkpoint):
    depth = int(re.search(r"resnet(\d+)", checkpoint).group(1))
    model = ResNet((depth - 2) // 6)
    if checkpoint.endswith(".safetensors"):
        sd = load_file(checkpoint)
    else:
        sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd)
    # gati's safetensors omit BatchNorm's num_batches_tracked (unused in inference).
    r = model.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()}, strict=False)
    missing = [k for k in r.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or r.unexpected_keys:
        sys.exit(f"{checkpoint}: missing {missing}, unexpected {r.unexpected_keys}")
    return model.eval()


def main():
    cmd, checkpoint, inputs = sys.argv[1:4]
    model = load(checkpoint)
    x = load_file(inputs).get("x")
    if cmd == "logits":
        torch.set_num_threads(1)
        with torch.inference_mode():
            save_file({"logits": model(x).contiguous()}, sys.argv[4])
    elif cmd == "top1":
        d = load_file(inputs)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        correct = 0
        with torch.inference_mode():
            for i in range(0, len(d["labels"]), 500):
                x = (d["pixels"][i : i + 500].float() / 255.0 - mean) / std
                correct += (model(x).argmax(1) == d["labels"][i : i + 500]).sum().item()
        print(json.dumps({"checkpoint": checkpoint, "images": len(d["labels"]), "top1": correct / len(d["labels"])}))
    elif cmd == "bench":
        bench(model, x, int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
