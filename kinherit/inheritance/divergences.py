"""The inheritance loss: self-supervised cross-entropy plus a tempered divergence to the teachers.

    L = (1 - alpha) * CE(student) + alpha * tau^2 * D(P_T^tau, P_S^tau)

averaged over the valid positions (label != -100). P^tau = softmax(logits / tau). With several
teachers, P_T^tau is their weighted mixture sum_i w_i P_i^tau, computed in log space. Every softmax
and divergence is computed in float32, one chunk of positions at a time; gradients are computed
chunk by chunk inside the forward pass (`chunked_loss`), so no float32 tensor of shape
[positions, vocabulary] ever exists whole, not even among the tensors saved for backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kinherit.errors import KinheritError
from kinherit.inheritance.rowwise import CompiledKernel, cross_entropy_terms, softmax_lse_argmax
from kinherit.inheritance.topk import TopKTarget, topk_forward_kl_terms

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")
IGNORE_INDEX = -100


def validate_options(temperature: float, divergence: str, beta: float) -> None:
    """Raise a clear error for a temperature, divergence or JSD beta that cannot work."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise KinheritError(f"temperature must be a positive number, got {temperature}")
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
    """log sum_i w_i p_i, from the teachers' log-probabilities (zero-weight teachers are skipped)."""
    terms = [lp + math.log(w) for lp, w in zip(log_probs, weights, strict=True) if w > 0]
    if len(terms) == 1:
        return terms[0]
    return torch.logsumexp(torch.stack(terms), dim=0)


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


