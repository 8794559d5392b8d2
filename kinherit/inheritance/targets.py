"""Teacher targets for one chunk of positions, and the protocol every teacher source implements.

A teacher source (live teachers, a mixture, domain-routed teachers, sharded teachers, the teacher
cache, or logits handed to the loss) turns a batch into a function `positions -> target`; the loss
asks it for the target of one chunk of flattened positions at a time. A target knows the closed-form
forward-KL terms against it (`forward_kl_terms`); a dense target also gives its full log-distribution
for the other divergences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from kinherit.errors import KinheritError
from kinherit.inheritance import native
from kinherit.inheritance.divergences import mixture_log_probs, tempered_log_probs
from kinherit.inheritance.rowwise import (
    CompiledKernel,
    cross_entropy_terms,
    label_logits,
    logits_into,
    paired_logsumexp,
    subtract_target,
)
from kinherit.inheritance.topk import TopKTarget

TargetFn = Callable[[torch.Tensor], "Target | TopKTarget"]


class TeacherSource(Protocol):
    """Where the teacher distribution comes from: live teachers (`TeacherSet`) or a `TeacherCache`."""

    def targets(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, temperature: float,
                vocab: int) -> AbstractContextManager[TargetFn]:
        """For one batch (`labels` flattened, as the loss sees them): a function from flattened positions to
        their target, valid inside the context (a sharded teacher frees its gathered weights on exit)."""
        ...


def _forward_kl_statistics(z: torch.Tensor, scores: torch.Tensor, scale: float, labels: torch.Tensor,
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


def _forward_kl_gradient_(z: torch.Tensor, scores: torch.Tensor, scale: float, lse: torch.Tensor,
                          tempered_lse: torch.Tensor, target_lse: torch.Tensor, alpha: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """Overwrite float32 logits `z` with (1 - alpha) softmax(z) + alpha tau (softmax(z / tau) - P_T): d total / dz
    but for the label term, from the row logsumexps of `_forward_kl_statistics`. Element by element, so that
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


_COMPILED_STATISTICS = CompiledKernel(_forward_kl_statistics)
_COMPILED_GRADIENT = CompiledKernel(_forward_kl_gradient_)


