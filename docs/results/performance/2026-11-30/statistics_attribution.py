"""What the dense KI statistics pass spends its time on (hand-run): the compiled kernel as it is, and variants
without the agreement's masked max, without the dot products, with one dot product instead of two, and the
teacher's logsumexp and self-learning's statistics alone, in interleaved rounds at tau = 2.
Usage: python statistics_attribution.py ROWS VOCAB (e.g. 256 131072)"""
import statistics
import sys
import time

import torch

from kinherit.inheritance import targets
from kinherit.inheritance.rowwise import label_logits, paired_logsumexp

ROWS, VOCAB = int(sys.argv[1]), int(sys.argv[2])


def variant(masked: bool = True, dots: bool = True, one_dot: bool = False):
    """The statistics pass with the chosen parts (the others replaced by a cheap row sum so the outputs exist)."""
    def kernel(z, scores, scale, labels, temperature, smoothing):
        target = scores.float() * scale
        target_peak = target.amax(-1, keepdim=True)
        weights = (target - target_peak).exp()
        target_total = weights.sum(-1, keepdim=True)
        target_lse = target_peak + target_total.log()
        if one_dot:
            dot = (weights * (target - z / temperature)).sum(-1) / target_total.squeeze(-1)
        elif dots:
            dot = (torch.einsum("ij,ij->i", weights, target)
                   - torch.einsum("ij,ij->i", weights, z) / temperature) / target_total.squeeze(-1)
        else:
            dot = target_total.squeeze(-1)
        peak = z.amax(-1, keepdim=True)
        if masked:
            agree = (torch.where(target == target_peak, z, float("-inf")).amax(-1, keepdim=True) >= peak).sum()
        else:
            agree = peak.sum()
        lse, tempered_lse = paired_logsumexp(z, peak, temperature)
        rows = torch.arange(z.shape[0], device=z.device)
        ce = (lse.squeeze(-1) - label_logits(z, rows, labels, smoothing)).sum()
        kl = (dot - target_lse.squeeze(-1) + tempered_lse.squeeze(-1)).sum()
        return ce, kl * temperature**2, agree, lse, tempered_lse, target_lse
    return kernel


def teacher_logsumexp(z, scores, scale, labels, temperature, smoothing):
    """The teacher's tempered logsumexp alone."""
    target = scores.float() * scale
    target_peak = target.amax(-1, keepdim=True)
    return target_peak + (target - target_peak).exp().sum(-1, keepdim=True).log()


def self_statistics(z, scores, scale, labels, temperature, smoothing):
    """Self-learning's statistics pass (the student's logsumexp and CE)."""
    return targets._COMPILED_CE_STATISTICS.kernel(z, labels, smoothing)


torch.manual_seed(0)
z, t, labels = torch.randn(ROWS, VOCAB), torch.randn(ROWS, VOCAB), torch.randint(0, VOCAB, (ROWS,))
kernels = {"as it is": targets._COMPILED_STATISTICS.kernel, "no masked max": variant(masked=False),
           "no dot products": variant(dots=False), "one dot product": variant(one_dot=True),
           "one dot product, no masked max": variant(masked=False, one_dot=True),
           "teacher logsumexp alone": teacher_logsumexp, "self-learning statistics": self_statistics}
compiled = {name: torch.compile(kernel, dynamic=True) for name, kernel in kernels.items()}
for function in compiled.values():
    function(z, t, 0.5, labels, 2.0, 0.0)
times = {name: [] for name in compiled}
for _ in range(9):
    for name, function in compiled.items():
        started = time.perf_counter()
        function(z, t, 0.5, labels, 2.0, 0.0)
        times[name].append(time.perf_counter() - started)
for name, spent in times.items():
    print(f"{name}: {statistics.median(spent) * 1e3:.1f} ms")
