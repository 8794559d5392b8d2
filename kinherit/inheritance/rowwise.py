"""Row-wise float32 softmax pieces shared by the fused loss kernels (dense and top-K targets), and the
`torch.compile` wrapper they run under."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def softmax_lse_argmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(softmax, logsumexp, argmax) of float32 rows with one exponential pass."""
    peak, top = scores.max(-1, keepdim=True)
    probs = (scores - peak).exp_()
    total = probs.sum(-1, keepdim=True)
    probs.div_(total)
    return probs, (peak + total.log()).squeeze(-1), top.squeeze(-1)


def cross_entropy_terms(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(row indices, softmax, logsumexp, argmax, CE sum) of float32 logits `z`: what every fused path needs."""
    rows = torch.arange(z.shape[0], device=z.device)
    probs, lse, top = softmax_lse_argmax(z)
    return rows, probs, lse, top, (lse - z[rows, labels]).sum()


class CompiledKernel:
    """`torch.compile` of a loss kernel (one fused pass per reduction), built on first use.

    Dynamic shapes, so chunks of any length share one graph; alpha is a tensor so that its decay
    does not recompile. If compilation fails (no C++ compiler, unsupported device), the eager kernel
    is used from then on, with a warning.
    """

    def __init__(self, kernel: Callable) -> None:
        self.kernel = kernel
        self.function = None
        self.failed = False

    def __call__(self, *args):
        if not self.failed:
            try:
                if self.function is None:
                    self.function = torch.compile(self.kernel, dynamic=True)
                return self.function(*args)
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to the same math
                warnings.warn(f"torch.compile of the KI loss failed, using the eager kernel: {error}", stacklevel=2)
                self.failed = True
        return self.kernel(*args)
