"""Per-class confidence thresholds fitted to a disagreement target, as the planner fits them, for
the analysis scripts."""
import torch


def thresholds(p, base, targets, classes, min_samples=15):
    """Per-class thresholds on max-probability, one row per target: the lowest confidence whose
    hits (at or above it) disagree with the base model at most that target; 2.0 (never) for a
    class with too few samples."""
    conf, pred = p.max(1)
    out = torch.full((len(targets), classes), 2.0)
    for k in range(classes):
        m = pred == k
        if m.sum() < min_samples:
            continue
        c, order = conf[m].sort(descending=True)
        wrong = (pred[m] != base[m]).float()[order]
        rate = wrong.cumsum(0) / torch.arange(1, len(c) + 1)
        for t, target in enumerate(targets):
            ok = (rate <= target).nonzero()
            if len(ok):
                out[t, k] = c[ok.max()]
    return out


def with_prior(p, base, classes):
    """`p` re-weighted by the class mix of `base` (add-one smoothed) relative to uniform: the
    posterior under that mix for a model trained on every class alike (label-shift adjustment)."""
    counts = torch.bincount(base, minlength=classes).float() + 1.0
    q = p * (counts / counts.sum() * classes)
    return q / q.sum(1, keepdim=True)
