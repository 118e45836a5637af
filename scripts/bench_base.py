#!/usr/bin/env python3
"""Batch-1 latency of the Rust base model (`gati eval`) against PyTorch eager on the same inputs
and thread counts, interleaved, median of --repeat runs. Prints a markdown table and one JSON line.

  .venv/bin/python scripts/bench_base.py --model resnet56 --threads 1,2 --samples 500 --repeat 3
  .venv/bin/python scripts/bench_base.py --model face-resnet --threads 1,2 --samples 300 --repeat 3
      (the face ResNet: LFW faces, its TF.js weights, the PyTorch port in scripts/py/face_resnet.py)
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gati", default=os.path.join(ROOT, "target/release/gati"))
    ap.add_argument("--reference-channels-last", action="store_true",
                    help="face-resnet: time PyTorch with channels-last weights and inputs too")
    args = ap.parse_args()
    shared = os.environ.get("GATI_SHARED", os.path.join(ROOT, "../shared"))
    face = args.model == "face-resnet"
    if face:
        ckpt = f"{shared}/weights/face-resnet/face_recognition_model-weights_manifest.json"
        mode = "bench-channels-last" if args.reference_channels_last else "bench"
        reference = [os.path.join(ROOT, "scripts/py/face_resnet.py"), mode, ckpt]
        # `--limit` counts verification pairs per fold half there: enough pairs for the samples.
        limit = str(args.samples // 20 + 1)
    else:
        ckpt = glob.glob(f"{shared}/weights/resnet-cifar10/{args.model}-*.th")[0]
        reference = [os.path.join(ROOT, "scripts/py/cifar_resnet.py"), "bench", ckpt]
        limit = str(args.samples)
    env = dict(os.environ, GATI_QUIET="1")
    tmp = tempfile.mkdtemp()
    inputs = os.path.join(tmp, "x.safetensors")
    runs = {}
    for r in range(args.repeat):
        for t in [int(x) for x in args.threads.split(",")]:
            rust = json.loads(subprocess.check_output(
                [args.gati, "eval", "--model", args.model, "--weights", ckpt, "--limit", limit,
                 "--latency-samples", str(args.samples), "--threads", str(t), "--json",
                 "--save-inputs", inputs], env=env))
            py = json.loads(subprocess.check_output(
                [sys.executable, *reference, inputs, str(t), str(args.samples)], env=env))
            runs.setdefault(t, []).append((rust["latency_ms"], py, rust["stages"]))
            print(f"run {r + 1} threads {t}: rust mean {rust['latency_ms']['mean']:.3f} ms, "
                  f"pytorch mean {py['mean']:.3f} ms", file=sys.stderr)
    rows = []
    print(f"| threads | Rust mean / p50 / p99 (ms) | PyTorch eager mean / p50 / p99 (ms) | ratio (mean) |")
    print("|---|---|---|---|")
    for t, rs in runs.items():
        med = lambda f: statistics.median(f(x) for x in rs)
        rm, rp50, rp99 = med(lambda x: x[0]["mean"]), med(lambda x: x[0]["p50"]), med(lambda x: x[0]["p99"])
        pm, pp50, pp99 = med(lambda x: x[1]["mean"]), med(lambda x: x[1]["p50"]), med(lambda x: x[1]["p99"])
        ratios = [x[0]["mean"] / x[1]["mean"] for x in rs]
        rows.append({"threads": t, "rust": {"mean": rm, "p50": rp50, "p99": rp99},
                     "pytorch": {"mean": pm, "p50": pp50, "p99": pp99}, "ratio_mean": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios)})
        print(f"| {t} | {rm:.3f} / {rp50:.3f} / {rp99:.3f} | {pm:.3f} / {pp50:.3f} / {pp99:.3f} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
    stages = [{"name": s["name"], "ms": s["ms"]} for s in runs[max(runs)][-1][2]]
    print(json.dumps({"model": args.model, "samples": args.samples, "repeat": args.repeat, "rows": rows,
                      "rust_stages_ms": stages}))


if __name__ == "__main__":
    main()