def _native_forward_kl_terms(z: torch.Tensor, scores: torch.Tensor, scale: float, labels: torch.Tensor,
                             alpha: float, temperature: float, smoothing: float,
                             out: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """`Target.forward_kl_terms` by the native kernels: the row statistics in one read of both rows, then the
    gradient over `out` in one more (float32 CPU rows only, see `native.usable`)."""
    kernels = native.kernels()
    stats = kernels.forward_kl_statistics(z, scores, scale, temperature)
    rows = torch.arange(z.shape[0], device=z.device)
    ce = (stats[:, 1] - label_logits(z, rows, labels, smoothing, stats[:, 6])).sum()
    kl = (stats[:, 4] - stats[:, 3] + stats[:, 2]).sum() * temperature**2
    agree = (stats[:, 5] >= stats[:, 0]).sum().float()  # as `agreements`
    grad = logits_into(z, out)
    kernels.forward_kl_gradient_(grad, scores, scale, stats, alpha, temperature)
    return ce, kl, agree, subtract_target(grad, rows, labels, 1.0 - alpha, smoothing)


def _cross_entropy_statistics(z: torch.Tensor, labels: torch.Tensor, smoothing: float
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE sum, per-row logsumexp [n, 1]) of float32 logits `z`: reads only (no argmax: self-learning has no
    teacher to agree with)."""
    lse, _ = paired_logsumexp(z, z.amax(-1, keepdim=True), 1.0)
    rows = torch.arange(z.shape[0], device=z.device)
    return (lse.squeeze(-1) - label_logits(z, rows, labels, smoothing)).sum(), lse


def _softmax_(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Overwrite float32 logits `z` with softmax(z), from their row logsumexps: one fused pass when compiled."""
    return z.sub_(lse).exp_()


_COMPILED_CE_STATISTICS = CompiledKernel(_cross_entropy_statistics)
_COMPILED_SOFTMAX = CompiledKernel(_softmax_)


@torch.no_grad()
def self_learning_terms(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0,
                        out: torch.Tensor | None = None, compiled: bool = False) -> tuple[torch.Tensor, ...]:
    """(CE sum, 0, 0, d CE / d logits) in closed form: softmax(z) - the (smoothed) one-hot label, the
    gradient written into `out` when given (a reused float32 chunk buffer, or the logits themselves).
    `compiled`: two fused passes (row statistics, then the softmax over `out`) instead of five eager ones, by the
    native kernels where they apply, else `torch.compile`d ones."""
    z = logits.float()
    zero = z.new_zeros(())
    if compiled and native.usable(z):
        rows = torch.arange(z.shape[0], device=z.device)
        stats = native.kernels().row_statistics(z, 1.0)
        lse = stats[:, 1].contiguous()
        ce = (lse - label_logits(z, rows, labels, smoothing, stats[:, 3])).sum()
        probs = native.softmax_(logits_into(z, out), lse)
    elif compiled:
        ce, lse = _COMPILED_CE_STATISTICS(z, labels, smoothing)
        probs = _COMPILED_SOFTMAX(logits_into(z, out), lse)
        rows = torch.arange(z.shape[0], device=z.device)
    else:
        rows, probs, ce = cross_entropy_terms(z, labels, smoothing, out)
    subtract_target(probs, rows, labels, 1.0, smoothing)
    return ce, zero, zero, probs


@dataclass
class Target:
    """A teacher distribution over one chunk of positions: P_T = softmax(scores * scale), in float32.

    For one teacher `scores` are its raw logits (any float dtype) and `scale` is 1 / tau, so nothing is
    copied before the loss kernel; for a mixture `scores` are the mixture's log-probabilities and `scale` 1.
    """

    scores: torch.Tensor
    scale: float

    @property
    def log_probs(self) -> torch.Tensor:
        """log P_T in float32 (materialised)."""
        return F.log_softmax(self.scores.float() * self.scale, dim=-1)

    @classmethod
    def from_logits(cls, logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float) -> Target:
        """The tempered target of one teacher, or the weighted mixture of several (in log space)."""
        active = [(z, w) for z, w in zip(logits, weights, strict=True) if w > 0]
        if len(active) == 1:
            return cls(active[0][0], 1.0 / temperature)
        mixed = mixture_log_probs([tempered_log_probs(z, temperature) for z, _ in active], [w for _, w in active])
        return cls(mixed, 1.0)

    @classmethod
    def assemble(cls, parts: Sequence[tuple[torch.Tensor, Target]], rows: int) -> Target:
        """One target from targets of disjoint row subsets (domain routing); all parts share one scale."""
        first = parts[0][1]
        if any(part.scale != first.scale for _, part in parts):
            raise KinheritError("routed targets must share one temperature")
        scores = first.scores.new_empty(rows, first.scores.shape[-1])
        for index, part in parts:
            scores[index] = part.scores
        return cls(scores, first.scale)

    @torch.no_grad()
    def forward_kl_terms(self, logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float,
                         compiled: bool = False, smoothing: float = 0.0,
                         out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The forward-KL loss terms and their gradient with respect to the logits, in closed form.

        Returns (CE sum, tau^2 * KL sum, top-1 agreements, d total / d logits) for
        total = (1 - alpha) * CE + alpha * tau^2 * KL(P_T^tau || P_S^tau), using
        KL = sum_v p_T * (scores_T - z / tau) - lse_T + lse(z / tau),
        d CE / dz = softmax(z) - onehot and d tau^2 KL / dz = tau * (softmax(z / tau) - p_T).
        Two steps: row statistics that only read the logits, then the gradient element by element, written
        over `out` (a reused float32 [chunk, V] buffer, or the float32 logits themselves; a new tensor when
        None). This makes a few passes over the [chunk, V] tensor where autograd makes several dozen;
        `compiled` fuses each step, which then holds no [chunk, V] temporary at all: the native kernels (one read
        of each row per step) where they apply, else `torch.compile`. `smoothing` smooths the CE's one-hot label.
        """
        z = logits.float()
        if compiled and native.usable(z, self.scores):
            return _native_forward_kl_terms(z, self.scores, self.scale, labels, alpha, temperature, smoothing, out)
        statistics, gradient = (_COMPILED_STATISTICS, _COMPILED_GRADIENT) if compiled else \
            (_forward_kl_statistics, _forward_kl_gradient_)
        ce, kl, agree, lse, tempered_lse, target_lse = statistics(z, self.scores, self.scale, labels, temperature,
                                                                  smoothing)
        out = logits_into(z, out)
        alpha_t = torch.tensor(alpha, device=z.device)
        grad = gradient(out, self.scores, self.scale, lse, tempered_lse, target_lse, alpha_t, temperature)
        rows = torch.arange(z.shape[0], device=z.device)
        return ce, kl, agree, subtract_target(grad, rows, labels, 1.0 - alpha, smoothing)
