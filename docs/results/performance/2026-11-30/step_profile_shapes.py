"""Matrix products of one steady step per variant grouped by shape (torch.profiler), two rounds. Run from the
repository root: python docs/results/performance/2026-11-30/step_profile_shapes.py CONFIG self ki ki_cache"""
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
for _ in range(2):
  for variant, step in steps.items():
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    rows = {}
    total = 0
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in ("aten::mm", "aten::addmm_", "aten::addmm"):
            rows[(e.key, str(e.input_shapes)[:70])] = (e.self_cpu_time_total / 1e3, e.count)
        total += e.self_cpu_time_total
    print("=====", variant, f"self cpu total {total/1e6:.3f} s")
    for k, (ms, n) in sorted(rows.items(), key=lambda x: -x[1][0])[:10]:
        print(f"  {ms:8.1f} ms {n:4d}x {k[0]} {k[1]}")
