"""Two teachers mixed 1:1 against one teacher and two routed, at the causal-demo configuration, with the mixture
folded by `logaddexp` (the library's) and by `logsumexp` over stacked terms (before), steps in turns in one process
(hand-run; the benchmark's `Bench`, the second teacher a differently seeded copy of the first's shape).
Usage: python docs/results/performance/2026-11-30/mixture_ab.py CONFIG ROUNDS TEMPERATURE"""
import math
import statistics
import sys
import time

import torch
from transformers import TrainingArguments

import kinherit.inheritance.targets as targets
from kinherit.inheritance.teachers import TeacherSet, freeze
from kinherit.models import load_model
from kinherit.options import InheritanceArguments
from kinherit.trainer import InheritanceTrainer

sys.path.insert(0, "benchmarks")
from step_cost import CONFIGS, Bench, matmul_flops_per_second  # noqa: E402

config, rounds, tau = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
bench = Bench(CONFIGS[config], torch.device("cpu"), tau)
torch.manual_seed(2)
second = freeze(load_model(bench.pair.teacher, bench.tokenizer, bench.pair.block))
library = targets.mixture_log_probs


def stacked(log_probs, weights):
    """The mixture as it was: every term stacked, then a logsumexp over the teachers."""
    terms = [lp + math.log(w) for lp, w in zip(log_probs, weights, strict=True) if w > 0]
    return terms[0] if len(terms) == 1 else torch.logsumexp(torch.stack(terms), dim=0)


def trainer(teachers):
    inherit = InheritanceArguments(inherit_schedule="constant", inherit_value=0.5, temperature=tau)
    args = TrainingArguments(bench.output_dir, report_to="none", use_cpu=True)
    return InheritanceTrainer(model=bench.student, args=args, inherit_args=inherit, vocab_size=bench.pair.vocab,
                              teachers=teachers)


mixed = trainer(TeacherSet([bench.teacher, second], [1, 1]))
variants = {"self": (trainer(None), {}, library), "one": (trainer(TeacherSet([bench.teacher])), {}, library),
            "routed": (trainer(TeacherSet([bench.teacher, second], routes={0: 0, 1: 1})),
                       {"domain_id": torch.arange(bench.pair.batch) % 2}, library),
            "mixed": (mixed, {}, library), "mixed_stacked": (mixed, {}, stacked)}
batch = {**bench.batch, "block_index": torch.arange(bench.pair.batch), "mask_epoch": torch.tensor(0)}


def step(name: str) -> None:
    chosen, extra, mixture = variants[name]
    targets.mixture_log_probs = mixture
    bench.student.zero_grad(set_to_none=True)
    chosen.compute_loss(bench.student, {**batch, **extra}).backward()


print(f"{config}, tau {tau}; matmul {matmul_flops_per_second(torch.device('cpu'), 2048) / 1e9:.1f} GFLOP/s")
for name in variants:
    step(name)
    step(name)
times = {name: [] for name in variants}
for _ in range(rounds):
    for name in variants:
        started = time.perf_counter()
        step(name)
        times[name].append(time.perf_counter() - started)
for name, values in times.items():
    ratio = statistics.median(a / b for a, b in zip(values, times["self"], strict=True))
    print(f"{name:14s} median {statistics.median(values):.3f} s, / self {ratio:.3f}")
print(f"matmul after {matmul_flops_per_second(torch.device('cpu'), 2048) / 1e9:.1f} GFLOP/s")
