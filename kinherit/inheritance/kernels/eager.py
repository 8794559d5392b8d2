"""The closed-form loss kernels in plain torch passes: the reference the compiled and native backends are tested
against, and the functions the compiled backend hands to `torch.compile`.

Each kernel comes in two steps: row statistics that only read the logits, then the gradient element by element,
written over the logits (or a reused buffer), so that a compiled kernel holds no [rows, V] temporary.
"""

from __future__ import annotations

import torch

from kinherit.inheritance.kernels.rowwise import agreements, label_logits, paired_logsumexp


def forward_kl_statistics(z: torch.Tensor, scores: torch.Tensor, scale: float, labels: torch.Tensor,
                           temperature: float, smoothing: float) -> tuple[torch.Tensor, ...]:
    """(CE sum, tau^2 * KL sum, top-1 agreements) of float32 student logits `z` against P_T = softmax(scores *
    scale), and the per-row logsumexps the gradient needs (student at 1 and at tau, teacher): reads only."""
    target = scores.float() if scale == 1.0 else scores.float() * scale
    target_peak = target.amax(-1, keepdim=True)
    weights = (target - target_peak).exp_()  # P_T unnormalised
    target_total = weights.sum(-1, keepdim=True)
    target_lse = target_peak + target_total.log()
    # sum_v p_T (target - z / tau), the cross term of KL(P_T || P_S^tau)
    dot = (torch.einsum("ij,ij->i", weights, target)
           - torch.einsum("ij,ij->i", weights, z) / temperature) / target_total.squeeze(-1)
    del weights
    peak = z.amax(-1, keepdim=True)
    # the student's highest logit among the teacher's top tokens: a masked max in the pass that reads both rows,
    # where the teacher's argmax would be a pass of its own
    at_teacher_top = torch.where(target == target_peak, z, float("-inf")).amax(-1, keepdim=True)
    del target  # the eager kernel frees the teacher's temporaries before the student's
    lse, tempered_lse = paired_logsumexp(z, peak, temperature)
    rows = torch.arange(z.shape[0], device=z.device)
    ce = (lse.squeeze(-1) - label_logits(z, rows, labels, smoothing)).sum()
    kl = (dot - target_lse.squeeze(-1) + tempered_lse.squeeze(-1)).sum()
    agree = (at_teacher_top >= peak).sum().float()  # as `agreements`
    return ce, kl * temperature**2, agree, lse, tempered_lse, target_lse


