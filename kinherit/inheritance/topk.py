"""Top-K teacher targets: the forward-KL term when only the teacher's K most likely tokens per position are
known (as stored by a teacher cache, or asked for with `--top_k`). Two ways to treat the rest of the
teacher's mass (`--top_k_mode`):

**tail** (the default, what a cache keeps without loss of normalisation):
The teacher's tempered distribution P_T (normalised over the whole vocabulary before truncation) is
kept on its top-K tokens; the rest of its mass, p_tail = 1 - sum_K p_k, becomes one extra outcome,
the tail. The student's tempered distribution Q is reduced to the same K + 1 outcomes: q_k on the
teacher's top-K tokens and q_tail = sum of q_j over every other token. Both are thus normalised over
the same support and

    KL_K = sum_{k in K} p_k (log p_k - log q_k) + p_tail (log p_tail - log q_tail)

is a true KL divergence between two distributions on K + 1 outcomes; with K = V the tail is empty and
it is the full KL. Its gradient with respect to u = z / tau is q_j - p~_j, where p~_j = p_j on the
top-K and p_tail * q_j / q_tail elsewhere: the teacher's tail mass is spread over the tail tokens in
the student's own proportions.

**renormalize** (the paper's top-K analysis, Qin et al. section 4.3): the top-K probabilities are
renormalised, p^_k = p_k / sum_K p_j, and zero elsewhere; the student keeps its full distribution:

    KL_K = sum_{k in K} p^_k (log p^_k - log q_k),   gradient w.r.t. u: q_j - p^_j.

With K = 1 this is the teacher's argmax as a hard label. With K = V both modes are the full KL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from kinherit.errors import KinheritError
from kinherit.inheritance import native
from kinherit.inheritance.rowwise import CompiledKernel, agreements, label_logits, logits_into, paired_logsumexp

TOP_K_MODES = ("tail", "renormalize")
TopKMode = Literal["tail", "renormalize"]


def check_top_k(top_k: int | None, mode: str) -> None:
    """Refuse a K below 1 or an unknown mode."""
    if top_k is not None and top_k < 1 or mode not in TOP_K_MODES:
        raise KinheritError(f"--top_k must be at least 1 (got {top_k}) and --top_k_mode one of "
                            f"{', '.join(TOP_K_MODES)} (got {mode!r})")


def check_cached_k(k: int | None, held: int) -> None:
    """Refuse a K above the `held` tokens per position that a teacher cache was built with."""
    if k is not None and k > held:
        raise KinheritError(f"--top_k {k} asks for more tokens than the teacher cache holds ({held}); rebuild the "
                            f"cache with --top_k {k} or ask for fewer")


@dataclass
class TopKTarget:
    """The teacher's top-K token ids `[n, K]` and their tempered log-probabilities `[n, K]` (float32, normalised
    over the whole vocabulary, most likely first), and how the rest of the mass is treated (`mode`)."""

    ids: torch.Tensor
    log_probs: torch.Tensor
    mode: TopKMode = "tail"

    @classmethod
    def from_log_probs(cls, log_probs: torch.Tensor, k: int, mode: TopKMode = "tail") -> TopKTarget:
        """Keep the K most likely tokens of full tempered log-probabilities `[n, V]` (sorted, most likely first)."""
        if not 1 <= k <= log_probs.shape[-1]:
            raise KinheritError(f"top_k must be in [1, {log_probs.shape[-1]}], got {k}")
        values, ids = log_probs.float().topk(k, dim=-1)
        return cls(ids, values, mode)

    def truncated(self, k: int | None, mode: TopKMode) -> TopKTarget:
        """The first `k` tokens (all when None) under `mode`: a cache built with a large K serves every smaller K."""
        check_cached_k(k, self.ids.shape[-1])
        return TopKTarget(self.ids[:, :k], self.log_probs[:, :k], mode)

    @torch.no_grad()
    def forward_kl_terms(self, logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float,
                         compiled: bool = False, smoothing: float = 0.0,
                         out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(CE sum, tau^2 * KL_K sum, top-1 agreements, d total / d logits), total = (1 - alpha) CE + alpha tau^2 KL_K.

        The same contract as `Target.forward_kl_terms`, for a top-K target: row statistics that only read the
        logits, then the gradient written over `out` (which may be the float32 logits themselves; a new tensor
        when None). The tail is found by setting the top-K of `out` to -inf (a boolean [n, V] mask would cost
        a tensor and, built by a scatter on CPU, more time than the whole kernel); the top-K and label terms
        land through one scatter. `compiled` runs the [n, V] passes through `torch.compile`, which then holds
        no [n, V] temporary (eager fallback with a warning).
        """
        z = logits.float()
        ids, log_p = self.ids.long(), self.log_probs.float()
        kernels = (_NATIVE if native.usable(z) else _COMPILED) if compiled else \
            (_topk_statistics, _tail_logsumexp, _topk_gradient_)
        ce, agree, lse, tempered_lse, z_k = kernels[0](z, ids, labels, temperature, smoothing)
        out = logits_into(z, out)
        log_q_k = z_k / temperature - tempered_lse
        step = alpha * temperature
        if self.mode == "renormalize":  # p^ = p_k / sum_K p: d(tau^2 KL)/dz = tau * (q - p^)
            log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
            p_k = log_p.exp()
            kl = (p_k * (log_p - log_q_k)).sum()
            p_tail, shift = torch.zeros_like(lse), tempered_lse  # no tail term
            top_values = -step * p_k  # the softmaxes' part at the top-K comes from the pass over all tokens
        else:
            p_k = log_p.exp()
            tail_lse = kernels[1](out.scatter_(1, ids, float("-inf")), temperature)  # over the tempered tail
            empty_tail = torch.isinf(tail_lse)  # K = V: no tail outcome
            p_tail = torch.where(empty_tail, 0.0, (1.0 - p_k.sum(-1, keepdim=True)).clamp_min(0.0))
            log_q_tail = torch.where(empty_tail, 0.0, tail_lse - tempered_lse)
            kl_tail = torch.where(p_tail > 0, p_tail * (p_tail.clamp_min(1e-30).log() - log_q_tail), 0.0)
            kl = (p_k * (log_p - log_q_k)).sum() + kl_tail.sum()
            shift = torch.where(empty_tail, tempered_lse, tail_lse)
            # the top-K entries of `out` are -inf, so the pass over all tokens leaves them at the smoothing term:
            # their whole gradient comes through the scatter
            top_values = (1.0 - alpha) * (z_k - lse).exp() + step * (log_q_k.exp() - p_k)
        alpha_t = torch.tensor(alpha, device=z.device)
        grad = kernels[2](out, lse, tempered_lse, shift, p_tail, alpha_t, temperature, smoothing)
        index = torch.cat([labels[:, None], ids], 1)
        values = torch.cat([(-(1.0 - alpha) * (1.0 - smoothing)) * torch.ones_like(lse), top_values], 1)
        return ce, kl * temperature**2, agree, grad.scatter_add_(1, index, values)

    def tail_mass(self) -> torch.Tensor:
        """p_tail per position: the teacher's probability outside its top-K (clamped at 0)."""
        return (1.0 - self.log_probs.exp().sum(-1)).clamp_min(0.0)


