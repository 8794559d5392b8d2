"""The self-learning chunk kernel alone (CE sum and its gradient over the logits), eager against compiled, in turns:
median ms of ROUNDS calls. Run from the repository root: python docs/results/performance/2026-11-30/self_kernel_ab.py
ROWS VOCAB ROUNDS"""

import statistics
import sys
import time

import torch

from kinherit.inheritance.targets import self_learning_terms

rows, vocab, rounds = (int(a) for a in sys.argv[1:4])
torch.manual_seed(0)
z0 = torch.randn(rows, vocab) * 3
labels = torch.randint(0, vocab, (rows,))
z = z0.clone()
times = {False: [], True: []}
results = {}
for round_ in range(rounds + 2):
    for compiled in (False, True):
        z.copy_(z0)
        started = time.perf_counter()
        ce, _, _, grad = self_learning_terms(z, labels, 0.0, z, compiled)
        if round_ >= 2:
            times[compiled].append(time.perf_counter() - started)
        results[compiled] = (ce.item(), grad.double().abs().sum().item())
print(rows, vocab, {("compiled" if c else "eager"): round(statistics.median(t) * 1000, 1) for c, t in times.items()},
      "ms; (CE, sum |grad|):", results)