def chunk_terms(student_logits: torch.Tensor, target: Target | None, labels: torch.Tensor,
                temperature: float, divergence: str, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of CE, sum of tau^2 * D, count of top-1 agreements) over one chunk of valid positions."""
    logits = student_logits.float()
    ce = F.cross_entropy(logits, labels, reduction="sum")
    if target is None:
        zero = logits.new_zeros(())
        return ce, zero, zero
    target_logp = target.log_probs
    student_logp = tempered_log_probs(logits, temperature)
    ki = divergence_per_position(target_logp, student_logp, divergence, beta).sum() * temperature**2
    agree = (logits.argmax(-1) == target_logp.argmax(-1)).sum().float()
    return ce, ki, agree


def _forward_kl_kernel(z: torch.Tensor, scores: torch.Tensor, scale: float, labels: torch.Tensor,
                       alpha: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """CE sum, tau^2 * KL sum, agreements and d total / d z for float32 student logits `z` (see below)."""
    rows, probs, lse, top, ce = cross_entropy_terms(z, labels)
    target = scores.float() if scale == 1.0 else scores.float() * scale
    p, target_lse, target_top = softmax_lse_argmax(target)
    if temperature == 1.0:
        q, q_lse, tempered = probs, lse, z
    else:
        tempered = z / temperature
        q, q_lse, _ = softmax_lse_argmax(tempered)
    dot = torch.einsum("ij,ij->i", p, target) - torch.einsum("ij,ij->i", p, tempered)
    kl = (dot - target_lse + q_lse).sum()
    agree = (top == target_top).sum().float()
    step = alpha * temperature
    # At tau = 1 the tempered softmax is the plain one: both terms share one tensor.
    grad = probs.mul_(1.0 - alpha + step) if temperature == 1.0 else probs.mul_(1.0 - alpha).add_(q.mul_(step))
    grad.sub_(p.mul_(step))
    grad[rows, labels] -= 1.0 - alpha
    return ce, kl * temperature**2, agree, grad


_COMPILED_KERNEL = CompiledKernel(_forward_kl_kernel)


@torch.no_grad()
def fused_forward_kl_terms(logits: torch.Tensor, target: Target | None, labels: torch.Tensor, alpha: float,
                           temperature: float, compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor, torch.Tensor]:
    """The forward-KL loss terms and their gradient with respect to the logits, in closed form.

    Returns (CE sum, tau^2 * KL sum, top-1 agreements, d total / d logits) for
    total = (1 - alpha) * CE + alpha * tau^2 * KL(P_T^tau || P_S^tau), using
    KL = sum_v p_T * (scores_T - z / tau) - lse_T + lse(z / tau),
    d CE / dz = softmax(z) - onehot and d tau^2 KL / dz = tau * (softmax(z / tau) - p_T).
    This makes a few passes over the [chunk, V] tensor where autograd makes several dozen;
    `compiled` fuses them further with `torch.compile`.
    """
    z = logits.float()
    if target is None:
        rows, probs, _lse, _top, ce = cross_entropy_terms(z, labels)
        probs[rows, labels] -= 1.0
        zero = z.new_zeros(())
        return ce, zero, zero, probs
    args = (z, target.scores, target.scale, labels, torch.tensor(alpha, device=z.device), temperature)
    return _COMPILED_KERNEL(*args) if compiled else _forward_kl_kernel(*args)


ChunkResult = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]
ChunkFn = Callable[[torch.Tensor, list[torch.Tensor], list[torch.Tensor]], ChunkResult]


def loss_chunk(logits: torch.Tensor, target: Target | TopKTarget | None, labels: torch.Tensor, alpha: float,
               temperature: float, divergence: str, beta: float, fused: bool = True,
               compiled: bool = False) -> ChunkResult:
    """One chunk's `(output, grad_output, loss, stats)` for `chunked_loss`; stats = (CE, KI, agreements).

    Forward KL (and pure self-learning) takes the closed-form gradient when `fused`; every other
    divergence goes through autograd. Without a target the loss is the cross-entropy alone. `compiled`
    runs the forward-KL kernel through `torch.compile`. A `TopKTarget` (from a teacher cache) always takes
    its own closed-form kernel, and only with the forward KL.
    """
    if isinstance(target, TopKTarget):
        if divergence != "forward_kl":
            raise KinheritError(f"a teacher cache (top-K targets) supports only --divergence forward_kl, "
                                f"not {divergence}; run the teacher live for other divergences")
        ce, ki, agree, grad = topk_forward_kl_terms(logits.detach(), target, labels, alpha, temperature, compiled)
        return logits, grad.to(logits.dtype), (1.0 - alpha) * ce + alpha * ki, torch.stack([ce, ki, agree])
    if fused and divergence == "forward_kl":
        ce, ki, agree, grad = fused_forward_kl_terms(logits.detach(), target, labels, alpha, temperature,
                                                          compiled)
        loss = (1.0 - alpha) * ce + alpha * ki if target is not None else ce
        return logits, grad.to(logits.dtype), loss, torch.stack([ce, ki, agree])
    ce, ki, agree = chunk_terms(logits, target, labels, temperature, divergence, beta)
    loss = (1.0 - alpha) * ce + alpha * ki if target is not None else ce
    return loss, None, loss.detach(), torch.stack([ce.detach(), ki.detach(), agree.detach()])


class _ChunkedLoss(torch.autograd.Function):
    """Sum of per-chunk losses whose gradients are computed during the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, compute: ChunkFn, index: torch.Tensor, chunk_size: int, n_rows: int, *tensors):
        rows, shared = tensors[:n_rows], tensors[n_rows:]
        needs = ctx.needs_input_grad[4:]
        grads = [torch.zeros_like(t, dtype=t.dtype if i < n_rows else torch.float32) if need else None
                 for i, (t, need) in enumerate(zip(tensors, needs, strict=True))]
        total = torch.zeros((), dtype=torch.float32, device=index.device)
        stats = None
        for chunk in index.split(chunk_size):
            with torch.enable_grad():
                row_leaves = [t[chunk].detach().requires_grad_(need) for t, need in zip(rows, needs, strict=False)]
                shared_leaves = [t.detach().requires_grad_(need)
                                 for t, need in zip(shared, needs[n_rows:], strict=True)]
                output, grad_output, loss, chunk_stats = compute(chunk, row_leaves, shared_leaves)
                leaves = row_leaves + shared_leaves
                wrt = [leaf for leaf, need in zip(leaves, needs, strict=True) if need]
                found = []
                if wrt and output.requires_grad:
                    found = torch.autograd.grad(output, wrt, grad_outputs=grad_output, allow_unused=True)
            found_iter = iter(found)
            for i, need in enumerate(needs):
                if not need:
                    continue
                grad = next(found_iter, None)
                if grad is None:
                    continue
                if i < n_rows:
                    grads[i].index_add_(0, chunk, grad.to(grads[i].dtype))
                else:
                    grads[i].add_(grad.float())
            total += loss.detach().float()
            stats = chunk_stats if stats is None else stats + chunk_stats
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.has_grad = [g is not None for g in grads]
        ctx.dtypes = [t.dtype for t in tensors]
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, grad_total, _grad_stats):
        saved = ctx.saved_tensors
        out = [(g * grad_total).to(dtype) if has else None
               for g, has, dtype in zip(saved, ctx.has_grad, ctx.dtypes, strict=True)]
        return (None, None, None, None, *out)


