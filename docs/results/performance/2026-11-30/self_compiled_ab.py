"""Self-learning step with the cross-entropy kernel compiled (two fused passes) against eager (five passes), in
turns in one process. Run from the repository root: python docs/results/performance/2026-11-30/self_compiled_ab.py
CONFIG ROUNDS"""

import statistics
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
import step_cost  # noqa: E402

config, rounds = sys.argv[1], int(sys.argv[2])
bench = step_cost.Bench(step_cost.CONFIGS[config], torch.device("cpu"), 2.0)
batch = {**bench.batch, "block_index": torch.arange(bench.pair.batch), "mask_epoch": torch.tensor(0)}
trainers = {"eager": bench.trainer(None, compiled=False), "compiled": bench.trainer(None, compiled=True)}


def step(trainer) -> float:
    bench.student.zero_grad(set_to_none=True)
    started = time.perf_counter()
    trainer.compute_loss(bench.student, batch).backward()
    return time.perf_counter() - started


for trainer in trainers.values():  # warm-up (compilation)
    step(trainer), step(trainer)
times = {name: [] for name in trainers}
for _ in range(rounds):
    for name, trainer in trainers.items():
        times[name].append(step(trainer))
print(config, {name: round(statistics.median(t), 3) for name, t in times.items()},
      "compiled / eager per round:", [round(c / e, 3) for c, e in zip(times["compiled"], times["eager"], strict=True)],
      f"matmul {step_cost.matmul_flops_per_second(torch.device('cpu'), 2048) / 1e9:.1f} GFLOP/s")
