"""The divergences between the teachers' and the student's tempered distributions, as written in their
definitions, and the plain autograd path built on them (the reference every fast path is tested against).

P^tau = softmax(logits / tau) in float32. With several teachers, P_T^tau is their weighted mixture
sum_i w_i P_i^tau, computed in log space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kinherit.core.errors import KinheritError
from kinherit.inheritance.kernels.rowwise import agreements

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")


def check_temperature(temperature: float) -> None:
    """Raise a clear error for a temperature that cannot soften a distribution."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise KinheritError(f"temperature must be a positive number, got {temperature}")


def validate_options(temperature: float, divergence: str, beta: float, ki_weight: float = 1.0) -> None:
    """Raise a clear error for a temperature, divergence, JSD beta or KI-term weight that cannot work."""
    check_temperature(temperature)
    if not (ki_weight >= 0.0 and math.isfinite(ki_weight)):
        raise KinheritError(f"--ki_weight must be a finite number >= 0, got {ki_weight}")
    if divergence not in DIVERGENCES:
        raise KinheritError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if divergence == "jsd" and not 0.0 < beta < 1.0:
        raise KinheritError(f"jsd needs 0 < beta < 1, got {beta}")


def normalise_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Teacher mixture weights that sum to one; negative or all-zero weights are errors."""
    if weights is None or len(weights) == 0:
        return [1.0 / count] * count
    if len(weights) != count:
        raise KinheritError(f"{len(weights)} teacher weights given for {count} teachers; give one per teacher")
    if any(w < 0 or not math.isfinite(w) for w in weights):
        raise KinheritError(f"teacher weights must be finite and non-negative, got {list(weights)}")
    total = float(sum(weights))
    if total <= 0:
        raise KinheritError("teacher weights are all zero; give at least one positive weight")
    return [w / total for w in weights]


def tempered_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / tau) in float32."""
    return F.log_softmax(logits.float() / temperature, dim=-1)


def mixture_log_probs(log_probs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """log sum_i w_i p_i, from the teachers' log-probabilities (zero-weight teachers are skipped). Folded one
    teacher at a time with `logaddexp`, one element-wise pass each: stacking the terms for a `logsumexp` over
    teachers made a [teachers, n, V] copy and several more passes, which cost a mixed step half again."""
    terms = [(lp, math.log(w)) for lp, w in zip(log_probs, weights, strict=True) if w > 0]
    mixed = terms[0][0] + terms[0][1]
    for lp, log_weight in terms[1:]:
        mixed = torch.logaddexp(mixed, lp + log_weight)
    return mixed


def divergence_per_position(target_logp: torch.Tensor, student_logp: torch.Tensor, divergence: str,
                            beta: float = 0.5) -> torch.Tensor:
    """D(P_T, P_S) per position (summed over the vocabulary), from float32 log-probabilities.

    - forward_kl: KL(P_T || P_S) = sum_v p_T (log p_T - log p_S)   (the paper's choice)
    - reverse_kl: KL(P_S || P_T) = sum_v p_S (log p_S - log p_T)
    - jsd: with M = beta * P_T + (1 - beta) * P_S,
           JSD_beta = beta * KL(P_T || M) + (1 - beta) * KL(P_S || M)   (beta = 0.5 is the symmetric JSD)
    - tvd: 0.5 * sum_v |p_T - p_S|
    """
    p_target = target_logp.exp()
    if divergence == "forward_kl":
        return torch.where(p_target > 0, p_target * (target_logp - student_logp), 0.0).sum(-1)
    p_student = student_logp.exp()
    if divergence == "reverse_kl":
        return (p_student * (student_logp - target_logp)).sum(-1)
    if divergence == "jsd":
        mix_logp = torch.logsumexp(torch.stack([target_logp + math.log(beta),
                                                student_logp + math.log(1.0 - beta)]), dim=0)
        kl_target = torch.where(p_target > 0, p_target * (target_logp - mix_logp), 0.0).sum(-1)
        kl_student = (p_student * (student_logp - mix_logp)).sum(-1)
        return beta * kl_target + (1.0 - beta) * kl_student
    if divergence == "tvd":
        return 0.5 * (p_target - p_student).abs().sum(-1)
    raise KinheritError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")


def autograd_terms(student_logits: torch.Tensor, target_logp: torch.Tensor | None, labels: torch.Tensor,
                   temperature: float, divergence: str, beta: float,
                   smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of CE, sum of tau^2 * D, count of top-1 agreements) over one chunk of positions, differentiable.

    `target_logp` is the teacher's tempered log-distribution at those positions (None: self-learning);
    `smoothing` is the CE's label smoothing.
    """
    logits = student_logits.float()
    ce = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=smoothing)
    if target_logp is None:
        zero = logits.new_zeros(())
        return ce, zero, zero
    student_logp = tempered_log_probs(logits, temperature)
    ki = divergence_per_position(target_logp, student_logp, divergence, beta).sum() * temperature**2
    z = logits.detach()
    agree = agreements(z, z.amax(-1, keepdim=True), target_logp.argmax(-1, keepdim=True))
    return ce, ki, agree
