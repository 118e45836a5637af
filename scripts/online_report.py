"""Table (medians over repeats) and hit-rate-over-time plot (plain SVG, first repeat) from
scripts/bench-online.sh's JSON files."""
import glob
import json
import os
import statistics
import sys

out, svg_path = sys.argv[1], sys.argv[2]
reps = {}
for f in glob.glob(os.path.join(out, "*.json")):
    name, rep = os.path.basename(f)[:-5].rsplit("-r", 1)
    config, stream = name.split("-", 1)
    reps.setdefault((stream, config), {})[int(rep)] = json.load(open(f))
runs = {k: v[min(v)] for k, v in reps.items()}
streams = sorted({s for s, _ in reps})
med = statistics.median


def spread(xs, fmt):
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


print("Medians over repeats (min–max); speed-up and p99 ratio per repeat against base-only of the same repeat.\n")
print("| stream | caches | hit rate | mean ms | speed-up vs base | p99 vs base | fidelity loss | trainer CPU s | failed |")
print("|---|---|---|---|---|---|---|---|---|")
for s in streams:
    base = reps.get((s, "base"), {})
    for c in ("static", "online"):
        r = reps.get((s, c), {})
        common = sorted(set(r) & set(base))
        if not common:
            continue
        hit = [100 * r[i]["hit_rate"] for i in common]
        mean = [r[i]["latency_ms"]["mean"] for i in common]
        sp = [base[i]["latency_ms"]["mean"] / r[i]["latency_ms"]["mean"] for i in common]
        p99 = [r[i]["latency_ms"]["p99"] / base[i]["latency_ms"]["p99"] for i in common]
        loss = [100 * (1 - r[i]["agreement"]) for i in common]
        cpu = [r[i].get("trainer_cpu_s", 0) for i in common]
        failed = sum(sum(r[i]["errors"].values()) for i in common)
        print(f"| {s} | {c} | {spread(hit, '{:.1f}%')} | {spread(mean, '{:.2f}')} | {spread(sp, '{:.2f}x')} "
              f"| {spread(p99, '{:.2f}x')} | {spread(loss, '{:.2f}%')} | {med(cpu):.1f} | {failed} |")
    if base:
        mean = [b["latency_ms"]["mean"] for b in base.values()]
        print(f"| {s} | base only | - | {spread(mean, '{:.2f}')} | 1.00x | 1.00x | 0 | - "
              f"| {sum(sum(b['errors'].values()) for b in base.values())} |")

# One panel per stream: hit rate per window, static vs online.
W, H, PAD = 460, 220, 40
panels = []
for i, s in enumerate(streams):
    x0 = i * (W + 20)
    parts = [f'<g transform="translate({x0},0)">',
             f'<rect x="{PAD}" y="10" width="{W - PAD - 10}" height="{H - 50}" fill="none" stroke="#888"/>',
             f'<text x="{W / 2}" y="{H - 8}" font-size="12" text-anchor="middle">{s}: requests (windows of 200)</text>']
    for y in (0, 0.5, 1):
        yy = 10 + (H - 50) * (1 - y)
        parts.append(f'<text x="{PAD - 4}" y="{yy + 4}" font-size="10" text-anchor="end">{int(100 * y)}%</text>')
    for c, color in (("static", "#1f77b4"), ("online", "#d62728")):
        r = runs.get((s, c))
        if not r or not r.get("timeline"):
            continue
        tl = r["timeline"]
        n = tl[-1]["first_request"] + tl[-1]["requests"]
        pts = " ".join(f"{PAD + (W - PAD - 10) * (w['first_request'] + w['requests'] / 2) / n:.1f},"
                       f"{10 + (H - 50) * (1 - w['hit_rate']):.1f}" for w in tl)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
    parts.append(f'<text x="{PAD + 8}" y="26" font-size="11" fill="#1f77b4">static</text>')
    parts.append(f'<text x="{PAD + 8}" y="40" font-size="11" fill="#d62728">online</text>')
    parts.append("</g>")
    panels.append("\n".join(parts))
width = len(streams) * (W + 20)
with open(svg_path, "w") as f:
    f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" font-family="DejaVu Sans, sans-serif">\n'
            f'<text x="10" y="{H / 2}" font-size="11" transform="rotate(-90 10 {H / 2})">hit rate</text>\n'
            + "\n".join(panels) + "\n</svg>\n")
print(f"\nplot: {svg_path}")
