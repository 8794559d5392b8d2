"""Targets from a teacher with another vocabulary, at the student positions aligned with one of its positions.

Two ways to teach across vocabularies (`--cross_tokenizer`):

**map** (the default): the teacher's tempered distribution is carried into the student's vocabulary through a
token map (`kinherit.data.token_text.Bridge`): q_S(v) = sum of p_T(t) over the teacher tokens t mapped to v,
renormalised over the mass that landed on student tokens. The student then takes the usual forward KL,
tau^2 KL(q_S || P_S^tau). Through the identity map it is the same-vocabulary KL.

**uld** (Universal Logit Distillation, Boizard et al. 2024): no token map; the distance between the two
distributions sorted by probability, D = sum_r |p_S(r) - p_T(r)| over ranks r, the shorter vocabulary padded
with zeros (a cached teacher keeps its K largest probabilities; the rest of both distributions is compared
as one outcome). The loss weighs it as the KL: alpha tau^2 D.

Student positions without an aligned teacher position carry no KI term: only their (1 - alpha) CE share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kinherit.inheritance.kernels import EagerKernels
from kinherit.inheritance.kernels.rowwise import logits_into
from kinherit.inheritance.targets import Target
from kinherit.inheritance.topk import TopKTarget

CROSS_TOKENIZER_METHODS = ("map", "uld")
LOG_FLOOR = -1.0e4  # log q of a student token that received no mass: exp() is exactly 0 in float32


def mapped_probs(teacher_logits: torch.Tensor, mapping: torch.Tensor, vocab: int,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's tempered distribution carried into a `vocab`-token student vocabulary through `mapping`
    (teacher id -> student id, -1: dropped) and renormalised, and the mass per row that landed on student
    tokens."""
    probs = torch.softmax(teacher_logits.float()[:, :mapping.numel()] / temperature, dim=-1)
    # dropped tokens land in one extra column, cut off after: no copy of the kept columns
    into = torch.where(mapping >= 0, mapping, vocab)
    mapped = probs.new_zeros(probs.shape[0], vocab + 1).index_add_(1, into, probs)[:, :vocab]
    mass = mapped.sum(-1)
    return mapped.div_(mass.clamp_min(1e-30)[:, None]), mass


def mapped_target(probs: torch.Tensor) -> Target:
    """A dense target of probabilities over the student's vocabulary (a token without mass: log q at the floor)."""
    return Target(probs.log().clamp_min_(LOG_FLOOR), 1.0)


@dataclass
class SortedTarget:
    """The teacher's tempered probabilities at one chunk's positions sorted from the largest (`[n, K]`, K up to its
    vocabulary), for the ULD distance; ids are not needed."""

    probs: torch.Tensor

    @classmethod
    def from_logits(cls, teacher_logits: torch.Tensor, temperature: float, k: int | None = None) -> SortedTarget:
        """The sorted tempered distribution of teacher logits (its `k` largest probabilities when given)."""
        probs = torch.softmax(teacher_logits.float() / temperature, dim=-1)
        if k is None or k >= probs.shape[-1]:
            return cls(probs.sort(dim=-1, descending=True).values)
        return cls(probs.topk(k, dim=-1).values)

    @property
    def log_probs(self) -> torch.Tensor:
        """log of the sorted probabilities (what a cache stores)."""
        return self.probs.clamp_min(1e-30).log()

    def distance(self, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """ULD per row: sum over ranks of |p_S - p_T| over the ranks both have, plus the rest as one outcome."""
        student = torch.softmax(student_logits / temperature, dim=-1)
        ranks = min(self.probs.shape[-1], student.shape[-1])
        top = student.topk(ranks, dim=-1).values if ranks < student.shape[-1] else \
            student.sort(dim=-1, descending=True).values
        teacher = self.probs[:, :ranks]
        rest = (1.0 - top.sum(-1)) - (1.0 - teacher.sum(-1))
        return (top - teacher).abs().sum(-1) + rest.abs()

    @torch.no_grad()
    def forward_kl_terms(self, logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float,
                         kernels: EagerKernels, smoothing: float = 0.0,
                         out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(CE sum, tau^2 * ULD sum, 0 agreements, d total / d logits): the contract of `Target.forward_kl_terms`,
        with the ULD distance in place of the KL (its gradient through autograd)."""
        with torch.enable_grad():
            z = logits.detach().float().requires_grad_(True)
            uld = self.distance(z, temperature).sum() * temperature**2
            (uld_grad,) = torch.autograd.grad(uld, z)
        ce, _zero, agree, grad = kernels.self_terms(logits.float(), labels, smoothing, out)
        return ce, uld.detach(), agree, grad.mul_(1.0 - alpha).add_(uld_grad, alpha=alpha)


@dataclass
class AlignedTarget:
    """A target at the aligned rows of a chunk (`aligned` `[n]` bool; `inner` holds those rows only); the other
    rows are taught by their (1 - alpha) CE share alone."""

    inner: Target | TopKTarget | SortedTarget
    aligned: torch.Tensor

    @torch.no_grad()
    def forward_kl_terms(self, logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float,
                         kernels: EagerKernels, smoothing: float = 0.0,
                         out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The contract of `Target.forward_kl_terms` over every row of the chunk."""
        z = logits.float()
        rows, others = self.aligned.nonzero().squeeze(-1), (~self.aligned).nonzero().squeeze(-1)
        if others.numel() == 0:
            return self.inner.forward_kl_terms(z, labels, alpha, temperature, kernels, smoothing, out)
        ce, kl, agree = z.new_zeros(()), z.new_zeros(()), z.new_zeros(())
        taught = taught_grad = None
        if rows.numel():
            ce, kl, agree, taught_grad = self.inner.forward_kl_terms(z[rows], labels[rows], alpha, temperature,
                                                                     kernels, smoothing)
            taught = rows
        ce_rest, _zero, _none, rest_grad = kernels.self_terms(z[others], labels[others], smoothing, None)
        out = logits_into(z, out)
        out[others] = rest_grad.mul_(1.0 - alpha)
        if taught is not None:
            out[taught] = taught_grad
        return ce + ce_rest, kl, agree, out

    def top_k(self, k: int) -> TopKTarget:
        """Each row's K most likely student tokens (a cache's rows; unaligned rows hold -inf log-probabilities)."""
        inner = self.inner.log_probs
        k = min(k, inner.shape[-1])
        values, ids = inner.topk(k, dim=-1) if not isinstance(self.inner, SortedTarget) else (
            inner[:, :k], torch.zeros_like(inner[:, :k], dtype=torch.long))
        full_ids = torch.zeros(self.aligned.numel(), k, dtype=torch.long, device=inner.device)
        full_values = torch.full((self.aligned.numel(), k), float("-inf"), device=inner.device)
        full_ids[self.aligned] = ids
        full_values[self.aligned] = values
        return TopKTarget(full_ids, full_values)
