"""torch.profiler of one steady self-learning step and one KI step of a benchmark configuration (hand-run).

    python profile_steps.py CONFIG    (from the repository root; CONFIG as in benchmarks/step_cost.py)
"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "benchmarks")
from step_cost import CONFIGS, Bench  # noqa: E402

bench = Bench(CONFIGS[sys.argv[1]], torch.device("cpu"), 2.0)
steps = {kind: bench.step(kind) for kind in ("self", "ki")}
for step in steps.values():  # warm-up (compiles the kernel)
    step()
for kind, step in steps.items():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print("=====", kind)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=50))
