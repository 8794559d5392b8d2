"""Can the dense KI kernel write its gradient over the student's logits (out = z), saving one [positions, V]
tensor per chunk? A kernel reordered so that every read of z comes before the softmaxes write `out`, called
with `out` separate and with `out` = z, compiled or eager, at 682 x 32k (hand-run).

    python alias_check.py alias|separate TAU compiled|eager    (from the repository root)
"""
import sys

import torch

from kinherit.inheritance.rowwise import CompiledKernel, paired_softmaxes, softmax_lse_argmax, subtract_target


def kernel(z, scores, scale, labels, alpha, temperature, smoothing, out=None):
    """aliasing-safe order: everything that reads z before the softmaxes overwrite `out`."""
    rows = torch.arange(z.shape[0], device=z.device)
    target = scores.float() if scale == 1.0 else scores.float() * scale
    p, target_lse, target_top = softmax_lse_argmax(target)
    dot = torch.einsum("ij,ij->i", p, target) - torch.einsum("ij,ij->i", p, z) / temperature
    z_label = z[rows, labels]
    probs, lse, top, q, q_lse = paired_softmaxes(z, temperature, out)
    ce = (lse - z_label).sum()
    kl = (dot - target_lse + q_lse).sum()
    agree = (top == target_top).sum().float()
    step = alpha * temperature
    grad = probs.mul_(1.0 - alpha + step) if temperature == 1.0 else probs.mul_(1.0 - alpha).add_(q.mul_(step))
    grad.sub_(p.mul_(step))
    subtract_target(grad, rows, labels, 1.0 - alpha, smoothing)
    return ce, kl * temperature**2, agree, grad



def rss() -> int:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) // 1024


mode, tau = sys.argv[1], float(sys.argv[2])
n, V = 682, 32768
torch.manual_seed(0)
z0, t = torch.randn(n, V) * 3, torch.randn(n, V) * 3
labels, alpha = torch.randint(0, V, (n,)), torch.tensor(0.4)
K = CompiledKernel(kernel) if sys.argv[3] == "compiled" else kernel
ref = K(z0.clone(), t, 1 / tau, labels, alpha, tau, 0.0, torch.empty(n, V))
ref = [r.clone() for r in ref]
z = z0.clone()
out = z if mode == "alias" else torch.empty(n, V)
for _ in range(2):
    z.copy_(z0)
    before = rss()
    res = K(z, t, 1 / tau, labels, alpha, tau, 0.0, out)
print(mode, tau, sys.argv[3], "rss added MB", rss() - before, "same storage", res[3].data_ptr() == out.data_ptr(),
      "max diff", max((a.float() - b.float()).abs().max().item() for a, b in zip(res, ref, strict=True)))
