"""Fine-tune a pretrained CIFAR ResNet on the pixels gati serves (the JPEG training split).

  python finetune_base.py --checkpoint resnet56-4bfd9763.th --train train.safetensors \
      --test test.safetensors --out weights.safetensors [--epochs 3] [--fit-images 45000] [--seed 0]

The pixel files come from `gati export-data` ('pixels' u8 [N,3,32,32], 'labels' i64 [N]), so training
sees exactly the decoded pixels the Rust models serve. Only the first --fit-images training images
are used (gati's image-folder order is round-robin over classes, so that is the first 4,500 of every
class); the rest stay unseen, for calibrating caches on data the base model never fit.

Plain SGD with momentum, cosine learning rate, random crop (4-pixel zero padding) and horizontal
flip. Writes the weights in the key layout gati loads and prints one JSON object (top-1 before and
after, the settings, seconds) on stdout.

--exit-weight W > 0 trains the base *with early exits* (as Shallow-Deep Networks do): a throw-away
head of gati's conv-pool shape (1x1 conv to 32 channels, BN, ReLU, 4x4 average pool, linear) after
every residual block but the last, each adding W / (number of heads) times its cross-entropy to the
loss. Only the base's weights are saved: gati trains its own caches on the result, as on any base;
the heads only teach the early blocks features a small head can read.

--train-frames FILE (from `gati export-data --video-frames SEED`: one camera frame of every
training image) fits the base to camera traffic: each sample of a batch is that frame instead of
the image with probability --frame-share. --test-frames FILE (the same for the test split) adds
top-1 on frames and the share of test images whose answer the frame changes, before and after.
--consistency W (with --train-frames) trains on every image *and* its frame, adding W times the
Jensen-Shannon divergence between their predictions (AugMix's consistency loss; stability training
in the sense of Zheng et al. 2016): the model learns to give a frame its image's answer, which is
what a cache of earlier answers needs.

--exit-target final (with --exit-weight) trains those heads toward the final layer's own
probabilities (detached, self-distillation as in "Be Your Own Teacher") instead of the labels:
gati's caches are judged by agreement with the base model, not by the labels.
"""
import argparse
import hashlib
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cifar_resnet import load

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalise(pixels):
    return (pixels.float() / 255.0 - MEAN) / STD


def augment(pixels, gen):
    """Random 32x32 crop of the 4-pixel zero-padded image, then a horizontal flip with p = 1/2."""
    n, _, h, w = pixels.shape
    padded = F.pad(pixels, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, 3, h, w + 8)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, 3, h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


@torch.inference_mode()
def top1(model, pixels, labels, batch=500):
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        logits = model(normalise(pixels[i : i + batch]))
        correct += (logits.argmax(1) == labels[i : i + batch]).sum().item()
    return correct / len(labels)


class ExitHeads(torch.nn.Module):
    """One conv-pool head after each residual block but the last."""

    def __init__(self, model, classes=10):
        super().__init__()
        self.blocks = [b for layer in (model.layer1, model.layer2, model.layer3) for b in layer]
        widths = [b.bn2.num_features for b in self.blocks][:-1]
        self.heads = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.Conv2d(c, 32, 1, bias=False),
                torch.nn.BatchNorm2d(32),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(4),
                torch.nn.Flatten(),
                torch.nn.Linear(512, classes),
            )
            for c in widths
        )

    def forward(self, model, x):
        """The base's logits and every head's, in block order."""
        out = F.relu(model.bn1(model.conv1(x)))
        exits = []
        for i, block in enumerate(self.blocks):
            out = block(out)
            if i < len(self.heads):
                exits.append(self.heads[i](out))
        out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
        return model.linear(out), exits


def consistent_loss(model, images, frames, labels, weight, gen):
    """Cross-entropy on both views plus `weight` x the Jensen-Shannon divergence between them."""
    logits = model(normalise(augment(torch.cat([images, frames]), gen)))
    clean, framed = logits.chunk(2)
    pc, pf = F.softmax(clean, 1), F.softmax(framed, 1)
    mixed = ((pc + pf) / 2).clamp(1e-7, 1).log()
    jsd = (F.kl_div(mixed, pc, reduction="batchmean") + F.kl_div(mixed, pf, reduction="batchmean")) / 2
    return (F.cross_entropy(clean, labels) + F.cross_entropy(framed, labels)) / 2 + weight * jsd


@torch.inference_mode()
def answers(model, pixels, batch=500):
    model.eval()
    return torch.cat([model(normalise(pixels[i : i + batch])).argmax(1) for i in range(0, len(pixels), batch)])