def chunked_loss(compute: ChunkFn, index: torch.Tensor, chunk_size: int, row_tensors: Sequence[torch.Tensor],
                 shared_tensors: Sequence[torch.Tensor], n_stats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum `compute` over chunks of `index` (rows of `row_tensors`); returns (loss sum, stats sum).

    `compute(chunk, row_slices, shared)` returns `(output, grad_output, loss, stats)`: the gradient of
    the chunk's loss is `autograd.grad(output, leaves, grad_output)` (with `grad_output=None`, output is
    the scalar loss itself; otherwise it is, say, the logits and grad_output their closed-form
    gradient), `loss` the chunk's loss value and `stats` a 1-D tensor of `n_stats` detached numbers.
    With gradients enabled, each chunk's gradient is taken while its float32 intermediates are alive,
    then they are freed, so the backward pass replays nothing.
    """
    if chunk_size < 1:
        raise KinheritError(f"chunk_size must be at least 1, got {chunk_size}")
    device = index.device
    if index.numel() == 0:
        zero = sum((t.sum() * 0.0 for t in [*row_tensors, *shared_tensors] if t.requires_grad),
                   torch.zeros((), device=device))
        return zero, torch.zeros(n_stats, device=device)
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in [*row_tensors, *shared_tensors])
    if wants_grad:
        return _ChunkedLoss.apply(compute, index, chunk_size, len(row_tensors), *row_tensors, *shared_tensors)
    total = torch.zeros((), dtype=torch.float32, device=device)
    stats = torch.zeros(n_stats, device=device)
    for chunk in index.split(chunk_size):
        _output, _grad, loss, chunk_stats = compute(chunk, [t[chunk] for t in row_tensors], list(shared_tensors))
        total = total + loss.float()
        stats = stats + chunk_stats
    return total, stats


@dataclass
class LossParts:
    """The parts of the inheritance loss (means over valid positions) and the top-1 agreement."""

    total: torch.Tensor
    self_loss: torch.Tensor
    ki_loss: torch.Tensor
    agreement: torch.Tensor
    num_positions: int


class InheritanceLoss:
    """Cross-entropy plus tempered divergence to one teacher or a weighted mixture of teachers.

    `loss(student_logits, teacher_logits, labels, alpha)` with logits `[..., V]` and labels `[...]`
    (-100 ignored). `teacher_logits` may be a list of tensors; `teacher_weights` then gives their
    mixture weights (normalised to sum to one). Padded vocabulary rows (beyond `vocab_size`) are cut.
    `fused=False` takes every gradient through autograd (the plain path the fused one is tested against);
    `compiled=True` runs the fused forward-KL kernel through `torch.compile`.
    """

    def __init__(self, temperature: float = 2.0, divergence: str = "forward_kl", beta: float = 0.5,
                 chunk_size: int = 1024, vocab_size: int | None = None, fused: bool = True,
                 compiled: bool = False) -> None:
        validate_options(temperature, divergence, beta)
        self.fused = fused
        self.compiled = compiled
        self.temperature = temperature
        self.divergence = divergence
        self.beta = beta
        self.chunk_size = chunk_size
        self.vocab_size = vocab_size

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor] | None,
                 labels: torch.Tensor, alpha: float, teacher_weights: Sequence[float] | None = None) -> LossParts:
        """Compute the loss parts; the gradient flows to `student_logits` only."""
        if not 0.0 <= alpha <= 1.0:
            raise KinheritError(f"alpha must be in [0, 1], got {alpha}")
        vocab = self.vocab_size or student_logits.shape[-1]
        student = student_logits.reshape(-1, student_logits.shape[-1])
        flat_labels = labels.reshape(-1)
        if student.shape[0] != flat_labels.shape[0]:
            raise KinheritError(f"labels of shape {tuple(labels.shape)} do not match logits of shape "
                                f"{tuple(student_logits.shape)}")
        teachers: list[torch.Tensor] = []
        if teacher_logits is not None:
            teachers = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
        teachers = [t.reshape(-1, t.shape[-1]).detach() for t in teachers]
        for teacher in teachers:
            if teacher.shape[0] != student.shape[0] or teacher.shape[-1] < vocab:
                raise KinheritError(f"teacher logits of shape {tuple(teacher.shape)} do not cover the student's "
                                    f"{student.shape[0]} positions x {vocab} tokens")
        weights = normalise_weights(teacher_weights, len(teachers)) if teachers else []
        use_teacher = bool(teachers) and alpha > 0
        index = (flat_labels != IGNORE_INDEX).nonzero().squeeze(-1)

        def compute(chunk, row_leaves, _shared):
            logits = row_leaves[0][:, :vocab]
            target = None
            if use_teacher:
                with torch.no_grad():
                    target = Target.from_logits([t[chunk][:, :vocab] for t in teachers], weights, self.temperature)
            return loss_chunk(logits, target, flat_labels[chunk], alpha, self.temperature, self.divergence,
                              self.beta, self.fused, self.compiled)

        total, stats = chunked_loss(compute, index, self.chunk_size, [student], [], n_stats=3)
        count = max(int(index.numel()), 1)
        return LossParts(total=total / count, self_loss=stats[0] / count, ki_loss=stats[1] / count,
                         agreement=stats[2] / count, num_positions=int(index.numel()))
