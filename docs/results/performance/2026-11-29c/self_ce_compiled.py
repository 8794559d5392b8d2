"""Median time of the self-learning CE kernel per chunk, eager against torch.compile (hand-run)."""

import time

import torch

from kinherit.inheritance.rowwise import CompiledKernel
from kinherit.inheritance.targets import self_learning_terms

torch.manual_seed(0)
compiled = CompiledKernel(self_learning_terms)


def median_ms(function, *args) -> float:
    times = []
    for _ in range(10):
        started = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - started)
    return sorted(times)[5] * 1e3


for n, vocab in [(1024, 8192), (1024, 32768), (256, 131072)]:
    z, y = torch.randn(n, vocab), torch.randint(0, vocab, (n,))
    for _ in range(3):
        compiled(z, y, 0.0)
    gap = (self_learning_terms(z, y, 0.0)[3] - compiled(z, y, 0.0)[3]).abs().max()
    print(n, vocab, f"eager {median_ms(self_learning_terms, z, y, 0.0):.1f} ms",
          f"compiled {median_ms(compiled, z, y, 0.0):.1f} ms", f"largest gradient difference {float(gap):.1e}")
