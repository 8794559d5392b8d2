"""The KI step with its default chunk (half the self-learning chunk's positions) against the same step with
`CHUNK` positions, and the self-learning step, alternating in one process (hand-run; the benchmark's `Bench`).
Usage: python docs/results/performance/2026-11-30/chunk_ab.py CONFIG CHUNK ROUNDS"""
import statistics
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from step_cost import CONFIGS, Bench, matmul_flops_per_second  # noqa: E402

config, chunk, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
default = Bench(CONFIGS[config], torch.device("cpu"), 2.0)
fixed = Bench(CONFIGS[config], torch.device("cpu"), 2.0, chunk_size=chunk)
fixed.student, fixed.teacher = default.student, default.teacher  # the same models and batch
steps = {"self": default.step("self"), "ki-default": default.step("ki"), f"ki-{chunk}": fixed.step("ki")}
print(f"matmul before {matmul_flops_per_second(torch.device('cpu'), 2048) / 1e9:.1f} GFLOP/s")
for step in steps.values():
    step()
times = {name: [] for name in steps}
for _ in range(rounds):
    for name, step in steps.items():
        started = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - started)
for name, values in times.items():
    print(name, f"median {statistics.median(values):.3f} s", " ".join(f"{v:.3f}" for v in values))
ratios = [a / b for a, b in zip(times["ki-default"], times[f"ki-{chunk}"], strict=True)]
print(f"ki-default / ki-{chunk}: median {statistics.median(ratios):.3f}", " ".join(f"{r:.3f}" for r in ratios))
print(f"matmul after {matmul_flops_per_second(torch.device('cpu'), 2048) / 1e9:.1f} GFLOP/s")
