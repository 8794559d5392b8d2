"""Step times of self-learning, live KI and cached KI in one process (the benchmark's `Bench` and in-round
timing), printed with the process's peak RSS, so that two processes, one started with glibc's mmap threshold
fixed (`MALLOC_MMAP_THRESHOLD_=131072`: every block above 128 KiB mapped and returned when freed) and one
with the default dynamic threshold, can be compared (hand-run).
Usage: [MALLOC_MMAP_THRESHOLD_=131072] python docs/results/performance/2026-11-30/allocator_ab.py CONFIG ROUNDS"""
import os
import statistics
import sys

import torch

sys.path.insert(0, "benchmarks")
from step_cost import CACHE_K, CONFIGS, Bench, matmul_flops_per_second, peak_rss_mb, time_rounds  # noqa: E402

config, rounds = sys.argv[1], int(sys.argv[2])
bench = Bench(CONFIGS[config], torch.device("cpu"), 2.0)
bench.cache(CACHE_K)
threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_", "dynamic (glibc default)")
print(f"{config}, mmap threshold {threshold}; matmul {matmul_flops_per_second(torch.device('cpu'), 2048) / 1e9:.1f}"
      " GFLOP/s")
times = time_rounds(bench, ("self", "ki", "ki_cache"), warmup=2, repeats=rounds)
for name, values in times.items():
    print(f"{name:9s} median {statistics.median(values):.3f} s ", " ".join(f"{v:.3f}" for v in values))
for top in ("ki", "ki_cache"):
    ratios = [a / b for a, b in zip(times[top], times["self"], strict=True)]
    print(f"{top} / self: median {statistics.median(ratios):.3f}")
print(f"peak RSS {peak_rss_mb():.0f} MB (whole process: models, cache build and every step)")
