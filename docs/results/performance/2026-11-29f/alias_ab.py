"""Self-learning step with the gradient over the logits (new) vs in a buffer of its own (old), in turns."""

import statistics
import sys
import time

sys.path.insert(0, "benchmarks")
import torch
from step_cost import CONFIGS, Bench

import kinherit.inheritance.loss as L

real = L.InheritanceLoss.chunk


def old_chunk(self, logits, target, labels, alpha, buffers=None, writable=False):
    return real(self, logits, target, labels, alpha, buffers, False)


config, variant, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
bench = Bench(CONFIGS[config], torch.device("cpu"), 2.0)
step = bench.step(variant)


def timed(old):
    L.InheritanceLoss.chunk = old_chunk if old else real
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


timed(False)
timed(True)
ratios, new_t, old_t = [], [], []
for r in range(rounds):
    order = (False, True) if r % 2 == 0 else (True, False)
    got = {old: timed(old) for old in order}
    new_t.append(got[False])
    old_t.append(got[True])
    ratios.append(got[False] / got[True])
print(
    f"{config} {variant}: new/old median {statistics.median(ratios):.3f} (rounds {[round(x, 3) for x in ratios]}); "
    f"new {statistics.median(new_t):.2f} s, old {statistics.median(old_t):.2f} s"
)
