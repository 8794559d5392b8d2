"""The loss kernels: the forward KL and the self-learning cross-entropy with their closed-form gradients, behind
one interface with four backends, and the one place where `--loss_kernels` is resolved (`select`).

- `eager`: plain torch passes (`kernels.eager`), the reference the fast backends are tested against;
- `compiled`: the same functions through `torch.compile` (`kernels.compiled`), one fused loop per reduction;
- `native`: C++ kernels that read each row once (`kernels.native`) for float32 CPU rows; other rows (a
  low-precision teacher's logits) take the compiled kernels;
- `autograd`: no closed form: the divergences as defined, through autograd (any divergence; a top-K target,
  which has no autograd path, takes the eager kernels);
- `auto` (the default): native on a CPU where they build, else compiled.

Every backend returns (CE sum, tau^2 KL sum, top-1 agreements, d total / d logits) for
total = (1 - alpha) CE + alpha tau^2 KL, the gradient written over `out` (a reused float32 buffer or the float32
logits themselves; a new tensor when None). May import: `kinherit.core`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from kinherit.core.errors import KinheritError
from kinherit.inheritance.kernels import compiled, eager, native
from kinherit.inheritance.kernels.rowwise import (
    agreements,
    cross_entropy_terms,
    label_logits,
    logits_into,
    subtract_target,
)

LOSS_KERNELS = ("auto", "native", "compiled", "eager", "autograd")
TopKPasses = tuple[Callable, Callable, Callable]  # row statistics, tail logsumexp, gradient (see `TopKTarget`)
logger = logging.getLogger(__name__)


def check_loss_kernels(choice: str) -> None:
    """Refuse an unknown backend name."""
    if choice not in LOSS_KERNELS:
        raise KinheritError(f"--loss_kernels must be one of {', '.join(LOSS_KERNELS)}, got {choice!r}")


class EagerKernels:
    """The closed-form kernels in plain torch passes."""

    name = "eager"
    closed_form = True  # False: the loss takes dense targets through autograd
    statistics, gradient_ = staticmethod(eager.forward_kl_statistics), staticmethod(eager.forward_kl_gradient_)
    topk: TopKPasses = (eager.topk_statistics, eager.tail_logsumexp, eager.topk_gradient_)

    def dense_terms(self, z: torch.Tensor, scores: torch.Tensor, scale: float, labels: torch.Tensor, alpha: float,
                    temperature: float, smoothing: float, out: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The forward-KL terms of float32 logits `z` against P_T = softmax(scores * scale)."""
        ce, kl, agree, lse, tempered_lse, target_lse = self.statistics(z, scores, scale, labels, temperature,
                                                                       smoothing)
        out = logits_into(z, out)
        alpha_t = torch.tensor(alpha, device=z.device)  # a tensor, so that its decay does not recompile
        grad = self.gradient_(out, scores, scale, lse, tempered_lse, target_lse, alpha_t, temperature)
        rows = torch.arange(z.shape[0], device=z.device)
        return ce, kl, agree, subtract_target(grad, rows, labels, 1.0 - alpha, smoothing)

    def self_terms(self, z: torch.Tensor, labels: torch.Tensor, smoothing: float,
                   out: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """(CE sum, 0, 0, softmax(z) - the smoothed one-hot label) of float32 logits `z`."""
        rows, probs, ce = cross_entropy_terms(z, labels, smoothing, out)
        zero = z.new_zeros(())
        return ce, zero, zero, subtract_target(probs, rows, labels, 1.0, smoothing)

    def topk_passes(self, z: torch.Tensor) -> TopKPasses:
        """The three passes over the vocabulary of a top-K target's terms, for logits `z`."""
        return self.topk


class AutogradKernels(EagerKernels):
    """The divergence definitions through autograd; top-K targets take the eager kernels."""

    name = "autograd"
    closed_form = False


class CompiledKernels(EagerKernels):
    """The eager kernels fused by `torch.compile` (which falls back to them, with a warning, where it fails)."""

    name = "compiled"
    statistics, gradient_ = compiled.forward_kl_statistics, compiled.forward_kl_gradient_
    topk = (compiled.topk_statistics, compiled.tail_logsumexp, compiled.topk_gradient_)

    def self_terms(self, z: torch.Tensor, labels: torch.Tensor, smoothing: float,
                   out: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        ce, lse = compiled.cross_entropy_statistics(z, labels, smoothing)
        probs = compiled.softmax_(logits_into(z, out), lse)
        rows = torch.arange(z.shape[0], device=z.device)
        zero = z.new_zeros(())
        return ce, zero, zero, subtract_target(probs, rows, labels, 1.0, smoothing)


class NativeKernels(CompiledKernels):
    """The native single-pass CPU kernels for float32 CPU rows; the compiled ones for any other rows."""

    name = "native"

    def dense_terms(self, z: torch.Tensor, scores: torch.Tensor, scale: float, labels: torch.Tensor, alpha: float,
                    temperature: float, smoothing: float, out: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if not native.usable(z, scores):
            return super().dense_terms(z, scores, scale, labels, alpha, temperature, smoothing, out)
        stats = native.forward_kl_statistics(z, scores, scale, temperature)  # one read of both rows
        rows = torch.arange(z.shape[0], device=z.device)
        ce = (stats.lse - label_logits(z, rows, labels, smoothing, stats.row_sum)).sum()
        kl = (stats.cross - stats.teacher_lse + stats.tempered_lse).sum() * temperature**2
        agree = (stats.peak_at_teacher_top >= stats.peak).sum().float()  # as `agreements`
        grad = native.forward_kl_gradient_(logits_into(z, out), scores, scale, stats, alpha, temperature)
        return ce, kl, agree, subtract_target(grad, rows, labels, 1.0 - alpha, smoothing)

    def self_terms(self, z: torch.Tensor, labels: torch.Tensor, smoothing: float,
                   out: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if not native.usable(z):
            return super().self_terms(z, labels, smoothing, out)
        rows = torch.arange(z.shape[0], device=z.device)
        stats = native.row_statistics(z, 1.0)
        lse = stats.lse.contiguous()
        ce = (lse - label_logits(z, rows, labels, smoothing, stats.row_sum)).sum()
        probs = native.softmax_(logits_into(z, out), lse)
        zero = z.new_zeros(())
        return ce, zero, zero, subtract_target(probs, rows, labels, 1.0, smoothing)

    def topk_passes(self, z: torch.Tensor) -> TopKPasses:
        return (_native_topk_statistics, _native_tail_logsumexp, _native_topk_gradient_) if native.usable(z) \
            else self.topk


def _native_topk_statistics(z: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, temperature: float,
                            smoothing: float) -> tuple[torch.Tensor, ...]:
    """`eager.topk_statistics` by the native kernels (one read of each row)."""
    stats = native.row_statistics(z, temperature)
    rows = torch.arange(z.shape[0], device=z.device)
    ce = (stats.lse - label_logits(z, rows, labels, smoothing, stats.row_sum)).sum()
    return (ce, agreements(z, stats.peak[:, None], ids[:, :1]), stats.lse[:, None], stats.tempered_lse[:, None],
            z.gather(1, ids))


def _native_tail_logsumexp(masked: torch.Tensor, temperature: float) -> torch.Tensor:
    """`eager.tail_logsumexp` by the native kernels."""
    return native.row_statistics(masked, temperature).tempered_lse[:, None]


def _native_topk_gradient_(z: torch.Tensor, lse: torch.Tensor, tempered_lse: torch.Tensor, shift: torch.Tensor,
                           p_tail: torch.Tensor, alpha: torch.Tensor, temperature: float,
                           smoothing: float) -> torch.Tensor:
    """`eager.topk_gradient_` by the native kernels: the same terms, one exponential per logit at tau = 1 and 2."""
    keep = 1.0 - alpha.item()
    tempered = ((shift - tempered_lse).exp() - p_tail) * (alpha.item() * temperature)
    return native.softmax_mix_(z, lse, shift, tempered, keep, -keep * smoothing / z.shape[-1], temperature)


BACKENDS = {kernels.name: kernels for kernels in (EagerKernels, AutogradKernels, CompiledKernels, NativeKernels)}


def select(choice: str, device: torch.device | str = "cpu") -> EagerKernels:
    """The backend that `--loss_kernels choice` means for logits on `device` (`auto`: native on a CPU where they
    build, else compiled); `native` is refused where it cannot run."""
    check_loss_kernels(choice)
    on_cpu = torch.device(device).type == "cpu"
    if choice == "auto":
        choice = "native" if on_cpu and native.kernels() is not None else "compiled"
    elif choice == "native" and not (on_cpu and native.kernels() is not None):
        where = "they could not be built here (see the warning above)" if on_cpu else \
            f"they run on the CPU, not {device}"
        raise KinheritError(f"--loss_kernels native: {where}; use --loss_kernels auto or compiled")
    return BACKENDS[choice]()
