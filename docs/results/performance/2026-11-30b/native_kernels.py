"""The native single-pass loss kernels against the torch.compile ones, kernel by kernel (hand-run), in interleaved
rounds at tau = 2: the KI statistics and gradient, self-learning's statistics and softmax. The gradient and softmax
write over a copy of the logits; the copy alone is timed too, to be subtracted, and a plain row sum as the floor
of one read.
Usage: python native_kernels.py ROWS VOCAB (e.g. 256 131072)"""
import statistics
import sys
import time
from pathlib import Path

import torch

from kinherit.inheritance import native, targets

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
from step_cost import matmul_flops_per_second  # noqa: E402

ROWS, VOCAB = int(sys.argv[1]), int(sys.argv[2])
TAU, SCALE, ALPHA = 2.0, 0.5, 0.5
kernels = native.kernels()
torch.manual_seed(0)
z, t = torch.randn(ROWS, VOCAB) * 3, torch.randn(ROWS, VOCAB) * 3
labels = torch.randint(0, VOCAB, (ROWS,))
out = torch.empty_like(z)
alpha = torch.tensor(ALPHA)
compiled_stats = targets._COMPILED_STATISTICS(z, t, SCALE, labels, TAU, 0.0)
native_stats = kernels.forward_kl_statistics(z, t, SCALE, TAU)
compiled_lse = targets._COMPILED_CE_STATISTICS(z, labels, 0.0)[1]
native_lse = kernels.row_statistics(z, 1.0)[:, 1].contiguous()
runs = {
    "KI statistics, compiled": lambda: targets._COMPILED_STATISTICS(z, t, SCALE, labels, TAU, 0.0),
    "KI statistics, native": lambda: kernels.forward_kl_statistics(z, t, SCALE, TAU),
    "KI gradient + copy, compiled": lambda: targets._COMPILED_GRADIENT(out.copy_(z), t, SCALE, *compiled_stats[3:],
                                                                        alpha, TAU),
    "KI gradient + copy, native": lambda: kernels.forward_kl_gradient_(out.copy_(z), t, SCALE, native_stats, ALPHA,
                                                                       TAU),
    "CE statistics, compiled": lambda: targets._COMPILED_CE_STATISTICS(z, labels, 0.0),
    "CE statistics, native": lambda: kernels.row_statistics(z, 1.0),
    "softmax + copy, compiled": lambda: targets._COMPILED_SOFTMAX(out.copy_(z), compiled_lse),
    "softmax + copy, native": lambda: native.softmax_(out.copy_(z), native_lse),
    "copy alone": lambda: out.copy_(z),
    "row sums alone (one read of the student's rows: the memory floor of a pass)": lambda: z.sum(-1),
}
for run in runs.values():
    run()
times = {name: [] for name in runs}
for _ in range(9):
    for name, run in runs.items():
        started = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - started)
print(f"{ROWS} x {VOCAB}, {torch.get_num_threads()} threads, matmul "
      f"{matmul_flops_per_second(torch.device('cpu'), 2048) / 1e9:.1f} GFLOP/s")
for name, spent in times.items():
    print(f"{name}: {statistics.median(spent) * 1e3:.1f} ms")
