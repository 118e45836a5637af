"""Convert a PyTorch checkpoint into a flat safetensors file (run by `gati import-weights`).

Accepts a raw state dict or a dict wrapping one under 'state_dict' or 'model'; strips the
'module.' prefix that nn.DataParallel adds; drops BatchNorm's 'num_batches_tracked' counters,
which inference never reads. Loads with weights_only=True: no pickled code is executed.
"""
import sys

import torch
from safetensors.torch import save_file


def main(src, dst):
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any load failure as one line
        sys.exit(f"cannot read {src} as a PyTorch checkpoint: {type(e).__name__}: {str(e).splitlines()[0]}")
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        sys.exit(f"{src} holds no state dict (expected name -> tensor, or a dict with 'state_dict')")
    out = {}
    for name, t in obj.items():
        if name.startswith("module."):
            name = name[len("module."):]
        if name.endswith("num_batches_tracked"):
            continue
        out[name] = t.detach().to(torch.float32).contiguous()
    save_file(out, dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