def forward_kl_gradient_(z: torch.Tensor, scores: torch.Tensor, scale: float, lse: torch.Tensor,
                          tempered_lse: torch.Tensor, target_lse: torch.Tensor, alpha: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """Overwrite float32 logits `z` with (1 - alpha) softmax(z) + alpha tau (softmax(z / tau) - P_T): d total / dz
    but for the label term, from the row logsumexps of `forward_kl_statistics`. Element by element, so that
    `torch.compile` writes it over z in one fused pass with no [chunk, V] temporary."""
    step = alpha * temperature
    teacher = (scores.float() * scale).sub_(target_lse).exp_().mul_(step)
    if temperature == 1.0:
        z.sub_(lse).exp_().mul_(1.0 - alpha + step)
    elif temperature == 2.0:  # softmax(z) = softmax(z / 2)^2 exp(2 lse_2 - lse): a square, not an exponential
        tempered = z.mul_(0.5).sub_(tempered_lse).exp_()
        plain = tempered.square().mul_((2.0 * tempered_lse - lse).exp() * (1.0 - alpha))
        z.mul_(step).add_(plain)
    elif temperature == 0.5:  # softmax(2 z) = softmax(z)^2 exp(2 lse - lse_1/2)
        plain = z.sub_(lse).exp_()
        tempered = plain.square().mul_((2.0 * lse - tempered_lse).exp() * step)
        z.mul_(1.0 - alpha).add_(tempered)
    else:
        tempered = (z / temperature).sub_(tempered_lse).exp_().mul_(step)
        z.sub_(lse).exp_().mul_(1.0 - alpha).add_(tempered)
    return z.sub_(teacher)


def cross_entropy_statistics(z: torch.Tensor, labels: torch.Tensor, smoothing: float
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE sum, per-row logsumexp [n, 1]) of float32 logits `z`: reads only (no argmax: self-learning has no
    teacher to agree with)."""
    lse, _ = paired_logsumexp(z, z.amax(-1, keepdim=True), 1.0)
    rows = torch.arange(z.shape[0], device=z.device)
    return (lse.squeeze(-1) - label_logits(z, rows, labels, smoothing)).sum(), lse


def softmax_(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Overwrite float32 logits `z` with softmax(z), from their row logsumexps: one fused pass when compiled."""
    return z.sub_(lse).exp_()


def topk_statistics(z: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, temperature: float,
                     smoothing: float) -> tuple[torch.Tensor, ...]:
    """(CE sum, top-1 agreements with the teacher, logsumexp of z and of z / tau ([n, 1]), the logits at the
    teacher's top-K [n, K]) of float32 logits `z`: reads only."""
    peak = z.amax(-1, keepdim=True)
    lse, tempered_lse = paired_logsumexp(z, peak, temperature)
    rows = torch.arange(z.shape[0], device=z.device)
    ce = (lse.squeeze(-1) - label_logits(z, rows, labels, smoothing)).sum()
    return ce, agreements(z, peak, ids[:, :1]), lse, tempered_lse, z.gather(1, ids)


def tail_logsumexp(masked: torch.Tensor, temperature: float) -> torch.Tensor:
    """logsumexp(z / tau) over the tokens off the teacher's top-K (set to -inf in `masked`), [n, 1]."""
    return torch.logsumexp(masked / temperature, dim=-1, keepdim=True)


def topk_gradient_(z: torch.Tensor, lse: torch.Tensor, tempered_lse: torch.Tensor, shift: torch.Tensor,
                    p_tail: torch.Tensor, alpha: torch.Tensor, temperature: float, smoothing: float) -> torch.Tensor:
    """Overwrite `z` with (1 - alpha) (softmax(z) - eps / V) + alpha tau (softmax(z / tau) - p_tail exp(z / tau -
    shift)): the gradient off the top-K and the label (tail mode: the student's tail in its own proportions).

    Both tempered terms are e = exp(z / tau - shift) times a row factor, and softmax(z) is e (tau = 1), e^2
    (tau = 2) or e' (tau = 1/2, with e = e'^2) times another: one exponential per logit instead of three. Scaled
    at `shift` (the tail's tempered logsumexp, at most the whole row's), e <= 1 on the tail and every row factor
    is bounded. Element by element, so that `torch.compile` writes it over z in one fused pass."""
    tempered = ((shift - tempered_lse).exp() - p_tail) * (alpha * temperature)  # times e: the KI part
    if temperature == 1.0:  # softmax(z) = e exp(shift - lse)
        grad = z.sub_(shift).exp_().mul_((1.0 - alpha) * (shift - lse).exp() + tempered)
    elif temperature == 2.0:  # softmax(z) = e^2 exp(2 shift - lse)
        e = z.mul_(0.5).sub_(shift).exp_()
        plain = e.square().mul_((1.0 - alpha) * (2.0 * shift - lse).exp())
        grad = e.mul_(tempered).add_(plain)
    elif temperature == 0.5:  # e' = exp(z - shift / 2): softmax(z) = e' exp(shift / 2 - lse), e = e'^2
        root = z.sub_(0.5 * shift).exp_()
        ki = root.square().mul_(tempered)
        grad = root.mul_((1.0 - alpha) * (0.5 * shift - lse).exp()).add_(ki)
    else:
        plain = (z - lse).exp_().mul_(1.0 - alpha)
        grad = z.div_(temperature).sub_(shift).exp_().mul_(tempered).add_(plain)
    if smoothing:
        grad.sub_((1.0 - alpha) * smoothing / z.shape[-1])
    return grad

