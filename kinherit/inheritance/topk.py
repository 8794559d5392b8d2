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
from kinherit.inheritance.rowwise import CompiledKernel, cross_entropy_terms

TOP_K_MODES = ("tail", "renormalize")
TopKMode = Literal["tail", "renormalize"]


def check_top_k(top_k: int | None, mode: str) -> None:
    """Refuse a K below 1 or an unknown mode."""
    if top_k is not None and top_k < 1 or mode not in TOP_K_MODES:
        raise KinheritError(f"--top_k must be at least 1 (got {top_k}) and --top_k_mode one of "
                            f"{', '.join(TOP_K_MODES)} (got {mode!r})")


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
        if k is not None and k > self.ids.shape[-1]:
            raise KinheritError(f"--top_k {k} asks for more tokens than the teacher cache holds "
                                f"({self.ids.shape[-1]}); rebuild the cache with --top_k {k} or ask for fewer")
        return TopKTarget(self.ids[:, :k], self.log_probs[:, :k], mode)

    @torch.no_grad()
    def forward_kl_terms(self, logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float,
                         compiled: bool = False, smoothing: float = 0.0,
                         out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(CE sum, tau^2 * KL_K sum, top-1 agreements, d total / d logits), total = (1 - alpha) CE + alpha tau^2 KL_K.

        The same contract as `Target.forward_kl_terms`, for a top-K target; `compiled` runs the kernel through
        `torch.compile` (eager fallback with a warning); the gradient is written into `out` when given.
        """
        args = (logits.float(), self.ids.long(), self.log_probs.float(), labels,
                torch.tensor(alpha, device=logits.device), temperature, smoothing, self.mode == "renormalize", out)
        return _COMPILED_TOPK(*args) if compiled else _topk_kernel(*args)

    def tail_mass(self) -> torch.Tensor:
        """p_tail per position: the teacher's probability outside its top-K (clamped at 0)."""
        return (1.0 - self.log_probs.exp().sum(-1)).clamp_min(0.0)


def _topk_kernel(z: torch.Tensor, ids: torch.Tensor, log_p: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor,
                 temperature: float, smoothing: float, renormalize: bool,
                 out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """CE sum, tau^2 * KL_K sum, agreements and d total / d z for float32 logits `z` (see the module docstring).

    Written for `torch.compile` to fuse into few row-wise passes: the gradient is one [n, V] buffer
    (the softmax's, updated in place), the top-K and label terms land in it through one scatter, and the
    tail is found by setting the top-K of the tempered logits to -inf (a boolean [n, V] mask built by a
    scatter costs more than the whole kernel on CPU). That buffer is `out` when given, which may be `z` itself.
    """
    u = z / temperature  # every read of z before its softmax goes into `out`, which may be z itself
    lse = torch.logsumexp(u, dim=-1, keepdim=True)
    log_q_k = u.gather(1, ids) - lse
    _rows, probs, _lse, top, ce = cross_entropy_terms(z, labels, smoothing, out)
    step = alpha * temperature
    agree = (top == ids[:, 0]).sum().float()
    if renormalize:  # p^ = p_k / sum_K p: d(tau^2 KL)/dz = tau * (q - p^)
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
        p_k = log_p.exp()
        kl = (p_k * (log_p - log_q_k)).sum()
        grad = probs.mul_(1.0 - alpha).add_((u - lse).exp() * step)
    else:
        p_k = log_p.exp()
        tail_u = u.scatter(1, ids, float("-inf"))  # the tempered logits off the teacher's top-K
        tail_lse = torch.logsumexp(tail_u, dim=-1, keepdim=True)
        empty_tail = torch.isinf(tail_lse)  # K = V: no tail outcome
        p_tail = torch.where(empty_tail, 0.0, (1.0 - p_k.sum(-1, keepdim=True)).clamp_min(0.0))
        log_q_tail = torch.where(empty_tail, 0.0, tail_lse - lse)
        kl_top = (p_k * (log_p - log_q_k)).sum(-1)
        kl_tail = torch.where(p_tail > 0, p_tail * (p_tail.clamp_min(1e-30).log() - log_q_tail), 0.0).squeeze(-1)
        kl = (kl_top + kl_tail).sum()
        # d(tau^2 KL_K)/dz = tau * (q - p~): p~ is p_k on the top-K (scattered below), p_tail * q_j / q_tail on the
        # tail, which is exp(tail_u - tail_lse) * p_tail and 0 on the top-K (exp(-inf))
        shift = torch.where(empty_tail, 0.0, tail_lse)
        grad = probs.mul_(1.0 - alpha).add_(step * ((u - lse).exp() - (tail_u - shift).exp() * p_tail))
    if smoothing:  # the smoothed label's uniform part; its one-hot part is scattered with the top-K below
        grad.sub_((1.0 - alpha) * smoothing / z.shape[-1])
    index = torch.cat([labels[:, None], ids], 1)
    values = torch.cat([(-(1.0 - alpha) * (1.0 - smoothing)).expand(z.shape[0], 1), -step * p_k], 1)
    return ce, kl * temperature**2, agree, grad.scatter_add_(1, index, values)


_COMPILED_TOPK = CompiledKernel(_topk_kernel)
