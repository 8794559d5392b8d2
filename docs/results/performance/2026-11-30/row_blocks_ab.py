"""Dense forward-KL kernel on one [ROWS, VOCAB] chunk at tau 2, whole or in row blocks of B (statistics then
gradient per block, so that a block's rows may still be in cache for the gradient): interleaved rounds, median ms.
Usage: python row_blocks_ab.py ROWS VOCAB ROUNDS B1,B2,..."""

import sys
import time

import torch

from kinherit.inheritance.targets import Target

n, vocab, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
blocks = [int(b) for b in sys.argv[4].split(",")]
torch.manual_seed(0)
z0 = torch.randn(n, vocab) * 3
scores = torch.randn(n, vocab) * 3
labels = torch.randint(0, vocab, (n,))
z = z0.clone()


def run(block: int) -> list[float]:
    """The chunk's (CE, KL, agreements), its gradient written over z, `block` rows at a time."""
    total = torch.zeros(3)
    for lo in range(0, n, block):
        rows = z[lo:lo + block]
        terms = Target(scores[lo:lo + block], 0.5).forward_kl_terms(rows, labels[lo:lo + block], 0.5, 2.0, True,
                                                                    0.0, rows)
        total += torch.stack(terms[:3])
    return total.tolist()


times = {block: [] for block in blocks}
for round_ in range(rounds):
    for block in blocks:
        z.copy_(z0)
        started = time.perf_counter()
        terms = run(block)
        elapsed = time.perf_counter() - started
        if round_ > 0:
            times[block].append(elapsed)
        else:
            print(block, terms, z.double().abs().sum().item(), flush=True)
for block, values in times.items():
    values.sort()
    print(f"block {block} {n}x{vocab} median ms {1000 * values[len(values) // 2]:.1f} min {1000 * values[0]:.1f}")
