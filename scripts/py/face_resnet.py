"""PyTorch port of dlib's face-recognition ResNet as face-api ships it (TF.js), read straight from
the TF.js manifest and .bin (independently of gati's importer): the parity reference and the
PyTorch eager baseline for the Rust model.

  python face_resnet.py embed MANIFEST INPUTS.safetensors OUT.safetensors
      embeddings of normalised inputs ('x', [N,3,150,150]) written as 'embeddings', batch 1 and
      batched ('embeddings_batched').
  python face_resnet.py bench MANIFEST INPUTS.safetensors THREADS N
      batch-1 eager latency (torch.inference_mode) on the first N inputs; prints one JSON object.
  python face_resnet.py bench-channels-last ...
      the same with weights and inputs in channels-last memory layout (what gati's Rust model uses).
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from latency import bench

BLOCKS = [
    ("conv32_1", False), ("conv32_2", False), ("conv32_3", False),
    ("conv64_down", True), ("conv64_1", False), ("conv64_2", False), ("conv64_3", False),
    ("conv128_down", True), ("conv128_1", False), ("conv128_2", False),
    ("conv256_down", True), ("conv256_1", False), ("conv256_2", False), ("conv256_down_out", True),
]


def read_tfjs(manifest):
    """name -> float32 numpy array, de-quantised as TF.js does (q * scale + min)."""
    groups = json.load(open(manifest))
    out = {}
    for g in groups:
        data = b"".join(open(os.path.join(os.path.dirname(manifest), p), "rb").read() for p in g["paths"])
        at = 0
        for w in g["weights"]:
            n = int(np.prod(w["shape"]))
            q = w.get("quantization")
            if q:
                dt = {"uint8": np.uint8, "uint16": np.uint16}[q["dtype"]]
                raw = np.frombuffer(data, dt, n, at)
                at += n * np.dtype(dt).itemsize
                v = (raw.astype(np.float64) * q["scale"] + q["min"]).astype(np.float32)
            else:
                v = np.frombuffer(data, np.float32, n, at).copy()
                at += 4 * n
            out[w["name"]] = v.reshape(w["shape"])
        assert at == len(data), "manifest and weights disagree"
    return out


class ConvScale(nn.Module):
    """TF's conv2d + bias, then the per-channel scale layer, ReLU where asked."""

    def __init__(self, w, prefix, stride, padding, relu):
        super().__init__()
        filt = torch.from_numpy(w[f"{prefix}/conv/filters"]).permute(3, 2, 0, 1).contiguous()
        self.filters = nn.Parameter(filt, requires_grad=False)
        self.bias = nn.Parameter(torch.from_numpy(w[f"{prefix}/conv/bias"]), requires_grad=False)
        self.sw = nn.Parameter(torch.from_numpy(w[f"{prefix}/scale/weights"]).view(1, -1, 1, 1), requires_grad=False)
        self.sb = nn.Parameter(torch.from_numpy(w[f"{prefix}/scale/biases"]).view(1, -1, 1, 1), requires_grad=False)
        self.stride, self.padding, self.relu = stride, padding, relu

    def forward(self, x):
        y = F.conv2d(x, self.filters, self.bias, self.stride, self.padding) * self.sw + self.sb
        return F.relu(y) if self.relu else y


class Residual(nn.Module):
    def __init__(self, w, name, down):
        super().__init__()
        self.conv1 = ConvScale(w, f"{name}/conv1", 2 if down else 1, 0 if down else 1, True)
        self.conv2 = ConvScale(w, f"{name}/conv2", 1, 1, False)
        self.down = down

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        if not self.down:
            return F.relu(out + x)
        pooled = F.avg_pool2d(x, 2, 2)
        if pooled.shape[2] != out.shape[2]:
            # TF.js appends a zero row and column to the conv branch (bottom, right).
            out = torch.cat([out, out.new_zeros(out.shape[0], out.shape[1], 1, out.shape[3])], 2)
            out = torch.cat([out, out.new_zeros(out.shape[0], out.shape[1], out.shape[2], 1)], 3)
        if pooled.shape[1] != out.shape[1]:
            pooled = torch.cat([pooled, torch.zeros_like(pooled)], 1)
        return F.relu(out + pooled)


class FaceResNet(nn.Module):
    def __init__(self, manifest):
        super().__init__()
        w = read_tfjs(manifest)
        self.stem = ConvScale(w, "conv32_down", 2, 0, True)
        self.blocks = nn.Sequential(*[Residual(w, n, d) for n, d in BLOCKS])
        self.fc = nn.Parameter(torch.from_numpy(w["fc"]), requires_grad=False)

    def forward(self, x):
        out = F.max_pool2d(self.stem(x), 3, 2)
        out = self.blocks(out)
        return out.mean((2, 3)) @ self.fc


def main():
    cmd, manifest, inputs = sys.argv[1:4]
    model = FaceResNet(manifest).eval()
    x = load_file(inputs)["x"]
    if cmd == "embed":
        torch.set_num_threads(1)
        with torch.inference_mode():
            one = torch.cat([model(x[i : i + 1]) for i in range(x.shape[0])])
            batched = model(x)
        save_file({"embeddings": one.contiguous(), "embeddings_batched": batched.contiguous()}, sys.argv[4])
    elif cmd in ("bench", "bench-channels-last"):
        bench(model, x, int(sys.argv[4]), int(sys.argv[5]), channels_last=cmd == "bench-channels-last")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
