"""The inheritance loss, one class for the public API and the trainer:

    L = (1 - alpha) * CE(student) + alpha * w * tau^2 * D(P_T^tau || P_S^tau)

averaged over the positions that carry a label (Qin et al., 2022, Eq. 1, where w = 1; D is the forward KL in the
paper). `ki_weight` w != 1 is a control for the tau^2 factor: the same loss as c * ((1 - a) CE + a tau^2 D) with
c = 1 - alpha + alpha w and a = alpha w / c, which is how it is computed, by every backend.
P^tau = softmax(logits / tau); P_T comes from a teacher source (one teacher, a mixture, routed
teachers, a cache). Every softmax and divergence is computed in float32, one chunk of positions at a
time, with the student's LM head applied inside the chunk loop, so no float32 tensor of shape
[positions, vocabulary] ever exists whole.

The definitions live in `kinherit.inheritance.divergences`, and the autograd path (`kernels="autograd"`)
computes exactly them. The forward KL (the paper's choice, and self-learning) takes a closed-form
gradient per chunk (`Target.forward_kl_terms`, `TopKTarget.forward_kl_terms`) from the backend that
`kernels` names (`kinherit.inheritance.kernels`), tested equal to the definitions in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from kinherit.core.errors import KinheritError
from kinherit.inheritance.chunking import (
    ChunkBuffers,
    ChunkResult,
    chunked_loss,
    linear_into,
    plain_linear,
    unguarded,
)
from kinherit.inheritance.cross_vocab import AlignedTarget, SortedTarget
from kinherit.inheritance.divergences import autograd_terms, normalise_weights, validate_options
from kinherit.inheritance.kernels import EagerKernels, check_loss_kernels, select
from kinherit.inheritance.targets import Target, TargetFn, TeacherSource
from kinherit.inheritance.topk import TopKMode, TopKTarget, check_top_k
from kinherit.models.lm import SELF_TENSORS, TEACHER_TENSORS, check_chunk_size, chunk_positions, taught_positions


@dataclass
class LossSums:
    """Sums over the taught positions of one batch; the trainer divides them by the global count."""

    total: torch.Tensor  # (1 - alpha) * CE + alpha * w * tau^2 * D, differentiable (CE alone without a teacher)
    self_loss: float  # CE
    ki_loss: float  # tau^2 * D (0 without a teacher)
    agreements: float  # positions where the student's and the teacher's most likely tokens agree
    positions: int


@dataclass
class LossParts:
    """The parts of the inheritance loss (means over valid positions) and the top-1 agreement."""

    total: torch.Tensor
    self_loss: torch.Tensor
    ki_loss: torch.Tensor
    agreement: torch.Tensor
    num_positions: int


class InheritanceLoss:
    """Cross-entropy plus tempered divergence to a teacher source, chunked and fused with the LM head.

    `loss(student_logits, teacher_logits, labels, alpha)` with logits `[..., V]` and labels `[...]`
    (-100 ignored) returns the means; `teacher_logits` may be a list of tensors, `teacher_weights` then
    gives their mixture weights (normalised to sum to one). `loss.sums(hidden, labels, alpha, targets,
    head)` is what the trainer calls: the head runs per chunk. Padded vocabulary rows (beyond
    `vocab_size`) are cut. `kernels` names the backend of the forward-KL terms (`kinherit.inheritance.kernels`:
    auto, native, compiled, eager, or autograd, the plain path the closed forms are tested against).
    `label_smoothing` eps smooths the CE's one-hot label: the target becomes (1 - eps) onehot + eps / V,
    as in `F.cross_entropy(label_smoothing=eps)`. `top_k` keeps only the teacher's K most likely tokens per
    position, and `top_k_mode` says what becomes of the rest of its mass (kinherit.inheritance.topk).
    """

    def __init__(self, temperature: float = 2.0, divergence: str = "forward_kl", beta: float = 0.5,
                 chunk_size: int | None = None, vocab_size: int | None = None, kernels: str = "auto",
                 label_smoothing: float = 0.0, top_k: int | None = None, top_k_mode: TopKMode = "tail",
                 ki_weight: float = 1.0) -> None:
        validate_options(temperature, divergence, beta, ki_weight)
        self.ki_weight = ki_weight
        check_loss_kernels(kernels)
        check_top_k(top_k, top_k_mode)
        self.top_k = top_k
        self.top_k_mode = top_k_mode
        check_chunk_size(chunk_size)  # now, not at the first step
        if not 0.0 <= label_smoothing < 1.0:
            raise KinheritError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.temperature = temperature
        self.divergence = divergence
        self.beta = beta
        self.chunk_size = chunk_size
        self.vocab_size = vocab_size
        self.kernels = kernels
        self._backends: dict[str, EagerKernels] = {}

    def backend(self, device: torch.device | str) -> EagerKernels:
        """The kernels that `kernels` means for logits on `device`, chosen once per device type."""
        kind = torch.device(device).type
        if kind not in self._backends:
            self._backends[kind] = select(self.kernels, device)
        return self._backends[kind]

    def sums(self, hidden: torch.Tensor, labels: torch.Tensor, alpha: float, targets: TargetFn | None = None,
             head: torch.nn.Module | None = None) -> LossSums:
        """The loss summed over the taught positions of flattened `hidden` `[N, H]` (`labels` `[N]`).

        `head` maps hidden states to logits (None: `hidden` are the logits); `targets` gives the teacher's
        target at flattened positions (None: self-learning). Gradients reach `hidden` and the head.
        """
        if not 0.0 <= alpha <= 1.0:
            raise KinheritError(f"alpha must be in [0, 1], got {alpha}")
        scale = 1.0
        if targets is not None and self.ki_weight != 1.0:  # (1 - alpha) CE + alpha w KI = scale * (the same at a)
            scale = 1.0 - alpha + alpha * self.ki_weight
            alpha = alpha * self.ki_weight / scale if scale > 0 else alpha
        positions = taught_positions(labels)
        names, params = zip(*head.named_parameters(), strict=True) if head is not None else ((), ())
        vocab = self.vocab_size  # None: every logit row
        linear = head is not None and plain_linear(head)
        buffers = ChunkBuffers()  # the chunks' [positions, V] tensors, made once for all chunks

        def compute(chunk, row_leaves, shared_leaves, shared_grads):
            logits = row_leaves[0]
            if linear:  # a plain linear head (not a sharded one) accumulates its gradient in place
                bias, bias_grad = (shared_leaves[1], shared_grads[1]) if len(params) > 1 else (None, None)
                logits = linear_into(logits, shared_leaves[0], bias, vocab, shared_grads[0], bias_grad, buffers)
            elif head is not None:
                logits = torch.func.functional_call(head, dict(zip(names, shared_leaves, strict=True)), (logits,))
            logits = logits[:, :vocab]
            target = None
            if targets is not None:
                with torch.no_grad():
                    target = self.restrict(targets(chunk))
            # the closed-form gradient may overwrite logits that nothing else reads: the head's reused buffer, or
            # (no head) the chunk's own rows; another head's autograd graph may have saved its output
            return self.chunk(logits, target, labels[chunk], alpha, buffers, writable=linear or head is None)

        # the default chunk: by the logits' width (the vocabulary, else the head's largest output dimension)
        # and by how many such tensors a chunk holds (a teacher's target is one more)
        width = vocab or max((p.shape[0] for p in params), default=hidden.shape[-1])
        size = chunk_positions(self.chunk_size, width, SELF_TENSORS if targets is None else TEACHER_TENSORS)
        total, stats = chunked_loss(compute, positions, size, [hidden], list(params), n_stats=3)
        ce, ki, agree = stats.tolist()
        return LossSums(total=total * scale if scale != 1.0 else total, self_loss=ce, ki_loss=ki, agreements=agree,
                        positions=positions.numel())

    def targets(self, source: TeacherSource, inputs: dict[str, torch.Tensor],
                labels: torch.Tensor) -> AbstractContextManager[TargetFn]:
        """One batch's targets from a teacher source, at this loss's temperature, vocabulary and K."""
        return source.targets(inputs, labels, self.temperature, self.vocab_size, self.top_k)

    def restrict(self, target: Target | TopKTarget | AlignedTarget) -> Target | TopKTarget | AlignedTarget:
        """The target under `top_k_mode`, a dense one cut to `top_k` tokens (whole without `top_k`); a top-K
        source read its `top_k` tokens already. A cross-tokenizer target restricts its aligned rows (a sorted one,
        without token ids, stays whole)."""
        if isinstance(target, AlignedTarget):
            inner = target.inner if isinstance(target.inner, SortedTarget) else self.restrict(target.inner)
            return AlignedTarget(inner, target.aligned)
        if isinstance(target, TopKTarget):
            return TopKTarget(target.ids, target.log_probs, self.top_k_mode)
        if self.top_k is None:
            return target
        return TopKTarget.from_log_probs(target.log_probs, min(self.top_k, target.log_probs.shape[-1]),
                                         self.top_k_mode)

    def chunk(self, logits: torch.Tensor, target: Target | TopKTarget | AlignedTarget | None, labels: torch.Tensor,
              alpha: float, buffers: ChunkBuffers | None = None, writable: bool = False) -> ChunkResult:
        """One chunk's `(output, grad_output, loss, stats)` for `chunked_loss`; stats = (CE, KI, agreements).

        The closed-form kernels write the gradient over the float32 logits when `writable` (nothing else reads
        them) or when they are a float32 copy of low-precision ones: one [positions, V] tensor fewer per chunk.
        Else it goes into the reused "grad" buffer of `buffers` when given."""
        kernels = self.backend(logits.device)
        closed_form = self.divergence == "forward_kl" and (kernels.closed_form
                                                          or isinstance(target, TopKTarget | AlignedTarget))
        if closed_form:
            z = logits.detach().float()
            if logits.dtype != torch.float32:  # z is a copy
                out = z
            elif writable:
                z = out = unguarded(logits)
            else:
                out = None if buffers is None else buffers.get("grad", *z.shape, torch.float32, z.device)
            if target is None:
                ce, ki, agree, grad = kernels.self_terms(z, labels, self.label_smoothing, out)
            else:
                ce, ki, agree, grad = target.forward_kl_terms(z, labels, alpha, self.temperature, kernels,
                                                              self.label_smoothing, out)
            loss = (1.0 - alpha) * ce + alpha * ki if target is not None else ce
            return logits, grad.to(logits.dtype), loss, torch.stack([ce, ki, agree])
        if isinstance(target, AlignedTarget):
            raise KinheritError(f"teachers with another tokenizer support only --divergence forward_kl, not "
                                f"{self.divergence}")
        if isinstance(target, TopKTarget):
            raise KinheritError(f"top-K targets (a teacher cache, --top_k) support only --divergence forward_kl, not "
                                f"{self.divergence}; run the teacher live with every token for other divergences")
        target_logp = target.log_probs if target is not None else None
        ce, ki, agree = autograd_terms(logits, target_logp, labels, self.temperature, self.divergence, self.beta,
                                       self.label_smoothing)
        loss = (1.0 - alpha) * ce + alpha * ki if target is not None else ce
        return loss, None, loss.detach(), torch.stack([ce.detach(), ki.detach(), agree.detach()])

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor] | None,
                 labels: torch.Tensor, alpha: float, teacher_weights: Sequence[float] | None = None) -> LossParts:
        """The loss parts as means over the valid positions; the gradient flows to `student_logits` only.

        With teacher logits, `ki_loss` is the mean tau^2 * D at the valid positions whatever alpha is
        (alpha only weighs it in `total`).
        """
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
        targets = None
        if teachers:
            weights = normalise_weights(teacher_weights, len(teachers))

            def targets(chunk: torch.Tensor) -> Target:
                return Target.from_logits([t[chunk][:, :vocab] for t in teachers], weights, self.temperature)

        sums = self.sums(student, flat_labels, alpha, targets)
        count = max(sums.positions, 1)
        device = student.device
        return LossParts(total=sums.total / count, self_loss=torch.tensor(sums.self_loss / count, device=device),
                         ki_loss=torch.tensor(sums.ki_loss / count, device=device),
                         agreement=torch.tensor(sums.agreements / count, device=device),
                         num_positions=sums.positions)
