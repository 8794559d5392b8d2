"""Steps with the chunk buffers reused against the same steps with a fresh tensor per chunk, in turns (hand-run).

    python reuse_ab.py CONFIG ROUNDS    (from the repository root; CONFIG as in benchmarks/step_cost.py)

One process: every round runs self-reused, self-fresh, KI-reused, KI-fresh; "fresh" swaps
`ChunkBuffers.get` for a plain `torch.empty`, which is what each chunk did before the buffers.
"""

import json
import statistics
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from step_cost import CONFIGS, Bench, matmul_flops_per_second  # noqa: E402

from kinherit.inheritance.chunking import ChunkBuffers  # noqa: E402

reused_get = ChunkBuffers.get


def fresh_get(self, name, rows, columns, dtype, device):
    return torch.empty(rows, columns, dtype=dtype, device=device)


config, repeats = sys.argv[1], int(sys.argv[2])
bench = Bench(CONFIGS[config], torch.device("cpu"), 2.0)
steps = {kind: bench.step(kind) for kind in ("self", "ki")}
variants = [(kind, mode) for kind in ("self", "ki") for mode in ("reused", "fresh")]


def run(kind: str, mode: str) -> float:
    ChunkBuffers.get = reused_get if mode == "reused" else fresh_get
    started = time.perf_counter()
    steps[kind]()
    return time.perf_counter() - started


for kind, mode in variants:  # warm-up round (compiles the kernels)
    run(kind, mode)
times = {f"{kind}-{mode}": [] for kind, mode in variants}
for _ in range(repeats):
    for kind, mode in variants:
        times[f"{kind}-{mode}"].append(run(kind, mode))


def in_round(top: str, bottom: str) -> float:
    return statistics.median(a / b for a, b in zip(times[top], times[bottom], strict=True))


print(json.dumps({"config": config, "median": {name: statistics.median(t) for name, t in times.items()},
                  "reused_over_fresh": {kind: in_round(f"{kind}-reused", f"{kind}-fresh") for kind in ("self", "ki")},
                  "ki_over_self": {mode: in_round(f"ki-{mode}", f"self-{mode}") for mode in ("reused", "fresh")},
                  "rounds": times, "matmul_gflops": matmul_flops_per_second(torch.device("cpu"), 2048) / 1e9}))
