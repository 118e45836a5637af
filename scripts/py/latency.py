"""Batch-1 eager latency of a PyTorch model, as scripts/bench_base.py compares it with gati's."""
import json

import time

import torch


def bench(model, x, threads, n, channels_last=False):
    """Times `model` on the first `n` rows of `x` one at a time (20 untimed first) under
    torch.inference_mode with `threads` intra-op threads; prints one JSON object."""
    torch.set_num_threads(threads)
    samples = [x[i : i + 1].contiguous() for i in range(min(n, x.shape[0]))]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        samples = [s.to(memory_format=torch.channels_last) for s in samples]
    times = []
    with torch.inference_mode():
        for s in samples[:20]:
            model(s)
        for s in samples:
            t = time.perf_counter()
            model(s)
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    pct = lambda p: times[max(1, -(-len(times) * p // 100)) - 1]  # nearest rank
    print(json.dumps({"threads": threads, "n": len(times), "mean": sum(times) / len(times),
                      "p50": pct(50), "p99": pct(99), "torch": torch.__version__,
                      "channels_last": channels_last}))
