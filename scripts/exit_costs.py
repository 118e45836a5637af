#!/usr/bin/env python3
"""Where a served stream's time goes, from `gati bench`'s records.jsonl.

For every repeat: the speed-up (base model alone's mean over gati's), and per exit (memory at the
stem, a learned cache's layer, `miss`, `input` for the frontend's exact repeats) how many requests
left there, their mean latency, and how much slower or faster each was than the base model alone
on the same request in the same repeat. A positive excess on misses is time gati adds to requests
it cannot answer early (docs/results.md, "Keeping the base worker's core awake").

    python3 scripts/exit_costs.py REPORT_DIR/records.jsonl [GATI_CONFIG]   (default thrift-inline)
"""

import collections
import json
import statistics as st
import sys


def main() -> None:
    path = sys.argv[1]
    config = sys.argv[2] if len(sys.argv) > 2 else "thrift-inline"
    recs = [json.loads(line) for line in open(path)]
    key = lambda r: (r["model"], r["stream"], r["repeat"])
    base = {key(r): r for r in recs if r["config"] == "thrift-base-only"}
    excess = collections.defaultdict(list)
    count = {}
    speedups = []
    for g in (r for r in recs if r["config"] == config):
        b = base.get(key(g))
        if b is None:
            continue
        speedups.append(st.mean(b["ms"]) / st.mean(g["ms"]))
        by = collections.defaultdict(list)
        for i, (layer, ms) in enumerate(zip(g["layer"], g["ms"])):
            by[layer or "miss"].append((ms - b["ms"][i], ms))
        for layer, v in by.items():
            excess[layer].append((st.mean(d for d, _ in v), st.mean(m for _, m in v)))
            count[layer] = len(v)
    if not speedups:
        sys.exit(f"{path}: no {config} run with a base-only run beside it")
    print(f"speed-up per repeat: {' '.join(f'{s:.2f}' for s in speedups)}; median {st.median(speedups):.2f}x")
    print("exit       requests  mean ms  excess over the base model alone (mean of repeats, min..max)")
    for layer, v in sorted(excess.items(), key=lambda kv: -count[kv[0]]):
        d = [x for x, _ in v]
        print(f"{layer:10s} {count[layer]:8d} {st.mean(m for _, m in v):8.2f}  "
              f"{st.mean(d):+.2f} ms ({min(d):+.2f}..{max(d):+.2f})")


if __name__ == "__main__":
    main()
