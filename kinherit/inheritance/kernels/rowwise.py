"""Row-wise float32 softmax pieces shared by every closed-form loss kernel (dense and top-K targets)."""

from __future__ import annotations

import torch


def softmax_lse(scores: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax, logsumexp) of float32 rows with one exponential pass; the softmax written into `out` when given
    (a reused chunk buffer), else into a new tensor."""
    peak = scores.amax(-1, keepdim=True)
    probs = (scores - peak).exp_() if out is None else torch.sub(scores, peak, out=out).exp_()
    total = probs.sum(-1, keepdim=True)
    probs.div_(total)
    return probs, (peak + total.log()).squeeze(-1)


def agreements(z: torch.Tensor, peak: torch.Tensor, teacher_top: torch.Tensor) -> torch.Tensor:
    """How many rows of student logits `z` (row maxima `peak`, [n, 1]) give the teacher's most likely token
    (`teacher_top`, [n, 1]) their highest logit (ties count): one gather, where comparing the two argmaxes would
    cost the student's an index search over the vocabulary."""
    return (z.gather(1, teacher_top) >= peak).sum().float()


def paired_logsumexp(z: torch.Tensor, peak: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logsumexp(z) and logsumexp(z / tau) of float32 rows (`peak`: their maxima, [n, 1]), kept as [n, 1].

    At tau = 2 and tau = 1/2 (the reference code's default and a common sharp setting) one sum's exponentials
    are the square of the other's, exp(z - m) = exp((z - m) / 2)^2: one exponential per logit instead of two.
    """
    if temperature == 1.0:
        lse = peak + (z - peak).exp_().sum(-1, keepdim=True).log()
        return lse, lse
    if temperature == 2.0:
        exponentials = (z - peak).mul_(0.5).exp_()
        tempered_total = exponentials.sum(-1, keepdim=True)
        total = exponentials.square_().sum(-1, keepdim=True)
    elif temperature == 0.5:
        exponentials = (z - peak).exp_()
        total = exponentials.sum(-1, keepdim=True)
        tempered_total = exponentials.square_().sum(-1, keepdim=True)
    else:
        total = (z - peak).exp_().sum(-1, keepdim=True)
        tempered_total = (z - peak).div_(temperature).exp_().sum(-1, keepdim=True)
    return peak + total.log(), peak / temperature + tempered_total.log()


def logits_into(z: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Where a kernel writes its gradient over the logits `z`: `out` holding a copy of them (`z` itself when
    `out` is `z`; a new copy when None)."""
    if out is None:
        return z.clone()
    return out if out is z else out.copy_(z)


def label_logits(z: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0,
                 row_sums: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, the logit the CE's target picks out: z_y, or with label smoothing eps (target (1 - eps) onehot +
    eps / V) (1 - eps) z_y + eps mean_v z_v, so that CE = sum(lse - label_logits) (as `F.cross_entropy(...,
    label_smoothing=eps)`); the mean from `row_sums` when a kernel has summed the rows already. Read before a
    kernel overwrites `z` with its gradient."""
    picked = z[rows, labels]
    if smoothing == 0.0:
        return picked
    mean = z.mean(-1) if row_sums is None else row_sums / z.shape[-1]
    return (1.0 - smoothing) * picked + smoothing * mean


def cross_entropy_terms(z: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0,
                        out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """(row indices, softmax, CE sum) of float32 logits `z` in eager passes (the softmax in `out` when given,
    which may be `z` itself)."""
    rows = torch.arange(z.shape[0], device=z.device)
    picked = label_logits(z, rows, labels, smoothing)
    probs, lse = softmax_lse(z, out)
    return rows, probs, (lse - picked).sum()


def subtract_target(grad: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | float,
                    smoothing: float = 0.0) -> torch.Tensor:
    """grad -= weight * ((1 - eps) onehot(labels) + eps / V): the target term of d CE / dz, in place."""
    if smoothing == 0.0:
        grad[rows, labels] -= weight
        return grad
    grad.sub_(weight * (smoothing / grad.shape[-1]))
    grad[rows, labels] -= weight * (1.0 - smoothing)
    return grad
