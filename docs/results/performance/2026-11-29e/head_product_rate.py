"""GFLOP/s of the LM-head product alone at V = 128k, [M, H] x [H, V] into a reused [M, V] output, median of 9,
for the chunk lengths M the loss uses (170 with a teacher, 256 without) and around them (hand-run)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
from step_cost import median_seconds  # noqa: E402

V = 131072

for hidden in (128, 256):
    weight = torch.randn(V, hidden)
    row = []
    for rows in (128, 170, 256, 340, 512, 682, 1024):
        x, out = torch.randn(rows, hidden), torch.empty(rows, V)
        seconds = median_seconds(lambda x=x, out=out, weight=weight: torch.mm(x, weight.t(), out=out), 9)
        row.append(f"M={rows}:{2 * rows * hidden * V / 1e9 / seconds:.0f}")
    print(f"H={hidden} logits GF/s", " ".join(row))
