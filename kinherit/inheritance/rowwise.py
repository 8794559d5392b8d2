"""Row-wise float32 softmax pieces shared by the fused loss kernels (dense and top-K targets), and the
`torch.compile` wrapper they run under."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def softmax_lse_argmax(scores: torch.Tensor, out: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(softmax, logsumexp, argmax) of float32 rows with one exponential pass; the softmax written into
    `out` when given (a reused chunk buffer), else into a new tensor."""
    peak, top = scores.max(-1, keepdim=True)
    probs = (scores - peak).exp_() if out is None else torch.sub(scores, peak, out=out).exp_()
    total = probs.sum(-1, keepdim=True)
    probs.div_(total)
    return probs, (peak + total.log()).squeeze(-1), top.squeeze(-1)


def cross_entropy_terms(z: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0,
                        out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """(row indices, softmax, logsumexp, argmax, CE sum) of float32 logits `z`: what every fused path needs
    (the softmax in `out` when given).

    With label smoothing eps the target is (1 - eps) onehot + eps / V, so CE = (1 - eps) (lse - z_y) +
    eps (lse - mean_v z_v) (as `F.cross_entropy(..., label_smoothing=eps)`).
    """
    rows = torch.arange(z.shape[0], device=z.device)
    probs, lse, top = softmax_lse_argmax(z, out)
    if smoothing == 0.0:
        return rows, probs, lse, top, (lse - z[rows, labels]).sum()
    ce = (1.0 - smoothing) * (lse - z[rows, labels]) + smoothing * (lse - z.mean(-1))
    return rows, probs, lse, top, ce.sum()


def subtract_target(grad: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | float,
                    smoothing: float = 0.0) -> torch.Tensor:
    """grad -= weight * ((1 - eps) onehot(labels) + eps / V): the target term of d CE / dz, in place."""
    if smoothing == 0.0:
        grad[rows, labels] -= weight
        return grad
    grad.sub_(weight * (smoothing / grad.shape[-1]))
    grad[rows, labels] -= weight * (1.0 - smoothing)
    return grad


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
