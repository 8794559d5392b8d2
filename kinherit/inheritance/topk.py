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

from kinherit.core.errors import KinheritError
from kinherit.inheritance.kernels import EagerKernels
from kinherit.inheritance.kernels.rowwise import logits_into

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

    @torch.no_grad()
    def forward_kl_terms(self, logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float,
                         kernels: EagerKernels, smoothing: float = 0.0,
                         out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(CE sum, tau^2 * KL_K sum, top-1 agreements, d total / d logits), total = (1 - alpha) CE + alpha tau^2 KL_K.

        The same contract as `Target.forward_kl_terms`, for a top-K target: row statistics that only read the
        logits, then the gradient written over `out` (which may be the float32 logits themselves; a new tensor
        when None). The tail is found by setting the top-K of `out` to -inf (a boolean [n, V] mask would cost
        a tensor and, built by a scatter on CPU, more time than the whole kernel); the top-K and label terms
        land through one scatter. `kernels` makes the three passes over the vocabulary (a compiled or native
        backend holds no [n, V] temporary).
        """
        z = logits.float()
        ids, log_p = self.ids.long(), self.log_probs.float()
        statistics, tail_logsumexp, gradient_ = kernels.topk_passes(z)
        ce, agree, lse, tempered_lse, z_k = statistics(z, ids, labels, temperature, smoothing)
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
            tail_lse = tail_logsumexp(out.scatter_(1, ids, float("-inf")), temperature)  # over the tempered tail
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
        grad = gradient_(out, lse, tempered_lse, shift, p_tail, alpha_t, temperature, smoothing)
        index = torch.cat([labels[:, None], ids], 1)
        values = torch.cat([(-(1.0 - alpha) * (1.0 - smoothing)) * torch.ones_like(lse), top_values], 1)
        return ce, kl * temperature**2, agree, grad.scatter_add_(1, index, values)

    def tail_mass(self) -> torch.Tensor:
        """p_tail per position: the teacher's probability outside its top-K (clamped at 0)."""
        return (1.0 - self.log_probs.exp().sum(-1)).clamp_min(0.0)
















