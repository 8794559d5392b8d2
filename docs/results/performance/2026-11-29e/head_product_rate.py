"""GFLOP/s of the LM-head product alone at V = 128k, [M, H] x [H, V] into a reused [M, V] output, median of 9,
for the chunk lengths M the loss uses (170 with a teacher, 256 without) and around them (hand-run)."""

import statistics
import time

import torch

V = 131072


def median_seconds(function, repeats: int = 9) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


for hidden in (128, 256):
    weight = torch.randn(V, hidden)
    row = []
    for rows in (128, 170, 256, 340, 512, 682, 1024):
        x, out = torch.randn(rows, hidden), torch.empty(rows, V)
        seconds = median_seconds(lambda x=x, out=out, weight=weight: torch.mm(x, weight.t(), out=out))
        row.append(f"M={rows}:{2 * rows * hidden * V / 1e9 / seconds:.0f}")
    print(f"H={hidden} logits GF/s", " ".join(row))
