"""The eager kernels fused by `torch.compile`: one generated loop per row reduction, no [rows, V] temporary."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from kinherit.inheritance.kernels import eager


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


forward_kl_statistics = CompiledKernel(eager.forward_kl_statistics)
forward_kl_gradient_ = CompiledKernel(eager.forward_kl_gradient_)
cross_entropy_statistics = CompiledKernel(eager.cross_entropy_statistics)
softmax_ = CompiledKernel(eager.softmax_)
topk_statistics = CompiledKernel(eager.topk_statistics)
tail_logsumexp = CompiledKernel(eager.tail_logsumexp)
topk_gradient_ = CompiledKernel(eager.topk_gradient_)
