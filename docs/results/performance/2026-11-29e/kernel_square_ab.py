"""The compiled forward-KL kernel alone on one random chunk: three exponentials per logit (the kernel before
`paired_softmaxes`, in `square_ab.py`) against two (the kernel now), in turns, median per call (hand-run).

    python kernel_square_ab.py ROWS VOCAB TAU [ROUNDS]    (from the repository root)
"""

import statistics
import sys
import time

import torch
from square_ab import three_exponentials

from kinherit.inheritance import targets
from kinherit.inheritance.rowwise import CompiledKernel

rows, vocab, tau = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 9
torch.manual_seed(0)
z, teacher = torch.randn(rows, vocab) * 3, torch.randn(rows, vocab) * 3
labels, alpha = torch.randint(0, vocab, (rows,)), torch.tensor(0.5)
kernels = {"three": CompiledKernel(three_exponentials), "two": targets._COMPILED_KERNEL}
outs = {name: torch.empty(rows, vocab) for name in kernels}
results = {name: kernel(z, teacher, 1 / tau, labels, alpha, tau, 0.0, outs[name]) for name, kernel in kernels.items()}
print("largest gradient difference", (results["two"][3] - results["three"][3]).abs().max().item())
times = {name: [] for name in kernels}
for index in range(rounds):
    for name in (("three", "two") if index % 2 == 0 else ("two", "three")):
        started = time.perf_counter()
        kernels[name](z, teacher, 1 / tau, labels, alpha, tau, 0.0, outs[name])
        times[name].append(time.perf_counter() - started)
three, two = statistics.median(times["three"]), statistics.median(times["two"])
print(f"{rows} x {vocab}, tau {tau}: three exponentials {three * 1e3:.1f} ms, two {two * 1e3:.1f} ms, "
      f"ratio {two / three:.3f}")
