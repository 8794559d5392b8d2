"""Self and KI step times of one benchmark configuration, for an A/B of glibc's mmap threshold (hand-run).

    python threshold_ab.py causal-32k 3; MALLOC_MMAP_THRESHOLD_=131072 python threshold_ab.py causal-32k 3
(from the repository root, with benchmarks/ on the path).
"""

import json
import os
import statistics
import sys

import torch

sys.path.insert(0, "benchmarks")
from step_cost import CONFIGS, Bench, matmul_flops_per_second, time_rounds  # noqa: E402

config, repeats = sys.argv[1], int(sys.argv[2])
bench = Bench(CONFIGS[config], torch.device("cpu"), 2.0)
times = time_rounds(bench, ["self", "ki"], 1, repeats)
print(json.dumps({"threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "dynamic"), "config": config,
                  "self": statistics.median(times["self"]), "ki": statistics.median(times["ki"]),
                  "ki_over_self": statistics.median(a / b for a, b in zip(times["ki"], times["self"], strict=True)),
                  "rounds": times, "matmul_gflops": matmul_flops_per_second(torch.device("cpu"), 2048) / 1e9}))
