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

from kinherit.core.errors import KinheritError
from kinherit.inheritance.divergences import mixture_log_probs, tempered_log_probs
from kinherit.inheritance.kernels import EagerKernels
from kinherit.inheritance.topk import TopKTarget

TargetFn = Callable[[torch.Tensor], "Target | TopKTarget"]


class TeacherSource(Protocol):
    """Where the teacher distribution comes from: live teachers (`TeacherSet`) or a `TeacherCache`."""

    def targets(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, temperature: float, vocab: int,
                top_k: int | None = None) -> AbstractContextManager[TargetFn]:
        """For one batch (`labels` flattened, as the loss sees them): a function from flattened positions to
        their target at `temperature` over the first `vocab` tokens (a top-K source: its first `top_k` tokens),
        valid inside the context (a sharded teacher frees its gathered weights on exit). The loss asks
        (`InheritanceLoss.targets`) with its own settings."""
        ...


















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
                         kernels: EagerKernels, smoothing: float = 0.0,
                         out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The forward-KL loss terms and their gradient with respect to the logits, in closed form.

        Returns (CE sum, tau^2 * KL sum, top-1 agreements, d total / d logits) for
        total = (1 - alpha) * CE + alpha * tau^2 * KL(P_T^tau || P_S^tau), using
        KL = sum_v p_T * (scores_T - z / tau) - lse_T + lse(z / tau),
        d CE / dz = softmax(z) - onehot and d tau^2 KL / dz = tau * (softmax(z / tau) - p_T).
        `kernels` computes them in two steps: row statistics that only read the logits, then the gradient element
        by element over `out` (a reused float32 [chunk, V] buffer, or the float32 logits themselves; a new tensor
        when None): a few passes over the [chunk, V] tensor where autograd makes several dozen. `smoothing`
        smooths the CE's one-hot label.
        """
        return kernels.dense_terms(logits.float(), self.scores, self.scale, labels, alpha, temperature, smoothing,
                                   out)