def _topk_statistics(z: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, temperature: float,
                     smoothing: float) -> tuple[torch.Tensor, ...]:
    """(CE sum, top-1 agreements with the teacher, logsumexp of z and of z / tau ([n, 1]), the logits at the
    teacher's top-K [n, K]) of float32 logits `z`: reads only."""
    peak = z.amax(-1, keepdim=True)
    lse, tempered_lse = paired_logsumexp(z, peak, temperature)
    rows = torch.arange(z.shape[0], device=z.device)
    ce = (lse.squeeze(-1) - label_logits(z, rows, labels, smoothing)).sum()
    return ce, agreements(z, peak, ids[:, :1]), lse, tempered_lse, z.gather(1, ids)


def _tail_logsumexp(masked: torch.Tensor, temperature: float) -> torch.Tensor:
    """logsumexp(z / tau) over the tokens off the teacher's top-K (set to -inf in `masked`), [n, 1]."""
    return torch.logsumexp(masked / temperature, dim=-1, keepdim=True)


def _topk_gradient_(z: torch.Tensor, lse: torch.Tensor, tempered_lse: torch.Tensor, shift: torch.Tensor,
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


_COMPILED = tuple(CompiledKernel(kernel) for kernel in (_topk_statistics, _tail_logsumexp, _topk_gradient_))


def _native_topk_statistics(z: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, temperature: float,
                            smoothing: float) -> tuple[torch.Tensor, ...]:
    """`_topk_statistics` by the native kernels (one read of each row)."""
    stats = native.kernels().row_statistics(z, temperature)
    rows = torch.arange(z.shape[0], device=z.device)
    ce = (stats[:, 1] - label_logits(z, rows, labels, smoothing, stats[:, 3])).sum()
    return ce, agreements(z, stats[:, :1], ids[:, :1]), stats[:, 1:2], stats[:, 2:3], z.gather(1, ids)


def _native_tail_logsumexp(masked: torch.Tensor, temperature: float) -> torch.Tensor:
    """`_tail_logsumexp` by the native kernels."""
    return native.kernels().row_statistics(masked, temperature)[:, 2:3]


def _native_topk_gradient_(z: torch.Tensor, lse: torch.Tensor, tempered_lse: torch.Tensor, shift: torch.Tensor,
                           p_tail: torch.Tensor, alpha: torch.Tensor, temperature: float,
                           smoothing: float) -> torch.Tensor:
    """`_topk_gradient_` by the native kernels: the same terms, one exponential per logit at tau = 1 and 2."""
    keep = 1.0 - alpha.item()
    tempered = ((shift - tempered_lse).exp() - p_tail) * (alpha.item() * temperature)
    return native.softmax_mix_(z, lse, shift, tempered, keep, -keep * smoothing / z.shape[-1], temperature)


_NATIVE = (_native_topk_statistics, _native_tail_logsumexp, _native_topk_gradient_)
