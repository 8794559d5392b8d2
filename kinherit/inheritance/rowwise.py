"""Row-wise float32 softmax pieces shared by the fused loss kernels (dense and top-K targets)."""

from __future__ import annotations

import torch


def softmax_lse_argmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(softmax, logsumexp, argmax) of float32 rows with one exponential pass."""
    peak, top = scores.max(-1, keepdim=True)
    probs = (scores - peak).exp_()
    total = probs.sum(-1, keepdim=True)
    probs.div_(total)
    return probs, (peak + total.log()).squeeze(-1), top.squeeze(-1)


def cross_entropy_terms(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(row indices, softmax, logsumexp, argmax, CE sum) of float32 logits `z`: what every fused path needs."""
    rows = torch.arange(z.shape[0], device=z.device)
    probs, lse, top = softmax_lse_argmax(z)
    return rows, probs, lse, top, (lse - z[rows, labels]).sum()
