"""The KI step with two exponentials per logit (the tempered student softmax squared from the plain one)
against the same step with three (the kernel before), in turns, with self-learning as the yardstick (hand-run).

    python square_ab.py CONFIG ROUNDS [TAU]    (from the repository root; CONFIG as in benchmarks/step_cost.py)

One process: every round runs self, KI-two, KI-three; "three" swaps the compiled forward-KL kernel for one
built from the kernel as it was before `paired_softmaxes` (copied below).
"""

import json
import statistics
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from step_cost import CONFIGS, Bench, matmul_flops_per_second  # noqa: E402

from kinherit.inheritance import targets  # noqa: E402
from kinherit.inheritance.rowwise import (  # noqa: E402
    CompiledKernel,
    cross_entropy_terms,
    softmax_lse_argmax,
    subtract_target,
)


def three_exponentials(z, scores, scale, labels, alpha, temperature, smoothing, out=None):
    rows, probs, lse, top, ce = cross_entropy_terms(z, labels, smoothing, out)
    target = scores.float() if scale == 1.0 else scores.float() * scale
    p, target_lse, target_top = softmax_lse_argmax(target)
    if temperature == 1.0:
        q, q_lse, tempered = probs, lse, z
    else:
        tempered = z / temperature
        q, q_lse, _ = softmax_lse_argmax(tempered)
    dot = torch.einsum("ij,ij->i", p, target) - torch.einsum("ij,ij->i", p, tempered)
    kl = (dot - target_lse + q_lse).sum()
    agree = (top == target_top).sum().float()
    step = alpha * temperature
    grad = probs.mul_(1.0 - alpha + step) if temperature == 1.0 else probs.mul_(1.0 - alpha).add_(q.mul_(step))
    grad.sub_(p.mul_(step))
    subtract_target(grad, rows, labels, 1.0 - alpha, smoothing)
    return ce, kl * temperature**2, agree, grad


def main() -> None:
    kernels = {"two": targets._COMPILED_KERNEL, "three": CompiledKernel(three_exponentials)}
    config, repeats = sys.argv[1], int(sys.argv[2])
    tau = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    bench = Bench(CONFIGS[config], torch.device("cpu"), tau)
    steps = {kind: bench.step(kind) for kind in ("self", "ki")}
    variants = ["self", "ki-two", "ki-three"]

    def run(variant: str) -> float:
        if variant != "self":
            targets._COMPILED_KERNEL = kernels[variant[3:]]
        started = time.perf_counter()
        steps[variant[:2] if variant != "self" else "self"]()
        return time.perf_counter() - started

    before = matmul_flops_per_second(torch.device("cpu"), 2048) / 1e9
    for variant in variants:  # warm-up round (compiles the kernels)
        run(variant)
    times = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant in variants:
            times[variant].append(run(variant))

    def in_round(top: str, bottom: str) -> float:
        return statistics.median(a / b for a, b in zip(times[top], times[bottom], strict=True))


    print(json.dumps({"config": config, "tau": tau,
                      "median": {name: statistics.median(t) for name, t in times.items()},
                      "two_over_three": in_round("ki-two", "ki-three"),
                      "ki_over_self": {mode: in_round(f"ki-{mode}", "self") for mode in ("two", "three")},
                      "rounds": times,
                      "matmul_gflops_before_after": [before,
                                                     matmul_flops_per_second(torch.device("cpu"), 2048) / 1e9]}))


if __name__ == "__main__":
    main()
