"""Dense forward-KL kernel at tau 2, three ways, in interleaved rounds (median ms): `cur` (statistics, then the
gradient recomputing both exponentials), `one` (statistics and gradient in one compiled graph) and `stored` (the
statistics pass also writes the teacher's unnormalised exponentials, which the gradient reads instead of a third
exponential). Usage: python stored_exponentials_ab.py ROWS VOCAB ROUNDS"""

import sys
import time

import torch

from kinherit.inheritance.rowwise import paired_logsumexp
from kinherit.inheritance.targets import Target


def fused_all(z, scores, scale, labels, alpha, temperature: float):
    """Statistics and gradient in one graph; the gradient written over z."""
    target = scores.float() * scale
    target_peak = target.amax(-1, keepdim=True)
    weights = (target - target_peak).exp()
    target_total = weights.sum(-1, keepdim=True)
    target_lse = target_peak + target_total.log()
    dot = ((weights * target).sum(-1) - (weights * z).sum(-1) / temperature) / target_total.squeeze(-1)
    peak = z.amax(-1, keepdim=True)
    at_top = torch.where(target == target_peak, z, float("-inf")).amax(-1, keepdim=True)
    e = ((z - peak) * 0.5).exp()
    tempered_total = e.sum(-1, keepdim=True)
    total = (e * e).sum(-1, keepdim=True)
    lse = peak + total.log()
    tempered_lse = peak / 2 + tempered_total.log()
    rows = torch.arange(z.shape[0], device=z.device)
    ce = (lse.squeeze(-1) - z[rows, labels]).sum()
    kl = (dot - target_lse.squeeze(-1) + tempered_lse.squeeze(-1)).sum()
    step = alpha * temperature
    z.copy_(e * e / total * (1 - alpha) + e / tempered_total * step - weights / target_total * step)
    return ce, kl * temperature**2, (at_top >= peak).sum().float()


def stored_statistics(z, scores, scale, labels, temperature: float, stored):
    """The statistics, writing the teacher's unnormalised exponentials into `stored` on the way."""
    target = scores.float() * scale
    target_peak = target.amax(-1, keepdim=True)
    weights = (target - target_peak).exp()
    stored.copy_(weights)
    target_total = weights.sum(-1, keepdim=True)
    dot = ((weights * target).sum(-1) - (weights * z).sum(-1) / temperature) / target_total.squeeze(-1)
    peak = z.amax(-1, keepdim=True)
    at_top = torch.where(target == target_peak, z, float("-inf")).amax(-1, keepdim=True)
    lse, tempered_lse = paired_logsumexp(z, peak, temperature)
    rows = torch.arange(z.shape[0], device=z.device)
    ce = (lse.squeeze(-1) - z[rows, labels]).sum()
    kl = (dot - target_peak.squeeze(-1) - target_total.log().squeeze(-1) + tempered_lse.squeeze(-1)).sum()
    return ce, kl * temperature**2, (at_top >= peak).sum().float(), lse, tempered_lse, target_total


def stored_gradient(z, stored, lse, tempered_lse, target_total, alpha, temperature: float):
    """The tau = 2 gradient over z, P_T read from `stored`."""
    step = alpha * temperature
    tempered = z.mul_(0.5).sub_(tempered_lse).exp_()
    plain = tempered.square().mul_((2.0 * tempered_lse - lse).exp() * (1.0 - alpha))
    return z.mul_(step).add_(plain).sub_(stored.mul_(step / target_total))


n, vocab, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
z0 = torch.randn(n, vocab) * 3
scores = torch.randn(n, vocab) * 3
labels = torch.randint(0, vocab, (n,))
rows = torch.arange(n)
z = z0.clone()
stored = torch.zeros_like(z)
alpha = torch.tensor(0.5)
compiled_one = torch.compile(fused_all, dynamic=True)
compiled_statistics = torch.compile(stored_statistics, dynamic=True)
compiled_gradient = torch.compile(stored_gradient, dynamic=True)
target = Target(scores, 0.5)


def current():
    return target.forward_kl_terms(z, labels, 0.5, 2.0, True, 0.0, z)


def one():
    ce, kl, agree = compiled_one(z, scores, 0.5, labels, alpha, 2.0)
    z[rows, labels] -= 0.5
    return ce, kl, agree, z


def stored_variant():
    ce, kl, agree, lse, tempered_lse, total = compiled_statistics(z, scores, 0.5, labels, 2.0, stored)
    grad = compiled_gradient(z, stored, lse, tempered_lse, total, alpha, 2.0)
    grad[rows, labels] -= 0.5
    return ce, kl, agree, grad


variants = {"cur": current, "one": one, "stored": stored_variant}
times = {name: [] for name in variants}
for round_ in range(rounds):
    for name, run in variants.items():
        z.copy_(z0)
        started = time.perf_counter()
        ce, kl, agree, grad = run()
        elapsed = time.perf_counter() - started
        if round_ > 0:
            times[name].append(elapsed)
        else:  # the same loss and gradient from every variant
            print(name, ce.item(), kl.item(), agree.item(), grad.double().abs().sum().item(), flush=True)
for name, values in times.items():
    values.sort()
    print(f"{name} {n}x{vocab} median ms {1000 * values[len(values) // 2]:.1f} min {1000 * values[0]:.1f}")