def frame_report(model, tx, ty, fx):
    """Top-1 on the test frames and the share of test images whose answer their frame changes."""
    clean, framed = answers(model, tx), answers(model, fx)
    return {"top1_frames": (framed == ty).float().mean().item(),
            "changed_by_frame": (framed != clean).float().mean().item()}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--fit-images", type=int, default=45000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--exit-weight", type=float, default=0.0,
                   help="total weight of the early-exit heads' losses (0: plain fine-tuning)")
    p.add_argument("--exit-target", choices=["labels", "final"], default="labels",
                   help="what the early-exit heads learn: the labels, or the final layer's probabilities")
    p.add_argument("--train-frames", help="camera frames of the training images (gati export-data --video-frames)")
    p.add_argument("--frame-share", type=float, default=0.5, help="chance a sample is its frame (with --train-frames)")
    p.add_argument("--consistency", type=float, default=0.0,
                   help="weight of the image/frame Jensen-Shannon consistency loss (with --train-frames)")
    p.add_argument("--test-frames", help="camera frames of the test images, for the stability report")
    a = p.parse_args()
    if a.consistency > 0 and (not a.train_frames or a.exit_weight > 0):
        sys.exit("--consistency needs --train-frames and no --exit-weight")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    train, test = load_file(a.train), load_file(a.test)
    x, y = train["pixels"][: a.fit_images], train["labels"][: a.fit_images]
    tx, ty = test["pixels"], test["labels"]
    frames = load_file(a.train_frames)["pixels"][: a.fit_images] if a.train_frames else None
    fx = load_file(a.test_frames)["pixels"] if a.test_frames else None
    if len(y) < a.fit_images:
        sys.exit(f"{a.train} has {len(y)} images, fewer than --fit-images {a.fit_images}")

    model = load(a.checkpoint)
    before = top1(model, tx, ty)
    print(f"top-1 before: {before:.4f}", file=sys.stderr)
    frames_before = frame_report(model, tx, ty, fx) if fx is not None else None
    if frames_before:
        print(f"frames before: {frames_before}", file=sys.stderr)
    exits = ExitHeads(model).train() if a.exit_weight > 0 else None
    params = list(model.parameters()) + (list(exits.parameters()) if exits else [])
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=a.weight_decay, nesterov=True)
    steps_per_epoch = math.ceil(len(y) / a.batch)
    total = steps_per_epoch * a.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    started = time.time()
    per_epoch = []
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * a.batch : (step + 1) * a.batch]
            if a.consistency > 0:
                loss = consistent_loss(model, x[idx], frames[idx], y[idx], a.consistency, gen)
            else:
                pixels = x[idx]
                if frames is not None:
                    framed = torch.rand(len(idx), generator=gen) < a.frame_share
                    pixels = torch.where(framed.view(-1, 1, 1, 1), frames[idx], pixels)
                inputs = normalise(augment(pixels, gen))
                if exits is None:
                    loss = F.cross_entropy(model(inputs), y[idx])
                else:
                    logits, early = exits(model, inputs)
                    target = y[idx] if a.exit_target == "labels" else F.softmax(logits.detach(), dim=1)
                    loss = F.cross_entropy(logits, y[idx]) + a.exit_weight / len(early) * sum(
                        F.cross_entropy(e, target) for e in early)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
            if step % 50 == 0:
                print(f"epoch {epoch + 1}/{a.epochs} step {step}/{steps_per_epoch} loss {loss.item():.3f} "
                      f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        acc = top1(model, tx, ty)
        per_epoch.append({"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch, "test_top1": acc})
        print(f"epoch {epoch + 1}: loss {loss_sum / steps_per_epoch:.4f}, test top-1 {acc:.4f}", file=sys.stderr)

    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, a.out)
    print(json.dumps({
        "checkpoint": a.checkpoint,
        "checkpoint_sha256": sha256(a.checkpoint),
        "train_pixels_sha256": sha256(a.train),
        "fit_images": a.fit_images,
        "epochs": a.epochs,
        "batch": a.batch,
        "lr": a.lr,
        "weight_decay": a.weight_decay,
        "seed": a.seed,
        "exit_weight": a.exit_weight,
        "exit_target": a.exit_target,
        "train_frames_sha256": sha256(a.train_frames) if a.train_frames else None,
        "frame_share": a.frame_share if a.train_frames and not a.consistency else None,
        "consistency": a.consistency,
        "frames_before": frames_before,
        "frames_after": frame_report(model, tx, ty, fx) if fx is not None else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "top1_before": before,
        "top1_after": per_epoch[-1]["test_top1"] if per_epoch else before,
        "per_epoch": per_epoch,
        "seconds": time.time() - started,
        "out": a.out,
        "out_sha256": sha256(a.out),
    }))


if __name__ == "__main__":
    main()
