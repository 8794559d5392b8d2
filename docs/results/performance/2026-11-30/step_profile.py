"""Operator times of one steady step per variant (torch.profiler), at CONFIG. Run from the repository root:
python docs/results/performance/2026-11-30/step_profile.py CONFIG self ki ki_cache"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "benchmarks")
import step_cost  # noqa: E402

bench = step_cost.Bench(step_cost.CONFIGS[sys.argv[1]], torch.device("cpu"), 2.0, "runs/step-profile-cache")
steps = {v: bench.step(v) for v in sys.argv[2:]}
for s in steps.values():
    s()
    s()
for variant, step in steps.items():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    print("=====", variant, f"total {sum(e.self_cpu_time_total for e in ev)/1e6:.3f} s")
    for e in ev[:16]:
        print(f"  {e.self_cpu_time_total/1e3:8.1f} ms {e.count:4d}x {e.key[:90]}")
