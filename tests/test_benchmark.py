"""The step-cost benchmark runs every variant it times (on a tiny pair), so that a change to the trainer or the
teacher cache cannot leave `benchmarks/step_cost.py` broken until someone next runs it in full."""

import importlib.util
import math
import sys
from pathlib import Path

import torch

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "step_cost.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("step_cost", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_cost"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_variant_of_the_step_cost_benchmark_steps_on_a_tiny_pair(tmp_path):
    step_cost = load_benchmark()
    pair = step_cost.Pair("llama-2x128", "llama-2x128", vocab=256, batch=2, block=16)
    bench = step_cost.Bench(pair, torch.device("cpu"), temperature=2.0, cache_root=str(tmp_path))
    step_cost.measured_work(bench, "cache_build", lambda: None)
    assert (tmp_path / f"cache-{step_cost.CACHE_K}").is_dir()
    for variant in step_cost.VARIANTS:
        bench.step(variant)()
        norms = [p.grad.norm().item() for p in bench.student.parameters() if p.grad is not None]
        assert norms and all(math.isfinite(n) for n in norms), variant
        assert sum(norms) > 0, variant
    bound, student, teacher = bench.bound()
    assert bound == 1.0 + teacher / student and teacher > 0
