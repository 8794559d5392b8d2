"""Throughput of the head products of the causal-32k step (hand-run): the teacher's [512, 128] x [128, 32768]
and the student's [512, 256] x [256, 32768], written into a new tensor and into a reused one, and the teacher's
product computed transposed ([32768, 128] x [128, 512]), beside the 2048^3 float32 matmul.
Usage: python docs/results/performance/2026-11-30/head_product.py"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
from step_cost import median_seconds  # noqa: E402


def rate(function, flops: float, repeats: int = 7) -> float:
    """GFLOP/s of `function`, median of `repeats` calls after one untimed call."""
    return flops / median_seconds(function, repeats) / 1e9


a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
print(f"matmul 2048^3: {rate(lambda: a @ b, 2 * 2048**3):.1f} GFLOP/s")
for inner in (128, 256):
    h, w = torch.randn(512, inner), torch.randn(32768, inner)
    out = torch.empty(512, 32768)
    flops = 2 * 512 * inner * 32768
    new = rate(lambda h=h, w=w: F.linear(h, w), flops)
    reused = rate(lambda h=h, w=w, out=out: torch.mm(h, w.t(), out=out), flops)
    transposed = rate(lambda h=h, w=w: F.linear(w, h), flops)
    print(f"inner {inner}: new output {new:.1f}, reused output {reused:.1f}, transposed {transposed:.1f} GFLOP/s")
print(f"matmul 2048^3: {rate(lambda: a @ b, 2 * 2048**3):.1f} GFLOP/s")
